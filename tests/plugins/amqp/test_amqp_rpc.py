"""The rpc:// result backend on RabbitMQ, alone and with real Celery 5.7 on each side.

Results go to the caller's reply queue (named in ``reply_to``) keyed by the task id
(``correlation_id``), as Celery's ``rpc`` backend sends and reads them.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from amqp_support import Proc
from conveyor import Conveyor, chord, signature
from conveyor.exceptions import ConfigurationError

celery = pytest.importorskip("celery")

pytestmark = pytest.mark.amqp

CELERY_APP = '''
import os
from celery import Celery

app = Celery("rpcinterop", broker=os.environ["C_BROKER"], backend="rpc://")
app.conf.update(accept_content=["json", "msgpack"], result_accept_content=["json", "msgpack"],
                worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False,
                result_serializer=os.environ.get("C_RESULT_SERIALIZER", "json"))


@app.task(name="rpc.add")
def add(x, y):
    return x + y


@app.task(name="rpc.boom")
def boom():
    raise ValueError("boom")
'''


def rpc_app(amqp_url: str, **conf: Any) -> Conveyor:
    return Conveyor("rpc", broker=amqp_url, backend="rpc://",
                    accept_content=["json", "msgpack"], **conf)


@pytest.fixture
def app(amqp_url: str) -> Iterator[Conveyor]:
    app = rpc_app(amqp_url)

    @app.task(name="rpc.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="rpc.boom")
    def boom() -> None:
        raise ValueError("boom")

    yield app
    app.close()


def test_conveyor_to_conveyor(app: Conveyor, queue: str) -> None:
    with app.Worker(queues=[queue], concurrency=2, pool="threads").running():
        result = app.send_task("rpc.add", (2, 3), queue=queue)
        assert result.get(timeout=10) == 5
        many = [app.send_task("rpc.add", (i, i), queue=queue) for i in range(20)]
        assert [r.get(timeout=10) for r in many] == [2 * i for i in range(20)]
        with pytest.raises(ValueError, match="boom"):
            app.send_task("rpc.boom", queue=queue).get(timeout=10)


def test_reply_queue_is_celerys(app: Conveyor, amqp_url: str, queue: str) -> None:
    """Named in reply_to, durable, auto-deleted, expiring after result_expires."""
    result = app.send_task("rpc.add", (1, 1), queue=queue)
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    _m, props, _b = ch.basic_get(queue, auto_ack=True)
    assert props.reply_to and props.correlation_id == result.id
    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="PRECONDITION"):
        ch.queue_declare(props.reply_to, durable=True, auto_delete=False)
    ch = conn.channel()
    ch.queue_declare(props.reply_to, durable=True, auto_delete=True,
                     arguments={"x-expires": 86400 * 1000})  # Celery's declaration
    conn.close()


def test_a_chord_with_rpc_is_refused_naming_backends_that_can(app: Conveyor,
                                                               queue: str) -> None:
    """rpc:// has no shared state to count a chord's header down (no ``joins``)."""
    header = [signature("rpc.add", (i, i), app=app, queue=queue) for i in range(3)]
    body = signature("rpc.add", (0,), app=app, queue=queue)
    with pytest.raises(ConfigurationError) as info:
        chord(header, body).apply_async()
    assert "rpc://" in str(info.value) and "redis://" in str(info.value)


def test_rpc_needs_an_amqp_broker() -> None:
    app = Conveyor("rpc", broker="memory://rpc", backend="rpc://")
    with pytest.raises(ConfigurationError, match="amqp://"):
        app.backend  # noqa: B018


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: Any) -> Path:
    path = tmp_path_factory.mktemp("celery-rpc")
    (path / "celery_rpc.py").write_text(textwrap.dedent(CELERY_APP))
    return path


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_celery_worker_answers_a_conveyor_client(amqp_url: str, workdir: Path,
                                                 serializer: str) -> None:
    queue = "t.amqp.rpc.celery"
    app = rpc_app(amqp_url, result_serializer=serializer)
    with Proc([sys.executable, "-m", "celery", "-A", "celery_rpc", "worker", "-P", "solo",
               "-c", "1", "-Q", queue, "-l", "INFO", "--without-gossip", "--without-mingle",
               "-n", f"rpc-{serializer}@%h"], workdir,  # heartbeat on: see celery_peer
              env={"C_BROKER": amqp_url, "C_RESULT_SERIALIZER": serializer}) as proc:
        proc.wait_output("ready.", 40)
        result = app.send_task("rpc.add", (20, 22), queue=queue, serializer=serializer)
        assert result.get(timeout=20) == 42
        with pytest.raises(ValueError, match="boom"):
            app.send_task("rpc.boom", queue=queue).get(timeout=20)
    app.close()


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_conveyor_worker_answers_a_celery_client(app: Conveyor, amqp_url: str,
                                                 serializer: str) -> None:
    queue = "t.amqp.rpc.conveyor"
    app.conf.update(result_serializer=serializer)
    capp = celery.Celery("client", broker=amqp_url, backend="rpc://")
    capp.conf.update(accept_content=["json", "msgpack"],
                     result_accept_content=["json", "msgpack"],
                     result_serializer=serializer)
    with app.Worker(queues=[queue], concurrency=2, pool="threads").running():
        result = capp.send_task("rpc.add", (1, 2), queue=queue, serializer=serializer)
        assert result.get(timeout=20) == 3
        failed = capp.send_task("rpc.boom", queue=queue)
        with pytest.raises(Exception, match="boom"):
            failed.get(timeout=20)
    capp.close()


def test_results_wait_in_the_reply_queue_while_the_caller_reads_nothing(
        amqp_url: str, queue: str) -> None:
    """A caller sends a task, then reads nothing for longer than two heartbeats
    (1 s here) while the worker (another app: its own connections) sends the
    result: the reply queue and the result are still there when it asks."""
    beat = {"broker_transport_options": {"heartbeat": 1}}
    worker_app, client = rpc_app(amqp_url, **beat), rpc_app(amqp_url, **beat)

    @worker_app.task(name="rpc.slow_add")
    def slow_add(x: int, y: int) -> int:
        time.sleep(4)  # the caller's connection is silent for 2 heartbeats by now
        return x + y

    try:
        with worker_app.Worker(queues=[queue], concurrency=1, pool="threads").running():
            result = client.send_task("rpc.slow_add", (3, 4), queue=queue)
            time.sleep(6)  # the result came meanwhile
            assert result.get(timeout=10) == 7
    finally:
        client.close()
        worker_app.close()
