"""Interop with real Celery 5.7 / kombu 5.7 on RabbitMQ, in this session's vhost.

* a Celery worker subprocess (``celery worker -P solo``) runs what Conveyor publishes
  (json, msgpack, compression, link, expires, priority, countdown);
* a Conveyor worker runs what a Celery client publishes (json, msgpack, link,
  countdown parked in the delay layout);
* both declare the same queues: neither side's declaration fails with
  ``PRECONDITION_FAILED`` after the other's.

Results go through the Redis backend here (``CONVEYOR_TEST_REDIS_PORT``, db 7);
``test_amqp_rpc.py`` covers ``rpc://``. Celery is a test-only dependency.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celery_peer
import pytest
from amqp_support import Proc, depth, queue_info, wait_for
from celery_peer import write_celery_app
from conveyor import Conveyor, signature
from conveyor.exceptions import TaskRevokedError, TimeoutError

celery = pytest.importorskip("celery")

pytestmark = pytest.mark.amqp

REDIS_PORT = int(os.environ.get("CONVEYOR_TEST_REDIS_PORT", "6379"))
RESULTS = f"redis://127.0.0.1:{REDIS_PORT}/7"
CELERY_QUEUE = "t.amqp.celery"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: Any) -> Path:
    return write_celery_app(tmp_path_factory.mktemp("celery-amqp"))


def celery_worker(workdir: Path, broker: str, queue: str, **env: str) -> Proc:
    return celery_peer.celery_worker(workdir, broker, RESULTS, queue, **env)


def conveyor_app(broker: str, **conf: Any) -> Conveyor:
    return Conveyor("interop", broker=broker, backend=RESULTS,
                    accept_content=["json", "msgpack"], **conf)


@pytest.fixture(scope="module")
def celery_consumer(amqp_url: str, workdir: Path) -> Iterator[Proc]:
    with celery_worker(workdir, amqp_url, CELERY_QUEUE) as proc:
        yield proc


# ----------------------------------------------------------------- Conveyor -> Celery
@pytest.mark.parametrize(("serializer", "compression"), [
    ("json", None), ("msgpack", None), ("json", "zlib"), ("msgpack", "lzma")])
def test_celery_worker_runs_what_conveyor_publishes(celery_consumer: Proc, amqp_url: str,
                                                    serializer: str,
                                                    compression: str | None) -> None:
    app = conveyor_app(amqp_url)
    result = app.send_task("interop.add", (2, 3), queue=CELERY_QUEUE,
                           serializer=serializer, compression=compression)
    assert result.get(timeout=20) == 5
    app.close()


def test_celery_worker_applies_conveyor_link(celery_consumer: Proc, amqp_url: str) -> None:
    app = conveyor_app(amqp_url)
    callback = signature("interop.add", args=(10,), app=app, queue=CELERY_QUEUE)
    result = app.send_task("interop.add", (2, 2), queue=CELERY_QUEUE, link=callback)
    assert result.get(timeout=20) == 4
    (child,) = wait_for(lambda: app.AsyncResult(result.id).children, 10, what="children")
    assert child.get(timeout=20) == 14
    app.close()


def test_celery_worker_revokes_conveyor_expired_task(celery_consumer: Proc,
                                                     amqp_url: str) -> None:
    """Expired by the time it is due: the Celery worker marks it REVOKED.

    ``expires`` is also the message's TTL on RabbitMQ (as Celery sends it), and a
    message that expires in the queue is dropped by the broker with no state written;
    so it must reach the worker before it expires, and expire before it is due."""
    app = conveyor_app(amqp_url)
    # The worker is consuming right now (a round trip), so the message reaches it
    # long before its TTL, even on a loaded machine.
    assert app.send_task("interop.add", (0, 1), queue=CELERY_QUEUE).get(timeout=30) == 1
    result = app.send_task("interop.add", (1, 1), queue=CELERY_QUEUE, countdown=8.0,
                           expires=6.0)
    try:
        with pytest.raises(TaskRevokedError):
            result.get(timeout=30)
    except TimeoutError as exc:  # once under CI load: say where the message was
        raise AssertionError(
            f"{exc}\nqueue depth: {depth(amqp_url, CELERY_QUEUE)}\nCelery worker log (tail):\n"
            f"{celery_consumer.output()[-3000:]}") from exc
    finally:
        app.close()


def test_celery_worker_runs_conveyor_countdown_not_early(celery_consumer: Proc,
                                                         amqp_url: str) -> None:
    app = conveyor_app(amqp_url)
    start = time.monotonic()
    result = app.send_task("interop.add", (4, 4), queue=CELERY_QUEUE, countdown=2)
    assert result.get(timeout=20) == 8
    assert time.monotonic() - start >= 1.9
    app.close()


def test_conveyor_priority_means_the_same_to_a_celery_worker(amqp_url: str,
                                                             workdir: Path) -> None:
    """Sent while nobody consumes, to a queue both declare with x-max-priority 10:
    the Celery worker takes the higher first, unprioritised last."""
    queue = "t.amqp.celery.prio"
    path = workdir / "prio.txt"
    app = conveyor_app(amqp_url, task_queue_max_priority=10)
    sent = [(0, None), (1, 3), (2, 10), (3, 7), (4, 9)]
    results = [app.send_task("interop.record", (str(path), n), queue=queue, priority=p)
               for n, p in sent]
    with celery_worker(workdir, amqp_url, queue, C_MAXPRI="10"):
        for r in results:
            r.get(timeout=45)
    order = [int(x) for x in path.read_text().split()]
    assert order == [2, 4, 3, 1, 0]
    app.close()


@pytest.mark.parametrize("order", ["conveyor first", "celery first"])
def test_declarations_match_celery(amqp_url: str, amqp_vhost: str, order: str) -> None:
    """Celery's declaration of a queue (what its worker and client declare, through
    kombu) and Conveyor's are the same: whichever comes first, the other is accepted
    (no PRECONDITION_FAILED), for classic, priority and quorum queues."""
    cases = [("classic", {}, {}),
             ("prio", {"task_queue_max_priority": 10}, {"x-max-priority": 10}),
             ("quorum", {"task_create_missing_queue_type": "quorum"},
              {"x-queue-type": "quorum"})]
    for kind, conf, arguments in cases:
        queue = f"t.amqp.decl.{kind}.{order[0:2]}"
        capp = celery.Celery("decl", broker=amqp_url, backend=RESULTS, **conf)
        app = conveyor_app(amqp_url, **conf)
        with capp.connection_for_write() as conn:
            declare = capp.amqp.queues[queue](conn.default_channel).declare
            if order == "celery first":
                declare()
            assert app.send_task("interop.add", (1, 2), queue=queue).id
            if order == "conveyor first":
                declare()
        app.close()
        capp.close()
        row = queue_info(amqp_vhost)[queue]
        assert row["arguments"] == arguments
        assert row["durable"] and not row["auto_delete"]
        assert row["type"] == ("quorum" if kind == "quorum" else "classic")
        assert depth(amqp_url, queue) == 1


# ----------------------------------------------------------------- Celery -> Conveyor
@pytest.fixture
def celery_client(amqp_url: str) -> Iterator[Any]:
    capp = celery.Celery("client", broker=amqp_url, backend=RESULTS)
    capp.conf.update(accept_content=["json", "msgpack"], broker_connection_retry=False,
                     broker_connection_retry_on_startup=False)
    yield capp
    capp.close()


@pytest.fixture
def conveyor_worker(amqp_url: str) -> Iterator[Conveyor]:
    app = conveyor_app(amqp_url, worker_eta_horizon=0.5)

    @app.task(name="interop.add")
    def add(x: int, y: int) -> int:
        return x + y

    with app.Worker(queues=["t.amqp.conveyor"], concurrency=2, pool="threads").running():
        yield app
    app.close()


@pytest.mark.parametrize(("serializer", "compression"), [
    ("json", None), ("msgpack", None), ("json", "gzip")])
def test_conveyor_worker_runs_what_celery_publishes(conveyor_worker: Conveyor,
                                                    celery_client: Any, serializer: str,
                                                    compression: str | None) -> None:
    result = celery_client.send_task("interop.add", (20, 22), queue="t.amqp.conveyor",
                                     serializer=serializer, compression=compression)
    assert result.get(timeout=15) == 42
    assert conveyor_worker.AsyncResult(result.id).get(timeout=5) == 42


def test_celery_countdown_is_parked_by_the_conveyor_worker(
        conveyor_worker: Conveyor, celery_client: Any, amqp_url: str) -> None:
    """Due in 3 s, past the worker's 0.5 s horizon: parked in celery_delayed_*
    (nothing unacked in the worker), back when due, run once, never early."""
    start = time.monotonic()
    result = celery_client.send_task("interop.add", (1, 2), queue="t.amqp.conveyor",
                                     countdown=3)
    wait_for(lambda: sum(depth(amqp_url, f"celery_delayed_{n}") for n in range(3)) == 1,
             5, what="the message parked in the delay layout")
    assert result.get(timeout=15) == 3
    assert time.monotonic() - start >= 2.9


def test_celery_link_runs_on_the_conveyor_worker(conveyor_worker: Conveyor,
                                                 celery_client: Any) -> None:
    callback = celery_client.signature("interop.add", args=(100,),
                                       options={"queue": "t.amqp.conveyor"})
    result = celery_client.send_task("interop.add", (1, 1), queue="t.amqp.conveyor",
                                     link=callback)
    assert result.get(timeout=15) == 2
    children = wait_for(lambda: celery_client.AsyncResult(result.id).children, 10,
                        what="children")
    assert children[0].get(timeout=15) == 102


# ----------------------------------------------------------------- the delay layout
def test_celery_quorum_worker_and_conveyor_worker_share_the_delay_layout(
        amqp_url: str, workdir: Path) -> None:
    """A Celery 5.7 worker on quorum queues sets up native delayed delivery
    (``celery_delayed_*``, quorum); a Conveyor worker on the same queue parks a
    countdown in that same layout, and it comes back when due, run once, never
    early. Then a Celery worker starts over what Conveyor declared: no error."""
    queue = "t.amqp.shared.delays"
    path = workdir / "shared.txt"
    with celery_worker(workdir, amqp_url, queue, C_QUORUM="1") as celery_proc:
        wait_for(lambda: depth(amqp_url, "celery_delayed_27") == 0
                 and "delayed delivery" in celery_proc.output().lower(), 20,
                 what="Celery to set up native delayed delivery")
    assert "Failed to setup delayed delivery" not in celery_proc.output()

    app = conveyor_app(amqp_url, task_default_queue=queue, task_default_queue_type="quorum",
                       worker_eta_horizon=0.5)

    @app.task(name="interop.record")
    def record(p: str, n: int) -> int:
        with open(p, "a") as f:
            f.write(f"{n}\n")
        return n

    start = time.monotonic()
    result = record.apply_async((str(path), 1), countdown=3)
    with app.Worker(queues=[queue], concurrency=1, pool="threads").running():
        wait_for(lambda: sum(depth(amqp_url, f"celery_delayed_{n}") for n in range(3)) == 1,
                 5, what="the Conveyor worker to park it in Celery's layout")
        assert result.get(timeout=20) == 1
        assert time.monotonic() - start >= 2.9
        time.sleep(1)
    assert path.read_text().split() == ["1"]
    with celery_worker(workdir, amqp_url, queue, C_QUORUM="1") as again:
        result = app.send_task("interop.record", (str(path), 2), queue=queue)
        assert result.get(timeout=20) == 2
    assert "Failed to setup delayed delivery" not in again.output()
    assert "PRECONDITION" not in again.output()
    app.close()
