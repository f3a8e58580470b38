"""The asyncio client on the real RabbitMQ (aio-pika): what the blocking client does,
awaited, with no thread behind it (this session's vhost, queues ``t.amqp.*``;
results through the Redis backend, db 6)."""

from __future__ import annotations

import asyncio
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from amqp_support import depth, make_vhost, rabbitmqctl, url_for, wait_for
from conveyor import Conveyor
from conveyor_amqp.errors import ChannelError
from test_amqp_worker import RESULTS, worker_proc

pytestmark = pytest.mark.amqp

TASKS = '''
import os
from conveyor import Conveyor

app = Conveyor("t", broker=os.environ["T_BROKER"], backend=os.environ["T_BACKEND"])


@app.task(name="t.add")
def add(x, y):
    return x + y
'''


@pytest.fixture
def make_app(amqp_url: str) -> Iterator[Any]:
    apps: list[Conveyor] = []

    def make(**conf: Any) -> Conveyor:
        app = Conveyor("t", broker=amqp_url, backend=conf.pop("backend", RESULTS), **conf)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def _send(app: Conveyor, queue: str, **options: Any) -> Any:
    return app.asend_task("t.add", (2, 2), queue=queue, **options)


def test_round_trip_through_a_real_worker_without_a_thread(
        make_app: Any, amqp_url: str, queue: str, tmp_path: Path) -> None:
    (tmp_path / "t_amqp_tasks.py").write_text(textwrap.dedent(TASKS))
    app = make_app()

    async def main() -> tuple[list[int], set[str]]:
        before = {t.name for t in threading.enumerate()}
        try:
            now = await (await _send(app, queue)).aget(timeout=20)
            started = time.monotonic()
            later = await (await _send(app, queue, countdown=1.5)).aget(timeout=20)
            assert time.monotonic() - started >= 1.5

            async def one(n: int) -> int:
                sent = await app.asend_task("t.add", (n, n), queue=queue)
                return await sent.aget(timeout=20)

            many = await asyncio.gather(*(one(n) for n in range(50)))
            return [now, later, *many], {t.name for t in threading.enumerate()} - before
        finally:
            await app.aclose()

    worker = worker_proc(tmp_path, amqp_url, queue)
    try:
        found, new_threads = asyncio.run(main())
    finally:
        worker.stop()
    assert found == [4, 4, *(2 * n for n in range(50))]
    assert new_threads == set()  # aio-pika and redis.asyncio: the loop does the I/O


def test_declares_as_the_blocking_client_and_routes_through_bindings(
        make_app: Any, amqp_url: str, queue: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.exchange_declare(f"{queue}.topic", "topic", durable=True)
    ch.queue_declare(f"{queue}.a", durable=True)
    ch.queue_bind(f"{queue}.a", f"{queue}.topic", routing_key="jobs.#")
    app = make_app(task_queue_max_priority=10)

    async def main() -> None:
        try:
            await asyncio.gather(*(_send(app, queue) for _ in range(20)))
            await _send(app, queue, exchange=f"{queue}.topic", routing_key="jobs.now")
            await _send(app, queue, exchange=f"{queue}.topic", routing_key="nothing.here")
        finally:
            await app.aclose()

    asyncio.run(main())
    wait_for(lambda: (depth(amqp_url, queue), depth(amqp_url, f"{queue}.a")) == (21, 1),
             5, what="routing")
    # the queue was declared with x-max-priority=10, as the blocking client declares it
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.queue_declare(queue, durable=True)
    conn.close()


def test_channel_errors_carry_rabbitmqs_reply(make_app: Any, queue: str) -> None:
    make_app(task_queue_max_priority=10).send_task("t.add", queue=queue)
    app = make_app()

    async def main() -> None:
        try:
            with pytest.raises(ChannelError) as info:
                await _send(app, queue)
            assert info.value.reply_code == 406 and "x-max-priority" in str(info.value)
            with pytest.raises(ChannelError) as missing:
                await _send(app, f"{queue}.other", exchange=f"{queue}.nowhere",
                            routing_key="x")
            assert missing.value.reply_code == 404
            assert (await _send(app, f"{queue}.fine")).id  # a new channel serves on
        finally:
            await app.aclose()

    asyncio.run(main())


def test_rpc_results_come_back_to_the_loops_own_reply_queue(
        make_app: Any, amqp_url: str, queue: str, tmp_path: Path) -> None:
    (tmp_path / "t_amqp_tasks.py").write_text(textwrap.dedent(TASKS))
    app = make_app(backend="rpc://")

    async def main() -> tuple[list[int], set[str]]:
        before = {t.name for t in threading.enumerate()}
        try:
            first = await _send(app, queue)
            sent = [await app.asend_task("t.add", (n, n), queue=queue) for n in range(20)]
            found = [await first.aget(timeout=20),
                     *await asyncio.gather(*(r.aget(timeout=20) for r in sent))]
            return found, {t.name for t in threading.enumerate()} - before
        finally:
            await app.aclose()

    worker = worker_proc(tmp_path, amqp_url, queue, T_BACKEND="rpc://")
    try:
        found, new_threads = asyncio.run(main())
    finally:
        worker.stop()
    assert found == [4, *(2 * n for n in range(20))]
    assert new_threads == set()


def test_a_countdown_parks_in_the_delay_layout_with_delayed_delivery_broker() -> None:
    vhost = make_vhost()  # its own: the delay layout is per vhost, and others count it
    url = url_for(vhost)
    app = Conveyor("t", broker=url, backend=RESULTS,
                   broker_transport_options={"delayed_delivery": "broker"})
    queue = "t.amqp.parked"

    async def main() -> None:
        try:
            await asyncio.gather(*(_send(app, queue, countdown=600) for _ in range(3)))
        finally:
            await app.aclose()

    try:
        asyncio.run(main())
        wait_for(lambda: sum(depth(url, f"celery_delayed_{n}") for n in range(28)) == 3,
                 5, what="three parked messages")
        assert depth(url, queue) == 0
    finally:
        app.close()
        rabbitmqctl("delete_vhost", vhost)


def test_a_send_after_rabbitmq_closed_the_connection_goes_through(
        make_app: Any, amqp_vhost: str, queue: str) -> None:
    """RabbitMQ closes the asyncio client's connection between two sends (an
    operator, a restart, missed heartbeats): the second send opens a new one."""
    app = make_app()

    async def main() -> None:
        await _send(app, queue)
        rabbitmqctl("close_all_connections", "-p", amqp_vhost, "conveyor test")
        await asyncio.sleep(1)  # the close reaches the client
        await _send(app, queue)

    asyncio.run(main())
    wait_for(lambda: depth(app.broker_url, queue) == 2, 10, what="both sent")
