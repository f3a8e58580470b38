"""The threads pool's hand-over of jobs to its threads: every job runs, no more than
``concurrency`` at once, a sleeping thread wakes for a job, jobs not started are given
back, and a shrink ends threads (memory:// app, real ``execute``)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from conveyor import Conveyor
from conveyor.envelope import Request
from conveyor.worker.pool import Job, ThreadPool
from conveyor.worker.revoked import REVOKED

WAIT = 10.0  # seconds any step may take before the test fails


@pytest.fixture
def app() -> Conveyor:
    name = f"threadpool-{uuid.uuid4().hex[:8]}"
    return Conveyor(name, broker=f"memory://{name}", backend=f"memory://{name}")


def job(name: str) -> Job:
    request = Request(id=uuid.uuid4().hex, name=name, args=[], kwargs={}, headers={})
    return Job(request, delivery=None, acks_late=False)  # type: ignore[arg-type]  # unread by the pool


def finished(pool: ThreadPool, count: int) -> list[Job]:
    """The next ``count`` finished jobs, waiting up to ``WAIT`` seconds for them."""
    out: list[Job] = []
    deadline = time.monotonic() + WAIT
    while len(out) < count and time.monotonic() < deadline:
        pool.wait(0.05)
        out += pool.finished()
    assert len(out) == count, f"{len(out)} of {count} jobs finished in {WAIT}s"
    return out


def test_every_job_runs_and_no_more_than_concurrency_at_once(app: Conveyor) -> None:
    running, most, lock = [0], [0], threading.Lock()

    @app.task(name="tp.busy")
    def busy() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002)
        with lock:
            running[0] -= 1

    pool = ThreadPool(app, 3, "tp@host")
    pool.start()
    try:
        for _ in range(3):  # every thread asleep between bursts: each burst wakes them
            for _ in range(20):
                pool.submit(job("tp.busy"))
            assert {j.state for j in finished(pool, 20)} == {"SUCCESS"}
            time.sleep(0.05)
    finally:
        pool.stop(WAIT)
    assert most[0] == 3


def test_jobs_not_started_are_given_back_and_a_shrink_ends_threads(app: Conveyor) -> None:
    release = threading.Event()

    @app.task(name="tp.blocked")
    def blocked() -> None:
        assert release.wait(WAIT)

    pool = ThreadPool(app, 2, "tp@host")
    pool.start()
    try:
        jobs = [job("tp.blocked") for _ in range(4)]
        for j in jobs:
            pool.submit(j)
        deadline = time.monotonic() + WAIT
        while sum(j.started > 0 for j in jobs) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [j.started > 0 for j in jobs] == [True, True, False, False]
        assert pool.take_unstarted() == jobs[2:]
        release.set()
        assert len(finished(pool, 2)) == 2
        release.clear()
        pool.resize(1)  # one thread ends: of two jobs now, one runs, one waits
        again = [job("tp.blocked") for _ in range(2)]
        for j in again:
            pool.submit(j)
        deadline = time.monotonic() + WAIT
        while not again[0].started and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # time enough for a second thread, were there one, to start
        assert [j.started > 0 for j in again] == [True, False]
        release.set()
        assert len(finished(pool, 2)) == 2
    finally:
        release.set()
        pool.stop(WAIT)


def test_a_burst_wakes_every_sleeping_thread_and_stop_ends_them_all(app: Conveyor) -> None:
    """Jobs handed at once to a pool whose threads all sleep run at once (each
    waits for all the others), however the pool spreads the wake-ups; ``stop``
    ends every thread."""
    together = threading.Barrier(4, timeout=WAIT)

    @app.task(name="tp.together")
    def meet() -> None:
        together.wait()  # BrokenBarrierError: the four never ran at once

    before = set(threading.enumerate())
    pool = ThreadPool(app, 4, "tp@host")
    pool.start()
    try:
        for _ in range(3):
            time.sleep(0.05)  # every thread asleep again
            for _ in range(4):
                pool.submit(job("tp.together"))
            assert {j.state for j in finished(pool, 4)} == {"SUCCESS"}
    finally:
        pool.stop(WAIT)
    assert not [t for t in threading.enumerate()
                if t not in before and t.name.startswith("conveyor-pool")]


def test_jobs_waiting_in_the_pool_are_reported_as_they_start_not_before(
        app: Conveyor) -> None:
    """``report_starts``: a job queued behind the busy thread is in ``began`` once a
    thread takes it (its early ack goes then), and not while it waits."""
    release = [threading.Event() for _ in range(3)]

    @app.task(name="tp.hold")
    def hold(n: int) -> None:
        assert release[n].wait(WAIT)

    pool = ThreadPool(app, 1, "tp@host")
    pool.depth, pool.report_starts = 3, True
    pool.start()
    try:
        jobs = [job("tp.hold") for _ in range(3)]
        for n, j in enumerate(jobs):
            j.request.args = [n]
            pool.submit(j)
        began: list[Job] = []
        deadline = time.monotonic() + WAIT
        while not began and time.monotonic() < deadline:
            began += pool.began()
            time.sleep(0.01)
        time.sleep(0.1)  # time enough for a job that is not running to be reported
        assert began + pool.began() == jobs[:1]
        release[0].set()
        assert finished(pool, 1) == jobs[:1]
        assert pool.began() == jobs[1:2]  # taken by the thread before job 0 was done
        time.sleep(0.1)
        assert [j.started > 0 for j in jobs] == [True, True, False]
        release[1].set()
        release[2].set()
        assert {id(j) for j in finished(pool, 2)} == {id(j) for j in jobs[1:]}
        assert pool.began() == jobs[2:]
    finally:
        for event in release:
            event.set()
        pool.stop(WAIT)


def test_a_job_revoked_while_it_waits_in_the_pool_is_not_run(app: Conveyor) -> None:
    release, ran = threading.Event(), []

    @app.task(name="tp.first")
    def first() -> None:
        assert release.wait(WAIT)

    @app.task(name="tp.second")
    def second() -> None:
        ran.append(1)

    pool = ThreadPool(app, 1, "tp@host")
    pool.depth, pool.report_starts = 2, True
    pool.start()
    try:
        waiting = job("tp.second")
        pool.submit(job("tp.first"))
        pool.submit(waiting)
        REVOKED.add([waiting.request.id], 60)
        release.set()
        assert sorted(j.state for j in finished(pool, 2)) == ["REVOKED", "SUCCESS"]
        assert waiting in pool.began()  # reported, so its delivery is acked
        assert not ran and app.AsyncResult(waiting.request.id).state == "REVOKED"
    finally:
        release.set()
        pool.stop(WAIT)


def test_a_worker_queues_jobs_in_its_pool_counted_reserved_and_revocable(
        app: Conveyor) -> None:
    """A threads worker (prefetch multiplier 4) queues a job in its pool behind the
    running one: ``inspect`` shows it reserved, not active; revoked there, it is
    not run; an ``acks_late`` job does not wait in the pool."""
    release, ran = threading.Event(), []

    @app.task(name="tp.hold")
    def hold() -> None:
        assert release.wait(WAIT)

    @app.task(name="tp.mark")
    def mark(n: int) -> int:
        ran.append(n)
        return n

    @app.task(name="tp.late", acks_late=True)
    def late() -> None:
        ran.append("late")

    worker = app.Worker(pool="threads", concurrency=1, prefetch_multiplier=4,
                        hostname="tpq@test")
    with worker.running():
        held = hold.delay()
        waits = mark.delay(1)
        deadline = time.monotonic() + WAIT
        while len(worker.running_jobs()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        late_result, after = late.delay(), mark.delay(2)
        inspect = app.control.inspect(destination=[worker.hostname], timeout=5)
        deadline = time.monotonic() + WAIT
        while len(worker.waiting_jobs()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        in_pool = [j.request.id for j in worker.running_jobs() if not j.started]
        assert in_pool == [waits.id]  # the acks_late one waits for a free thread
        assert [t["id"] for t in (inspect.active() or {})[worker.hostname]] == [held.id]
        assert {t["id"] for t in (inspect.reserved() or {})[worker.hostname]} == \
            {waits.id, late_result.id, after.id}
        waits.revoke()
        deadline = time.monotonic() + WAIT
        while waits.id not in REVOKED and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        assert after.get(timeout=WAIT) == 2 and late_result.get(timeout=WAIT) is None
        assert held.get(timeout=WAIT) is None
        assert waits.state == "REVOKED"
    assert ran == ["late", 2]
