"""Execution pools: ``solo`` (in the consumer), ``threads`` and ``processes``.

A pool runs :func:`~conveyor.worker.execute.execute` for each job and reports the
job on ``done`` when it is finished, so the consumer thread — the only one that
touches the broker connection — can settle its delivery. Every pool raises
``SoftTimeLimitExceeded`` inside a task past its ``soft_time_limit`` (see
``limits.py``). ``time_limit`` is enforced by killing the process running the task:
``processes`` kills and replaces the child; ``threads`` and ``solo`` cannot kill a
thread, so they run a (non-async) task that has a ``time_limit`` in a child process of
their own — never ignoring the limit.

Child processes die with their worker, however it dies (SIGKILL included): each child
watches a pipe whose only writer is the worker process and exits at its end of file.
An orphan would otherwise finish its task unacked, and the task would run again
after the visibility timeout.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import queue
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from .. import states
from ..envelope import refresh_origin
from ..exceptions import ConfigurationError, TimeLimitExceeded, WorkerLostError
from .execute import EventLoopThread, execute, execute_async, on_failure
from .limits import SoftLimit

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

    #: Replace a ``processes`` child after this many tasks / past this much resident
    #: memory in KiB (Celery's ``--max-tasks-per-child``, ``--max-memory-per-child``).
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None

    def __init__(self, app: Conveyor, concurrency: int, hostname: str) -> None:
        self.app = app
        self.concurrency = max(1, concurrency)
        self.hostname = hostname
        self.done: queue.Queue[Job] = queue.Queue()
        #: Coroutine tasks running on this process's event loop (see ``_start_async``).
        self._coroutines: set[concurrent.futures.Future[str]] = set()

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

    def resize(self, concurrency: int) -> None:
        """Run up to ``concurrency`` jobs at once from now on (``--autoscale``)."""
        self.concurrency = concurrency

    def limit(self, job: Job, name: str) -> Any:
        """``time_limit``/``soft_time_limit`` of a job: the message's, the task's,
        else the app's ``task_<name>`` setting."""
        value = getattr(job.request, name)
        if value:
            return value
        task = self.app.tasks.get(job.request.name)
        value = getattr(task, name, None) if task is not None else None
        if value is None:
            value = self.app.conf[f"task_{name}"]
        return value

    def _killable(self, job: Job) -> bool:
        """True for a job a thread cannot bound: a sync task with a ``time_limit``
        (``async def`` tasks are cancelled on their event loop instead)."""
        task = self.app.tasks.get(job.request.name)
        return bool(self.limit(job, "time_limit")) and not getattr(task, "is_async", False)

    def _fork(self, job: Job, done: queue.Queue[Job]) -> bool:
        """Hand a time-limited job to this pool's child processes (started on first
        use; finished jobs go to ``done``). False when children cannot share the
        broker (``memory://``): the job then runs here, and ``TimeLimitExceeded`` is
        raised inside it at its limit, as ``soft_time_limit`` is."""
        forked: ProcessPool | None = getattr(self, "_forked_pool", None)
        if forked is None and not getattr(self, "_no_fork", False):
            candidate = ProcessPool(self.app, self.concurrency, self.hostname)
            candidate.done = done
            try:
                candidate.start()
                forked = self._forked_pool = candidate
            except ConfigurationError as exc:
                self._no_fork = True
                log.warning("time_limit cannot kill a task here (%s); TimeLimitExceeded "
                            "is raised inside the task instead", exc)
        if forked is None:
            job.extra["time_limit"] = self.limit(job, "time_limit")
            return False
        forked.submit(job)
        return True

    def _stop_forked(self, timeout: float | None) -> None:
        forked: ProcessPool | None = getattr(self, "_forked_pool", None)
        if forked is not None:
            forked.stop(timeout)

    def _is_async(self, job: Job) -> bool:
        task = self.app.tasks.get(job.request.name)
        return bool(getattr(task, "is_async", False))

    def _start_async(self, job: Job) -> None:
        """Start a coroutine task on the process's event loop and return at once.

        It holds no pool thread while it awaits; the consumer never runs more than
        ``concurrency`` jobs at once, so at most that many coroutines run.
        """
        job.started = time.monotonic()
        future = asyncio.run_coroutine_threadsafe(
            execute_async(self.app, job.request, self.hostname), EventLoopThread.loop())
        self._coroutines.add(future)

        def finished(done: concurrent.futures.Future[str]) -> None:
            self._coroutines.discard(done)
            try:
                job.state = done.result()
            except BaseException as exc:  # noqa: BLE001 - keep the worker alive
                log.error("Internal error running %s[%s]: %r", job.request.name,
                          job.request.id, exc)
                job.state = states.FAILURE
                job.extra["error"] = exc
            self.done.put(job)

        future.add_done_callback(finished)

    def _wait_coroutines(self, deadline: float | None) -> None:
        """Let running coroutine tasks finish (warm shutdown), until ``deadline``."""
        pending = set(self._coroutines)
        if pending:
            concurrent.futures.wait(
                pending, None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _run(self, job: Job) -> None:
        job.started = time.monotonic()
        request = job.request
        try:
            limit = job.extra.get("time_limit")
            if limit:
                with SoftLimit(limit, f"Task {request.name}[{request.id}]",
                               TimeLimitExceeded, "time_limit"):
                    job.state = execute(self.app, request, self.hostname)
            else:
                job.state = execute(self.app, request, self.hostname)
        except BaseException as exc:  # noqa: BLE001 - keep the worker alive
            log.exception("Internal error running %s[%s]", job.request.name, job.request.id)
            job.state = states.FAILURE
            job.extra["error"] = exc
        self.done.put(job)


class SoloPool(Pool):
    """Runs each task in the consumer thread: no concurrency, least overhead."""

    def __init__(self, app: Conveyor, concurrency: int, hostname: str) -> None:
        super().__init__(app, concurrency, hostname)
        #: Where its child processes report (a task with a ``time_limit`` runs there).
        self._forked_done: queue.Queue[Job] = queue.Queue()

    def submit(self, job: Job) -> None:
        if self._killable(job) and self._fork(job, self._forked_done):
            self.done.put(self._forked_done.get())  # solo: submit returns when it is done
            return
        self._run(job)

    def stop(self, timeout: float | None = None) -> None:
        self._stop_forked(timeout)


class ThreadPool(Pool):
    """``concurrency`` threads (jobs with a ``time_limit``: child processes);
    ``async def`` tasks run on the process's event loop instead, holding no thread."""

    def __init__(self, app: Conveyor, concurrency: int, hostname: str) -> None:
        super().__init__(app, concurrency, hostname)
        self._work: queue.Queue[Job | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._add_threads(self.concurrency)

    def _add_threads(self, count: int) -> None:
        for _ in range(count):
            t = threading.Thread(target=self._loop, name=f"conveyor-pool-{len(self._threads)}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def resize(self, concurrency: int) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        alive = len(self._threads)
        if concurrency > alive:
            self._add_threads(concurrency - alive)
        for _ in range(alive - concurrency):
            self._work.put(None)  # one thread ends per marker, after the work before it
        self.concurrency = concurrency

    def _loop(self) -> None:
        while True:
            job = self._work.get()
            if job is None:
                return
            self._run(job)

    def submit(self, job: Job) -> None:
        if self._is_async(job):
            self._start_async(job)
        elif not (self._killable(job) and self._fork(job, self.done)):
            self._work.put(job)

    def take_unstarted(self) -> list[Job]:
        forked: ProcessPool | None = getattr(self, "_forked_pool", None)
        taken: list[Job] = forked.take_unstarted() if forked is not None else []
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
        self._stop_forked(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._wait_coroutines(deadline)


def _watch_parent(lifeline: int) -> None:
    """Exit this child at once when the lifeline's reader sees end of file, which
    happens only when the worker process is gone (nobody else holds the write end)."""
    def watch() -> None:
        while True:
            try:
                if not os.read(lifeline, 1):
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        os._exit(70)  # no cleanup: the parent that would settle this task is gone

    threading.Thread(target=watch, name="conveyor-lifeline", daemon=True).start()


def _child_main(app: Conveyor, conn: Connection, hostname: str,
                lifeline: tuple[int, int]) -> None:
    """A pool child: run jobs from ``conn`` until told to stop or orphaned."""
    os.close(lifeline[1])  # only the worker may hold the write end
    _watch_parent(lifeline[0])
    refresh_origin()
    EventLoopThread.reset()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        try:
            state = execute(app, item, hostname)
        except BaseException:  # noqa: BLE001
            log.exception("Internal error in pool child")
            state = states.FAILURE
        # Peak resident memory (KiB on Linux), for --max-memory-per-child.
        conn.send((state, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


@dataclass(slots=True)
class _Child:
    process: Any
    conn: Connection
    job: Job | None = None
    tasks: int = 0


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
        self._lifeline: tuple[int, int] | None = None

    def _spawn(self) -> _Child:
        assert self._lifeline is not None, "start() opens the lifeline first"
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_child_main,
                                 args=(self.app, child, self.hostname, self._lifeline),
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
        self._lifeline = os.pipe()
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
                child.conn.send(job.request)

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
            job.state, memory = child.conn.recv()
        except (EOFError, OSError):
            self._replace(child, WorkerLostError(
                f"Pool child {child.process.pid} died while running the task"))
            return
        child.job = None
        child.tasks += 1
        self.done.put(job)
        why = None
        if self.max_tasks_per_child and child.tasks >= self.max_tasks_per_child:
            why = f"it ran {child.tasks} tasks (max_tasks_per_child)"
        elif self.max_memory_per_child and memory > self.max_memory_per_child:
            why = (f"it used {memory} KiB, over max_memory_per_child="
                   f"{self.max_memory_per_child} KiB")
        if why is not None:
            log.info("Replacing pool child %d: %s", child.process.pid, why)
            self._retire(child)
            self._children[self._children.index(child)] = self._spawn()

    def _retire(self, child: _Child) -> None:
        """Stop an idle child: it exits after its last task, or is killed."""
        try:
            child.conn.send(None)
        except OSError:
            pass
        child.process.join(2)
        if child.process.is_alive():
            child.process.kill()
            child.process.join(2)
        child.conn.close()

    def resize(self, concurrency: int) -> None:
        with self._lock:
            while len(self._children) < concurrency:
                self._children.append(self._spawn())
            for child in [c for c in self._children if c.job is None][
                    :max(0, len(self._children) - concurrency)]:
                self._children.remove(child)
                self._retire(child)
            self.concurrency = concurrency
            self._dispatch()

    def _enforce_limits(self) -> None:
        now = time.monotonic()
        for child in self._children:
            job = child.job
            if job is None:
                continue
            limit = self.limit(job, "time_limit")
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
            self._retire(child)
        if self._lifeline is not None:
            for fd in self._lifeline:
                os.close(fd)
            self._lifeline = None


POOLS: dict[str, Callable[[Conveyor, int, str], Pool]] = {
    "solo": SoloPool,
    "threads": ThreadPool,
    "processes": ProcessPool,
    "prefork": ProcessPool,
}
