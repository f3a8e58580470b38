"""The ``memory://`` transport: in-process queues for tests and single-process use.

It keeps the same contract as a real broker (priorities, parked delayed messages,
leases with a visibility timeout, delivery counts, dead letters), so code tested on
it behaves as it will in production. Brokers are shared per URL within a process:
``memory://`` and ``memory://name`` are separate brokers.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from conveyor.interfaces import (
    LEASE, BaseTransport, Binding, Capabilities, DeadLetter, Delivery, Message, Outgoing,
    QueueStats, Route,
)

from .memory_broadcast import BroadcastMixin


@dataclass(slots=True)
class _Entry:
    message: Message
    queue: str
    deliveries: int = 0
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    exchange: str = ""
    routing_key: str = ""
    #: When it last became deliverable (unix time): the age ``stats`` reports.
    ready_at: float = 0.0


class _Broker:
    """State of one in-process broker; every method runs under ``cond``."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seq = itertools.count()
        self.queues: dict[str, list[tuple[int, int, _Entry]]] = {}
        self.delayed: list[tuple[float, int, _Entry]] = []
        #: tag -> the entry and when its lease began or was extended, on the monotonic
        #: clock (an in-process lease: a step of the wall clock must not lapse it).
        self.unacked: dict[str, tuple[_Entry, float]] = {}
        self.dead: list[DeadLetter] = []
        #: exchange -> its bindings (a dict for order; values unused)
        self.bindings: dict[str, dict[Binding, None]] = {}

    def push(self, entry: _Entry) -> None:
        level = entry.message.properties.get("priority") or 0
        entry.ready_at = time.time()
        heapq.heappush(self.queues.setdefault(entry.queue, []),
                       (-level, next(self.seq), entry))
        self.cond.notify_all()

    def tick(self, visibility: float) -> None:
        now = time.time()
        while self.delayed and self.delayed[0][0] <= now:
            self.push(heapq.heappop(self.delayed)[2])
        if self.unacked:
            now = time.monotonic()
            for tag, (entry, leased) in list(self.unacked.items()):
                if leased + visibility <= now:
                    del self.unacked[tag]
                    self.push(entry)

    def pop(self, queues: Sequence[str]) -> _Entry | None:
        best = None
        for name in queues:
            heap = self.queues.get(name)
            if heap and (best is None or heap[0][:2] < best[0][:2]):
                best = (heap[0], heap)
        if best is None:
            return None
        return heapq.heappop(best[1])[2]


def _copy(message: Message) -> Message:
    """What crossing a broker does to a message: the receiver gets its own copy."""
    headers = {k: v.copy() if isinstance(v, (dict, list)) else v
               for k, v in message.headers.items()}
    return Message(headers, message.body, message.content_type,
                   message.content_encoding, dict(message.properties))


_brokers: dict[str, _Broker] = {}
_brokers_lock = threading.Lock()


def broker_for(url: str) -> _Broker:
    name = url.split("://", 1)[1] if "://" in url else url
    with _brokers_lock:
        return _brokers.setdefault(name or "default", _Broker())


class MemoryTransport(BroadcastMixin, BaseTransport):
    """In-process transport with broker semantics (see module docstring)."""

    scheme = "memory"
    capabilities: ClassVar[Capabilities] = Capabilities(
        delays=True, leases=True, dead_letters=True, priorities=True, purge=True,
        inspect=True, broadcast=True, settlement=LEASE)
    default_options: ClassVar[dict[str, Any]] = {"visibility_timeout": 3600.0}

    def __init__(self, url: str = "memory://", app: Any = None) -> None:
        super().__init__(url, app)
        self._lease = float(self.options["visibility_timeout"])
        self.visibility_timeout = self._lease
        self._broker = broker_for(url)

    def connect(self) -> None:
        pass

    def close(self) -> None:
        pass

    def declare(self, route: Route) -> None:
        with self._broker.cond:
            self._broker.queues.setdefault(route.queue, [])
            self._broker.bindings.setdefault(route.queue, {})[route.own_binding()] = None

    def publish_many(self, batch: Sequence[Outgoing]) -> None:
        b = self._broker
        now = time.time()
        with b.cond:
            for message, route, due in batch:
                for queue in route.destinations(b.bindings.get(route.exchange, ())):
                    entry = _Entry(_copy(message), queue, exchange=route.exchange,
                                   routing_key=route.key)
                    if due is not None and due > now:
                        heapq.heappush(b.delayed, (due, next(b.seq), entry))
                        b.cond.notify_all()
                    else:
                        b.push(entry)

    def fetch(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[Delivery]:
        b = self._broker
        deadline = time.monotonic() + timeout
        out: list[Delivery] = []
        with b.cond:
            while True:
                b.tick(self._lease)
                while len(out) < limit:
                    entry = b.pop(queues)
                    if entry is None:
                        break
                    entry.deliveries += 1
                    tag = uuid.uuid4().hex
                    b.unacked[tag] = (entry, time.monotonic())
                    out.append(Delivery(_copy(entry.message), entry.queue, tag,
                                        redelivered=entry.deliveries > 1,
                                        deliveries=entry.deliveries,
                                        exchange=entry.exchange,
                                        routing_key=entry.routing_key))
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                wake = remaining
                if b.delayed:
                    wake = min(wake, max(0.0, b.delayed[0][0] - time.time()))
                b.cond.wait(wake)

    def _settle(self, delivery: Delivery) -> _Entry | None:
        found = self._broker.unacked.pop(delivery.tag, None)
        return found[0] if found else None

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self._broker.cond:
            for d in deliveries:
                self._settle(d)

    def requeue(self, delivery: Delivery) -> None:
        with self._broker.cond:
            entry = self._settle(delivery)
            if entry is not None:
                entry.deliveries -= 1  # given back unstarted: not a delivery
                self._broker.push(entry)

    def defer(self, delivery: Delivery, due: float) -> None:
        b = self._broker
        with b.cond:
            entry = self._settle(delivery)
            if entry is not None:
                entry.deliveries -= 1
                heapq.heappush(b.delayed, (due, next(b.seq), entry))
                b.cond.notify_all()

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        now = time.monotonic()
        with self._broker.cond:
            for d in deliveries:
                if d.tag in self._broker.unacked:
                    self._broker.unacked[d.tag] = (self._broker.unacked[d.tag][0], now)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        with self._broker.cond:
            entry = self._settle(delivery)
            message = entry.message if entry is not None else delivery.message
            self._broker.dead.append(DeadLetter(
                entry.id if entry is not None else uuid.uuid4().hex,
                delivery.queue, reason, time.time(), message))

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        with self._broker.cond:
            return [d for d in self._broker.dead if queue is None or d.queue == queue]

    def requeue_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        b = self._broker
        with b.cond:
            chosen = [d for d in b.dead if (ids is None or d.id in ids)
                      and (queue is None or d.queue == queue)]
            for d in chosen:
                b.dead.remove(d)
                b.push(_Entry(d.message, d.queue, id=d.id))
            return len(chosen)

    def purge_dead(self, queue: str | None = None) -> int:
        b = self._broker
        with b.cond:
            keep = [d for d in b.dead if queue is not None and d.queue != queue]
            count = len(b.dead) - len(keep)
            b.dead[:] = keep
            return count

    def purge(self, queue: str) -> int:
        with self._broker.cond:
            heap = self._broker.queues.get(queue, [])
            count = len(heap)
            heap.clear()
            return count

    def depth(self, queue: str) -> int:
        """Ready messages, counting parked ones that fell due (as :meth:`stats` does)."""
        with self._broker.cond:
            self._broker.tick(self._lease)
            return len(self._broker.queues.get(queue, []))

    def stats(self, queue: str) -> QueueStats:
        b = self._broker
        now = time.time()
        with b.cond:
            b.tick(self._lease)
            heap = b.queues.get(queue, [])
            waiting: dict[int, int] = {}
            for level, _, _entry in heap:
                waiting[-level] = waiting.get(-level, 0) + 1
            parked = [due for due, _, e in b.delayed if e.queue == queue]
            return QueueStats(
                queue, waiting, len(parked), min(parked, default=None),
                sum(1 for e, _ in b.unacked.values() if e.queue == queue),
                sum(1 for d in b.dead if d.queue == queue),
                now - min(e.ready_at for _, _, e in heap) if heap else None)


class AsyncMemoryTransport:
    """The asyncio twin of :class:`MemoryTransport`: a publish is a few list and heap
    operations under a lock held only by publishers and a fetch's short checks, so
    it runs on the loop as it is."""

    scheme: ClassVar[str] = "memory"
    capabilities: ClassVar[Capabilities] = MemoryTransport.capabilities
    connection_errors = MemoryTransport.connection_errors

    def __init__(self, url: str = "memory://", app: Any = None) -> None:
        self._sync = MemoryTransport(url, app)

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def declare(self, route: Route) -> None:
        self._sync.declare(route)

    async def publish_many(self, batch: Sequence[Outgoing]) -> None:
        self._sync.publish_many(batch)
