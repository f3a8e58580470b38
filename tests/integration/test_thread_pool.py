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
