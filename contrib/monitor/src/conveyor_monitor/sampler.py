"""Reads the queues and dead letters of the broker every few seconds and keeps a
short history, for the page's plots and the metrics.

Everything comes from the transport's capabilities (``inspect`` for
:class:`~conveyor.interfaces.QueueStats`, ``dead_letters`` for the dead-letter
API that ``conveyor dead`` uses); a broker without one shows that part as
unsupported instead of failing the page.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from conveyor import Conveyor
from conveyor.interfaces import (
    DeadLetter, DeadLetterTransport, InspectTransport, QueueStats, Transport,
)
from conveyor.utils import mask_url

log = logging.getLogger("conveyor.monitor")

#: Points of history kept per queue (at the default 2 s interval: 10 minutes).
HISTORY = 300
#: Dead letters shown at most (the newest).
DEAD_SHOWN = 200

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Point:
    """One reading of a queue."""

    time: float
    ready: int
    oldest_age: float | None


class Sampler:
    """Owns one broker connection, used by its polling thread and by the page's
    requeue/purge requests one at a time."""

    def __init__(self, app: Conveyor, queues: Sequence[str], interval: float) -> None:
        self.app = app
        self.queues = list(queues)
        self.interval = interval
        self.history: dict[str, deque[Point]] = {q: deque(maxlen=HISTORY) for q in queues}
        self.stats: dict[str, QueueStats] = {}
        self.dead: list[DeadLetter] = []
        self.dead_total = 0
        self.dead_by_queue: dict[str, int] = {}
        self.error: str | None = None
        self.sampled_at: float | None = None
        self._transport: Transport | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="monitor-sampler",
                                        daemon=True)
        probe = app.transport_factory()
        caps = probe.capabilities
        self.can_inspect = bool(caps.inspect)
        self.can_dead = bool(caps.dead_letters)
        self.broker = mask_url(app.broker_url)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        with self._lock:
            self._drop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    # ------------------------------------------------------------------ reading
    def sample(self) -> None:
        """Read every queue and the dead letters once; a broker error is kept for
        the page (and the connection made anew next time), never raised."""
        try:
            stats = self._use(lambda t: [cast(InspectTransport, t).stats(q)
                                         for q in self.queues]) if self.can_inspect else []
            dead = self._use(lambda t: cast(DeadLetterTransport, t).dead_letters()) \
                if self.can_dead else []
        except Exception as exc:  # noqa: BLE001 - shown on the page, retried
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("Reading the queues of %s failed: %s", self.broker, self.error)
            return
        now = time.time()
        for row in stats:
            self.stats[row.queue] = row
            self.history[row.queue].append(Point(now, row.ready, row.oldest_age))
        wanted = set(self.queues)
        dead.sort(key=lambda dl: dl.time, reverse=True)
        self.dead_total = len(dead)
        self.dead = dead[:DEAD_SHOWN]
        self.dead_by_queue = {q: sum(1 for dl in dead if dl.queue == q)
                              for q in wanted | {dl.queue for dl in dead}}
        self.error = None
        self.sampled_at = now

    # ------------------------------------------------------------------ actions
    def requeue(self, ids: Sequence[str] | None) -> int:
        """Put dead letters back on their queues (all when ``ids`` is None)."""
        count = self._use(lambda t: cast(DeadLetterTransport, t).requeue_dead(ids))
        self.sample()
        return count

    def purge(self, queue: str | None) -> int:
        """Delete the dead letters (of ``queue``, or all)."""
        count = self._use(lambda t: cast(DeadLetterTransport, t).purge_dead(queue))
        self.sample()
        return count

    # ------------------------------------------------------------------ connection
    def _use(self, work: Callable[[Transport], T]) -> T:
        with self._lock:
            if self._transport is None:
                transport = self.app.transport_factory()
                transport.connect()
                self._transport = transport
            try:
                return work(self._transport)
            except Exception:
                self._drop()
                raise

    def _drop(self) -> None:
        if self._transport is not None:
            try:
                self._transport.close()
            except Exception:  # noqa: BLE001 - already failing; a new one is made
                log.debug("closing the monitor's transport failed", exc_info=True)
            self._transport = None

    # ------------------------------------------------------------------ views
    def snapshot(self) -> dict[str, Any]:
        """What the page shows about queues and dead letters, as JSON-ready data."""
        queues = []
        for q in self.queues:
            row = self.stats.get(q)
            queues.append({
                "queue": q,
                "ready": None if row is None else row.ready,
                "delayed": None if row is None else row.delayed,
                "delayed_shared": None if row is None else row.delayed_shared,
                "leased": None if row is None else row.leased,
                "dead": None if row is None else row.dead,
                "oldest_age": None if row is None else row.oldest_age,
                "history": [[round(p.time, 1), p.ready, p.oldest_age]
                            for p in self.history[q]],
            })
        return {
            "broker": self.broker, "error": self.error, "sampled_at": self.sampled_at,
            "can_inspect": self.can_inspect, "can_dead": self.can_dead,
            "queues": queues, "dead_total": self.dead_total,
            "dead": [dead_row(dl) for dl in self.dead],
        }


def dead_row(dl: DeadLetter) -> dict[str, Any]:
    """A dead letter as the page lists it (the fields of ``conveyor dead list``)."""
    headers = dl.message.headers if isinstance(dl.message.headers, dict) else {}
    return {"id": dl.id, "task_id": headers.get("id"), "task": headers.get("task"),
            "queue": dl.queue, "time": dl.time, "reason": dl.reason}
