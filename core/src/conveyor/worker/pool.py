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
import json
import logging
import mmap
import multiprocessing
import os
import pickle
import queue
import resource
import select
import signal
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from .. import states
from ..envelope import Request, refresh_origin
from ..exceptions import ConfigurationError, TimeLimitExceeded, WorkerLostError
from .execute import EventLoopThread, execute, execute_async, on_failure, task_defaults
from .limits import SoftLimit
from .revoked import REVOKED
from .revoked import record as record_revoked

if TYPE_CHECKING:
    from ..app import Conveyor
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
    #: Whether jobs may wait in the pool beyond its free slots (``depth`` > 1), each
    #: starting the moment a slot frees, without the consumer: a slot then never
    #: waits for the consumer's next pass between two jobs.
    queues_jobs: bool = False
    #: Whether ``submit`` runs the job in the consumer's own thread and returns when
    #: it is done: nothing runs while the consumer fetches or settles, so it fetches
    #: only once no job is left to start and settles after every job.
    inline: bool = False
    #: Jobs in flight per slot (the worker sets it from the prefetch multiplier,
    #: where ``queues_jobs``).
    depth: int = 1
    #: Report each job in :meth:`began` when it starts, for the consumer to give its
    #: early ack then: a job that waits in the pool has not started, and an early
    #: ack is never given for a task that has not started.
    report_starts: bool = False
    #: Whether every task runs in a child process, so a task that crashes takes its
    #: child down, never the consumer (the job fails, and is settled): an early-ack
    #: job that waits in such a pool needs no start charge (see
    #: ``Worker._start_jobs``).
    isolated: bool = False

    def __init__(self, app: Conveyor, concurrency: int, hostname: str) -> None:
        self.app = app
        self.concurrency = max(1, concurrency)
        self.hostname = hostname
        self.done: queue.Queue[Job] = queue.Queue()
        #: Coroutine tasks running on this process's event loop (see ``_start_async``).
        self._coroutines: set[concurrent.futures.Future[str]] = set()

    @property
    def capacity(self) -> int:
        """Jobs the pool takes at once (more than ``concurrency`` when jobs may wait
        in the pool behind the running ones, ``depth`` > 1)."""
        return self.concurrency * max(1, self.depth)

    def start(self) -> None:
        """Start workers (threads, children); the solo pool needs none."""

    @abc.abstractmethod
    def submit(self, job: Job) -> None:
        """Run ``job`` (now or when a slot frees) and put it on ``done`` when finished."""

    def take_unstarted(self) -> list[Job]:
        """Jobs submitted but not started (given back on warm shutdown)."""
        return []

    def skip(self, task_ids: list[str]) -> None:
        """``task_ids`` were just revoked: jobs of theirs waiting where this process
        cannot look before they start are told not to run. A pool whose waiting
        jobs are read from this process needs nothing: it checks ``REVOKED`` as it
        starts each one."""

    def task_events(self, on: bool) -> None:
        """Task events were turned on or off (remote control): child processes of
        the pool's own that run tasks are told. Threads share this process's app,
        and a child forked from now on copies it."""

    def task_limits(self, name: str, soft: float | None, hard: float | None) -> None:
        """Task ``name``'s time limits were changed in this process (remote
        control): child processes of the pool's own that run tasks are told (the
        soft limit is raised there), as for :meth:`task_events`."""

    def finished(self) -> list[Job]:
        """The jobs finished since the last call (the consumer settles them).

        perf: the queue's deque is read without its lock to see whether anything
        came (the common case: nothing, or one job), and no ``Empty`` is raised. Only
        the consumer thread takes from ``done``, so what it sees there stays there.
        What came is taken at once, under the queue's lock once, not once a job (a
        threads pool at concurrency 100 finishes several jobs between two looks, and
        its threads take that lock to put each one)."""
        done = self.done
        if not done.queue:
            return []
        with done.mutex:
            out = list(done.queue)
            done.queue.clear()
        return out

    def began(self) -> list[Job]:
        """Jobs started since the last call, from a pool that reports starts."""
        return []

    def may_wait(self, job: Job) -> bool:
        """Whether ``job`` may be submitted while no slot is free, to wait in the
        pool (``depth`` > 1). The consumer asks only then."""
        return True

    def collect(self) -> None:
        """Take the results that came now (a pool whose results the consumer reads
        itself; the others put them on ``done`` as they finish)."""

    def dispatch(self) -> None:
        """Hand jobs that wait in the pool to free workers (called by the consumer
        once the jobs it collected are settled)."""

    def wait(self, timeout: float) -> None:
        """Return when a job is on ``done``, or after ``timeout`` seconds."""
        try:
            job = self.done.get(timeout=timeout)
        except queue.Empty:
            return
        self.done.put(job)

    def gather(self, count: int, timeout: float) -> None:
        """After a slot freed, wait up to ``timeout`` seconds for ``count`` finished
        jobs, so waiting jobs start together. The default does not wait: only a pool
        whose slots free one by one gains from it (:class:`ThreadPool`)."""

    def stop(self, timeout: float | None = None) -> None:
        """Finish running jobs and stop workers; the solo pool has nothing running."""

    def resize(self, concurrency: int) -> None:
        """Run up to ``concurrency`` jobs at once from now on (``--autoscale``)."""
        self.concurrency = concurrency

    def restart(self) -> None:
        """Start tasks with the code the worker has loaded now (``pool_restart``).
        A pool that runs tasks in the worker's own process does so already."""

    def child_pids(self) -> list[int]:
        """The pids of this pool's own child processes (``inspect stats``); empty
        when tasks run on threads of this process."""
        return []

    def pid_of(self, task_id: str) -> int | None:
        """The pid of the child process running ``task_id`` (a ``processes`` child,
        or one a threads/solo pool forked a time-limited task to), else None: the
        task runs on a thread of this process, or not here (``revoke --terminate``)."""
        forked: Pool | None = getattr(self, "_forked_pool", None)
        return forked.pid_of(task_id) if forked is not None else None

    def signal_task(self, task_id: str, signum: int) -> bool:
        """Send ``signum`` to the child process running ``task_id``
        (``revoke --terminate``); False when no child of this pool runs it."""
        forked: Pool | None = getattr(self, "_forked_pool", None)
        return forked.signal_task(task_id, signum) if forked is not None else False

    def limit(self, job: Job, name: str) -> Any:
        """``time_limit``/``soft_time_limit`` of a job: the message's, the task's,
        else the app's ``task_<name>`` setting."""
        value = getattr(job.request, name)
        if value:
            return value
        task = self.app.tasks.get(job.request.name)
        value = getattr(task, name, None) if task is not None else None
        if value is None:
            value = task_defaults(self.app)[f"task_{name}"]
        return value

    def _killable(self, job: Job) -> bool:
        """True for a job a thread cannot bound: a sync task with a ``time_limit``
        (``async def`` tasks are cancelled on their event loop instead).

        perf: :meth:`limit` inlined, the task looked up once: every job of a solo or
        threads pool is asked, a threads pool's twice."""
        request = job.request
        task = self.app.tasks.get(request.name)
        if getattr(task, "is_async", False):
            return False
        if request.time_limit:
            return True
        limit = getattr(task, "time_limit", None)
        if limit is None:
            limit = task_defaults(self.app)["task_time_limit"]
        return bool(limit)

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
        self._execute(job)
        self.done.put(job)

    def _execute(self, job: Job) -> None:
        """Run ``job`` here and set its state (put on ``done`` by the caller)."""
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


class _SoloDone(queue.Queue[Job]):
    """The solo pool's finished jobs, put and taken by the consumer thread alone (it
    runs each job itself, and waits for a forked one), so a put takes neither the
    queue's lock nor notifies (:meth:`Pool.finished` takes what came under the lock,
    uncontended): perf: ``Queue.put`` + ``get_nowait`` cost 3.4 µs a task, this
    0.3 µs. :meth:`Pool.wait` still sleeps on it with ``get(timeout=...)``, which
    returns at once when a job is there and otherwise waits out its timeout, as
    nothing can come meanwhile."""

    def put(self, item: Job, block: bool = True, timeout: float | None = None) -> None:
        self.queue.append(item)


class SoloPool(Pool):
    """Runs each task in the consumer thread: no concurrency, least overhead."""

    inline = True

    def __init__(self, app: Conveyor, concurrency: int, hostname: str) -> None:
        super().__init__(app, concurrency, hostname)
        self.done = _SoloDone()
        #: Where its child processes report (a task with a ``time_limit`` runs there).
        self._forked_done: queue.Queue[Job] = queue.Queue()

    def submit(self, job: Job) -> None:
        if self._killable(job) and self._fork(job, self._forked_done):
            self.done.put(self._forked_done.get())  # solo: submit returns when it is done
            return
        self._execute(job)  # perf: _run inlined (a call a task)
        self.done.put(job)

    def stop(self, timeout: float | None = None) -> None:
        self._stop_forked(timeout)


class _Done(queue.Queue[Job]):
    """The threads pool's finished jobs: a ``put`` wakes the consumer only once
    ``wanted`` jobs are there (1 but while it gathers a batch, see
    :meth:`ThreadPool.gather`).

    perf: each wake-up is a futex call in the pool thread and a GIL handoff to
    the consumer, which would look, find too few jobs and sleep again."""

    wanted = 1

    def put(self, item: Job, block: bool = True, timeout: float | None = None) -> None:
        with self.mutex:  # unbounded: never waits, as Queue.put does not
            self.queue.append(item)
            if len(self.queue) >= self.wanted:
                self.not_empty.notify()


class ThreadPool(Pool):
    """``concurrency`` threads (jobs with a ``time_limit``: child processes);
    ``async def`` tasks run on the process's event loop instead, holding no thread.

    With ``depth`` > 1 jobs wait in the pool behind the running ones and a thread
    that finishes a job takes the next itself: it never waits for the consumer's
    next pass and a wake-up between two jobs. Each such job is reported in
    :meth:`began` as a thread takes it (when ``report_starts``); one revoked while it
    waited is recorded REVOKED there and not run. Only a job that a thread runs
    waits (:meth:`may_wait`).

    perf: depth 2 (``bench/redis_bench.py`` pools, ``threads -c 4``, three
    interleaved pairs): 5 ms waits 622, 651, 600 -> 706, 701, 736 tasks/s; no-ops
    3698, 3568, 4372 -> 4572, 4623, 3877/s."""

    queues_jobs = True

    def __init__(self, app: Conveyor, concurrency: int, hostname: str) -> None:
        super().__init__(app, concurrency, hostname)
        self.done: _Done = _Done()
        #: Jobs not started yet (``None``: a thread ends there), the wake locks of
        #: the threads asleep for want of one (last asleep last), and how many
        #: threads were woken and have not yet come for a job (0 or 1): all under
        #: ``_lock``. A thread holds its wake lock while it sleeps on it; whoever
        #: wakes it releases it.
        self._work: deque[Job | None] = deque()
        self._asleep: list[threading.Lock] = []
        self._waking = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        #: Jobs taken by a thread since the consumer last asked (``report_starts``).
        self._began: deque[Job] = deque()

    def start(self) -> None:
        self._add_threads(self.concurrency)

    def began(self) -> list[Job]:
        began = self._began  # appended by the threads: popleft is atomic, copying not
        out = []
        while began:
            out.append(began.popleft())
        return out

    def may_wait(self, job: Job) -> bool:
        """Not an ``acks_late`` job: it goes to a free thread, after the acks of what
        finished were sent, so a killed worker leaves at most one finished,
        unacknowledged task a thread. Not one started elsewhere at once (``async
        def``, ``time_limit``): it would run beyond ``concurrency``, and its early
        ack would be given before it starts."""
        return not job.acks_late and not self._is_async(job) and not self._killable(job)

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
            self._hand(None)  # one thread ends per marker, after the work before it
        self.concurrency = concurrency

    def _loop(self) -> None:
        """Run jobs until a ``None`` marker. A thread that finishes a job takes the
        next waiting one itself; it sleeps only when none waits. A thread woken for
        a job that leaves others waiting wakes the next sleeper before it runs its
        own: one thread is on its way to the jobs at a time (see :meth:`_hand`).
        A finished job is put on ``done`` after the thread took (and reported) its
        next one, so the consumer's one wake-up sees both.

        perf: not a ``queue.Queue``: its ``put`` and ``get`` go through
        ``Condition`` objects (a lock made for every wait, a deque of waiters, the
        unfinished-task count), Python run under the GIL by the consumer and a
        thread for every job, and it wakes the thread asleep longest. Here a thread
        sleeps on a lock of its own, made once, and :meth:`_hand` wakes the one
        asleep shortest (``bench/async_roundtrip.py``, ``async_c100``, ``-c 8``,
        worker CPU a round trip in four pairs: 192, 167, 239, 202 -> 132, 157,
        174, 155 µs)."""
        wake = threading.Lock()
        wake.acquire()
        work, asleep, lock, began, done = (self._work, self._asleep, self._lock,
                                           self._began, self.done)
        woke = False
        last: Job | None = None
        while True:
            nxt = None
            with lock:
                if woke:
                    self._waking -= 1
                    woke = False
                if work:
                    job = work.popleft()
                    sleep = False
                    if job is not None and self.report_starts:
                        began.append(job)
                    if work and asleep and not self._waking:
                        nxt = asleep.pop()
                        self._waking += 1
                else:
                    asleep.append(wake)
                    sleep = True
            if last is not None:
                done.put(last)
                last = None
            if sleep:
                wake.acquire()  # until a submit releases it
                woke = True
                continue
            if nxt is not None:
                nxt.release()
            if job is None:
                return
            if REVOKED and REVOKED.covers(job.request):  # revoked while it waited here
                record_revoked(self.app, job.request, self.hostname, "revoked")
                job.state = states.REVOKED
            else:
                self._execute(job)
            last = job

    def _hand(self, job: Job | None) -> None:
        """Queue ``job`` and wake the thread that went to sleep last, if one sleeps
        (the most recently busy one: its memory is the warmest) and none is
        already on its way to the queue: that one wakes the next if work is left
        when it takes its job (:meth:`_loop`), and a thread that finishes first
        takes it without being woken.

        perf: a batch of jobs used to wake a thread each at once, from the
        consumer; the woken threads then queued for the GIL the consumer held,
        each sleeping and waking again. One thread woken at a time, noop drain on
        RabbitMQ, ``-c 8``, six interleaved pairs: voluntary context switches a
        task 7.8, 5.9, 8.1, 8.5, 8.3, 8.2 -> 5.7, 5.7, 5.2, 5.9, 5.9, 2.6, tasks/s
        2195, 2760, 2826, 2214, 2477, 2538 -> 2093, 2288, 2932, 2293, 2604, 2741;
        the last of 8 jobs handed at once to idle threads starts no later (median
        of 200 bursts 0.93, 0.79, 0.62 -> 0.63, 0.53, 0.52 ms)."""
        with self._lock:
            self._work.append(job)
            wake = self._asleep.pop() if self._asleep and not self._waking else None
            if wake is not None:
                self._waking += 1
        if wake is not None:
            wake.release()

    def submit(self, job: Job) -> None:
        if self._is_async(job):
            self._start_async(job)
        elif not (self._killable(job) and self._fork(job, self.done)):
            self._hand(job)
            return
        if self.report_starts:
            self._began.append(job)  # started now, on the event loop or in a child

    def gather(self, count: int, timeout: float) -> None:
        """Return once ``count`` jobs are on ``done``, or after ``timeout`` seconds.

        perf: the consumer starts jobs in batches (see ``Worker._iterate``); each
        batch costs it one early-ack flush to the broker and one pass of its loop,
        whatever the batch's size. Nothing finished yet: no slot freed, no batch."""
        done = self.done
        if not done.queue:
            return
        deadline = time.monotonic() + timeout
        with done.not_empty:
            done.wanted = count
            try:
                while len(done.queue) < count:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    done.not_empty.wait(remaining)
            finally:
                done.wanted = 1

    def take_unstarted(self) -> list[Job]:
        forked: ProcessPool | None = getattr(self, "_forked_pool", None)
        taken: list[Job] = forked.take_unstarted() if forked is not None else []
        with self._lock:
            taken.extend(job for job in self._work if job is not None)
            self._work.clear()
        return taken

    def stop(self, timeout: float | None = None) -> None:
        for _ in self._threads:
            self._hand(None)
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


def _child_main(app: Conveyor, pipes: tuple[int, int, int, int], hostname: str,
                lifeline: tuple[int, int], report_memory: bool = True,
                notes: mmap.mmap | None = None) -> None:
    """A pool child: run requests from its request pipe in order until told to stop
    or orphaned. It blocks on the pipe (no poll interval); each finished request is
    answered on its result pipe with its state and the child's peak resident memory,
    in order (0 when not ``report_memory``: nobody reads it without
    ``max_memory_per_child``; perf: no ``getrusage`` system call a task, the result
    line 550 -> 105 ns, timeit). ``pipes``: see :meth:`ProcessPool._spawn`."""
    requests, results, theirs_write, theirs_read = pipes
    os.close(theirs_write)  # the worker's ends, copied by the fork
    os.close(theirs_read)
    os.close(lifeline[1])  # only the worker may hold the write end
    _watch_parent(lifeline[0])
    refresh_origin()
    EventLoopThread.reset()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    loads, fd = _unpack, results
    usage, me = resource.getrusage, resource.RUSAGE_SELF
    inbox = _Inbox(requests, {"events": lambda word: _task_events(app, word == "on"),
                              "limits": lambda text: _task_limits(app, text)}, notes)
    for data in inbox:
        if data == _STOP:
            return
        try:
            request = loads(data)
            if inbox.skipped(request.id):
                record_revoked(app, request, hostname, "revoked")
                state = states.REVOKED
            else:
                state = execute(app, request, hostname)
        except BaseException:  # noqa: BLE001
            log.exception("Internal error in pool child")
            state = states.FAILURE
        # One line: the state and the peak resident memory (KiB on Linux, for
        # --max-memory-per-child); the worker reads every line waiting in one go.
        os.write(fd, f"{state} {usage(me).ru_maxrss if report_memory else 0}\n".encode())


def _task_events(app: Conveyor, on: bool) -> None:
    from ..events.plugin import switch
    switch(app, on)


def _task_limits(app: Conveyor, text: str) -> None:
    """``[name, soft, hard]`` (JSON) from :meth:`ProcessPool.task_limits`."""
    name, soft, hard = json.loads(text)
    task = app.tasks.get(name)
    if task is not None:
        task.soft_time_limit, task.time_limit = soft, hard


#: A request's frame on a child's pipe: its length, then its bytes.
_HEADER = struct.Struct("!I")
#: The count of notes a pool sent its children (see :class:`_Inbox`).
_COUNT = struct.Struct("Q")


def _frame(data: bytes) -> bytes:
    return _HEADER.pack(len(data)) + data


def _send_frame(child: _Child, frame: bytes) -> None:
    """Write ``frame`` (see :func:`_frame`) to ``child``'s request pipe. A child that
    is gone is not an error here: the supervisor sees its end of file and replaces
    it (its jobs go back to the backlog).

    perf: one ``os.write`` where it takes the whole frame (a blocking write stops
    short only after a signal, or past the pipe's room); no context manager."""
    try:
        written = os.write(child.fd, frame)
        if written < len(frame):
            view = memoryview(frame)[written:]
            while view:
                view = view[os.write(child.fd, view):]
    except OSError:
        pass


class _Inbox:
    """A child's reading of its pipe: the requests in order, until end of file (or
    a read error), and the notes between them, acted on as they are read: the ids
    the worker said to skip (``!skip ID``: revoked while their request waited in
    the pipe, where the worker cannot take it back), and others given to
    ``handlers`` by name (``!NAME WORD``).

    A skip comes after the request it names, so before a request runs
    :meth:`skipped` also takes whatever has arrived meanwhile, without waiting:
    where the pool keeps a count of the notes it sent (``notes``, memory shared
    with the worker, counted before each note is written), only once that count
    moved since the last look.

    perf: one read takes every frame waiting (jobs queued behind the running one
    come together), where ``Connection.recv_bytes`` reads each message's length and
    its bytes in two reads, through Python-level buffering; the look before a
    request reads the shared count (81 ns, timeit) where it was one ``poll`` system
    call a task (331 ns, timeit; strace, processes -c 2 incr drain: 4.0 -> 3.0 polls
    a task, the task's own redis-py client making the 3)."""

    #: Skips kept for requests not seen (already started when the skip came): at
    #: most this many, the oldest forgotten first.
    KEEP = 1000

    def __init__(self, fd: int, handlers: dict[str, Callable[[str], None]],
                 notes: mmap.mmap | None = None) -> None:
        self.fd = fd
        self.handlers = handlers
        self.notes = notes
        #: The note count at the last look (None: look at the first request).
        self.seen: bytes | None = None
        self.buf = bytearray()
        self.ready: deque[bytes] = deque()
        self.skips: dict[str, None] = {}
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)
        self.ended = False

    def __iter__(self) -> Iterator[bytes]:
        ready = self.ready
        while True:
            while not ready:
                if not self._read():
                    return
            yield ready.popleft()

    def skipped(self, task_id: str) -> bool:
        """Whether the worker said not to run ``task_id`` (looking at what came)."""
        notes = self.notes
        if notes is not None:
            count = notes[:_COUNT.size]
            if count == self.seen:
                return self._take_skip(task_id)  # no note sent since the last look
            self.seen = count  # before the look: a note counted later is looked for
        if not self.ended and self.poller.poll(0):
            self._read()
        return self._take_skip(task_id)

    def _take_skip(self, task_id: str) -> bool:
        if task_id in self.skips:
            del self.skips[task_id]
            return True
        return False

    def _read(self) -> bool:
        """Read once (blocking) and file the frames; False at end of file."""
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            self.ended = True
            return False
        buf = self.buf
        buf += chunk
        head, unpack, start = _HEADER.size, _HEADER.unpack_from, 0
        while len(buf) - start >= head:
            end = start + head + unpack(buf, start)[0]
            if len(buf) < end:
                break
            frame = bytes(buf[start + head:end])
            if frame.startswith(_NOTE):
                self._note(frame[len(_NOTE):].decode())
            else:
                self.ready.append(frame)
            start = end
        del buf[:start]
        return True

    def _note(self, text: str) -> None:
        name, _, word = text.partition(" ")
        if name == "skip":
            self.skips[word] = None
            if len(self.skips) > self.KEEP:
                del self.skips[next(iter(self.skips))]
        else:
            self.handlers[name](word)


#: What a child reads as "exit now" (a pickled request never equals it).
_STOP = b"stop"
#: A frame starting with this is a note to the child, not a request (a pickled
#: request starts with the pickle protocol's opcode, 0x80): see :class:`_Inbox`.
_NOTE = b"!"
#: perf: a request crosses to a child as the tuple of its fields, not as the object
#: (pickling a slotted dataclass writes and reads its state by name): half the
#: cost each way, in the worker and in the child.
_fields_of = attrgetter(*(f.name for f in fields(Request)))


def _pack(request: Request) -> bytes:
    """The request's frame for a child's pipe (:func:`_frame`)."""
    return _frame(pickle.dumps(_fields_of(request), pickle.HIGHEST_PROTOCOL))


def _unpack(data: bytes) -> Request:
    return Request(*pickle.loads(data))
#: A request this small may wait in a busy child's pipe behind the one it runs; a
#: bigger one waits in the pool until the child is free, so a send never blocks on
#: a full pipe (Linux pipes hold 64 KiB).
_AHEAD_BYTES = 8192


@dataclass(slots=True, eq=False)
class _Child:
    """A pool child as the worker sees it: its process and its two pipes.

    perf: a pipe each way, not a socket pair (``multiprocessing.Pipe``): a frame's
    write and read cost the kernel less on a pipe (timeit, a 474-byte frame
    written and read back: 2.3-2.7 -> 1.0 µs); the file descriptors are kept as
    ints (no ``Connection.fileno()`` call a frame)."""

    process: Any
    #: The write end of the child's request pipe.
    fd: int
    #: The read end of the child's result pipe.
    results: int
    #: Jobs sent to the child, in order: the first runs, the others wait in its pipe.
    jobs: deque[Job] = field(default_factory=deque)
    tasks: int = 0
    #: Set when it must be replaced (memory): it takes no more jobs.
    retiring: bool = False
    #: Bytes of a result line not complete yet.
    partial: bytes = b""


class ProcessPool(Pool):
    """``concurrency`` forked children; each has up to ``depth`` jobs in flight.

    Jobs go to a child's pipe as soon as they are submitted (the child blocks on its
    pipe and takes the next request the moment it is done with one), and results
    come back on pipes of their own, which one supervisor thread waits on with no poll
    interval (its only timeout is the nearest ``time_limit``). With ``depth`` > 1 a
    child never waits for the consumer between two tasks; a job that waits in a
    child's pipe has not started, so when ``report_starts`` is set each job is put
    in :meth:`began` when it starts, for the consumer to ack it then (an early ack is
    never given for a task that has not started). A child that dies or is killed at
    a ``time_limit`` fails only the task it was running; the ones waiting behind it
    go to its replacement.
    """

    queues_jobs = True
    isolated = True
    #: A thread of the pool's own reads results. The worker's pool has none: its
    #: consumer reads them in :meth:`collect` and :meth:`wait`, so a result costs
    #: no hand-over between threads.
    supervised: bool = True

    def __init__(self, app: Conveyor, concurrency: int, hostname: str) -> None:
        super().__init__(app, concurrency, hostname)
        #: Unsupervised: finished and started jobs, kept for the consumer (the only
        #: thread that touches the pool then), with no queue between threads.
        self._finished: list[Job] = []
        self._began: list[Job] = []
        self._ctx = multiprocessing.get_context("fork")
        self._children: list[_Child] = []
        self._backlog: deque[Job] = deque()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._lifeline: tuple[int, int] | None = None
        self._wake: tuple[int, int] | None = None
        #: Notes sent to the children, counted in memory they share (see
        #: :class:`_Inbox`): made by :meth:`start`, before the first fork.
        self._notes: mmap.mmap | None = None
        #: The children's result pipes and the wake-up pipe, by file descriptor
        #: (None: the wake-up pipe), watched by ``_poller`` (perf: a ``poll``
        #: object used directly: ``selectors`` costs a Python layer a look).
        self._poller = select.poll()
        self._watched: dict[int, _Child | None] = {}
        #: Set once a job with a ``time_limit`` came: from then on each look at the
        #: children also checks deadlines (perf: none to check for most apps).
        self._timed = False
        #: Unsupervised: :meth:`wait` just looked at the children (see :meth:`collect`).
        self._looked = False

    def _spawn(self) -> _Child:
        """Fork a child with a request pipe (the worker writes) and a result pipe
        (the child writes). The worker closes the child's ends at once, so the
        child is the only writer of its result pipe: its death is an end of file
        there."""
        assert self._lifeline is not None, "start() opens the lifeline first"
        requests, to_child = os.pipe()
        from_child, results = os.pipe()
        try:
            proc = self._ctx.Process(
                target=_child_main,
                args=(self.app, (requests, results, to_child, from_child), self.hostname,
                      self._lifeline, bool(self.max_memory_per_child), self._notes),
                name="conveyor-child", daemon=True)
            proc.start()
        except BaseException:
            for fd in (to_child, from_child):
                os.close(fd)
            raise
        finally:
            os.close(requests)
            os.close(results)
        spawned = _Child(proc, to_child, from_child)
        self._watch(from_child, spawned)
        return spawned

    def _watch(self, fd: int, child: _Child | None) -> None:
        self._poller.register(fd, select.POLLIN)
        self._watched[fd] = child

    def _forget(self, child: _Child) -> None:
        """Stop watching a child's pipes and close them."""
        if self._watched.pop(child.results, None) is not None:
            try:
                self._poller.unregister(child.results)
            except (KeyError, ValueError, OSError):
                pass
        for fd in (child.fd, child.results):
            try:
                os.close(fd)
            except OSError:
                pass

    def start(self) -> None:
        from ..connection import scheme_of
        for url in (self.app.broker_url, self.app.backend_url):
            if scheme_of(url) == "memory":
                raise ConfigurationError(
                    f"The processes pool needs a broker and backend shared between "
                    f"processes, but {url!r} is per process (memory://). Use "
                    "--pool threads, or a sqlite://, redis:// … URL.")
        self._lifeline = os.pipe()
        self._notes = mmap.mmap(-1, _COUNT.size)  # shared with the children it forks
        self._wake = os.pipe()
        os.set_blocking(self._wake[1], False)
        self._watch(self._wake[0], None)
        self._children = [self._spawn() for _ in range(self.concurrency)]
        if self.supervised:
            self._supervisor = threading.Thread(target=self._supervise,
                                                name="conveyor-supervisor", daemon=True)
            self._supervisor.start()

    def _wakeup(self) -> None:
        """Make the supervisor look again (a new time limit, a resize, stop)."""
        if self._wake is not None:
            try:
                os.write(self._wake[1], b"!")
            except (BlockingIOError, OSError):
                pass  # already awake, or stopping

    def submit(self, job: Job) -> None:
        job.extra["frame"] = _pack(job.request)
        limited = bool(self._limit_of(job))
        with self._lock:
            self._timed = self._timed or limited
            self._backlog.append(job)
            self._dispatch()
        if self.supervised and limited:
            self._wakeup()  # its deadline may be the nearest one

    def _finish(self, job: Job) -> None:
        if self.supervised:
            self.done.put(job)
        else:
            self._finished.append(job)

    def finished(self) -> list[Job]:
        if self.supervised:
            return super().finished()
        out, self._finished = self._finished, []
        return out

    def began(self) -> list[Job]:
        out, self._began = self._began, []
        return out

    def collect(self) -> None:
        """perf: not right after :meth:`wait` looked (the consumer's next turn starts
        with a collect): a result that came in between is read by the turn's own
        wait, which then returns at once (strace, processes -c 2 incr drain: 1.04 ->
        0.59 ``epoll_wait`` system calls a task)."""
        if not self.supervised:
            if self._looked:
                self._looked = False
            else:
                self._poll(0)

    def dispatch(self) -> None:
        if not self.supervised:
            with self._lock:
                self._dispatch()

    def wait(self, timeout: float) -> None:
        if self.supervised:
            super().wait(timeout)
        elif not self._finished:
            self._poll(timeout)
            self._looked = True

    def _limit_of(self, job: Job) -> Any:
        """The job's ``time_limit`` (0: none), looked up once."""
        limit = job.extra.get("limit")
        if limit is None:
            limit = job.extra["limit"] = self.limit(job, "time_limit") or 0
        return limit

    def _takes(self, child: _Child, job: Job) -> bool:
        """True when ``child`` may take ``job`` now. Only a small request whose ack
        is early waits behind another job: an ``acks_late`` one goes to an idle child,
        so a SIGKILLed worker leaves at most one finished, unacked task a child."""
        if child.retiring:
            return False
        most = self.max_tasks_per_child
        if most and child.tasks + len(child.jobs) >= most:
            return False  # it is replaced after the ones it has
        if not child.jobs:
            return True
        if job.acks_late or len(job.extra["frame"]) > _AHEAD_BYTES:
            return False
        return len(child.jobs) < self.depth

    def _dispatch(self) -> None:
        """Send waiting jobs, in order, each to the least loaded child that takes it;
        one revoked while it waited here is recorded REVOKED and not sent."""
        while self._backlog:
            job = self._backlog[0]
            if REVOKED and REVOKED.covers(job.request):
                self._backlog.popleft()
                self._begin(job)  # reported, so its delivery is acked
                record_revoked(self.app, job.request, self.hostname, "revoked")
                job.state = states.REVOKED
                self._finish(job)
                continue
            best = None
            for child in self._children:
                if self._takes(child, job) and (best is None
                                                or len(child.jobs) < len(best.jobs)):
                    best = child
            if best is None:
                return
            self._backlog.popleft()
            self._send(best, job)

    def _send(self, child: _Child, job: Job) -> None:
        idle = not child.jobs
        child.jobs.append(job)
        if idle:
            self._begin(job)
        _send_frame(child, job.extra["frame"])

    def _begin(self, job: Job) -> None:
        job.started = time.monotonic()
        if self.report_starts:
            self._began.append(job)

    def _supervise(self) -> None:
        while not self._stop.is_set():
            self._poll(None)

    def _poll(self, timeout: float | None) -> None:
        """Read the results that came (waiting up to ``timeout`` for one, or until
        the nearest ``time_limit``), replace dead children, kill overdue ones."""
        nearest = None
        if self._timed:
            with self._lock:
                nearest = self._next_deadline()
        if nearest is not None and (timeout is None or nearest < timeout):
            timeout = nearest
        try:
            events = self._poller.poll(None if timeout is None else timeout * 1000)
        except (OSError, ValueError):
            events = []  # a pipe closed under us (a child replaced): look again
        with self._lock:
            watched = self._watched
            for fd, _mask in events:
                child = watched.get(fd, False)
                if child is None:
                    try:
                        os.read(fd, 4096)  # the wake-up pipe
                    except OSError:
                        pass
                elif child and child in self._children:
                    self._collect(child)
            if self._timed:
                self._enforce_limits()
            if self.supervised:
                self._dispatch()  # else the consumer does, once it has settled

    def _next_deadline(self) -> float | None:
        """Seconds until the first running job passes its ``time_limit``."""
        nearest = None
        now = time.monotonic()
        for child in self._children:
            if child.jobs:
                limit = self._limit_of(child.jobs[0])
                if limit:
                    left = max(0.0, child.jobs[0].started + limit - now)
                    nearest = left if nearest is None else min(nearest, left)
        return None if nearest is None else nearest + 0.01

    def _collect(self, child: _Child) -> None:
        """Take every result the child has sent (its pipe is readable: one read);
        replace it if it died."""
        try:
            data = os.read(child.results, 65536)
        except OSError:
            data = b""
        if not data:
            self._replace(child, WorkerLostError(
                f"Pool child {child.process.pid} died while running the task"))
            return
        if child.partial:
            data = child.partial + data
        lines = data.split(b"\n")
        child.partial = lines.pop()  # the start of a line still being written
        for line in lines:
            state, memory = line.split(b" ")
            if not child.jobs:
                continue  # nothing was sent to it: cannot happen
            job = child.jobs.popleft()
            job.state = state.decode()
            child.tasks += 1
            self._finish(job)
            if child.jobs:
                self._begin(child.jobs[0])
            if self.max_memory_per_child and int(memory) > self.max_memory_per_child \
                    and not child.retiring:
                log.info("Replacing pool child %d after its last task: it used %s KiB, "
                         "over max_memory_per_child=%s KiB", child.process.pid,
                         memory.decode(), self.max_memory_per_child)
                child.retiring = True
            if child.jobs:
                continue
            if child.retiring or (self.max_tasks_per_child
                                  and child.tasks >= self.max_tasks_per_child):
                if not child.retiring:
                    log.info("Replacing pool child %d: it ran %d tasks "
                             "(max_tasks_per_child)", child.process.pid, child.tasks)
                self._retire(child)
                self._children[self._children.index(child)] = self._spawn()
                return

    def _retire(self, child: _Child) -> None:
        """Stop an idle child: it exits after its last task, or is killed."""
        _send_frame(child, _frame(_STOP))
        child.process.join(2)
        if child.process.is_alive():
            child.process.kill()
            child.process.join(2)
        self._forget(child)

    def resize(self, concurrency: int) -> None:
        with self._lock:
            while len(self._children) < concurrency:
                self._children.append(self._spawn())
            for child in [c for c in self._children if not c.jobs][
                    :max(0, len(self._children) - concurrency)]:
                self._children.remove(child)
                self._retire(child)
            self.concurrency = concurrency
            self._dispatch()
        self._wakeup()

    def restart(self) -> None:
        """Replace every child: an idle one now, a busy one after the jobs it has
        (it takes no more). New children are forked from the worker as it is now."""
        with self._lock:
            for i, child in enumerate(self._children):
                child.retiring = True
                if not child.jobs:
                    self._retire(child)
                    self._children[i] = self._spawn()
            self._dispatch()
        self._wakeup()
        log.info("Pool: restarting %d children", len(self._children))

    def _enforce_limits(self) -> None:
        now = time.monotonic()
        for child in list(self._children):
            if not child.jobs:
                continue
            job = child.jobs[0]
            limit = self._limit_of(job)
            if limit and now - job.started > limit:
                self._replace(child, TimeLimitExceeded(
                    f"time_limit={limit}s exceeded; the pool child was killed"))

    def _replace(self, child: _Child, why: BaseException) -> None:
        """Kill ``child`` and start another; its running job fails with ``why``, the
        jobs waiting behind it (not started) go first to the others."""
        jobs = child.jobs
        if child.process.is_alive():
            os.kill(child.process.pid, signal.SIGKILL)
        child.process.join(5)
        self._forget(child)
        index = self._children.index(child)
        self._children[index] = self._spawn()
        if jobs:
            job = jobs.popleft()
            log.error("Task %s[%s]: %s", job.request.name, job.request.id, why)
            try:
                on_failure(self.app, self.app.tasks.get(job.request.name), job.request,
                           why, self.hostname)
            except Exception:  # noqa: BLE001 - the job is finished all the same
                log.exception("Could not record the failure of %s[%s]",
                              job.request.name, job.request.id)
            job.state = states.FAILURE
            self._finish(job)
            self._backlog.extendleft(reversed(jobs))
        if self.supervised:
            self._dispatch()

    def take_unstarted(self) -> list[Job]:
        with self._lock:
            taken = list(self._backlog)
            self._backlog.clear()
            return taken

    def skip(self, task_ids: list[str]) -> None:
        """Tell each child holding one of ``task_ids`` behind its running job not to
        run it: the child records it REVOKED instead and answers as for a task
        (the job was reported begun when it reached the front, so it is acked). A
        job already started by the time its child reads this runs; the jobs of a
        child that died go back to the backlog, where :meth:`_dispatch` checks."""
        wanted = set(task_ids)
        with self._lock:
            for child in self._children:
                for job in list(child.jobs)[1:]:
                    if job.request.id in wanted:
                        self._count_note()
                        _send_frame(child, _frame(_NOTE + f"skip {job.request.id}".encode()))

    def task_events(self, on: bool) -> None:
        self._note_all(f"events {'on' if on else 'off'}")

    def task_limits(self, name: str, soft: float | None, hard: float | None) -> None:
        self._note_all(f"limits {json.dumps([name, soft, hard])}")

    def _note_all(self, text: str) -> None:
        """Write a note (see :class:`_Inbox`) to every child."""
        frame = _frame(_NOTE + text.encode())
        with self._lock:
            self._count_note()
            for child in self._children:
                _send_frame(child, frame)

    def _count_note(self) -> None:
        """Count a note about to be written (under the lock), so a child that has
        not read it yet looks at its pipe before its next request."""
        if self._notes is not None:
            _COUNT.pack_into(self._notes, 0, _COUNT.unpack_from(self._notes)[0] + 1)

    def child_pids(self) -> list[int]:
        with self._lock:
            return [int(child.process.pid) for child in self._children]

    def pid_of(self, task_id: str) -> int | None:
        with self._lock:
            for child in self._children:
                if child.jobs and child.jobs[0].request.id == task_id:
                    return int(child.process.pid)
        return None

    def signal_task(self, task_id: str, signum: int) -> bool:
        """Under the lock, so the child still runs that task when it is signalled; a
        signalled child takes no more jobs and is replaced (``retiring``), whether
        the signal killed it or not."""
        with self._lock:
            for child in self._children:
                if child.jobs and child.jobs[0].request.id == task_id:
                    child.retiring = True
                    try:
                        os.kill(child.process.pid, signum)
                    except ProcessLookupError:
                        return False
                    return True
        return False

    def stop(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                busy = any(c.jobs for c in self._children) or bool(self._backlog)
            if not busy or (deadline is not None and time.monotonic() > deadline):
                break
            if self.supervised:
                time.sleep(0.02)
            else:
                self._poll(0.02)
                self.dispatch()
        self._stop.set()
        self._wakeup()
        if self._supervisor is not None:
            self._supervisor.join(2)
        with self._lock:
            for child in self._children:
                self._retire(child)
            if self._notes is not None:
                self._notes.close()
                self._notes = None
        for fd in list(self._watched):
            self._poller.unregister(fd)
        self._watched.clear()
        for pipe in (self._lifeline, self._wake):
            if pipe is not None:
                for fd in pipe:
                    os.close(fd)
        self._lifeline = self._wake = None


POOLS: dict[str, Callable[[Conveyor, int, str], Pool]] = {
    "solo": SoloPool,
    "threads": ThreadPool,
    "processes": ProcessPool,
    "prefork": ProcessPool,
}
