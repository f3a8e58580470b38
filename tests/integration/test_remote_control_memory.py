"""``app.control`` against a worker in this process on ``memory://`` (which has
broadcasts): the same commands and replies as on a real broker, in milliseconds;
the solo pool included (its task runs on the consumer thread itself)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from conveyor import Conveyor
from conveyor.exceptions import TaskRevokedError


@pytest.fixture
def app() -> Iterator[Conveyor]:
    name = f"rcmem-{uuid.uuid4().hex[:8]}"
    app = Conveyor(name, broker=f"memory://{name}", backend=f"memory://{name}")
    yield app
    app.close()


def _tasks(app: Conveyor) -> tuple[object, object, threading.Event, list[int]]:
    started = threading.Event()
    ticks: list[int] = []

    @app.task(name="rcmem.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="rcmem.spin")
    def spin(n: int) -> int:
        started.set()
        for i in range(n):
            ticks.append(i)
            time.sleep(0.01)
        return n

    return add, spin, started, ticks


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_inspect_and_revoke_through_app_control(app: Conveyor, pool: str) -> None:
    add, spin, started, ticks = _tasks(app)
    worker = app.Worker(pool=pool, concurrency=2, hostname=f"mem-{pool}@test")
    with worker.running():
        assert app.control.ping(timeout=5, destination=[worker.hostname]) == [
            {worker.hostname: {"ok": "pong"}}]
        inspect = app.control.inspect(destination=[worker.hostname], timeout=5)
        assert inspect.registered() == {worker.hostname: ["rcmem.add", "rcmem.spin"]}

        later = add.apply_async((1, 1), countdown=3)  # type: ignore[attr-defined]
        scheduled = inspect.scheduled()
        deadline = time.monotonic() + 5
        while not (scheduled or {}).get(worker.hostname) and time.monotonic() < deadline:
            scheduled = inspect.scheduled()
        assert scheduled is not None
        assert [s["request"]["id"] for s in scheduled[worker.hostname]] == [later.id]
        later.revoke(wait=True, timeout=5)
        with pytest.raises(TaskRevokedError):
            later.get(timeout=10)

        running = spin.delay(3000)  # type: ignore[attr-defined]
        assert started.wait(10)
        if pool == "threads":
            [active] = (inspect.active() or {})[worker.hostname]
            assert active["id"] == running.id and active["acknowledged"] is True
        running.revoke(terminate=True)
        with pytest.raises(TaskRevokedError):
            running.get(timeout=10)
        count = len(ticks)
        time.sleep(0.2)
        assert len(ticks) == count < 3000  # it stopped
        assert add.delay(2, 2).get(timeout=10) == 4  # type: ignore[attr-defined]
        stats = inspect.stats()
        assert stats is not None and stats[worker.hostname]["total"] == {
            "rcmem.add": 1, "rcmem.spin": 1}
        assert later.id in (inspect.revoked() or {})[worker.hostname]
    assert later.state == "REVOKED" and running.state == "REVOKED"


def test_an_unknown_command_and_a_missing_worker(app: Conveyor) -> None:
    _tasks(app)
    with app.Worker(pool="threads", hostname="mem-x@test").running():
        assert app.control.broadcast("no_such", reply=True, timeout=5, limit=1) == [
            {"mem-x@test": {"error": "No such control command: no_such"}}]
        assert app.control.ping(destination=["ghost@test"], timeout=0.3) == []
