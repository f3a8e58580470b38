"""Fixtures for the Redis plugin tests: real Redis on 127.0.0.1:6379, dbs 8–13 only.

db map (nothing else is touched, and only these dbs are ever flushed):
  8  transport unit tests          11  Celery interop broker
  9  core worker integration       12  Celery interop results
  10 core worker results           13  backend unit tests

When Redis does not answer the tests that need it skip with the reason, or fail when
``CONVEYOR_REQUIRE_SERVICES=1`` (CI). Queue names all start with ``t.redis.``.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # for redis_support (unique name: shadows nothing)
    sys.path.append(_HERE)

from redis_support import HOST, PORT  # noqa: E402
DBS = {"transport": 8, "worker": 9, "worker_results": 10, "celery": 11,
       "celery_results": 12, "backend": 13}


def _redis_problem() -> str | None:
    try:
        redis.Redis(HOST, PORT, socket_connect_timeout=1, socket_timeout=2).ping()
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def redis_server() -> str:
    """Redis answers on 127.0.0.1:6379, or the test skips (fails under CI)."""
    problem = _redis_problem()
    if problem:
        reason = (f"Redis on {HOST}:{PORT} does not answer ({problem}); start it with "
                  f"`redis-server --daemonize yes --bind 127.0.0.1 --port {PORT} "
                  "--save '' --appendonly no`")
        if os.environ.get("CONVEYOR_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " (CONVEYOR_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(reason)
    return f"redis://{HOST}:{PORT}"


def _flushed(db: int) -> Iterator[redis.Redis]:
    assert 8 <= db <= 13, "the Redis tests own dbs 8-13 only"
    client = redis.Redis(HOST, PORT, db=db)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def r(redis_server: str) -> Iterator[redis.Redis]:
    """A raw client on the transport db (8), flushed before and after the test."""
    yield from _flushed(DBS["transport"])


@pytest.fixture
def rb(redis_server: str) -> Iterator[redis.Redis]:
    """A raw client on the backend test db (13), flushed before and after."""
    yield from _flushed(DBS["backend"])


@pytest.fixture
def broker_url(redis_server: str) -> str:
    return f"{redis_server}/{DBS['transport']}"


@pytest.fixture
def queue() -> str:
    return f"t.redis.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_transport(r: redis.Redis, broker_url: str) -> Iterator[Callable[..., Any]]:
    """Transports on db 8; keyword arguments are broker_transport_options."""
    from conveyor_redis import RedisTransport
    from redis_support import stub_app

    made: list[Any] = []

    def make(url: str | None = None, **options: Any) -> Any:
        transport = RedisTransport(url or broker_url, stub_app(**options))
        made.append(transport)
        return transport

    yield make
    for transport in made:
        try:
            transport.close()
        except Exception:  # noqa: BLE001 - a test may have broken it on purpose
            pass
