"""Flower 2.2 (Celery's monitor) started against Redis sees a Conveyor worker (on
``redis://`` or the kombu bridge's ``kombu+redis://``) started with ``-E``, or
without it (Flower's periodic ``enable_events`` turns its events on, in the
processes pool's children too), and the task it ran, through
Flower's own HTTP API: the events have Celery's fields, exchange and routing keys,
and the worker answers the remote control commands Flower sends for
``/api/workers``."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conveyor import Conveyor
from monitor_lab import free_port, get_json
from processes import Proc, wait_for
from redis_dbs import flush_dbs
from workers import conveyor_worker

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PROJ = '''
from conveyor import Conveyor

app = Conveyor("proj_fl")

@app.task(name="proj_fl.mul")
def mul(x, y):
    return x * y
'''

#: The redis db this module owns (broker and results).
DB = 0
WORKER = "conveyor-fl@flower-test"


def _get(url: str) -> Any:
    try:
        return get_json(url)
    except OSError:
        return None  # not serving yet


@pytest.mark.parametrize(("pool", "events", "broker"), [
    ("threads", True, "redis"), ("processes", True, "redis"), ("processes", False, "redis"),
    ("threads", True, "kombu+redis")])
def test_flower_lists_a_conveyor_worker_and_its_succeeded_task(tmp_path: Path, pool: str,
                                                               events: bool,
                                                               broker: str) -> None:
    """``kombu+redis``: the worker and the client on the kombu bridge over the Redis
    Flower reads (kombu's Redis transport carries the events and commands)."""
    (url,) = flush_dbs(DB)
    conveyor_broker = url if broker == "redis" else "kombu+" + url
    (tmp_path / "proj_fl.py").write_text(textwrap.dedent(PROJ))
    env = {"CONVEYOR_BROKER_URL": conveyor_broker, "CONVEYOR_RESULT_BACKEND": url,
           "PYTHONPATH": str(tmp_path), "FLOWER_UNAUTHENTICATED_API": "true"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flower = Proc([sys.executable, "-m", "celery", "--broker", url, "flower",
                   "--address=127.0.0.1", f"--port={port}"], tmp_path, env,
                  log=tmp_path / "flower.log")
    with flower:
        wait_for(lambda: _get(base + "/api/workers") is not None
                 or flower.popen.poll() is not None, 60, interval=0.2,
                 what="Flower serving its API")
        assert flower.popen.poll() is None, flower.output()[-3000:]
        with conveyor_worker("proj_fl", tmp_path, env, name=WORKER, pool=pool,
                             events=events) as worker:
            # Flower lists it from its heartbeats (and so receives events now).
            workers = wait_for(lambda: (_get(base + "/api/workers?status=true") or {})
                               .get(WORKER), 30, interval=0.3,
                               what=f"Flower's /api/workers?status=true listing {WORKER}")
            assert workers is True  # alive: its heartbeats arrive
            if not events:
                assert "Task events enabled (remote control)" in worker.output()
            client = Conveyor("proj_fl-client", broker=conveyor_broker, backend=url,
                              task_send_sent_event=True)
            try:
                result = client.send_task("proj_fl.mul", (6, 7))
                assert result.get(timeout=20) == 42
            finally:
                client.close()

            def task_seen() -> dict[str, Any] | None:
                tasks = _get(base + "/api/tasks") or {}
                found = tasks.get(result.id)
                # task-sent goes out on the client's own events connection, so it may
                # reach Flower after the worker's events: wait for both.
                return found if found and found.get("state") == "SUCCESS" \
                    and found.get("sent") else None

            task = wait_for(task_seen, 30, interval=0.3,
                            what=f"Flower's /api/tasks listing {result.id} as SUCCESS, sent")
            assert task["name"] == "proj_fl.mul"
            assert task["worker"] == WORKER
            assert task["result"] == "42"
            assert task["received"] and task["started"] and task["runtime"] is not None

            # Plain /api/workers is what Flower asked the workers by remote control
            # (inspect stats, active_queues, registered, conf) and their replies.
            info = wait_for(lambda: (_get(base + "/api/workers?refresh=1") or {})
                            .get(WORKER), 30, interval=0.5,
                            what=f"Flower's /api/workers?refresh=1 listing {WORKER}")
            assert info["registered"] == ["proj_fl.mul"], info
            assert info["stats"]["pool"]["max-concurrency"] == 2, info
            assert info["stats"]["total"] == {"proj_fl.mul": 1}, info
            assert [q["name"] for q in info["active_queues"]] == ["celery"], info

        offline = wait_for(lambda: (_get(base + "/api/workers?status=true") or {})
                           .get(WORKER) is False, 30, interval=0.3,
                           what=f"{WORKER} offline in Flower after a warm shutdown")
        assert offline
