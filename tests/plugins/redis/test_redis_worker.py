"""The core worker on the Redis transport (broker db 9, results db 10).

In-process workers for behaviour, CLI worker subprocesses for what needs a process
to die (SIGKILL) or the server to go away (a throwaway redis-server on a free port).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conveyor import Conveyor
from conveyor.exceptions import NotRegistered
from redis_support import HOST, PORT, Proc, wait_for

BROKER, RESULTS = 9, 10
CONVEYOR_BIN = str(Path(sys.executable).parent / "conveyor")


@pytest.fixture
def dbs(redis_server: str) -> Iterator[redis.Redis]:
    clients = [redis.Redis(HOST, PORT, db=n) for n in (BROKER, RESULTS)]
    for c in clients:
        c.flushdb()
    yield clients[0]
    for c in clients:
        c.flushdb()
        c.close()


@pytest.fixture
def make_app(dbs: redis.Redis, redis_server: str) -> Iterator[Any]:
    apps: list[Conveyor] = []

    def make(**transport_options: Any) -> Conveyor:
        app = Conveyor("t", broker=f"{redis_server}/{BROKER}",
                       backend=f"{redis_server}/{RESULTS}",
                       broker_transport_options={"visibility_timeout": 5,
                                                 **transport_options})
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def test_delay_get_and_group_through_the_worker(make_app: Any, queue: str) -> None:
    app = make_app()

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    with app.Worker(queues=[queue], concurrency=2, pool="threads").running():
        assert add.apply_async((2, 2), queue=queue).get(timeout=10) == 4
        results = app.publish_batch([("t.add", (i, i), {}, {"queue": queue}, {})
                                     for i in range(20)])
        assert [r.get(timeout=10) for r in results] == [2 * i for i in range(20)]


def test_priorities_run_higher_first(make_app: Any, queue: str) -> None:
    app = make_app()
    order: list[int] = []

    @app.task(name="t.record")
    def record(n: int) -> None:
        order.append(n)

    sent = [(0, None), (1, 0), (2, 9), (3, 4), (4, 200), (5, 2), (6, 5)]
    results = [record.apply_async((n,), queue=queue, priority=p) for n, p in sent]
    w = app.Worker(queues=[queue], concurrency=1, pool="solo", prefetch_multiplier=1)
    with w.running():
        for r in results:
            r.get(timeout=10)
    assert order == [2, 4, 3, 6, 5, 0, 1]


def test_a_solo_worker_refills_its_whole_prefetch_at_once(make_app: Any,
                                                          queue: str) -> None:
    """Prefetch 4: the solo worker claims again once it has no task left waiting, so
    12 queued tasks come in three claims of 4 (not 4, 3, 3, 2)."""
    app = make_app()

    @app.task(name="t.square")
    def square(n: int) -> int:
        return n * n

    results = app.publish_batch([("t.square", (n,), {}, {"queue": queue}, {})
                                 for n in range(12)])
    taken: list[int] = []
    made = app.transport_factory

    def recording(url: str | None = None) -> Any:
        transport = made(url)
        fetch = transport.fetch

        def counted(queues: Any, *, limit: int, timeout: Any) -> Any:
            got = fetch(queues, limit=limit, timeout=timeout)
            taken.append(len(got))
            return got

        transport.fetch = counted
        return transport

    app.transport_factory = recording  # type: ignore[method-assign]
    with app.Worker(queues=[queue], pool="solo", prefetch_multiplier=4).running():
        assert [r.get(timeout=10) for r in results] == [n * n for n in range(12)]
    assert [n for n in taken if n] == [4, 4, 4]


def test_a_solo_worker_stopping_gives_back_what_it_fetched_ahead(
        make_app: Any, dbs: redis.Redis, queue: str) -> None:
    """A solo worker sends its next claim with the early ack of the last task it
    holds, so Redis takes the batch while that task runs. Stopped during that task,
    the worker gives the batch back unrun: nothing stays leased, and the next worker
    runs every task once."""
    app = make_app()
    ran: list[int] = []
    last_of_first_claim = threading.Event()

    @app.task(name="t.step")
    def step(n: int) -> int:
        ran.append(n)
        if n == 3:
            last_of_first_claim.set()
            time.sleep(0.3)  # the claim of 4-7 sent with this task's ack runs meanwhile
        return n

    def queued() -> int:  # every priority step's list
        return sum(dbs.llen(key) for key in dbs.scan_iter(f"{queue}*"))

    results = app.publish_batch([("t.step", (n,), {}, {"queue": queue}, {})
                                 for n in range(12)])
    worker = app.Worker(queues=[queue], pool="solo", prefetch_multiplier=4)
    with worker.running():
        assert last_of_first_claim.wait(10)
        assert queued() == 4  # 4-7 taken ahead, 8-11 still queued
        worker.stop()  # warm: task 3 finishes, 4-7 go back
    assert ran == [0, 1, 2, 3]
    assert dbs.hlen("unacked") == 0 and dbs.zcard("unacked_index") == 0
    assert queued() == 8
    with app.Worker(queues=[queue], pool="solo", prefetch_multiplier=4).running():
        assert [r.get(timeout=10) for r in results] == list(range(12))
    assert sorted(ran) == list(range(12))  # each once


def _three_notes(app: Conveyor, queue: str) -> tuple[list[int], list[Any]]:
    """Three ``t.note(n)`` tasks queued on ``queue``: the list each run appends its
    ``n`` to, and their results."""
    ran: list[int] = []

    @app.task(name="t.note")
    def note(n: int) -> int:
        ran.append(n)
        return n

    return ran, app.publish_batch([("t.note", (n,), {}, {"queue": queue}, {})
                                   for n in range(3)])


def test_an_early_ack_applied_before_its_connection_failed_still_runs_the_task(
        make_app: Any, dbs: redis.Redis, queue: str) -> None:
    """The broker applies an early ack, then the connection fails before the reply:
    the worker reconnects, sends the ack again and runs the task, once. (Giving the
    delivery back instead would find no lease, and the task would never run.)"""
    app = make_app()
    ran, results = _three_notes(app, queue)
    made = app.transport_factory
    failed: list[int] = []

    def reply_lost_once(url: str | None = None) -> Any:
        transport = made(url)
        ack = transport.ack

        def applied_then_lost(deliveries: Any) -> None:
            ack(deliveries)
            if not failed:
                failed.append(len(deliveries))
                raise redis.ConnectionError("connection lost before the reply")

        transport.ack = applied_then_lost
        return transport

    app.transport_factory = reply_lost_once  # type: ignore[method-assign]
    with app.Worker(queues=[queue], pool="solo").running():
        assert [r.get(timeout=15) for r in results] == [0, 1, 2]
    assert failed == [1]
    assert sorted(ran) == [0, 1, 2]
    assert dbs.zcard("unacked_index") == 0 and dbs.hlen("unacked") == 0


def test_a_warm_stop_right_after_the_reconnect_still_runs_the_unsure_task(
        make_app: Any, dbs: redis.Redis, queue: str) -> None:
    """As above, but the worker is told to stop (warm) as soon as it has reconnected,
    before its loop could start the task: the task still runs, once, and the two
    tasks it had not started go back to the queue, none lost."""
    app = make_app()
    ran, results = _three_notes(app, queue)
    made = app.transport_factory
    failed: list[int] = []
    worker = app.Worker(queues=[queue], pool="solo")

    def reply_lost_then_stop(url: str | None = None) -> Any:
        transport = made(url)
        ack, connect = transport.ack, transport.connect

        def applied_then_lost(deliveries: Any) -> None:
            ack(deliveries)
            if not failed:
                failed.append(len(deliveries))
                raise redis.ConnectionError("connection lost before the reply")

        def connect_then_stop() -> None:
            connect()
            if failed:
                worker.stop()  # warm, before the loop's next turn

        transport.ack, transport.connect = applied_then_lost, connect_then_stop
        return transport

    app.transport_factory = reply_lost_then_stop  # type: ignore[method-assign]
    with worker.running():
        worker.stopped.wait(15)
    assert worker.stopped.is_set() and failed == [1]
    assert results[0].get(timeout=5) == 0
    assert ran == [0]
    assert dbs.zcard("unacked_index") == 0 and dbs.hlen("unacked") == 0
    app.transport_factory = made  # type: ignore[method-assign]
    with app.Worker(queues=[queue], pool="solo").running():  # the two given back
        assert [r.get(timeout=15) for r in results[1:]] == [1, 2]
    assert sorted(ran) == [0, 1, 2]


def test_unregistered_task_is_dead_lettered_and_get_raises(make_app: Any,
                                                           queue: str) -> None:
    app = make_app()
    with app.Worker(queues=[queue], concurrency=1, pool="threads").running():
        result = app.send_task("t.nobody", (1,), queue=queue)
        with pytest.raises(NotRegistered):
            result.get(timeout=10)
    transport = app.transport_factory()
    (dead,) = transport.dead_letters(queue)
    assert dead.message.task_id == result.id and "NotRegistered" in dead.reason
    transport.close()


def test_delivery_limit_dead_letters(make_app: Any, dbs: redis.Redis, queue: str) -> None:
    app = make_app()
    ran: list[int] = []

    @app.task(name="t.once")
    def once() -> None:
        ran.append(1)

    result = once.apply_async(queue=queue)
    import json
    tag = json.loads(dbs.lindex(f"{queue}\x06\x169", 0))["properties"]["delivery_tag"]
    dbs.hset("_conveyor.deliveries", tag, 5)  # as if it had killed five workers
    with app.Worker(queues=[queue], concurrency=1, pool="threads").running():
        with pytest.raises(Exception, match="[Dd]elivery limit"):
            result.get(timeout=10)
    assert ran == []


@pytest.mark.slow
@pytest.mark.parametrize("delayed_delivery", ["worker", "broker"])
def test_far_countdown_neither_runs_nor_duplicates(make_app: Any, dbs: redis.Redis,
                                                   queue: str, delayed_delivery: str) -> None:
    """A 1-hour countdown with visibility_timeout=2 is parked, not held: no run and
    no redelivery while a worker runs for three visibility timeouts (1.5 with
    producer-side parking). The worker's ETA horizon, lease renewal and the sweep
    that restores lapsed leases all scale with the visibility timeout."""
    vt = 2.0
    app = make_app(delayed_delivery=delayed_delivery, visibility_timeout=vt)
    ran: list[int] = []

    @app.task(name="t.later")
    def later() -> None:
        ran.append(1)

    later.apply_async(queue=queue, countdown=3600)
    seconds = 3 * vt if delayed_delivery == "worker" else 1.5 * vt
    with app.Worker(queues=[queue], concurrency=1, pool="threads").running():
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.5)
            assert ran == []
            assert dbs.llen(f"{queue}\x06\x169") + dbs.zcard("_conveyor.delayed") <= 1
    assert ran == []
    assert dbs.zcard("_conveyor.delayed") == 1 and dbs.hlen("unacked") == 0
    assert dbs.llen(f"{queue}\x06\x169") == 0


TASKS = '''
import os, time
from conveyor import Conveyor

app = Conveyor("t", broker=os.environ["T_BROKER"], backend=os.environ["T_BACKEND"],
               broker_transport_options={"visibility_timeout": float(os.environ["T_VT"])})


@app.task(name="t.slow_once", acks_late=True)
def slow_once(marker):
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\\n")
    with open(marker) as f:
        first = len(f.read().split()) == 1
    time.sleep(60 if first else 0)
    return "done"


@app.task(name="t.log", acks_late=True)
def log(path, n):
    time.sleep(0.01)
    with open(path, "a") as f:
        f.write(f"{n}\\n")
    return n
'''


@pytest.fixture
def task_module(tmp_path: Path) -> Path:
    (tmp_path / "t_redis_tasks.py").write_text(textwrap.dedent(TASKS))
    return tmp_path


def worker_proc(cwd: Path, broker: str, backend: str, queue: str, vt: float,
                *extra: str) -> Proc:
    proc = Proc([CONVEYOR_BIN, "-A", "t_redis_tasks", "-l", "INFO", "worker", "-Q", queue,
                 *extra], cwd, env={"T_BROKER": broker, "T_BACKEND": backend,
                                    "T_VT": str(vt)})
    proc.wait_output("consuming", 30)
    return proc


@pytest.mark.slow
def test_acks_late_task_of_a_killed_worker_is_redelivered_once(
        make_app: Any, task_module: Path, redis_server: str, queue: str) -> None:
    app = make_app()
    broker, backend = f"{redis_server}/{BROKER}", f"{redis_server}/{RESULTS}"
    marker = task_module / "marker.txt"
    result = app.send_task("t.slow_once", (str(marker),), queue=queue)
    with worker_proc(task_module, broker, backend, queue, 2, "-c", "1", "-P", "solo") as a:
        wait_for(marker.exists, 20, what="the first run to start")
        a.kill()
        a.popen.wait(5)
    with worker_proc(task_module, broker, backend, queue, 2, "-c", "1", "-P", "solo"):
        assert result.get(timeout=20) == "done"
        time.sleep(3)  # more than a visibility timeout: no third run
    assert len(marker.read_text().split()) == 2


@pytest.fixture
def spare_redis(tmp_path: Path) -> Iterator[Any]:
    """A throwaway redis-server with an fsync'd AOF, restartable, on a port the
    kernel found free (a fixed port could be another server's, whose PING would pass
    for this one's and which ``stop`` would not stop)."""
    server = shutil.which("redis-server")
    if server is None:
        why = "redis-server binary not found (needed for the restart test)"
        if os.environ.get("CONVEYOR_REQUIRE_SERVICES") == "1":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    data = tmp_path / "redis-data"
    data.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--dir", str(data)]
    state: dict[str, Any] = {}

    def start() -> None:
        state["proc"] = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        client = redis.Redis("127.0.0.1", port, socket_connect_timeout=0.5)
        wait_for(lambda: _pings(client), 10, what=f"redis on {port}")
        assert state["proc"].poll() is None, f"redis-server could not start on {port}"

    def stop() -> None:
        proc = state.pop("proc", None)
        if proc is not None:
            proc.terminate()  # SIGTERM: redis flushes the AOF and exits
            proc.wait(10)

    start()
    try:
        yield f"redis://127.0.0.1:{port}/0", start, stop
    finally:
        stop()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.mark.slow
def test_redis_restart_mid_drain_loses_nothing(spare_redis: Any, task_module: Path,
                                               queue: str) -> None:
    url, start, stop = spare_redis
    app = Conveyor("t", broker=url, backend=url,
                   broker_transport_options={"visibility_timeout": 4})
    log = task_module / "log.txt"
    log.touch()
    total = 300
    results = app.publish_batch([("t.log", (str(log), n), {}, {"queue": queue}, {})
                                 for n in range(total)])

    def done() -> set[int]:
        return {int(x) for x in log.read_text().split()}

    with worker_proc(task_module, url, url, queue, 4, "-c", "4", "-P", "threads") as w:
        wait_for(lambda: len(done()) > total // 4, 30, what="a quarter drained")
        stop()
        time.sleep(1.0)
        start()
        wait_for(lambda: len(done()) == total, 60, what="every task to run")
        assert "unreachable" in w.output() or "Lost the broker" in w.output()
        values = [r.get(timeout=30) for r in results]
    assert values == list(range(total))
    app.close()
    runs = log.read_text().split()
    print(f"{len(runs) - total} duplicate runs after the restart")
    threading.enumerate()  # nothing left running in this process
