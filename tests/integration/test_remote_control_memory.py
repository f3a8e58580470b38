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
        registered = (inspect.registered() or {})[worker.hostname]
        # shared tasks other tests of this process defined are every app's, as in Celery
        assert [n for n in registered if n.startswith("rcmem.")] == ["rcmem.add",
                                                                      "rcmem.spin"]

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


def test_rate_and_time_limits_and_pool_size_change_through_app_control(
        app: Conveyor) -> None:
    add, spin, _started, ticks = _tasks(app)
    worker = app.Worker(pool="threads", concurrency=2, hostname="mem-tune@test")

    def ask(command: str, **arguments: object) -> object:
        [reply] = getattr(app.control, command)(destination=[worker.hostname],
                                                reply=True, timeout=5, **arguments)
        return reply[worker.hostname]

    def concurrency() -> tuple[int, int]:
        stats = (app.control.inspect([worker.hostname], timeout=5).stats() or {})
        found = stats[worker.hostname]
        return found["pool"]["max-concurrency"], found["prefetch_count"]

    def until(check: object, want: object) -> None:
        deadline = time.monotonic() + 10
        while check() != want and time.monotonic() < deadline:  # type: ignore[operator]
            time.sleep(0.05)
        assert check() == want  # type: ignore[operator]

    with worker.running():
        assert ask("rate_limit", task_name="rcmem.add", rate_limit="4/s") == {
            "ok": "new rate limit set successfully"}
        start = time.monotonic()
        results = [add.delay(i, i) for i in range(5)]  # type: ignore[attr-defined]
        assert [r.get(timeout=10) for r in results] == [0, 2, 4, 6, 8]
        assert time.monotonic() - start >= 0.9  # 5 starts, 0.25 s apart
        assert ask("rate_limit", task_name="rcmem.add", rate_limit=0) == {
            "ok": "rate limit disabled successfully"}
        start = time.monotonic()
        results = [add.delay(i, 1) for i in range(20)]  # type: ignore[attr-defined]
        assert [r.get(timeout=10) for r in results] == list(range(1, 21))
        assert time.monotonic() - start < 4  # 4.75 s at the old 4/s
        assert ask("rate_limit", task_name="rcmem.nope", rate_limit="1/s") == {
            "error": "unknown task"}
        assert ask("rate_limit", task_name="rcmem.add", rate_limit="fast") == {
            "error": "Invalid rate limit string: Bad rate_limit 'fast': write it as Celery "
                     "does, '10/s', '100/m', '1000/h' or a number of tasks per second."}

        assert ask("pool_grow", n=2) == {"ok": "pool will grow"}
        until(concurrency, (4, 16))  # prefetch follows: 4 x worker_prefetch_multiplier
        assert ask("pool_shrink", n=3) == {"ok": "pool will shrink"}
        until(concurrency, (1, 4))
        assert ask("autoscale", max=4, min=2) == {"error": "Autoscale not enabled"}

        assert ask("time_limit", task_name="rcmem.spin", soft=0.2) == {
            "ok": "time limits set successfully"}
        with pytest.raises(Exception) as raised:
            spin.delay(3000).get(timeout=10)  # type: ignore[attr-defined]
        assert type(raised.value).__name__ == "SoftTimeLimitExceeded"
        assert len(ticks) < 3000
        assert ask("time_limit", task_name="rcmem.spin", soft="soon") == {
            "error": "Invalid time limits: soft='soon' hard=None (seconds, or none)"}


def test_autoscale_bounds_change_through_app_control(app: Conveyor) -> None:
    _tasks(app)
    worker = app.Worker(pool="threads", autoscale="4,1", hostname="mem-auto@test")
    with worker.running():
        [reply] = app.control.autoscale(3, 2, destination=[worker.hostname], reply=True,
                                        timeout=5)
        assert reply == {worker.hostname: {"ok": "autoscale now max=3 min=2"}}
        deadline = time.monotonic() + 10
        while worker.concurrency != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (worker.concurrency, worker.prefetch) == (2, 12)  # min now 2; max 3 x 4
        [reply] = app.control.pool_grow(destination=[worker.hostname], reply=True,
                                        timeout=5)
        assert reply == {worker.hostname: {"error": "pool_grow is not supported with "
                                           "autoscale. Adjust autoscale range instead."}}


def test_queues_are_added_and_cancelled_through_app_control(app: Conveyor) -> None:
    add, *_ = _tasks(app)
    worker = app.Worker(pool="threads", concurrency=2, hostname="mem-queues@test")

    def ask(command: str, queue: str) -> object:
        [reply] = app.control.broadcast(command, {"queue": queue},
                                        destination=[worker.hostname], reply=True,
                                        timeout=5)
        return reply[worker.hostname]

    def consumed() -> list[str]:
        found = app.control.inspect([worker.hostname], timeout=5).active_queues() or {}
        return [q["name"] for q in found[worker.hostname]]

    with worker.running():
        assert ask("add_consumer", "rcmem.extra") == {"ok": "add consumer rcmem.extra"}
        extra = add.apply_async((2, 3), queue="rcmem.extra")  # type: ignore[attr-defined]
        assert extra.get(timeout=10) == 5
        assert consumed() == ["celery", "rcmem.extra"]
        assert ask("cancel_consumer", "rcmem.extra") == {
            "ok": "no longer consuming from rcmem.extra"}
        deadline = time.monotonic() + 10
        while consumed() != ["celery"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert consumed() == ["celery"]
        left = add.apply_async((1, 1), queue="rcmem.extra")  # type: ignore[attr-defined]
        time.sleep(1.0)
        assert left.state == "PENDING"  # nobody consumes it now
        assert ask("cancel_consumer", "rcmem.extra") == {
            "error": "not consuming from rcmem.extra"}
        assert ask("cancel_consumer", "celery") == {
            "error": "celery is the only queue consumed: add another first"}
        assert add.delay(2, 2).get(timeout=10) == 4  # type: ignore[attr-defined]
