"""Sends events from a background thread over a broadcast connection of its own.

The thread that calls :meth:`EventDispatcher.send` (a pool thread running a task,
the consumer) never waits for the broker: events are queued and the dispatcher's
thread broadcasts them. A broker error drops the events in hand, logs once, and the
next event reconnects.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from ..control.exchanges import EVENTS, event_routing_key
from ..interfaces import BroadcastTransport, Message, Transport
from ..utils import mask_url

if TYPE_CHECKING:
    from ..app import Conveyor

log = logging.getLogger("conveyor.events")

#: Seconds :meth:`EventDispatcher.close` waits for queued events to go out.
CLOSE_TIMEOUT = 5.0


def utcoffset() -> int:
    """Hours west of UTC, as Celery's ``celery.utils.time.utcoffset`` gives them."""
    if time.localtime().tm_isdst and time.daylight:
        return time.altzone // 3600
    return time.timezone // 3600


class EventDispatcher:
    """Broadcasts event dicts for one node name (``hostname``) of one process."""

    def __init__(self, app: Conveyor, hostname: str) -> None:
        self.app = app
        self.hostname = hostname
        self.pid = os.getpid()
        self._clock = itertools.count(1)
        self._clock_lock = threading.Lock()
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._transport: Transport | None = None
        self._failing = False
        self._unsupported = False
        self._thread = threading.Thread(target=self._run, name="conveyor-events",
                                        daemon=True)
        self._thread.start()

    def send(self, event_type: str, **fields: Any) -> None:
        """Queue the event ``event_type`` with Celery's envelope fields added."""
        with self._clock_lock:
            clock = next(self._clock)
        event = {"hostname": self.hostname, "utcoffset": utcoffset(), "pid": self.pid,
                 "clock": clock, **fields, "timestamp": time.time(), "type": event_type}
        self._queue.put(event)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Send what is queued (waiting at most ``timeout``), then disconnect."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        for event in iter(self._queue.get, None):  # until close() queues None
            self._broadcast(event)
        self._disconnect()

    def _broadcast(self, event: dict[str, Any]) -> None:
        message = Message({"hostname": self.hostname},
                          json.dumps(event, default=repr).encode(), "application/json",
                          "utf-8", {"delivery_mode": 1})
        try:
            transport = self._connect()
            if transport is None:
                return
            cast(BroadcastTransport, transport).broadcast(
                EVENTS, event_routing_key(event["type"]), message)
        except Exception as exc:  # noqa: BLE001 - events are lossy; tasks go on
            if not self._failing:
                log.warning("Sending events to %s failed (%s: %s); events are dropped "
                            "until it works again.", mask_url(self.app.broker_url),
                            type(exc).__name__, exc)
            self._failing = True
            self._disconnect()
        else:
            if self._failing:
                log.info("Sending events works again.")
            self._failing = False

    def _connect(self) -> Transport | None:
        if self._unsupported:
            return None
        if self._transport is None:
            transport = self.app.transport_factory()
            if not transport.capabilities.broadcast:
                self._unsupported = True
                log.warning("The broker %s cannot broadcast, so no events are sent "
                            "(-E/worker_send_task_events needs a transport with the "
                            "broadcast capability, such as redis:// or amqp://).",
                            mask_url(self.app.broker_url))
                return None
            transport.connect()
            self._transport = transport
        return self._transport

    def _disconnect(self) -> None:
        if self._transport is not None:
            try:
                self._transport.close()
            except Exception:  # noqa: BLE001 - closing a failed connection
                log.debug("closing the events connection failed", exc_info=True)
            self._transport = None
