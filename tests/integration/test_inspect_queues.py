"""``conveyor inspect queues`` against a real worker process on SQLite, Redis and
RabbitMQ: the numbers match what was published, parked, leased and dead-lettered, and
what RabbitMQ cannot count per queue (parked, leased, by priority) is shown as not
counted, never as 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conveyor import Conveyor
from conveyor_pytest.fixtures import worker_process
from rabbit_vhosts import own_vhost, url_for
from redis_dbs import flush_dbs

PROJ = '''
import os
import time
from pathlib import Path

from conveyor import Conveyor

options = {"delayed_delivery": "broker"}
if not os.environ["CONVEYOR_BROKER_URL"].startswith("amqp"):  # RabbitMQ leases no time
    options["visibility_timeout"] = 30
app = Conveyor("proj_iq", task_acks_late=True,  # a running task stays leased
               broker_transport_options=options)

@app.task(name="proj_iq.block")
def block(path):
    """Holds its delivery (leased) until ``path`` exists; bounded."""
    deadline = time.monotonic() + 30
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
'''

#: The redis dbs this module owns (broker, results).
BROKER_DB, RESULT_DB = 9, 10


@pytest.fixture(params=["sqlite", "redis"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'iq.sqlite3'}"
        return url, url
    broker_url, backend_url = flush_dbs(BROKER_DB, RESULT_DB)
    return broker_url, backend_url


def inspect_text(env: dict[str, str], cwd: Path, *queues: str, json_lines: bool = True
                 ) -> str:
    proc = subprocess.run([sys.executable, "-m", "conveyor.cli", "-A", "proj_iq", "inspect",
                           "queues", "-Q", ",".join(queues),
                           *(["--json"] if json_lines else [])],
                          env={**os.environ, **env}, cwd=cwd, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def inspect(env: dict[str, str], cwd: Path, *queues: str) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in inspect_text(env, cwd, *queues).splitlines()]
    return {row["queue"]: row for row in rows}


def send_scene(app: Conveyor, work: str, idle: str, release: Path) -> float:
    """What each test publishes: on ``work`` a task that blocks until ``release``
    exists (leased while it runs), one no worker knows (dead-lettered) and two due in
    an hour (parked); on ``idle``, which nobody consumes, three unprioritised and two
    at priority 8. Returns when the parked two are due."""
    app.send_task("proj_iq.block", (str(release),), queue=work)
    app.send_task("proj_iq.missing", queue=work)  # not registered: dead-lettered
    due = time.time() + 3600
    for _ in range(2):
        app.send_task("proj_iq.block", (str(release),), queue=work, countdown=3600)
    for priority in (None, None, None, 8, 8):
        app.send_task("proj_iq.block", (str(release),), queue=idle, priority=priority)
    return due


def wait_for(read: Callable[[], dict[str, dict[str, Any]]],
             done: Callable[[dict[str, dict[str, Any]]], bool],
             timeout: float = 20) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = read()
        if done(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_inspect_queues_counts_what_a_worker_sees(broker: tuple[str, str],
                                                  tmp_path: Path) -> None:
    (tmp_path / "proj_iq.py").write_text(textwrap.dedent(PROJ))
    env = {"CONVEYOR_BROKER_URL": broker[0], "CONVEYOR_RESULT_BACKEND": broker[1],
           "PYTHONPATH": str(tmp_path)}
    work, idle = f"iq.work.{uuid.uuid4().hex[:8]}", f"iq.idle.{uuid.uuid4().hex[:8]}"
    release = tmp_path / "release"
    app = Conveyor("iq-client", broker=broker[0], backend=broker[1],
                   broker_transport_options={"delayed_delivery": "broker"})
    read = lambda: inspect(env, tmp_path, work, idle)  # noqa: E731
    try:
        with worker_process("proj_iq", queues=[work], concurrency=2, pool="threads",
                            env=env, cwd=str(tmp_path)):
            due = send_scene(app, work, idle, release)

            rows = wait_for(read, lambda r: r[work]["dead"] == 1 and r[work]["leased"] == 1)
            w, i = rows[work], rows[idle]
            assert (w["ready"], w["waiting"], w["delayed"], w["leased"], w["dead"]) \
                == (0, {}, 2, 1, 1), w
            next_due = time.mktime(time.strptime(w["next_due"], "%Y-%m-%dT%H:%M:%SZ")) \
                - time.timezone
            assert abs(next_due - due) < 5, w
            assert w["oldest_age"] is None
            # Redis keys each priority step by its lowest priority (8 sits in 7–9)
            high = "7" if broker[0].startswith("redis") else "8"
            assert (i["ready"], i["waiting"], i["delayed"], i["leased"], i["dead"]) \
                == (5, {high: 2, "0": 3}, 0, 0, 0), i
            if broker[0].startswith("sqlite"):
                assert 0 <= i["oldest_age"] < 30, i
            else:  # Redis lists keep no arrival time
                assert i["oldest_age"] is None

            release.touch()
            rows = wait_for(read, lambda r: r[work]["leased"] == 0)
            assert rows[work]["leased"] == 0 and rows[work]["delayed"] == 2
    finally:
        app.close()


@pytest.mark.amqp
def test_inspect_queues_on_rabbitmq_counts_what_amqp_can(tmp_path: Path) -> None:
    """Ready and dead letters per queue, exact; the delay layout's parked messages for
    every queue together; leased and the priority split not counted (AMQP 0-9-1 does
    not say them), shown as such. In a vhost of the test's own, so the layout holds
    only what this test parked."""
    (tmp_path / "proj_iq.py").write_text(textwrap.dedent(PROJ))
    (results,) = flush_dbs(RESULT_DB)
    work, idle = f"iq.work.{uuid.uuid4().hex[:8]}", f"iq.idle.{uuid.uuid4().hex[:8]}"
    release = tmp_path / "release"
    with own_vhost() as vhost:
        url = url_for(vhost)
        env = {"CONVEYOR_BROKER_URL": url, "CONVEYOR_RESULT_BACKEND": results,
               "PYTHONPATH": str(tmp_path)}
        app = Conveyor("iq-client", broker=url, backend=results,
                       broker_transport_options={"delayed_delivery": "broker"})
        read = lambda: inspect(env, tmp_path, work, idle)  # noqa: E731
        try:
            with worker_process("proj_iq", queues=[work], concurrency=2, pool="threads",
                                env=env, cwd=str(tmp_path)):
                send_scene(app, work, idle, release)

                rows = wait_for(read, lambda r: r[work]["dead"] == 1
                                and r[work]["ready"] == 0 and r[idle]["ready"] == 5)
                w, i = rows[work], rows[idle]
                not_counted = {"waiting": None, "delayed": None, "next_due": None,
                               "leased": None, "oldest_age": None}
                assert w == {"queue": work, "ready": 0, "dead": 1, "delayed_shared": 2,
                             **not_counted}, w
                assert i == {"queue": idle, "ready": 5, "dead": 0, "delayed_shared": 2,
                             **not_counted}, i

                table = inspect_text(env, tmp_path, work, idle, json_lines=False)
                assert ("delayed -: this broker parks the delayed messages of every "
                        "queue together (2 parked in all) and cannot count one "
                        "queue's") in table, table
                assert "leased -: this broker does not say" in table, table
                release.touch()
        finally:
            app.close()


BARE = '''
from conveyor import Conveyor
from conveyor.interfaces import BaseTransport, Capabilities

class Bare(BaseTransport):
    """A transport with the required protocol only."""
    scheme = "bare"
    capabilities = Capabilities()

app = Conveyor("proj_bare", broker="bare://somewhere")
app.transport_factory = lambda url=None: Bare(url or app.broker_url, app)
'''


def test_inspect_queues_needs_the_inspect_capability(tmp_path: Path) -> None:
    (tmp_path / "proj_bare.py").write_text(textwrap.dedent(BARE))
    proc = subprocess.run([sys.executable, "-m", "conveyor.cli", "-A", "proj_bare", "inspect",
                           "queues"], env={**os.environ, "PYTHONPATH": str(tmp_path)},
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert ("error: conveyor inspect queues needs a transport with 'inspect' "
            "(Capabilities.inspect); the 'bare' transport at bare://somewhere does not "
            "support it.") in proc.stderr
