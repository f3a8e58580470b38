"""Execution pools: ``solo`` (in the consumer), ``threads`` and ``processes``.

A pool runs :func:`~conveyor.worker.execute.execute` for each job and reports the
job on ``done`` when it is finished, so the consumer thread — the only one that
touches the broker connection — can settle its delivery. ``processes`` also
enforces ``time_limit`` (kill and replace the child) and ``soft_time_limit``
(``SoftTimeLimitExceeded`` raised inside the task).
"""

from __future__ import annotations

import abc
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from .. import states
from ..envelope import refresh_origin
from ..exceptions import ConfigurationError, SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError
from .execute import EventLoopThread, execute, on_failure

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..envelope import Request
    from ..interfaces import Delivery

log = logging.getLogger("conveyor.worker")


@dataclass(slots=True)
class Job:
    """A request on its way through the pool, with the delivery to settle after."""

    request: Request
    delivery: Delivery
    acks_late: bool
    state: str | None = None
    started: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Pool(abc.ABC):
    """Base: ``submit`` jobs, collect finished ones from ``done``."""

    def __init__(self, app: Conveyor, concurrency: int, hostname: str) -> None:
        self.app = app
        self.concurrency = max(1, concurrency)
        self.hostname = hostname
        self.done: queue.Queue[Job] = queue.Queue()

    def start(self) -> None:
        """Start workers (threads, children); the solo pool needs none."""

    @abc.abstractmethod
    def submit(self, job: Job) -> None:
        """Run ``job`` (now or when a slot frees) and put it on ``done`` when finished."""

    def take_unstarted(self) -> list[Job]:
        """Jobs submitted but not started (given back on warm shutdown)."""
        return []

    def stop(self, timeout: float | None = None) -> None:
        """Finish running jobs and stop workers; the solo pool has nothing running."""

    def _run(self, job: Job) -> None:
        job.started = time.monotonic()
        try:
            job.state = execute(self.app, job.request, self.hostname)
        except BaseException as exc:  # noqa: BLE001 - keep the worker alive
            log.exception("Internal error running %s[%s]", job.request.name, job.request.id)
            job.state = states.FAILURE
            job.extra["error"] = exc
        self.done.put(job)


class SoloPool(Pool):
    """Runs each task in the consumer thread: no concurrency, least overhead."""

    def submit(self, job: Job) -> None:
        self._run(job)


class ThreadPool(Pool):
    """``concurrency`` threads; time limits apply to ``async def`` tasks only."""

    def __init__(self, app: Conveyor, concurrency: int, hostname: str) -> None:
        super().__init__(app, concurrency, hostname)
        self._work: queue.Queue[Job | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.concurrency):
            t = threading.Thread(target=self._loop, name=f"conveyor-pool-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _loop(self) -> None:
        while True:
            job = self._work.get()
            if job is None:
                return
            self._run(job)

    def submit(self, job: Job) -> None:
        self._work.put(job)

    def take_unstarted(self) -> list[Job]:
        taken: list[Job] = []
        while True:
            try:
                job = self._work.get_nowait()
            except queue.Empty:
                return taken
            if job is not None:
                taken.append(job)

    def stop(self, timeout: float | None = None) -> None:
        for _ in self._threads:
            self._work.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


def _child_main(app: Conveyor, conn: Connection, hostname: str) -> None:
    """A pool child: run jobs from ``conn`` until told to stop."""
    refresh_origin()
    EventLoopThread._loop = None
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def soft_limit(_signum: int, _frame: Any) -> None:
        raise SoftTimeLimitExceeded("soft time limit exceeded")

    signal.signal(signal.SIGALRM, soft_limit)
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        request, soft = item
        if soft:
            signal.setitimer(signal.ITIMER_REAL, soft)
        try:
            state = execute(app, request, hostname)
        except BaseException:  # noqa: BLE001
            log.exception("Internal error in pool child")
            state = states.FAILURE
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        conn.send(state)


@dataclass(slots=True)
class _Child:
    process: Any
    conn: Connection
    job: Job | None = None


class ProcessPool(Pool):
    """``concurrency`` forked children, each running one task at a time."""

    def __init__(self, app: Conveyor, concurrency: int, hostname: str) -> None:
        super().__init__(app, concurrency, hostname)
        self._ctx = multiprocessing.get_context("fork")
        self._children: list[_Child] = []
        self._backlog: list[Job] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None

    def _spawn(self) -> _Child:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_child_main, args=(self.app, child, self.hostname),
                                 name="conveyor-child", daemon=True)
        proc.start()
        child.close()
        return _Child(proc, parent)

    def start(self) -> None:
        from ..connection import scheme_of
        for url in (self.app.broker_url, self.app.backend_url):
            if scheme_of(url) == "memory":
                raise ConfigurationError(
                    f"The processes pool needs a broker and backend shared between "
                    f"processes, but {url!r} is per process (memory://). Use "
                    "--pool threads, or a sqlite://, redis:// … URL.")
        self._children = [self._spawn() for _ in range(self.concurrency)]
        self._supervisor = threading.Thread(target=self._supervise,
                                            name="conveyor-supervisor", daemon=True)
        self._supervisor.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            self._backlog.append(job)
            self._dispatch()

    def _dispatch(self) -> None:
        for child in self._children:
            if not self._backlog:
                return
            if child.job is None:
                job = self._backlog.pop(0)
                child.job = job
                job.started = time.monotonic()
                soft = job.request.soft_time_limit or self._task_attr(job, "soft_time_limit")
                child.conn.send((job.request, soft))

    def _task_attr(self, job: Job, name: str) -> Any:
        task = self.app.tasks.get(job.request.name)
        value = getattr(task, name, None) if task is not None else None
        if value is None:
            value = self.app.conf[f"task_{name}"]
        return value

    def _supervise(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                busy = {c.conn: c for c in self._children if c.job is not None}
            ready = wait(list(busy), timeout=0.05) if busy else []
            if not busy:
                time.sleep(0.01)
            with self._lock:
                for conn in ready:
                    self._collect(busy[conn])  # type: ignore[index]
                self._enforce_limits()
                self._dispatch()

    def _collect(self, child: _Child) -> None:
        job = child.job
        if job is None:
            return
        try:
            job.state = child.conn.recv()
        except (EOFError, OSError):
            self._replace(child, WorkerLostError(
                f"Pool child {child.process.pid} died while running the task"))
            return
        child.job = None
        self.done.put(job)

    def _enforce_limits(self) -> None:
        now = time.monotonic()
        for child in self._children:
            job = child.job
            if job is None:
                continue
            limit = job.request.time_limit or self._task_attr(job, "time_limit")
            if limit and now - job.started > limit:
                self._replace(child, TimeLimitExceeded(
                    f"time_limit={limit}s exceeded; the pool child was killed"))

    def _replace(self, child: _Child, why: BaseException) -> None:
        job = child.job
        if child.process.is_alive():
            os.kill(child.process.pid, signal.SIGKILL)
        child.process.join(5)
        child.conn.close()
        index = self._children.index(child)
        self._children[index] = self._spawn()
        if job is not None:
            log.error("Task %s[%s]: %s", job.request.name, job.request.id, why)
            on_failure(self.app, self.app.tasks.get(job.request.name), job.request,
                       why, self.hostname)
            job.state = states.FAILURE
            self.done.put(job)

    def take_unstarted(self) -> list[Job]:
        with self._lock:
            taken, self._backlog = self._backlog, []
            return taken

    def stop(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                busy = any(c.job is not None for c in self._children)
            if not busy or (deadline is not None and time.monotonic() > deadline):
                break
            time.sleep(0.02)
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(2)
        for child in self._children:
            try:
                child.conn.send(None)
            except OSError:
                pass
            child.process.join(2)
            if child.process.is_alive():
                child.process.kill()


POOLS: dict[str, Callable[[Conveyor, int, str], Pool]] = {
    "solo": SoloPool,
    "threads": ThreadPool,
    "processes": ProcessPool,
    "prefork": ProcessPool,
}
