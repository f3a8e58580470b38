"""Receives the workers' events (Celery's ``celeryev`` topic exchange) and feeds them
to the :class:`~conveyor_monitor.state.EventState`."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, cast

from conveyor import Conveyor
from conveyor.interfaces import TOPIC, BroadcastTransport, Exchange, Subscription
from conveyor.utils import mask_url

from .state import EventState

#: Celery's event exchange (``event_exchange``), declared as Celery declares it.
EVENTS = Exchange("celeryev", TOPIC, durable=True)
#: Seconds between attempts when the broker is unreachable.
RETRY = 2.0
#: Seconds the monitor waits for its subscription before it serves the page.
READY_TIMEOUT = 10.0

log = logging.getLogger("conveyor.monitor")


class Receiver:
    """A thread reading the event subscription until stopped."""

    def __init__(self, app: Conveyor, state: EventState) -> None:
        self.app = app
        self.state = state
        self._stop = threading.Event()
        #: Set once subscribed: events broadcast from then on are received.
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="monitor-events",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            transport = self.app.transport_factory()
            subscription: Subscription | None = None
            try:
                transport.connect()
                subscription = cast(BroadcastTransport, transport).subscribe(EVENTS, "#")
                self.ready.set()
                if failing:
                    log.info("Receiving events again.")
                failing = False
                while not self._stop.is_set():
                    for delivery in subscription.get(timeout=0.5):
                        event = decode(delivery.message.body)
                        if event is not None:
                            self.state.feed(event)
            except Exception as exc:  # noqa: BLE001 - shown in the log, retried
                if not failing:
                    log.warning("Receiving events from %s failed (%s: %s); retrying "
                                "every %.0f s.", mask_url(self.app.broker_url),
                                type(exc).__name__, exc, RETRY)
                failing = True
                self._stop.wait(RETRY)
            finally:
                for closing in (subscription, transport):
                    try:
                        if closing is not None:
                            closing.close()
                    except Exception:  # noqa: BLE001 - already failing or stopping
                        log.debug("closing the event subscription failed", exc_info=True)


def start_receiver(app: Conveyor, state: EventState) -> Receiver | None:
    """Start receiving events, or None (logged) when the broker cannot broadcast."""
    transport = app.transport_factory()
    if not transport.capabilities.broadcast:
        log.warning("The broker of %s cannot broadcast: no worker events, so workers, "
                    "throughput and failures stay empty.", app.main)
        return None
    receiver = Receiver(app, state)
    receiver.start()
    if not receiver.ready.wait(READY_TIMEOUT):
        log.warning("Not subscribed to events after %.0f s; going on (the log says why "
                    "when it fails).", READY_TIMEOUT)
    return receiver


def decode(body: Any) -> dict[str, Any] | None:
    """An event dict from a broadcast message body (JSON), or None."""
    try:
        event = json.loads(body) if isinstance(body, bytes | str) else body
    except ValueError:
        return None
    return event if isinstance(event, dict) else None
