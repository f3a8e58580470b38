"""asyncio end to end, with real worker processes on SQLite and on Redis (db 14).

The asyncio client (``adelay``, ``aapply_async``, ``asend_task``, ``aget``, canvas)
sends and waits without blocking the event loop; each worker process runs
coroutine tasks on one long-lived event loop, up to its concurrency at once whatever
the pool, and ``time_limit`` cancels the coroutine.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conveyor import chain, chord, group
from conveyor.exceptions import TaskRevokedError, TimeLimitExceeded, TimeoutError
from conveyor_pytest.fixtures import require_service, worker_process

sys.path.append(str(Path(__file__).resolve().parents[1] / "plugins" / "redis"))
from redis_support import HOST, PORT  # noqa: E402

REDIS_DB = 14

APP = '''
import asyncio
import os

from conveyor import Conveyor
from conveyor.exceptions import SoftTimeLimitExceeded

app = Conveyor("asyncapp", broker=os.environ["T_BROKER"], backend=os.environ["T_BACKEND"],
               task_default_queue=os.environ["T_QUEUE"],
               broker_transport_options=(
                   {"visibility_timeout": 30} if os.environ["T_BROKER"].startswith("redis")
                    else {}))


@app.task
async def aadd(x: int, y: int) -> int:
    await asyncio.sleep(0)
    return x + y


@app.task
async def nap(seconds: float) -> list[int]:
    await asyncio.sleep(seconds)
    return [os.getpid(), id(asyncio.get_running_loop())]


@app.task(soft_time_limit=0.4, time_limit=20)
async def tidy() -> list[str]:
    seen = []
    try:
        await asyncio.sleep(15)
    except SoftTimeLimitExceeded as exc:
        seen.append(str(exc))
        await asyncio.sleep(0.05)  # cleaning up may await; the task goes on
        seen.append("cleaned up")
    return seen


@app.task(time_limit=0.5)
async def stuck() -> str:
    await asyncio.sleep(30)
    return "never"


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def tsum(numbers: list[int]) -> int:
    return sum(numbers)


@app.task(bind=True)
async def progress(self, steps: int) -> str:
    for step in range(1, steps + 1):
        self.update_state(state="PROGRESS", meta={"step": step})
        await asyncio.sleep(0.3)
    return "done"
'''


@pytest.fixture(params=["sqlite", "redis"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    queue = f"t.async.{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
        yield {"T_BROKER": url, "T_BACKEND": url, "T_QUEUE": queue}
        return
    require_service("Redis", HOST, PORT)
    url = f"redis://{HOST}:{PORT}/{REDIS_DB}"
    yield {"T_BROKER": url, "T_BACKEND": url, "T_QUEUE": queue}
    client = redis.Redis(HOST, PORT, db=REDIS_DB)
    for key in client.scan_iter(f"*{queue}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def project(tmp_path: Path, urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[tuple[Any, dict[str, str]]]:
    """The app module, written to tmp_path and imported here as the client."""
    name = f"asyncapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(APP)
    for key, value in urls.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)
    yield module, {"app_spec": f"{name}:app", "cwd": str(tmp_path)}
    module.app.close()
    sys.modules.pop(name, None)


@pytest.mark.parametrize("pool, concurrency, tasks", [("threads", 50, 50),
                                                      ("solo", 1, 2),
                                                      ("processes", 3, 6)])
def test_coroutines_run_concurrency_at_once_on_one_loop_per_process(
        project: tuple[Any, dict[str, str]], pool: str, concurrency: int, tasks: int) -> None:
    module, spec = project
    with worker_process(spec["app_spec"], cwd=spec["cwd"], pool=pool,
                        concurrency=concurrency, extra_args=["--prefetch-multiplier", "1"]):
        module.add.delay(1, 1).get(timeout=20)  # the worker is up and consuming
        start = time.monotonic()
        results = [module.nap.delay(1) for _ in range(tasks)]
        seen = [r.get(timeout=30) for r in results]
        elapsed = time.monotonic() - start
    # 50 at once on threads must finish in under 3 s; the other pools run one
    # coroutine per process (solo: 1, processes: one per child) and must not be
    # sequential: 6 naps on 3 children take 2 s, not 6 (slack for a loaded machine)
    bound = {"threads": 3, "solo": 4, "processes": 5}[pool]
    assert elapsed < bound, f"{tasks} × 1 s coroutines took {elapsed:.2f}s"
    per_process: dict[int, set[int]] = {}
    for pid, loop in seen:
        per_process.setdefault(pid, set()).add(loop)
    assert all(len(loops) == 1 for loops in per_process.values()), per_process
    assert len(per_process) == (concurrency if pool == "processes" else 1)


def test_an_async_task_runs_beside_a_blocking_one_and_time_limit_cancels_it(
        project: tuple[Any, dict[str, str]]) -> None:
    module, spec = project
    with worker_process(spec["app_spec"], cwd=spec["cwd"], pool="threads", concurrency=2):
        assert module.aadd.delay(2, 2).get(timeout=20) == 4
        assert module.add.delay(2, 3).get(timeout=20) == 5
        started = time.monotonic()
        result = module.stuck.delay()
        with pytest.raises(TimeLimitExceeded, match="time_limit=0.5"):
            result.get(timeout=20)
        assert time.monotonic() - started < 10
        assert result.state == "FAILURE"


def _ticking(period: float = 0.02) -> tuple[list[float], asyncio.Task[None]]:
    """A coroutine that records when it runs: a blocked loop leaves gaps."""
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(period)

    return ticks, asyncio.get_running_loop().create_task(tick())


def test_the_asyncio_client_end_to_end(project: tuple[Any, dict[str, str]]) -> None:
    module, spec = project

    async def main() -> None:
        ticks, ticker = _ticking()
        try:
            result = await module.add.adelay(2, 2)
            assert await result.aget(timeout=20) == 4
            assert await (await module.aadd.aapply_async((3, 4))).aget(timeout=20) == 7
            sent = await module.app.asend_task(module.add.name, (5, 5))
            assert await sent.aget(timeout=20) == 10

            started = time.monotonic()
            later = await module.add.aapply_async((1, 2), countdown=1.5)
            assert await later.aget(timeout=20) == 3
            assert time.monotonic() - started >= 1.5

            parent = await module.add.aapply_async((2, 8), link=module.add.signature((10,)))
            assert await parent.aget(timeout=20) == 10
            child = parent.children[0]
            assert await child.aget(timeout=20) == 20

            gone = await module.add.aapply_async(
                (1, 1), eta=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1.5),
                expires=0.5)
            with pytest.raises(TaskRevokedError):
                await gone.aget(timeout=20)

            seen: list[tuple[str, Any]] = []
            run = await module.progress.adelay(3)
            assert await run.aget(timeout=20, on_message=lambda m: seen.append(
                (m["status"], m["result"]))) == "done"
            assert ("PROGRESS", {"step": 2}) in seen and seen[-1] == ("SUCCESS", "done")

            members = await group(module.add.s(i, i) for i in (1, 2, 3)).aapply_async()
            assert await members.aget(timeout=20) == [2, 4, 6]
            steps = await chain(module.add.s(1, 1), module.aadd.s(10)).aapply_async()
            assert await steps.aget(timeout=20) == 12

            # a wait that times out leaves the loop running all along
            waiting = await module.nap.adelay(5)
            before = len(ticks)
            with pytest.raises(TimeoutError):
                await waiting.aget(timeout=1)
            gaps = [b - a for a, b in zip(ticks[before:], ticks[before + 1:])]
            assert len(gaps) > 20 and max(gaps) < 0.25, max(gaps)
        finally:
            ticker.cancel()
            await module.app.aclose()

    with worker_process(spec["app_spec"], cwd=spec["cwd"], pool="threads", concurrency=4):
        asyncio.run(main())



def _hold_the_store(urls: dict[str, str], seconds: float) -> None:
    """Make every write to the broker and backend wait ``seconds`` from now: a
    paused Redis (``CLIENT PAUSE … WRITE``), or a SQLite file another connection
    holds the write lock of."""
    url = urls["T_BACKEND"]
    if url.startswith("redis"):
        client = redis.Redis(HOST, PORT)
        client.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "WRITE")
        client.close()
        return
    holder = sqlite3.connect(url.removeprefix("sqlite:///"), check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(seconds, lambda: (holder.rollback(), holder.close()))
    timer.start()


def test_canvas_writes_to_the_backend_are_awaited_not_blocking_the_loop(
        project: tuple[Any, dict[str, str]], urls: dict[str, str]) -> None:
    """A chord's counter and a chain's parked steps are written through the loop's
    backend: while the store makes writes wait, the loop keeps ticking."""
    module, spec = project
    module.app.conf.task_chain_embed = "backend"  # the chain's later steps are parked

    async def main() -> None:
        ticks, ticker = _ticking()
        try:
            await (await module.add.adelay(0, 0)).aget(timeout=20)  # connections warm
            _hold_the_store(urls, 0.6)
            before = len(ticks)
            joined = await chord([module.add.s(i, i) for i in (1, 2, 3)],
                                 module.tsum.s()).aapply_async()
            steps = await chain(module.add.s(1, 1), module.add.s(10),
                                module.add.s(100)).aapply_async()
            gaps = [b - a for a, b in zip(ticks[before:], ticks[before + 1:])]
            assert await joined.aget(timeout=20) == 12
            assert await steps.aget(timeout=20) == 112
            assert gaps and max(gaps) < 0.3, max(gaps)
        finally:
            ticker.cancel()
            await module.app.aclose()

    with worker_process(spec["app_spec"], cwd=spec["cwd"], pool="threads", concurrency=4):
        asyncio.run(main())


class _SlowCallbacks(logging.Handler):
    """asyncio debug mode's "Executing <…> took 0.123 seconds" records."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if re.search(r"took \d+\.\d+ seconds", record.getMessage()):
            self.seen.append(record.getMessage())


def test_debug_mode_sees_no_slow_callback_in_hundreds_of_concurrent_round_trips(
        project: tuple[Any, dict[str, str]]) -> None:
    """50 coroutines × 6 round trips, canvas included, with the loop in debug mode:
    no callback (ours: connecting, publishing, waiting) holds the loop 100 ms."""
    module, spec = project
    slow = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(slow)

    async def lane(n: int) -> list[int]:
        found = []
        for k in range(5):
            found.append(await (await module.add.adelay(n, k)).aget(timeout=30))
        members = await group(module.add.s(n, 0), module.aadd.s(0, n)).aapply_async()
        found += await members.aget(timeout=30)
        return found

    async def main() -> list[list[int]]:
        asyncio.get_running_loop().slow_callback_duration = 0.1
        try:  # this task only starts the lanes (debug mode pays per task it creates)
            return await asyncio.gather(*(lane(n) for n in range(50)))
        finally:
            await asyncio.ensure_future(module.app.aclose())  # a task of its own

    def ours() -> list[str]:
        return [seen for seen in slow.seen if ".<locals>.main()" not in seen]

    try:
        with worker_process(spec["app_spec"], cwd=spec["cwd"], pool="threads",
                            concurrency=8):
            module.add.delay(0, 0).get(timeout=20)  # the worker is up
            for _attempt in range(2):  # a blocking call repeats; a stall of a loaded
                slow.seen.clear()      # machine (4 sessions on 2 cores) does not
                found = asyncio.run(main(), debug=True)
                if not ours():
                    break
    finally:
        logger.removeHandler(slow)
    assert found == [[n + k for k in range(5)] + [n, n] for n in range(50)]
    assert ours() == []


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_soft_time_limit_raises_inside_the_coroutine_which_cleans_up(
        project: tuple[Any, dict[str, str]], pool: str) -> None:
    module, spec = project
    with worker_process(spec["app_spec"], cwd=spec["cwd"], pool=pool, concurrency=2):
        started = time.monotonic()
        seen = module.tidy.delay().get(timeout=20)
        elapsed = time.monotonic() - started
    assert seen[1] == "cleaned up" and "soft_time_limit=0.4" in seen[0], seen
    assert elapsed < 10, elapsed  # not the 15 s sleep
