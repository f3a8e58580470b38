"""Remote control on RabbitMQ with real processes, in this session's vhost: Celery
5.7's CLI reaches a Conveyor worker through the ``celery.pidbox`` fanout exchange and
Conveyor's CLI a Celery worker; ``revoke --terminate`` stops a running task. Results
go through the Redis backend (db 7, as in ``test_amqp_interop.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celery_peer
import pytest
from amqp_support import Proc, queue_info, rabbitmqctl, wait_for
from workers import conveyor_worker, run_cli, write_project

from conveyor import Conveyor

pytest.importorskip("celery")
pytestmark = pytest.mark.amqp

REDIS_PORT = int(os.environ.get("CONVEYOR_TEST_REDIS_PORT", "6379"))
RESULTS = f"redis://127.0.0.1:{REDIS_PORT}/7"
QUEUE = "t.amqp.control"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: Any) -> Path:
    path = celery_peer.write_celery_app(tmp_path_factory.mktemp("amqp-control"))
    return write_project(path, "proj_arc", ["tick"])


def _env(workdir: Path, url: str) -> dict[str, str]:
    return {"CONVEYOR_BROKER_URL": url, "CONVEYOR_RESULT_BACKEND": RESULTS,
            "PYTHONPATH": str(workdir), "C_BROKER": url, "C_BACKEND": RESULTS,
            "C_QUEUE": f"{QUEUE}.celery"}


def cli(workdir: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("proj_arc", workdir, _env(workdir, url), *args)


@pytest.fixture(scope="module")
def worker(workdir: Path, amqp_url: str) -> Iterator[Proc]:
    with conveyor_worker("proj_arc", workdir, _env(workdir, amqp_url), name="arc1@test",
                         queues=[QUEUE]) as proc:
        yield proc


def test_celery_cli_pings_a_conveyor_worker(worker: Proc, workdir: Path,
                                            amqp_url: str) -> None:
    out = cli(workdir, amqp_url, "celery", "inspect", "ping", "-d", "arc1@test",
              "--timeout", "10", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout) == {"arc1@test": {"ok": "pong"}}


def test_conveyor_cli_pings_a_celery_worker(worker: Proc, workdir: Path,
                                            amqp_url: str) -> None:
    with celery_peer.celery_worker(workdir, amqp_url, RESULTS, f"{QUEUE}.celery"):
        def status() -> subprocess.CompletedProcess[str] | None:
            """1.5 s of replies a try (not 5 s once), asked until both answered."""
            out = cli(workdir, amqp_url, "status", "--timeout", "1.5", "--json")
            return out if out.stdout.count('"ok"') >= 2 else None

        out = wait_for(status, 30, what="both workers' pongs")
        assert out.returncode == 0, out.stdout + out.stderr
        replies = json.loads(out.stdout)
        assert replies.pop("arc1@test") == {"ok": "pong"}
        [(name, reply)] = replies.items()
        assert name.startswith(f"{QUEUE}.celery@") and reply == {"ok": "pong"}


def test_revoke_terminate_stops_a_running_task(worker: Proc, workdir: Path, amqp_url: str,
                                               tmp_path: Path) -> None:
    side = tmp_path / "ticks.txt"
    app = Conveyor("proj_arc_client", broker=amqp_url, backend=RESULTS)
    try:
        result = app.send_task("proj_arc.tick", (str(side), 400), queue=QUEUE)
        wait_for(lambda: side.exists() and len(side.read_text().splitlines()) >= 3, 20,
                 what="the task to start")
        out = cli(workdir, amqp_url, "control", "revoke", result.id, "--terminate", "-d",
                  "arc1@test", "--timeout", "10")
        assert f"terminate: {result.id}" in out.stdout, out.stdout + out.stderr
        wait_for(lambda: result.state == "REVOKED", 10, what="state REVOKED")
        time.sleep(0.3)
        count = len(side.read_text().splitlines())
        time.sleep(1.0)
        assert len(side.read_text().splitlines()) == count < 400
    finally:
        app.close()


def test_a_worker_whose_control_queue_was_deleted_subscribes_again(
        amqp_url: str, amqp_vhost: str) -> None:
    """RabbitMQ cancels the subscription of a deleted pidbox queue; the worker's
    control thread subscribes again, so it answers a ping afterwards instead of
    never again."""
    app = Conveyor("t", broker=amqp_url, backend="memory://t-pidbox")
    try:
        worker = app.Worker(queues=["t.amqp.pidbox"], concurrency=1, pool="threads")
        with worker.running():
            assert [list(r) for r in app.control.ping([worker.hostname], timeout=3)] \
                == [[worker.hostname]]
            pidbox = f"{worker.hostname}.celery.pidbox"
            rabbitmqctl("delete_queue", "-p", amqp_vhost, pidbox)
            wait_for(lambda: pidbox in queue_info(amqp_vhost), 20,
                     what="the control thread subscribing again")
            assert [list(r) for r in app.control.ping([worker.hostname], timeout=3)] \
                == [[worker.hostname]]
    finally:
        app.close()


def test_queues_added_and_cancelled_through_app_control(amqp_url: str) -> None:
    """RabbitMQ pushes to a subscription until it is cancelled: ``cancel_consumer``
    cancels the worker's subscription to the queue, so what is sent there later
    waits for another consumer instead of being pushed to this worker."""
    app = Conveyor("t", broker=amqp_url, backend="memory://t-amqp-queues")

    @app.task(name="t.amqp.add")
    def add(x: int, y: int) -> int:
        return x + y

    try:
        worker = app.Worker(queues=["t.amqp.q1"], concurrency=1, pool="threads")
        with worker.running():
            [reply] = app.control.add_consumer("t.amqp.q2", [worker.hostname],
                                               reply=True, timeout=5)
            assert reply == {worker.hostname: {"ok": "add consumer t.amqp.q2"}}
            assert add.apply_async((2, 3), queue="t.amqp.q2").get(timeout=20) == 5
            [reply] = app.control.cancel_consumer("t.amqp.q2", [worker.hostname],
                                                  reply=True, timeout=5)
            assert reply == {worker.hostname: {"ok": "no longer consuming from t.amqp.q2"}}
            wait_for(lambda: worker.queues == ["t.amqp.q1"], 10, what="the cancel")
            assert add.apply_async((1, 1), queue="t.amqp.q1").get(timeout=20) == 2
            left = add.apply_async((2, 2), queue="t.amqp.q2")
            time.sleep(1.0)
            assert left.state == "PENDING"
        # the message waits in RabbitMQ for the next worker of the queue
        worker = app.Worker(queues=["t.amqp.q2"], concurrency=1, pool="threads")
        with worker.running():
            assert left.get(timeout=20) == 4
    finally:
        app.close()


def _consumer_prefetch(vhost: str, queue: str) -> int:
    """What RabbitMQ lets its consumers of ``queue`` hold unacked, all together."""
    out = rabbitmqctl("list_consumers", "-q", "-p", vhost, "--formatter", "json",
                      "queue_name", "prefetch_count")
    return sum(row["prefetch_count"] for row in json.loads(out or "[]")
               if row["queue_name"] == queue)


def test_pool_grow_and_shrink_change_what_rabbitmq_sends(amqp_vhost: str,
                                                         amqp_url: str) -> None:
    """RabbitMQ fixes a consumer's prefetch when it subscribes: a worker started with
    one slot and ``worker_prefetch_multiplier=1`` is sent one message at a time, so
    after ``pool_grow`` the new slots would wait for messages RabbitMQ never sends.
    The worker gives the transport its new prefetch: three tasks that each wait
    until all three have started finish after growing by two (each would time out
    alone), and shrinking gives RabbitMQ's prefetch back."""
    queue = "t.amqp.grow"
    app = Conveyor("t", broker=amqp_url, backend="memory://t-amqp-grow",
                   worker_prefetch_multiplier=1)
    together = threading.Barrier(3)

    @app.task(name="t.amqp.together")
    def meet() -> int:
        return together.wait(timeout=10)

    try:
        worker = app.Worker(queues=[queue], concurrency=1, pool="threads")
        with worker.running():
            wait_for(lambda: _consumer_prefetch(amqp_vhost, queue) == 1, 20,
                     what="the first subscription, prefetch 1")
            [reply] = app.control.pool_grow(2, destination=[worker.hostname],
                                            reply=True, timeout=5)
            assert reply == {worker.hostname: {"ok": "pool will grow"}}
            wait_for(lambda: _consumer_prefetch(amqp_vhost, queue) == 3, 20,
                     what="RabbitMQ's prefetch raised to 3")
            results = [meet.apply_async(queue=queue) for _ in range(3)]
            assert sorted(r.get(timeout=30) for r in results) == [0, 1, 2]
            [reply] = app.control.pool_shrink(2, destination=[worker.hostname],
                                              reply=True, timeout=5)
            assert reply == {worker.hostname: {"ok": "pool will shrink"}}
            wait_for(lambda: _consumer_prefetch(amqp_vhost, queue) == 1, 20,
                     what="RabbitMQ's prefetch back to 1")
    finally:
        app.close()
