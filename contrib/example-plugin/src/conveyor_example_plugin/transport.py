"""The smallest complete transport: only the required protocol, in one process.

``example://name`` is a broker of in-process FIFO queues shared by every transport
of that name in the process. It declares no capability (``Capabilities()``), so
the core does without: no priorities, no broker-side delays, no leases, no dead
letters, no purge. A delivery is bound to the transport (the *channel*) that
fetched it: acks go through that transport only, and closing it puts what it held
back at the head of its queue, redelivered, as an AMQP broker does when a channel
closes. Copy it to start a transport for a real broker.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from conveyor.interfaces import (
    BaseTransport, Binding, Capabilities, Delivery, Message, Outgoing, Route,
)


@dataclass
class _Broker:
    """The queues of one ``example://`` broker; touched only under ``cond``."""

    queues: dict[str, deque[tuple[Message, int]]] = field(default_factory=dict)
    #: exchange -> its bindings, in the order they were declared
    bindings: dict[str, dict[Binding, None]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)


_brokers: dict[str, _Broker] = {}
_brokers_lock = threading.Lock()


class ExampleTransport(BaseTransport):
    """In-process queues; the required :class:`~conveyor.interfaces.Transport` only."""

    scheme = "example"
    capabilities: ClassVar[Capabilities] = Capabilities()  # channel settlement, nothing more

    def __init__(self, url: str = "example://", app: Any = None) -> None:
        super().__init__(url, app)
        name = url.split("://", 1)[1] if "://" in url else url
        with _brokers_lock:
            self._broker = _brokers.setdefault(name or "default", _Broker())
        self._tags = itertools.count(1)
        #: Deliveries this channel holds: tag -> (queue, message, deliveries so far).
        self._held: dict[int, tuple[str, Message, int]] = {}

    def connect(self) -> None:
        """Nothing to open: the broker lives in this process."""

    def close(self) -> None:
        """Put every unsettled delivery back at the head of its queue, redelivered."""
        with self._broker.cond:
            for queue, message, count in reversed(list(self._held.values())):
                self._broker.queues.setdefault(queue, deque()).appendleft((message, count))
            self._held.clear()
            self._broker.cond.notify_all()

    def declare(self, route: Route) -> None:
        """The queue, bound to its own exchange (what ``route.own_binding()`` says)."""
        with self._broker.cond:
            self._broker.queues.setdefault(route.queue, deque())
            self._broker.bindings.setdefault(route.queue, {})[route.own_binding()] = None

    def publish_many(self, batch: Sequence[Outgoing]) -> None:
        """Each message to its queue, or through its exchange's bindings."""
        broker = self._broker
        with broker.cond:
            for message, route, _due in batch:  # due is always None: no delays
                for queue in route.destinations(broker.bindings.get(route.exchange, ())):
                    broker.queues.setdefault(queue, deque()).append((message, 0))
            broker.cond.notify_all()

    def fetch(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` deliveries, one queue after the other, FIFO in each."""
        deadline = time.monotonic() + timeout
        broker = self._broker
        with broker.cond:
            while True:
                out = self._take(queues, limit)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                broker.cond.wait(remaining)

    def _take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        out: list[Delivery] = []
        for name in queues:
            waiting = self._broker.queues.get(name)
            while waiting and len(out) < limit:
                message, count = waiting.popleft()
                tag = next(self._tags)
                self._held[tag] = (name, message, count + 1)
                out.append(Delivery(message, name, tag, redelivered=count > 0,
                                    deliveries=count + 1, routing_key=name))
        return out

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self._broker.cond:
            for d in deliveries:
                self._held.pop(d.tag, None)

    def requeue(self, delivery: Delivery) -> None:
        with self._broker.cond:
            held = self._held.pop(delivery.tag, None)
            if held is not None:
                queue, message, count = held
                self._broker.queues.setdefault(queue, deque()).appendleft((message, count - 1))
                self._broker.cond.notify_all()
