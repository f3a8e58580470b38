"""What the worker events (Celery's ``celeryev`` events, the ones Flower reads) say
about workers and tasks: the workers alive, task counts and run times by task name
and state, throughput over time, and the recent failures with their tracebacks.

Fed one event dict at a time (:meth:`EventState.feed`) by the receiver; read by the
page and the Prometheus metrics. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Task event type → the state Celery's ``events.state`` gives the task.
TASK_STATES = {
    "task-sent": "PENDING", "task-received": "RECEIVED", "task-started": "STARTED",
    "task-succeeded": "SUCCESS", "task-failed": "FAILURE", "task-retried": "RETRY",
    "task-revoked": "REVOKED", "task-rejected": "REJECTED",
}
#: Task ids remembered to name later events (``task-succeeded`` carries no name).
NAMES_KEPT = 10_000
#: Failures kept for the page.
FAILURES_KEPT = 50
#: Throughput buckets (seconds each, how many kept).
BUCKET, BUCKETS = 10.0, 90
#: A worker that sent nothing for this many heartbeat intervals is taken as gone
#: (Celery's ``events.state`` uses the same factor).
HEARTBEAT_MISSES = 2.0


@dataclass
class WorkerInfo:
    """One worker as its events describe it."""

    hostname: str
    last_seen: float
    freq: float = 2.0
    online: bool = True
    active: int | None = None
    processed: int | None = None
    loadavg: list[float] | None = None
    sw_ident: str | None = None
    sw_ver: str | None = None
    pid: int | None = None

    def alive(self, now: float) -> bool:
        return self.online and now - self.last_seen <= self.freq * HEARTBEAT_MISSES + 5


@dataclass
class Counts:
    """Task events per state in one throughput bucket."""

    start: float
    states: dict[str, int] = field(default_factory=dict)


#: Called for each finished task with (task name, state, run time in seconds or None).
TaskListener = Callable[[str, str, float | None], None]


class EventState:
    """The monitor's picture of the workers and tasks, built from events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.workers: dict[str, WorkerInfo] = {}
        self.names: OrderedDict[str, str] = OrderedDict()
        self.totals: dict[tuple[str, str], int] = {}
        self.failures: deque[dict[str, Any]] = deque(maxlen=FAILURES_KEPT)
        self.buckets: deque[Counts] = deque(maxlen=BUCKETS)
        self.events_seen = 0
        self.listeners: list[TaskListener] = []

    def feed(self, event: Mapping[str, Any]) -> None:
        """Take one event (Celery's fields: ``type``, ``hostname``, ``timestamp``,
        ``uuid``…); an unknown type is counted and otherwise ignored."""
        kind = str(event.get("type", ""))
        now = time.time()
        with self._lock:
            self.events_seen += 1
            if kind.startswith("worker-"):
                self._worker(kind, event, now)
            elif kind in TASK_STATES:
                self._task(kind, event, now)
            else:
                return
        if kind in TASK_STATES and kind not in ("task-sent", "task-received"):
            name = self.task_name(event)
            runtime = event.get("runtime")
            for listener in self.listeners:
                listener(name, TASK_STATES[kind],
                         float(runtime) if isinstance(runtime, int | float) else None)

    def task_name(self, event: Mapping[str, Any]) -> str:
        name = event.get("name")
        if name:
            return str(name)
        with self._lock:
            return self.names.get(str(event.get("uuid")), "unknown")

    def _worker(self, kind: str, event: Mapping[str, Any], now: float) -> None:
        host = str(event.get("hostname") or "?")
        info = self.workers.get(host) or WorkerInfo(host, now)
        self.workers[host] = info
        info.last_seen = now
        info.online = kind != "worker-offline"
        if isinstance(event.get("freq"), int | float):
            info.freq = float(event["freq"])
        for key in ("active", "processed", "loadavg", "sw_ident", "sw_ver", "pid"):
            if event.get(key) is not None:
                setattr(info, key, event[key])

    def _task(self, kind: str, event: Mapping[str, Any], now: float) -> None:
        task_id = str(event.get("uuid"))
        if event.get("name"):
            self.names[task_id] = str(event["name"])
            self.names.move_to_end(task_id)
            while len(self.names) > NAMES_KEPT:
                self.names.popitem(last=False)
        name = self.names.get(task_id, "unknown")
        state = TASK_STATES[kind]
        self.totals[(name, state)] = self.totals.get((name, state), 0) + 1
        if not self.buckets or now - self.buckets[-1].start >= BUCKET:
            self.buckets.append(Counts(now - now % BUCKET))
        bucket = self.buckets[-1].states
        bucket[state] = bucket.get(state, 0) + 1
        host = event.get("hostname")
        if host and str(host) in self.workers:
            self.workers[str(host)].last_seen = now
        if kind in ("task-failed", "task-retried"):
            self.failures.appendleft({
                "uuid": task_id, "name": name, "state": state,
                "hostname": host, "time": event.get("timestamp", now),
                "exception": event.get("exception"), "traceback": event.get("traceback"),
            })

    def snapshot(self) -> dict[str, Any]:
        """Workers, totals, throughput and failures as JSON-ready data."""
        now = time.time()
        with self._lock:
            workers = [{
                "hostname": w.hostname, "alive": w.alive(now), "last_seen": w.last_seen,
                "active": w.active, "processed": w.processed, "loadavg": w.loadavg,
                "sw_ident": w.sw_ident, "sw_ver": w.sw_ver, "pid": w.pid,
            } for w in sorted(self.workers.values(), key=lambda w: w.hostname)]
            totals = [{"task": name, "state": state, "count": n}
                      for (name, state), n in sorted(self.totals.items())]
            throughput = [{"time": b.start, **b.states} for b in self.buckets]
            failures = list(self.failures)
            seen = self.events_seen
        return {"workers": workers, "totals": totals, "throughput": throughput,
                "bucket_seconds": BUCKET, "failures": failures, "events_seen": seen}

    def alive_workers(self) -> int:
        now = time.time()
        with self._lock:
            return sum(1 for w in self.workers.values() if w.alive(now))
