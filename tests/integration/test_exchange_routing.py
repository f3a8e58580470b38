"""``exchange`` + ``routing_key`` reach the queue bound to them, with a real worker
process, on SQLite and Redis; on Redis through kombu's binding sets, so Celery's
bindings and Conveyor's are one table."""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conveyor_pytest.fixtures import require_service, worker_process

from conveyor import Conveyor
from conveyor.interfaces import Route

PORT = int(os.environ.get("CONVEYOR_TEST_REDIS_PORT", "6379"))
REDIS_URL = f"redis://127.0.0.1:{PORT}/15"

PROJ = '''
from conveyor import Conveyor
from conveyor.interfaces import Route
app = Conveyor("routing_proj")

@app.task(name="routing_proj.where", bind=True)
def where(self):
    return self.request.delivery_info["queue"]
'''


@pytest.fixture(params=["sqlite", "redis"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'routing.sqlite3'}"
        return
    require_service("Redis", "127.0.0.1", PORT)
    import redis
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def proj(tmp_path: Path, broker: str) -> dict[str, str]:
    (tmp_path / "routing_proj.py").write_text(textwrap.dedent(PROJ))
    return {"CONVEYOR_BROKER_URL": broker, "CONVEYOR_RESULT_BACKEND": broker,
            "PYTHONPATH": str(tmp_path)}


def test_exchange_and_routing_key_reach_the_worker_consuming_that_queue(
        proj: dict[str, str], broker: str, tmp_path: Path) -> None:
    app = Conveyor(f"routing-client-{uuid.uuid4().hex[:6]}", broker=broker, backend=broker)
    try:
        with worker_process("routing_proj", queues=["high"], env=proj, cwd=str(tmp_path)):
            # Celery's automatic queue: exchange and routing key named like the queue
            result = app.send_task("routing_proj.where", exchange="high", routing_key="high")
            assert result.get(timeout=20) == "high"
            # an exchange nobody bound: the message goes to its route's queue
            lost = app.send_task("routing_proj.where", queue="high", exchange="nobody",
                                 routing_key="x")
            assert lost.get(timeout=20) == "high"
    finally:
        app.close()


def test_celery_and_conveyor_share_the_binding_table_on_redis() -> None:
    require_service("Redis", "127.0.0.1", PORT)
    import redis
    from kombu import Connection, Exchange, Queue
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    app = Conveyor(f"routing-share-{uuid.uuid4().hex[:6]}", broker=REDIS_URL,
                   backend="memory://routing-share")
    transport = app.transport_factory()
    transport.connect()
    try:
        # kombu declares queue "kq" on its own direct exchange "kx" with key "rk"
        with Connection(REDIS_URL) as conn:
            Queue("kq", Exchange("kx", type="direct"), routing_key="rk")(conn.channel()).declare()
        app.send_task("any.task", exchange="kx", routing_key="rk")
        assert transport.depth("kq") == 1 and transport.depth("celery") == 0
        # a Conveyor worker's declare writes the binding kombu reads
        transport.declare(Route("cq"))
        assert client.smembers("_kombu.binding.cq") == {b"cq\x06\x16\x06\x16cq"}
        with Connection(REDIS_URL) as conn:
            conn.Producer().publish({"x": 1}, exchange="cq", routing_key="cq")
        assert transport.depth("cq") == 1
    finally:
        transport.close()
        app.close()
        client.flushdb()
        client.close()
