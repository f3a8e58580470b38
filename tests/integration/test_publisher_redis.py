"""A buffering publisher against real Redis (127.0.0.1:6379, db 15 only).

The Redis plugin's tests own dbs 8–13, the contract tests 14 and the bench 8–11;
these use 15 and flush it before and after. Queue names start with ``t.pub.``.
A small TCP proxy in front of Redis stands in for a broker that goes away.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor, group
from conveyor.exceptions import OperationalError
from conveyor_pytest.proxy import TcpProxy
from redis_dbs import flush_dbs

HOST, PORT, DB = "127.0.0.1", int(os.environ.get("CONVEYOR_TEST_REDIS_PORT", "6379")), 15
pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def redis_client() -> Iterator[Any]:
    import redis  # a dev dependency: present wherever the tests run
    flush_dbs(DB)
    client = redis.Redis(HOST, PORT, db=DB, socket_connect_timeout=1)
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def queue() -> str:
    return f"t.pub.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_app(redis_client: Any) -> Iterator[Any]:
    apps: list[Conveyor] = []

    def make(broker: str = f"redis://{HOST}:{PORT}/{DB}", **settings: Any) -> Conveyor:
        app = Conveyor(f"pub{len(apps)}", broker=broker,
                       backend=f"redis://{HOST}:{PORT}/{DB}", **settings)

        @app.task(name="t.add")
        def add(x: int, y: int) -> int:
            return x + y

        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def depth(app: Conveyor, queue: str) -> int:
    """Messages waiting in ``queue``, over its four priority lists."""
    transport = app.transport_factory(f"redis://{HOST}:{PORT}/{DB}")
    transport.connect()
    try:
        return transport.depth(queue)
    finally:
        transport.close()


def test_buffers_go_out_as_one_pipeline_each(make_app: Any, queue: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app()
    add = app.tasks["t.add"]
    with app.pool.acquire() as conn:
        sizes: list[int] = []
        real = conn.publish_many
        monkeypatch.setattr(conn, "publish",
                            lambda *a, **k: pytest.fail("one round trip per message"))
        monkeypatch.setattr(conn, "publish_many",
                            lambda batch, **kw: (sizes.append(len(batch)), real(batch, **kw)))
        with add.get_publisher(conn) as pub:
            for i in range(2500):
                add.apply_async((i, i), queue=queue, publisher=pub)
            assert depth(app, queue) == 2000 and pub.pending == 500
        assert depth(app, queue) == 2500
    assert sizes == [1000, 1000, 500]


def test_nothing_reaches_redis_before_the_flush(make_app: Any, queue: str) -> None:
    app = make_app()
    add = app.tasks["t.add"]
    with app.pool.acquire() as conn:
        with add.get_publisher(conn, buffer=100) as pub:
            for i in range(40):
                add.apply_async((i, i), queue=queue, priority=i % 10, publisher=pub)
            group(add.s(i, i).set(queue=queue) for i in range(10)).apply_async(publisher=pub)
            assert depth(app, queue) == 0
            pub.flush()
            assert depth(app, queue) == 50
        with pytest.raises(ZeroDivisionError):
            with add.get_publisher(conn) as pub:
                add.apply_async((1, 1), queue=queue, publisher=pub)
                1 / 0  # noqa: B018 - the block fails after handing a message over
        assert depth(app, queue) == 51


def test_get_inside_the_block_flushes_and_does_not_hang(make_app: Any, queue: str) -> None:
    app = make_app()
    add = app.tasks["t.add"]
    with app.Worker(queues=[queue], pool="threads", concurrency=2).running():
        with app.pool.acquire() as conn, add.get_publisher(conn) as pub:
            results = [add.apply_async((i, i), queue=queue, publisher=pub)
                       for i in range(20)]
            assert pub.pending == 20
            assert results[-1].get(timeout=10) == 38
            job = group(add.s(i, 1) for i in range(5)).apply_async(queue=queue,
                                                                   publisher=pub)
            assert job.get(timeout=10) == [1, 2, 3, 4, 5]
        assert [r.get(timeout=10) for r in results] == [2 * i for i in range(20)]


def test_a_broker_outage_during_the_flush_raises_operational_error(
        make_app: Any, queue: str) -> None:
    proxy = TcpProxy(HOST, PORT)
    policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.05,
              "interval_max": 0.1}
    app = make_app(broker=f"redis://127.0.0.1:{proxy.port}/{DB}",
                   task_publish_retry_policy=policy, broker_connection_timeout=1)
    add = app.tasks["t.add"]
    try:
        with app.pool.acquire() as conn:
            with add.get_publisher(conn) as pub:
                sent = [add.apply_async((i, i), queue=queue, publisher=pub)
                        for i in range(3)]
            assert depth(app, queue) == 3
            proxy.cut()
            with pytest.raises(OperationalError) as info:
                with add.get_publisher(conn) as pub:
                    lost = add.apply_async((9, 9), queue=queue, publisher=pub)
                    add.apply_async((8, 8), queue=queue, publisher=pub)
            assert "gave up after 3 attempts" in str(info.value)  # max_retries=2
            assert "batch of 2 buffered messages failed" in "".join(info.value.__notes__)
            with pytest.raises(OperationalError, match="may never have reached the broker"):
                lost.get(timeout=1)
    finally:
        proxy.cut()
    assert depth(app, queue) == 3 and len(sent) == 3
