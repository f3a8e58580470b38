"""Interop with real Celery 5.7 / kombu 5.7 on Redis (broker db 11, results db 12).

* a Celery worker subprocess (``celery -A … worker -P solo``) runs what Conveyor
  publishes (json, msgpack, compression, link, expires, priorities), and restores a
  message a dead Conveyor consumer leased;
* a Conveyor worker runs what a Celery client publishes (json, msgpack, compression,
  countdown parked broker-side, link), restores a message a killed Celery worker held,
  and each side reads the results the other wrote.

Celery is a test-only dependency; the plugin never imports it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celery_peer
import pytest
import redis
from celery_peer import write_celery_app
from conveyor import Conveyor, signature
from conveyor.exceptions import TaskRevokedError
from conveyor.interfaces import Route
from conveyor_redis import RedisTransport
from redis_support import HOST, PORT, Proc, make_message, wait_for

celery = pytest.importorskip("celery")

BROKER_DB, RESULT_DB = 11, 12
CELERY_QUEUE = "t.redis.celery"


@pytest.fixture(scope="module")
def urls(redis_server: str) -> Iterator[tuple[str, str]]:
    """Broker and result URLs (dbs 11 and 12), flushed around the module."""
    clients = [redis.Redis(HOST, PORT, db=d) for d in (BROKER_DB, RESULT_DB)]
    for c in clients:
        c.flushdb()
    yield f"{redis_server}/{BROKER_DB}", f"{redis_server}/{RESULT_DB}"
    for c in clients:
        c.flushdb()
        c.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: Any) -> Path:
    return write_celery_app(tmp_path_factory.mktemp("celery-interop"))


def celery_worker(workdir: Path, urls: tuple[str, str], queue: str, vt: float) -> Proc:
    return celery_peer.celery_worker(workdir, urls[0], urls[1], queue, C_VT=str(vt))


def conveyor_app(urls: tuple[str, str], **conf: Any) -> Conveyor:
    app = Conveyor("interop", broker=urls[0], backend=urls[1],
                   accept_content=["json", "msgpack"], **conf)
    return app


@pytest.fixture(scope="module")
def leased_before_celery_started(urls: tuple[str, str], workdir: Path) -> Path:
    """A message a Conveyor consumer took and died with (its lease is old)."""
    marker = workdir / "restored.txt"
    app = conveyor_app(urls)
    app.send_task("interop.record", (str(marker), 1), queue=CELERY_QUEUE)
    t = RedisTransport(urls[0], app)
    (d,) = t.fetch([CELERY_QUEUE], limit=1, timeout=2)
    client = redis.Redis.from_url(urls[0])
    client.zadd("unacked_index", {d.tag.tag: time.time() - 3600})
    client.close()
    app.close()
    return marker


@pytest.fixture(scope="module")
def celery_consumer(urls: tuple[str, str], workdir: Path,
                    leased_before_celery_started: Path) -> Iterator[Proc]:
    with celery_worker(workdir, urls, CELERY_QUEUE, vt=60) as proc:
        yield proc


# ----------------------------------------------------------------- Conveyor -> Celery
@pytest.mark.parametrize(("serializer", "compression"), [
    ("json", None), ("msgpack", None), ("json", "zlib"), ("msgpack", "lzma"),
    ("json", "bzip2")])
def test_celery_worker_runs_what_conveyor_publishes(celery_consumer: Proc,
                                                    urls: tuple[str, str],
                                                    serializer: str,
                                                    compression: str | None) -> None:
    app = conveyor_app(urls)
    result = app.send_task("interop.add", (2, 3), queue=CELERY_QUEUE,
                           serializer=serializer, compression=compression)
    assert result.get(timeout=20) == 5
    app.close()


def test_celery_worker_applies_conveyor_link(celery_consumer: Proc,
                                             urls: tuple[str, str]) -> None:
    app = conveyor_app(urls)
    callback = signature("interop.add", args=(10,), app=app, queue=CELERY_QUEUE)
    result = app.send_task("interop.add", (2, 2), queue=CELERY_QUEUE, link=callback)
    assert result.get(timeout=20) == 4
    (child,) = wait_for(lambda: app.AsyncResult(result.id).children, 10, what="children")
    assert child.get(timeout=20) == 14
    app.close()


def test_celery_worker_revokes_conveyor_expired_task(celery_consumer: Proc,
                                                     urls: tuple[str, str]) -> None:
    app = conveyor_app(urls)
    result = app.send_task("interop.add", (1, 1), queue=CELERY_QUEUE, countdown=1.0,
                           expires=0.5)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=20)
    app.close()


def test_celery_worker_restores_what_a_dead_conveyor_consumer_leased(
        celery_consumer: Proc, leased_before_celery_started: Path) -> None:
    """kombu's sweep (every 10 s) reads our unacked entry and runs the message."""
    wait_for(leased_before_celery_started.exists, 40, interval=0.2,
             what="the Celery worker to restore and run the leased message")
    assert leased_before_celery_started.read_text().split() == ["1"]


def test_conveyor_priority_means_the_same_to_a_celery_worker(
        urls: tuple[str, str], workdir: Path) -> None:
    queue = "t.redis.celery.prio"
    path = workdir / "prio.txt"
    app = conveyor_app(urls)
    sent = [(0, None), (1, 0), (2, 9), (3, 5), (4, 200), (5, 1)]
    results = [app.send_task("interop.record", (str(path), n), queue=queue, priority=p)
               for n, p in sent]
    with celery_worker(workdir, urls, queue, vt=60):
        for r in results:
            r.get(timeout=20)
    assert [int(x) for x in path.read_text().split()] == [2, 4, 3, 5, 0, 1]
    app.close()


# ----------------------------------------------------------------- Celery -> Conveyor
@pytest.fixture
def celery_client(urls: tuple[str, str]) -> Iterator[Any]:
    capp = celery.Celery("client", broker=urls[0], backend=urls[1])
    capp.conf.update(accept_content=["json", "msgpack"], broker_connection_retry=False,
                     broker_connection_retry_on_startup=False)
    yield capp
    capp.close()


@pytest.fixture
def conveyor_worker(urls: tuple[str, str]) -> Iterator[Conveyor]:
    app = conveyor_app(urls, worker_eta_horizon=0.5)

    @app.task(name="interop.add")
    def add(x: int, y: int) -> int:
        return x + y

    with app.Worker(queues=["t.redis.conveyor"], concurrency=2, pool="threads").running():
        yield app
    app.close()


@pytest.mark.parametrize(("serializer", "compression"), [
    ("json", None), ("msgpack", None), ("json", "zlib"), ("json", "gzip")])
def test_conveyor_worker_runs_what_celery_publishes(conveyor_worker: Conveyor,
                                                    celery_client: Any, serializer: str,
                                                    compression: str | None) -> None:
    result = celery_client.send_task("interop.add", (20, 22), queue="t.redis.conveyor",
                                     serializer=serializer, compression=compression)
    assert result.get(timeout=15) == 42
    assert conveyor_worker.AsyncResult(result.id).get(timeout=5) == 42


def test_celery_countdown_is_parked_by_the_conveyor_worker(conveyor_worker: Conveyor,
                                                           celery_client: Any) -> None:
    start = time.monotonic()
    result = celery_client.send_task("interop.add", (1, 2), queue="t.redis.conveyor",
                                     countdown=2)
    client = redis.Redis.from_url(celery_client.conf.broker_url)
    wait_for(lambda: client.zcard("_conveyor.delayed") == 1, 5, what="the park")
    assert client.hlen("unacked") == 0
    assert result.get(timeout=15) == 3
    assert time.monotonic() - start >= 1.8
    client.close()


def test_celery_link_runs_on_the_conveyor_worker(conveyor_worker: Conveyor,
                                                 celery_client: Any) -> None:
    callback = celery_client.signature("interop.add", args=(100,),
                                       options={"queue": "t.redis.conveyor"})
    result = celery_client.send_task("interop.add", (1, 1), queue="t.redis.conveyor",
                                     link=callback)
    assert result.get(timeout=15) == 2
    children = wait_for(lambda: celery_client.AsyncResult(result.id).children, 10,
                        what="children")
    assert children[0].get(timeout=15) == 102


def test_conveyor_restores_what_a_killed_celery_worker_held(urls: tuple[str, str],
                                                            workdir: Path) -> None:
    """A Celery worker holds an ETA task unacked; it is SIGKILLed; Conveyor's sweep
    restores kombu's unacked entry and a Conveyor worker runs it."""
    queue = "t.redis.celery.killed"
    path = workdir / "killed.txt"
    capp = celery.Celery("client", broker=urls[0], backend=urls[1])
    client = redis.Redis.from_url(urls[0])
    with celery_worker(workdir, urls, queue, vt=60) as held:
        # sent once the worker consumes (a slow start must not let the ETA pass first)
        result = capp.send_task("interop.record", (str(path), 7), queue=queue, countdown=5)
        wait_for(lambda: client.hlen("unacked") >= 1 and client.llen(queue) == 0, 15,
                 what="the Celery worker to hold the ETA task")
        entry = json.loads(next(iter(client.hvals("unacked"))))
        assert entry[0]["headers"]["id"] == result.id and entry[1:] == ["", queue]
        held.kill()
        held.popen.wait(5)
    app = conveyor_app(urls, broker_transport_options={"visibility_timeout": 1})

    @app.task(name="interop.record")
    def record(p: str, n: int) -> int:
        with open(p, "a") as f:
            f.write(f"{n}\n")
        return n

    with app.Worker(queues=[queue], concurrency=1, pool="threads").running():
        assert capp.AsyncResult(result.id).get(timeout=20) == 7
    assert path.read_text().split() == ["7"]
    app.close()
    capp.close()
    client.close()


def test_direct_transport_message_is_run_by_celery(celery_consumer: Proc,
                                                   urls: tuple[str, str]) -> None:
    """A Message published through the bare transport (no core) is a valid task."""
    import uuid
    app = conveyor_app(urls)
    t = RedisTransport(urls[0], app)
    task_id = str(uuid.uuid4())
    message = make_message(0)
    message.headers.update(task="interop.add", id=task_id, root_id=task_id)
    message.body = b'[[5, 6], {}, {"callbacks": null, "errbacks": null, "chain": null, ' \
        b'"chord": null}]'
    t.publish(message, Route(CELERY_QUEUE))
    assert app.AsyncResult(task_id).get(timeout=20) == 11
    t.close()
    app.close()


def test_a_celery_clients_chord_is_joined_by_a_conveyor_worker(conveyor_worker: Conveyor,
                                                             celery_client: Any) -> None:
    """A Celery client sets the join size (``.s``) and sends the header with the body
    in embed.chord; the Conveyor worker counts the header in Celery's keys and sends
    the body once, after both."""
    header = [celery_client.signature("interop.add", args=(i, i),
                                      options={"queue": "t.redis.conveyor"})
              for i in (1, 2)]
    body = celery_client.signature("interop.add", args=(10, 20), immutable=True,
                                   options={"queue": "t.redis.conveyor"})
    result = celery.chord(header)(body)
    assert result.get(timeout=20) == 30
    assert result.parent.get(timeout=5) == [2, 4]
