"""Redis dbs a test module owns: flushed on the suite's Redis, or the test skips
(fails when ``CONVEYOR_REQUIRE_SERVICES=1``, as in CI).

``CONVEYOR_TEST_REDIS_PORT`` points the suite at another local Redis, so parallel
runs on one machine cannot flush each other's dbs.

Who owns which db: see ``PORT``'s comment below. Dbs shared by two modules are
flushed by each before use, and the suite runs one module at a time.
"""

from __future__ import annotations

import os

import pytest
import redis

#: Who owns which db (a module declares its own; keep this list in step):
#: 0 test_flower_events, 1 test_monitor_page and test_remote_control, 2 kombu_lab,
#: 3 fault_lab, 4-5 test_canvas_celery, 6-7 canvas_lab (also the results of
#: tests/plugins/amqp), 8-13 tests/plugins/redis (9-10 also test_inspect_queues,
#: 11-12 test_redis_interop), 14 test_asyncio and the contracts, 15
#: test_publisher_redis and test_exchange_routing.
HOST, PORT = "127.0.0.1", int(os.environ.get("CONVEYOR_TEST_REDIS_PORT", "6379"))


def flush_dbs(*dbs: int) -> list[str]:
    """Empty ``dbs`` and return their URLs, in order."""
    try:
        for db in dbs:
            client = redis.Redis(HOST, PORT, db=db, socket_connect_timeout=1)
            try:
                client.flushdb()
            finally:
                client.close()
    except redis.RedisError as exc:
        reason = (f"Redis on {HOST}:{PORT} does not answer ({exc}); start it with "
                  f"`redis-server --daemonize yes --bind 127.0.0.1 --port {PORT} "
                  "--save '' --appendonly no`")
        if os.environ.get("CONVEYOR_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " (CONVEYOR_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(reason)
    return [f"redis://{HOST}:{PORT}/{db}" for db in dbs]
