"""The core worker on RabbitMQ: what a user of the amqp:// transport would notice.

In-process workers for behaviour; CLI worker subprocesses for what needs a process
to die (SIGKILL, a task that kills its worker) or the connection to go away.
Results go through the Redis backend (``CONVEYOR_TEST_REDIS_PORT``, db 6).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest
from amqp_support import Proc, depth, queue_info, rabbitmqctl, wait_for
from conveyor import Conveyor
from conveyor.exceptions import DeliveryLimitExceeded, NotRegistered

pytestmark = pytest.mark.amqp

REDIS_PORT = int(os.environ.get("CONVEYOR_TEST_REDIS_PORT", "6379"))
RESULTS = f"redis://127.0.0.1:{REDIS_PORT}/6"
CONVEYOR_BIN = str(Path(sys.executable).parent / "conveyor")

TASKS = '''
import os, time
from conveyor import Conveyor

app = Conveyor("t", broker=os.environ["T_BROKER"], backend=os.environ["T_BACKEND"],
               worker_max_deliveries=int(os.environ.get("T_MAX", "5")),
               task_default_queue_type=os.environ.get("T_QTYPE", "classic"),
               task_create_missing_queue_type=os.environ.get("T_QTYPE", "classic"))


@app.task(name="t.slow_once", acks_late=True)
def slow_once(marker):
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\\n")
    with open(marker) as f:
        first = len(f.read().split()) == 1
    time.sleep(60 if first else 0)
    return "done"


@app.task(name="t.die", acks_late=True)
def die(marker):
    with open(marker, "a") as f:
        f.write("run\\n")
    os._exit(1)


@app.task(name="t.log", acks_late=True)
def log(path, n):
    time.sleep(0.005)
    with open(path, "a") as f:
        f.write(f"{n}\\n")
    return n


@app.task(name="t.add")
def add(x, y):
    return x + y
'''


@pytest.fixture
def task_module(tmp_path: Path) -> Path:
    (tmp_path / "t_amqp_tasks.py").write_text(textwrap.dedent(TASKS))
    return tmp_path


def worker_proc(cwd: Path, broker: str, queue: str, *extra: str, **env: str) -> Proc:
    proc = Proc([CONVEYOR_BIN, "-A", "t_amqp_tasks", "-l", "INFO", "worker", "-Q", queue,
                 *extra], cwd, env={"T_BROKER": broker, "T_BACKEND": RESULTS, **env})
    proc.wait_output("consuming", 30)
    return proc


def cli(cwd: Path, broker: str, *args: str) -> str:
    proc = subprocess.run([CONVEYOR_BIN, "-A", "t_amqp_tasks", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "T_BROKER": broker, "T_BACKEND": RESULTS})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture
def app(amqp_url: str) -> Iterator[Conveyor]:
    app = Conveyor("t", broker=amqp_url, backend=RESULTS)
    yield app
    app.close()


def test_delay_get_and_batch_through_the_worker(app: Conveyor, queue: str) -> None:
    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    with app.Worker(queues=[queue], concurrency=2, pool="threads").running():
        assert add.apply_async((2, 2), queue=queue).get(timeout=10) == 4
        results = app.publish_batch([("t.add", (i, i), {}, {"queue": queue}, {})
                                     for i in range(50)])
        assert [r.get(timeout=10) for r in results] == [2 * i for i in range(50)]


def test_priorities_run_higher_first(amqp_url: str, queue: str) -> None:
    app = Conveyor("t", broker=amqp_url, backend=RESULTS, task_queue_max_priority=10)
    order: list[int] = []

    @app.task(name="t.record")
    def record(n: int) -> None:
        order.append(n)

    sent = [(0, None), (1, 3), (2, 10), (3, 0), (4, 9)]
    results = [record.apply_async((n,), queue=queue, priority=p) for n, p in sent]
    with app.Worker(queues=[queue], concurrency=1, pool="solo",
                    prefetch_multiplier=1).running():
        for r in results:
            r.get(timeout=10)
    assert order == [2, 4, 1, 0, 3]
    app.close()


def test_garbage_is_dead_lettered_while_the_worker_keeps_serving(
        app: Conveyor, amqp_url: str, queue: str, task_module: Path) -> None:
    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    first = add.apply_async((1, 1), queue=queue)  # declares the queue
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.basic_publish("", queue, b"\x00\xffnot a task")
    ch.basic_publish("", queue, b"[[1], {}, {}]", pika.BasicProperties(
        content_type="application/json", content_encoding="utf-8",
        headers={"id": "t-unknown", "task": "t.nobody", "lang": "py"}))
    conn.close()
    unknown = app.AsyncResult("t-unknown")
    with app.Worker(queues=[queue], concurrency=2, pool="threads").running():
        assert first.get(timeout=10) == 2
        with pytest.raises(NotRegistered):
            unknown.get(timeout=10)
        assert add.apply_async((2, 3), queue=queue).get(timeout=10) == 5
    lines = [json.loads(x) for x in cli(task_module, amqp_url, "dead", "list", "-Q", queue,
                                        "--json").splitlines()]
    assert len(lines) == 2
    by_task = {d["task_id"]: d for d in lines}
    assert "NotRegistered" in by_task["t-unknown"]["reason"]
    assert all(d["queue"] == queue for d in lines)
    assert depth(amqp_url, queue) == 0
    out = cli(task_module, amqp_url, "dead", "requeue", "t-unknown")
    assert "1" in out
    assert depth(amqp_url, queue) == 1
    assert "purged 1" in cli(task_module, amqp_url, "dead", "purge", "-Q", queue, "-f")
    assert cli(task_module, amqp_url, "dead", "list", "-Q", queue) == ""


@pytest.mark.slow
def test_acks_late_task_of_a_killed_worker_is_redelivered_and_run(
        app: Conveyor, amqp_url: str, task_module: Path, queue: str) -> None:
    marker = task_module / "marker.txt"
    result = app.send_task("t.slow_once", (str(marker),), queue=queue)
    with worker_proc(task_module, amqp_url, queue, "-c", "1", "-P", "solo") as a:
        wait_for(marker.exists, 20, what="the first run to start")
        a.kill()
        a.popen.wait(5)
    with worker_proc(task_module, amqp_url, queue, "-c", "1", "-P", "solo"):
        assert result.get(timeout=20) == "done"
    assert len(marker.read_text().split()) == 2


@pytest.mark.slow
@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_delivery_limit_dead_letters_a_task_that_kills_its_worker(
        amqp_url: str, task_module: Path, queue: str, queue_type: str) -> None:
    """worker_max_deliveries=2: the task runs twice, each run killing its worker; the
    third delivery is dead-lettered and get() raises DeliveryLimitExceeded."""
    app = Conveyor("t", broker=amqp_url, backend=RESULTS,
                   task_default_queue_type=queue_type,
                   task_create_missing_queue_type=queue_type)
    marker = task_module / "died.txt"
    result = app.send_task("t.die", (str(marker),), queue=queue)
    env = {"T_MAX": "2", "T_QTYPE": queue_type}
    for runs in (1, 2):
        with worker_proc(task_module, amqp_url, queue, "-c", "1", "-P", "solo",
                         **env) as w:
            wait_for(lambda: w.popen.poll() is not None, 20, what="the task to kill it")
        assert marker.read_text().split() == ["run"] * runs
    with worker_proc(task_module, amqp_url, queue, "-c", "1", "-P", "solo", **env):
        with pytest.raises(DeliveryLimitExceeded):
            result.get(timeout=20)
    assert marker.read_text().split() == ["run", "run"]
    dead = json.loads(cli(task_module, amqp_url, "dead", "list", "-Q", queue, "--json"))
    assert dead["task_id"] == result.id and "Delivery limit" in dead["reason"]
    app.close()


def drain_through(app: Conveyor, amqp_url: str, task_module: Path, queue: str,
                  interrupt: Callable[[], None], *points: int) -> str:
    """300 ``acks_late`` tasks drained by a CLI worker; ``interrupt()`` runs each
    time more than a ``point``-th of them ran. Every task must run and every result
    arrive; returns the worker's output."""
    log = task_module / "log.txt"
    log.touch()
    total = 300
    results = app.publish_batch([("t.log", (str(log), n), {}, {"queue": queue}, {})
                                 for n in range(total)])

    def done() -> set[int]:
        return {int(x) for x in log.read_text().split()}

    with worker_proc(task_module, amqp_url, queue, "-c", "4", "-P", "threads") as w:
        for point in points:
            wait_for(lambda: len(done()) > total // point, 30, what="progress")
            interrupt()
        wait_for(lambda: len(done()) == total, 90, what="every task to run")
        output = w.output()
    assert [r.get(timeout=30) for r in results] == list(range(total))
    return output


@pytest.mark.slow
def test_lost_connections_mid_drain_lose_nothing(app: Conveyor, amqp_url: str,
                                                 amqp_vhost: str, task_module: Path,
                                                 queue: str) -> None:
    """RabbitMQ closes every connection of the vhost twice while a worker drains:
    the worker reconnects by itself and every task runs (acks_late)."""
    output = drain_through(app, amqp_url, task_module, queue, lambda: rabbitmqctl(
        "close_all_connections", "-p", amqp_vhost, "conveyor test"), 4, 2)
    assert "Lost the broker" in output


def other_vhosts_connected(own: str) -> list[str]:
    """The vhosts other than ``own`` with a connection open now: another test run
    (or a user) on this machine's RabbitMQ."""
    rows = json.loads(rabbitmqctl("list_connections", "-q", "--formatter", "json",
                                  "vhost") or "[]")
    return sorted({row["vhost"] for row in rows} - {own})


def answers(url: str) -> bool:
    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
    except pika.exceptions.AMQPError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.broker_restart
def test_broker_restart_mid_drain_loses_nothing(app: Conveyor, amqp_url: str,
                                                amqp_vhost: str, task_module: Path,
                                                queue: str) -> None:
    """``rabbitmqctl stop_app``/``start_app`` while a worker drains: the worker
    reconnects with backoff by itself and every task runs.

    Stopping RabbitMQ breaks everything else that uses it at that moment, so this test
    runs last in its session (``tests/conftest.py``), only once no other vhost has a
    connection (another test run on the same machine: it is skipped after a minute of
    waiting, naming them; CI runs one session; ``CONVEYOR_TEST_RESTART_RABBITMQ=1``
    restarts it anyway, for a window agreed with the others), and ends once RabbitMQ
    answers again.
    """
    deadline = time.monotonic() + 60
    forced = os.environ.get("CONVEYOR_TEST_RESTART_RABBITMQ") == "1"
    while not forced and (others := other_vhosts_connected(amqp_vhost)) \
            and time.monotonic() < deadline:
        time.sleep(1)
    if not forced and others:
        if os.environ.get("CONVEYOR_REQUIRE_SERVICES") == "1":  # CI: one session, so never
            pytest.fail(f"RabbitMQ is in use by connections of other vhosts {others}: "
                        "in CI nothing else may hold it; the restart test cannot run")
        pytest.skip(f"RabbitMQ is in use by connections of other vhosts {others}: "
                    "restarting it would break them")
    outages: list[float] = []

    def restart() -> None:
        stopped = time.monotonic()
        try:
            rabbitmqctl("stop_app")
        finally:
            rabbitmqctl("start_app")
            wait_for(lambda: answers(amqp_url), 60, interval=0.2,
                     what="RabbitMQ to accept connections again")
            outages.append(time.monotonic() - stopped)

    try:
        output = drain_through(app, amqp_url, task_module, queue, restart, 4)
    finally:
        if not outages:  # failed before restart() finished: never leave it down
            wait_for(lambda: answers(amqp_url), 60, interval=0.5,
                     what="RabbitMQ to accept connections again")
    print(f"RabbitMQ was down for {outages[0]:.1f}s")
    assert "Lost the broker" in output



def test_jobs_prefetched_behind_a_running_task_run_once_after_a_lost_channel(
        app: Conveyor, amqp_vhost: str, queue: str) -> None:
    """The channel is lost while a task runs and others wait behind it: the broker
    redelivers them and each runs once. The threads pool queues no job on AMQP (a
    job it started after the loss, unnoticed while the pool was full, could not be
    acked, and would run again from the redelivery)."""
    import threading

    release, runs = threading.Event(), []

    @app.task(name="t.hold")
    def hold() -> None:
        assert release.wait(60)

    @app.task(name="t.mark")
    def mark(n: int) -> int:
        runs.append(n)
        return n

    worker = app.Worker(queues=[queue], concurrency=1, pool="threads",
                        prefetch_multiplier=4)
    with worker.running():
        held = hold.apply_async(queue=queue)
        marked = [mark.apply_async((n,), queue=queue) for n in range(3)]
        wait_for(lambda: worker.running_jobs() and worker.waiting_jobs(), 20,
                 what="the held task running, others prefetched behind it")
        rabbitmqctl("close_all_connections", "-p", amqp_vhost, "conveyor test")
        time.sleep(0.5)  # the connections closed before the held task finishes
        release.set()
        assert held.get(timeout=30) is None
        assert [r.get(timeout=30) for r in marked] == [0, 1, 2]
        time.sleep(0.5)  # time enough for a second run of a job to show
    assert sorted(runs) == [0, 1, 2]


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_long_tasks_behind_a_full_pool_keep_the_connections_alive(amqp_url: str,
                                                                  queue: str,
                                                                  pool: str) -> None:
    """With a short heartbeat (1 s: RabbitMQ closes a connection silent for two),
    acks_late tasks of 3 s each run one after another with others prefetched behind
    them: the worker fetches nothing meanwhile, but its connection stays open, so
    each task runs once and is acked. The control thread's reply connection stays
    open too: a ping after the quiet spell is answered."""
    app = Conveyor("t", broker=amqp_url, backend=RESULTS,
                   broker_transport_options={"heartbeat": 1})
    runs: list[int] = []

    @app.task(name="t.long", acks_late=True)
    def long(n: int) -> int:
        runs.append(n)
        time.sleep(3)
        return n

    try:
        worker = app.Worker(queues=[queue], concurrency=1, pool=pool)
        with worker.running():
            results = [long.apply_async((n,), queue=queue) for n in range(3)]
            assert [r.get(timeout=40) for r in results] == [0, 1, 2]
            time.sleep(1.5)  # a second run of an unacked task would start by now
            replies = app.control.ping([worker.hostname], timeout=3)
            assert [worker.hostname in reply for reply in replies] == [True], replies
        assert runs == [0, 1, 2]
    finally:
        app.close()


def test_a_queue_deleted_under_the_worker_is_declared_again_and_consumed(
        app: Conveyor, amqp_vhost: str, queue: str) -> None:
    """RabbitMQ cancels the consumer of a deleted queue; the worker declares the queue
    again and consumes it (as Celery's worker does when it reconnects), instead of
    waiting for ever on a subscription that is gone."""
    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    with app.Worker(queues=[queue], concurrency=2, pool="threads").running():
        assert add.apply_async((1, 2), queue=queue).get(timeout=10) == 3
        rabbitmqctl("delete_queue", "-p", amqp_vhost, queue)
        wait_for(lambda: queue in queue_info(amqp_vhost), 20,
                 what="the worker declaring the deleted queue again")
        assert add.apply_async((2, 2), queue=queue).get(timeout=10) == 4


def test_a_warm_shutdown_waiting_for_a_long_task_keeps_the_connection(
        amqp_url: str, queue: str) -> None:
    """A warm shutdown waits for a running ``acks_late`` task longer than two
    heartbeats (1 s here): the connection stays open meanwhile, so the task is
    acked when it ends and its message is not given back to run again."""
    app = Conveyor("t", broker=amqp_url, backend=RESULTS,
                   broker_transport_options={"heartbeat": 1})
    started = []

    @app.task(name="t.long_stop", acks_late=True)
    def long_stop() -> str:
        started.append(1)
        time.sleep(4)
        return "done"

    try:
        worker = app.Worker(queues=[queue], concurrency=1, pool="threads")
        with worker.running():
            result = long_stop.apply_async(queue=queue)
            wait_for(lambda: started, 20, what="the task running")
            worker.stop(warm=True)
            assert worker.stopped.wait(30), "the worker did not stop"
        assert result.get(timeout=10) == "done"
        time.sleep(0.5)  # a give-back would show in the queue by now
        assert depth(amqp_url, queue) == 0
    finally:
        app.close()
