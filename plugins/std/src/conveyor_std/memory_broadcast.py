"""Broadcasts for the ``memory://`` transport: AMQP's exchange rules, in process.

A subscription is a list the broker appends a copy of each matching broadcast to
(:meth:`conveyor.interfaces.Exchange.matches`); what is broadcast while nobody is
subscribed is dropped, as on a real broker.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from conveyor.interfaces import Delivery, Exchange, Message


class _Subscribers:
    """Every open subscription of one in-process broker."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.open: list[MemorySubscription] = []


_by_broker: dict[int, _Subscribers] = {}
_by_broker_lock = threading.Lock()


def subscribers_of(broker: object) -> _Subscribers:
    with _by_broker_lock:
        return _by_broker.setdefault(id(broker), _Subscribers())


class MemorySubscription:
    def __init__(self, subscribers: _Subscribers, exchange: Exchange, binding_key: str,
                 queue: str) -> None:
        self.subscribers, self.exchange, self.binding_key = subscribers, exchange, binding_key
        self.queue = queue
        self.received: list[Delivery] = []
        with subscribers.cond:
            subscribers.open.append(self)

    def get(self, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + max(0.0, timeout)
        cond = self.subscribers.cond
        with cond:
            while not self.received and self in self.subscribers.open:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                cond.wait(left)
            out, self.received = self.received, []
        return out

    def close(self) -> None:
        with self.subscribers.cond:
            if self in self.subscribers.open:
                self.subscribers.open.remove(self)
            self.subscribers.cond.notify_all()


class BroadcastMixin:
    """``broadcast`` and ``subscribe`` for :class:`~.memory.MemoryTransport`."""

    _broker: Any

    def broadcast(self, exchange: Exchange, routing_key: str, message: Message) -> None:
        from .memory import _copy

        subs = subscribers_of(self._broker)
        with subs.cond:
            for sub in subs.open:
                if sub.exchange.name == exchange.name and \
                        exchange.matches(sub.binding_key, routing_key):
                    sub.received.append(Delivery(_copy(message), sub.queue, None,
                                                 exchange=exchange.name,
                                                 routing_key=routing_key))
            subs.cond.notify_all()

    def subscribe(self, exchange: Exchange, binding_key: str = "", *,
                  queue: str | None = None,
                  expires: float | None = None) -> MemorySubscription:
        return MemorySubscription(subscribers_of(self._broker), exchange, binding_key,
                                  queue or f"{uuid.uuid4()}.{exchange.name}")
