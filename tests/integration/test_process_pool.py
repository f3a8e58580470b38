"""The processes pool's hand-over of requests to its children: jobs queued behind the
running one in a child's pipe each run once with their own arguments, a request far
bigger than one read of the pipe arrives whole, and a job revoked while it waits in a
child's pipe or in the pool is recorded REVOKED and not run (SQLite app, real
children)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conveyor import Conveyor
from conveyor.envelope import Request
from conveyor.worker.pool import Job, ProcessPool
from conveyor.worker.revoked import REVOKED

WAIT = 20.0  # seconds any step may take before the test fails


@pytest.fixture
def app(tmp_path: Path) -> Conveyor:
    url = f"sqlite:///{tmp_path / 'procpool.sqlite3'}"
    app = Conveyor(f"procpool-{uuid.uuid4().hex[:8]}", broker=url, backend=url)

    @app.task(name="t.echo")
    def echo(value: Any) -> Any:
        return value

    @app.task(name="t.size")
    def size(text: str) -> int:
        return len(text)

    @app.task(name="t.hold")
    def hold(flag: str) -> None:
        """Runs until ``flag`` exists (another process's go-ahead), at most WAIT s."""
        deadline = time.monotonic() + WAIT
        while not Path(flag).exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    @app.task(name="t.touch")
    def touch(path: str) -> None:
        Path(path).write_text("ran")

    @app.task(name="t.die")
    def die() -> None:
        os._exit(3)  # the child is gone mid-task, as a segfault or the OOM killer leaves it

    return app


def job(name: str, *args: Any) -> Job:
    request = Request(id=uuid.uuid4().hex, name=name, args=list(args), kwargs={}, headers={})
    return Job(request, delivery=None, acks_late=False)  # type: ignore[arg-type]  # unread by the pool


def run(pool: ProcessPool, jobs: list[Job]) -> list[Job]:
    for j in jobs:
        pool.submit(j)
    out: list[Job] = []
    deadline = time.monotonic() + WAIT
    while len(out) < len(jobs) and time.monotonic() < deadline:
        pool.wait(0.05)
        out += pool.finished()
    assert len(out) == len(jobs), f"{len(out)} of {len(jobs)} jobs finished in {WAIT}s"
    return out


def test_jobs_waiting_in_a_childs_pipe_each_run_once_with_their_arguments(
        app: Conveyor) -> None:
    pool = ProcessPool(app, 2, "procpool@test")
    pool.depth = 4  # up to three wait behind the running one, read together
    pool.start()
    try:
        jobs = [job("t.echo", i) for i in range(60)]
        done = run(pool, jobs)
        assert {j.state for j in done} == {"SUCCESS"}
        assert [app.AsyncResult(j.request.id).get(timeout=WAIT) for j in jobs] == \
            list(range(60))
    finally:
        pool.stop(WAIT)
        app.close()


def test_a_child_that_dies_mid_task_fails_only_its_task_and_is_replaced(
        app: Conveyor) -> None:
    """Each child's death is seen at once (its result pipe ends: no later child
    holds a copy of its write end), whichever child it is; the task it ran fails,
    the jobs after it run on the replacements."""
    pool = ProcessPool(app, 2, "procpool@test")
    pool.start()
    try:
        first = [int(c.process.pid) for c in pool._children]
        dying = [job("t.die"), job("t.die")]  # one to each child (both idle)
        done = run(pool, dying)
        assert [j.state for j in done] == ["FAILURE", "FAILURE"]
        assert [app.AsyncResult(j.request.id).state for j in dying] == ["FAILURE"] * 2
        assert not set(first) & {int(c.process.pid) for c in pool._children}
        after = [job("t.echo", i) for i in range(4)]
        assert {j.state for j in run(pool, after)} == {"SUCCESS"}
    finally:
        pool.stop(WAIT)
        app.close()


def test_a_request_bigger_than_a_pipe_read_arrives_whole(app: Conveyor) -> None:
    pool = ProcessPool(app, 1, "procpool@test")
    pool.depth = 4
    pool.start()
    try:
        text = "x" * 300_000 + "end"  # several 64 KiB reads of the child's pipe
        jobs = [job("t.echo", 1), job("t.size", text), job("t.echo", 2)]
        done = run(pool, jobs)
        assert [j.state for j in done] == ["SUCCESS"] * 3
        assert [app.AsyncResult(j.request.id).get(timeout=WAIT) for j in jobs] == \
            [1, len(text), 2]
    finally:
        pool.stop(WAIT)
        app.close()


def test_a_job_revoked_while_it_waits_in_a_childs_pipe_or_the_pool_is_not_run(
        app: Conveyor, tmp_path: Path) -> None:
    flag, side = tmp_path / "go", tmp_path / "ran"
    pool = ProcessPool(app, 1, "procpool@test")
    pool.depth, pool.report_starts = 2, True
    pool.start()
    try:
        first, piped, kept = (job("t.hold", str(flag)), job("t.touch", str(side)),
                              job("t.touch", str(side)))
        for j in (first, piped, kept):
            pool.submit(j)
        assert pool.began() == [first]
        assert [list(c.jobs) for c in pool._children] == [[first, piped]]  # in the pipe
        REVOKED.add([piped.request.id, kept.request.id], 60)
        pool.skip([piped.request.id, kept.request.id])  # as `revoke` does
        flag.touch()
        done = []
        deadline = time.monotonic() + WAIT
        while len(done) < 3 and time.monotonic() < deadline:
            pool.wait(0.05)
            done += pool.finished()
        # (the one in the backlog may be settled as soon as it is revoked)
        assert {(id(j), j.state) for j in done} == {
            (id(first), "SUCCESS"), (id(kept), "REVOKED"), (id(piped), "REVOKED")}
        assert {id(j) for j in pool.began()} == {id(piped), id(kept)}  # so both are acked
        assert not side.exists()
        assert app.AsyncResult(piped.request.id).state == "REVOKED"
        assert app.AsyncResult(kept.request.id).state == "REVOKED"
        again = job("t.touch", str(side))  # the child still serves
        assert [j.state for j in run(pool, [again])] == ["SUCCESS"] and side.exists()
    finally:
        flag.touch()
        pool.stop(WAIT)
        app.close()


def test_time_limits_changed_while_it_runs_reach_its_children(app: Conveyor,
                                                              tmp_path: Path) -> None:
    """``control time_limit`` sets the task's limits in the worker process and tells
    the children, forked before, where the soft limit is raised."""
    pool = ProcessPool(app, 1, "procpool@test")
    pool.start()
    try:
        app.tasks["t.hold"].soft_time_limit = 0.3  # as worker.tuning.time_limit does
        pool.task_limits("t.hold", 0.3, None)
        held = job("t.hold", str(tmp_path / "never"))
        start = time.monotonic()
        [done] = run(pool, [held])
        assert done.state == "FAILURE" and time.monotonic() - start < WAIT / 2
        with pytest.raises(Exception) as raised:
            app.AsyncResult(held.request.id).get(timeout=WAIT)
        assert type(raised.value).__name__ == "SoftTimeLimitExceeded"
    finally:
        pool.stop(WAIT)
        app.close()


def test_a_task_killed_at_its_time_limit_is_finished_when_its_failure_cannot_be_stored(
        tmp_path: Path) -> None:
    """The result backend refuses the FAILURE (here: a database that cannot be
    created): the job still finishes, and the pool keeps serving."""
    broker = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    app = Conveyor(f"procpool-{uuid.uuid4().hex[:8]}", broker=broker,
                   backend=f"sqlite:///{tmp_path / 'missing' / 'results.sqlite3'}")

    @app.task(name="t.sleep", time_limit=0.5)
    def sleep() -> None:
        time.sleep(WAIT)

    @app.task(name="t.nothing")
    def nothing() -> None:
        return None

    pool = ProcessPool(app, 1, "procpool@test")
    pool.start()
    try:
        assert [j.state for j in run(pool, [job("t.sleep")])] == ["FAILURE"]
        run(pool, [job("t.nothing")])  # finishes (its result cannot be stored either)
    finally:
        pool.stop(WAIT)
        app.close()


def test_a_child_looks_for_notes_before_a_request_only_once_one_was_counted() -> None:
    """A child's inbox takes what came after a request (a skip for it) before it
    runs, but looks at its pipe only when the pool's shared note count moved since
    its last look (no system call a task otherwise); the first look always reads."""
    import mmap
    import os

    from conveyor.worker.pool import _COUNT, _NOTE, _Inbox, _frame

    read_end, write_end = os.pipe()
    notes = mmap.mmap(-1, _COUNT.size)
    try:
        inbox = _Inbox(read_end, {}, notes)
        requests = iter(inbox)
        os.write(write_end, _frame(b"\x80first") + _frame(b"\x80second"))
        assert next(requests) == b"\x80first"
        os.write(write_end, _frame(_NOTE + b"skip a"))
        assert inbox.skipped("a")  # first look: reads the pipe although nothing counted
        assert next(requests) == b"\x80second"
        os.write(write_end, _frame(_NOTE + b"skip b"))  # written, not counted
        assert not inbox.skipped("b")  # not looked for
        _COUNT.pack_into(notes, 0, 1)  # what ProcessPool._count_note does first
        assert inbox.skipped("b")
        assert not inbox.skipped("b")  # taken once
    finally:
        notes.close()
        os.close(read_end)
        os.close(write_end)
