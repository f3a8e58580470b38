"""Heartbeats for a transport whose connection must be read now and then to stay
open (``Capabilities.heartbeats``: AMQP), while the thread that owns it is busy.

The consumer thread calls ``heartbeat()`` about every second between its turns. A
``solo`` pool runs each task inside that thread, so during a task longer than two
heartbeats nothing read the connection: RabbitMQ closed it and gave the task's
``acks_late`` delivery (and the prefetched ones) to another run, and the task ran
again, for ever if it always takes that long. :class:`Lender` lends the transport to
a thread of its own for the length of such a task: the consumer does not touch the
transport while it is lent, and taking it back waits for a heartbeat in progress,
so the connection is used by one thread at a time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from ..interfaces import HeartbeatTransport

if TYPE_CHECKING:
    from ..interfaces import Transport

log = logging.getLogger("conveyor.worker")


def expect_heartbeats(transport: Transport) -> None:
    """Tell ``transport``, before it connects, that its user calls ``heartbeat()``
    about every second (the worker's consumer and control threads do; a producer
    does not). A transport may ask the broker for heartbeats only then: the broker
    closes a connection that asked for them and went unread for two, which is what
    a producer's connection between publishes is (Celery's clients ask for none
    either). Optional for a transport (``HeartbeatTransport.expect_heartbeats``)."""
    expect = getattr(transport, "expect_heartbeats", None)
    if expect is not None:
        expect()


class Lender:
    """Answers a transport's heartbeats from its own thread while it is lent (see the
    module docstring). perf: lending is two uncontended lock round trips a task
    (sub-µs); the thread, started at the first lending, wakes four times every
    ``every`` seconds, lent or not."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._lock = threading.Lock()  # held while the thread uses the transport
        self._lent: Transport | None = None
        self._since = 0.0
        self._closed = False
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def lent(self, transport: Transport) -> Iterator[None]:
        """Let the thread answer ``transport``'s heartbeats for the ``with`` block,
        in which the caller must not use it."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="conveyor-heartbeats",
                                            daemon=True)
            self._thread.start()
        with self._lock:
            self._lent, self._since = transport, time.monotonic()
        try:
            yield
        finally:
            with self._lock:  # waits for a heartbeat in progress
                self._lent = None

    def close(self) -> None:
        self._closed = True

    def _run(self) -> None:
        # A task lent the transport within a second of the consumer's last
        # heartbeat; half a second more, then every half second, stays well inside
        # even a 2 s AMQP heartbeat window (RabbitMQ closes after two missed).
        half = self.every / 2
        while not self._closed:
            time.sleep(half / 2)
            with self._lock:
                transport = self._lent
                if transport is None or time.monotonic() - self._since < half:
                    continue
                try:
                    cast(HeartbeatTransport, transport).heartbeat()
                except Exception as exc:  # noqa: BLE001 - the consumer sees it next
                    log.debug("Heartbeat during a task failed: %s", exc)
                    self._lent = None  # not again: the connection is broken
                self._since = time.monotonic()
