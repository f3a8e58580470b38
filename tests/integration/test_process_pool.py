"""The processes pool's hand-over of requests to its children: jobs queued behind the
running one in a child's pipe each run once with their own arguments, and a request
far bigger than one read of the pipe arrives whole (SQLite app, real children)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conveyor import Conveyor
from conveyor.envelope import Request
from conveyor.worker.pool import Job, ProcessPool

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
