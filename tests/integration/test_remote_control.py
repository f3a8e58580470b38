"""Remote control with real worker processes on Redis, SQLite and the kombu bridge
over kombu's Redis: Celery 5.7's CLI reaches a Conveyor worker and Conveyor's CLI a
Celery worker (Redis; through the bridge too), ``revoke --terminate`` stops a running
task, a revoked waiting task never runs, ``status`` lists the workers; on a transport
without broadcasts (kombu's Consul transport through the bridge) the commands fail
naming the transport and the capability."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery_peer import celery_worker, write_celery_app
from processes import Proc, wait_for
from redis_dbs import flush_dbs
from workers import conveyor_worker, run_cli, write_project

from conveyor import Conveyor

#: The Redis db this module owns (broker and results).
DB = 1


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return write_celery_app(write_project(tmp_path, "proj_rc", ["add", "tick"]))


@pytest.fixture
def redis_url() -> str:
    return flush_dbs(DB)[0]


@pytest.fixture(params=["redis", "sqlite", "kombu"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A broker URL of each kind that has broadcasts (the result backend: see
    :func:`backend_of`)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'rc.sqlite3'}"
    if request.param == "kombu":
        return "kombu+" + flush_dbs(DB)[0]
    return flush_dbs(DB)[0]


def backend_of(url: str) -> str:
    """The broker's own URL as result backend; the kombu bridge's Redis for it."""
    return url.removeprefix("kombu+")


def _env(workdir: Path, url: str) -> dict[str, str]:
    """Conveyor on ``url``; a Celery peer on the same broker (kombu's Redis is
    Celery's own ``redis://``)."""
    backend = backend_of(url)
    return {"CONVEYOR_BROKER_URL": url, "CONVEYOR_RESULT_BACKEND": backend,
            "PYTHONPATH": str(workdir), "C_BROKER": backend, "C_BACKEND": backend,
            "C_QUEUE": "rc.celery"}


def run(workdir: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``conveyor -A proj_rc ARGS`` or, when ARGS start with ``celery``, Celery's CLI."""
    return run_cli("proj_rc", workdir, _env(workdir, url), *args)


def worker_on(workdir: Path, url: str, name: str, pool: str = "threads") -> Proc:
    return conveyor_worker("proj_rc", workdir, _env(workdir, url), name=name, pool=pool,
                           queues=["rc.conveyor"])


@pytest.fixture
def worker(workdir: Path, url: str) -> Iterator[Proc]:
    with worker_on(workdir, url, "rc1@test") as proc:
        yield proc


@pytest.fixture
def app(url: str) -> Iterator[Conveyor]:
    app = Conveyor("proj_rc_client", broker=url, backend=backend_of(url))
    yield app
    app.close()


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("url", ["redis", "kombu"], indirect=True)
def test_celery_cli_inspects_a_conveyor_worker(worker: Proc, workdir: Path,
                                               url: str) -> None:
    """Also a worker on the kombu bridge: Celery's CLI on ``redis://`` is kombu's
    Redis transport, the wire the bridge broadcasts on."""
    redis_url = url
    out = run(workdir, redis_url, "celery", "inspect", "ping", "-d", "rc1@test",
              "--timeout", "10", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout) == {"rc1@test": {"ok": "pong"}}
    out = run(workdir, redis_url, "celery", "inspect", "registered", "-d", "rc1@test",
              "--timeout", "10", "--json")
    assert json.loads(out.stdout) == {"rc1@test": ["proj_rc.add", "proj_rc.tick"]}
    out = run(workdir, redis_url, "celery", "status", "-d", "rc1@test", "--timeout", "10")
    assert "rc1@test: OK" in out.stdout and "1 node online." in out.stdout, out.stdout


@pytest.mark.parametrize("bridge", [False, True], ids=["redis", "kombu"])
def test_conveyor_cli_inspects_a_celery_worker(workdir: Path, redis_url: str,
                                               bridge: bool) -> None:
    """Conveyor's CLI on ``redis://``, and on ``kombu+redis://`` (the bridge)."""
    cli_url = "kombu+" + redis_url if bridge else redis_url
    with celery_worker(workdir, redis_url, redis_url, "rc.celery"):
        def celery_name() -> str | None:
            """The Celery worker's name, when it answered a ping to every worker (2 s
            of replies a try, not 10 s once: the suite's time)."""
            out = run(workdir, cli_url, "inspect", "ping", "--timeout", "2").stdout
            return next((line.split()[1].rstrip(":") for line in out.splitlines()
                         if line.startswith("->  rc.celery@")), None)
        name = wait_for(celery_name, 30, what="the Celery worker among the pongs")
        out = run(workdir, cli_url, "inspect", "ping", "-d", name, "--timeout", "10",
                  "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {name: {"ok": "pong"}}
        out = run(workdir, cli_url, "inspect", "registered", "-d", name, "--timeout", "10")
        assert "* interop.add" in out.stdout and "1 node online." in out.stdout, out.stdout


def test_inspect_shows_what_the_worker_runs_holds_and_knows(
        worker: Proc, workdir: Path, url: str, app: Conveyor, tmp_path: Path) -> None:
    side = tmp_path / "active.txt"
    running = app.send_task("proj_rc.tick", (str(side), 2000), queue="rc.conveyor")
    later = app.send_task("proj_rc.add", (1, 2), queue="rc.conveyor", countdown=25)
    wait_for(lambda: lines(side) > 0, 20, what="the task to start")

    def ask(command: str) -> Any:
        out = run(workdir, url, "inspect", command, "-d", "rc1@test", "--timeout",
                  "10", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout)["rc1@test"]

    [active] = ask("active")
    assert (active["id"], active["name"], active["args"]) == (
        running.id, "proj_rc.tick", [str(side), 2000])
    assert active["hostname"] == "rc1@test" and active["acknowledged"] is True
    [scheduled] = wait_for(lambda: ask("scheduled"), 10, what="the ETA task held")
    assert scheduled["request"]["id"] == later.id and scheduled["eta"]
    assert ask("reserved") == []
    stats = ask("stats")
    assert stats["total"] == {"proj_rc.tick": 1} and stats["pool"]["max-concurrency"] == 2
    assert stats["prefetch_count"] >= 2
    text = run(workdir, url, "inspect", "active", "-d", "rc1@test", "--timeout", "10")
    assert text.stdout.startswith("->  rc1@test: OK\n") and running.id in text.stdout
    app.control.revoke([running.id, later.id], terminate=True)


@pytest.mark.parametrize(("url", "pool"), [("redis", "threads"), ("redis", "processes"),
                                           ("sqlite", "processes")], indirect=["url"])
def test_revoke_terminate_stops_a_running_task(workdir: Path, url: str, app: Conveyor,
                                               tmp_path: Path, pool: str) -> None:
    """Conveyor's CLI, and Celery's on Redis with the processes pool."""
    side = tmp_path / f"{pool}.txt"
    with worker_on(workdir, url, f"rc-{pool}@test", pool) as proc:
        result = app.send_task("proj_rc.tick", (str(side), 400), queue="rc.conveyor")
        wait_for(lambda: lines(side) >= 3, 20, what="the task to start")
        if pool == "processes":  # inspect stats names the pool's children
            stats = app.control.inspect([f"rc-{pool}@test"], timeout=10).stats() or {}
            pids = stats[f"rc-{pool}@test"]["pool"]["processes"]
            assert len(pids) == 2 and proc.popen.pid not in pids, pids
        if url.startswith("redis") and pool == "processes":
            out = run(workdir, url, "celery", "control", "terminate", "SIGKILL",
                      result.id, "-d", f"rc-{pool}@test", "--timeout", "10")
        else:
            out = run(workdir, url, "control", "revoke", result.id, "--terminate",
                      "-d", f"rc-{pool}@test", "--timeout", "10")
        assert out.returncode == 0 and f"terminate: {result.id}" in out.stdout, (
            out.stdout + out.stderr)
        wait_for(lambda: app.AsyncResult(result.id).state == "REVOKED", 10,
                 what="state REVOKED")
        time.sleep(0.3)
        stopped_at = lines(side)
        time.sleep(1.0)
        assert lines(side) == stopped_at < 400  # the side effect stopped
        proc.wait_output(f"Task proj_rc.tick[{result.id}] terminated", 10)
        # the worker still serves
        assert app.send_task("proj_rc.add", (2, 2), queue="rc.conveyor").get(timeout=20) == 4
    assert app.AsyncResult(result.id).state == "REVOKED"


def test_a_revoked_waiting_task_never_runs(worker: Proc, app: Conveyor,
                                           tmp_path: Path) -> None:
    side = tmp_path / "never.txt"
    result = app.send_task("proj_rc.tick", (str(side), 3), queue="rc.conveyor",
                           countdown=2)
    worker.wait_output(f"Task proj_rc.tick[{result.id}] received", 20)
    result.revoke()  # through the broadcast
    worker.wait_output(f"Task proj_rc.tick[{result.id}] revoked: not run", 20)
    assert result.state == "REVOKED" and not side.exists()
    assert app.send_task("proj_rc.add", (2, 3), queue="rc.conveyor").get(timeout=20) == 5
    assert not side.exists()


def test_revoke_by_stamped_headers_skips_and_stops_stamped_tasks(
        worker: Proc, workdir: Path, url: str, app: Conveyor, tmp_path: Path) -> None:
    """``control revoke_by_stamped_headers tenant=acme --terminate``: the running
    stamped task stops, a waiting one and one sent later never run, a task stamped
    otherwise runs; on Redis, Celery's CLI revokes by stamp on a Conveyor worker."""
    def tick(name: str, n: int, tenant: str, **options: Any) -> Any:
        sig = app.signature("proj_rc.tick", (str(tmp_path / name), n), queue="rc.conveyor")
        return sig.stamp(tenant=tenant).apply_async(**options)

    running = tick("running", 400, "acme")
    wait_for(lambda: lines(tmp_path / "running") >= 3, 20, what="the task to start")
    # held long enough for the command's CLI to start on a loaded machine (a 2 s
    # countdown ran out first there: the task ran before the revoke came)
    waiting = tick("waiting", 3, "acme", countdown=6)
    other = tick("other", 3, "beta", countdown=2)
    for r in (waiting, other):
        worker.wait_output(f"Task proj_rc.tick[{r.id}] received", 20)
    out = run(workdir, url, "control", "revoke_by_stamped_headers", "tenant=acme",
              "--terminate", "-d", "rc1@test", "--timeout", "10")
    assert out.returncode == 0 and f"terminate: {running.id}" in out.stdout, (
        out.stdout + out.stderr)
    wait_for(lambda: running.state == "REVOKED", 10, what="state REVOKED")
    worker.wait_output(f"Task proj_rc.tick[{waiting.id}] revoked: not run", 20)
    later = tick("later", 3, "acme")
    worker.wait_output(f"Task proj_rc.tick[{later.id}] revoked: not run", 20)
    assert other.get(timeout=20) == 3 and lines(tmp_path / "other") == 3
    assert lines(tmp_path / "running") < 400
    assert not (tmp_path / "waiting").exists() and not (tmp_path / "later").exists()
    assert (waiting.state, later.state) == ("REVOKED", "REVOKED")
    bad = run(workdir, url, "control", "revoke_by_stamped_headers", "acme")
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr
    if url.startswith("redis"):
        out = run(workdir, url, "celery", "control", "revoke_by_stamped_headers",
                  "tenant=beta", "-d", "rc1@test", "--timeout", "10")
        assert out.returncode == 0 and "flagged as revoked" in out.stdout, (
            out.stdout + out.stderr)
        beta = tick("beta", 3, "beta")
        worker.wait_output(f"Task proj_rc.tick[{beta.id}] revoked: not run", 20)
    assert app.send_task("proj_rc.add", (2, 2), queue="rc.conveyor").get(timeout=20) == 4


@pytest.mark.parametrize("url", ["redis"], indirect=True)
def test_tasks_revoked_while_queued_behind_busy_pool_children_never_run(
        workdir: Path, url: str, app: Conveyor, tmp_path: Path) -> None:
    """The processes pool sends a queued task to a busy child's pipe, where the
    worker cannot take it back: revoked there, the child records it and skips it."""
    with worker_on(workdir, url, "rc-queued@test", "processes") as proc:
        busy = [app.send_task("proj_rc.tick", (str(tmp_path / f"busy{i}"), 100),
                              queue="rc.conveyor") for i in range(2)]
        wait_for(lambda: all(lines(tmp_path / f"busy{i}") for i in range(2)), 20,
                 what="both children busy")
        queued = [app.send_task("proj_rc.tick", (str(tmp_path / f"queued{i}"), 3),
                                queue="rc.conveyor") for i in range(2)]
        for r in queued:
            proc.wait_output(f"Task proj_rc.tick[{r.id}] received", 20)
        assert all(lines(tmp_path / f"busy{i}") < 100 for i in range(2))  # still busy
        app.control.revoke([r.id for r in queued])
        assert [r.get(timeout=30) for r in busy] == [100, 100]
        for r in queued:
            proc.wait_output(f"Task proj_rc.tick[{r.id}] revoked: not run", 20)
            assert r.state == "REVOKED"
        assert not any((tmp_path / f"queued{i}").exists() for i in range(2))
        assert app.send_task("proj_rc.add", (2, 2), queue="rc.conveyor").get(timeout=20) == 4


@pytest.mark.parametrize("url", ["redis"], indirect=True)
def test_time_limit_and_pool_grow_from_both_clis_retune_a_processes_worker(
        workdir: Path, url: str, app: Conveyor, tmp_path: Path) -> None:
    with worker_on(workdir, url, "rc-tune@test", "processes") as proc:
        out = run(workdir, url, "control", "time_limit", "proj_rc.tick", "0.3", "-d",
                  "rc-tune@test", "--timeout", "10")
        assert "->  rc-tune@test: OK\n    time limits set successfully" in out.stdout, (
            out.stdout + out.stderr)
        side = tmp_path / "limited"
        result = app.send_task("proj_rc.tick", (str(side), 200), queue="rc.conveyor")
        with pytest.raises(Exception) as raised:
            result.get(timeout=20)
        assert type(raised.value).__name__ == "SoftTimeLimitExceeded"  # in the child
        assert lines(side) < 200

        out = run(workdir, url, "celery", "control", "pool_grow", "1", "-d",
                  "rc-tune@test", "--timeout", "10")
        assert "pool will grow" in out.stdout, out.stdout + out.stderr

        def children() -> int | None:
            stats = app.control.inspect(["rc-tune@test"], timeout=10).stats() or {}
            pool = stats["rc-tune@test"]["pool"]
            return pool["max-concurrency"] if len(pool["processes"]) == 3 else None
        assert wait_for(children, 20, what="a third pool child") == 3
        proc.wait_output("Pool: scaling up from 2 to 3", 10)
        assert app.send_task("proj_rc.add", (2, 2), queue="rc.conveyor").get(timeout=20) == 4


def test_queues_added_and_cancelled_from_the_cli(workdir: Path, url: str,
                                                app: Conveyor) -> None:
    """``control add_consumer``/``cancel_consumer`` (Celery's CLI on Redis)."""
    with worker_on(workdir, url, "rc-queues@test") as proc:
        out = run(workdir, url, "control", "add_consumer", "rc.extra", "-d",
                  "rc-queues@test", "--timeout", "10")
        assert "->  rc-queues@test: OK\n    add consumer rc.extra" in out.stdout, (
            out.stdout + out.stderr)
        assert app.send_task("proj_rc.add", (2, 5), queue="rc.extra").get(timeout=20) == 7
        cancel = ("celery", "control") if url.startswith("redis") else ("control",)
        out = run(workdir, url, *cancel, "cancel_consumer", "rc.extra", "-d",
                  "rc-queues@test", "--timeout", "10")
        assert "no longer consuming from rc.extra" in out.stdout, out.stdout + out.stderr
        proc.wait_output("No longer consuming from rc.extra", 10)
        left = app.send_task("proj_rc.add", (1, 1), queue="rc.extra")
        assert app.send_task("proj_rc.add", (2, 2), queue="rc.conveyor").get(timeout=20) == 4
        time.sleep(0.5)
        assert left.state == "PENDING"


def test_status_lists_workers_and_names_those_that_do_not_answer(
        worker: Proc, workdir: Path, url: str) -> None:
    def status(*args: str) -> subprocess.CompletedProcess[str] | None:
        """``status`` waiting 1 s for replies, asked again while rc1 is slower than
        that (a loaded machine)."""
        out = run(workdir, url, "status", *args, "--timeout", "1")
        return out if "->  rc1@test: OK" in out.stdout else None

    out = wait_for(lambda: status("-d", "rc1@test,ghost@test"), 30, what="rc1's reply")
    assert out.returncode == 1
    assert out.stdout.splitlines()[:2] == ["->  rc1@test: OK",
                                           "->  ghost@test: no reply within 1s"]
    assert "1 node online." in out.stdout
    out = wait_for(status, 30, what="rc1's reply")
    assert out.returncode == 0, out.stderr


def test_control_shutdown_stops_the_worker_warm(workdir: Path, url: str) -> None:
    with worker_on(workdir, url, "rc-down@test") as proc:
        out = run(workdir, url, "control", "shutdown", "-d", "rc-down@test",
                  "--timeout", "10")
        assert "rc-down@test: OK" in out.stdout and "shutting down" in out.stdout
        assert proc.popen.wait(30) == 0
        assert "stopping (warm)" in proc.output()


def test_without_broadcasts_the_commands_name_transport_and_capability(
        workdir: Path) -> None:
    """kombu's Consul transport has no fanout exchanges, so the bridge declares no
    broadcasts there (refused before any connection: no Consul server needed)."""
    url = "kombu+consul://127.0.0.1:8500/"
    for args in (("inspect", "ping"), ("status",), ("control", "revoke", "x", "--terminate")):
        out = run(workdir, url, *args)
        assert out.returncode == 2, out.stdout
        assert "'broadcast'" in out.stderr and "'kombu' transport" in out.stderr, out.stderr
    app = Conveyor("proj_rc_consul", broker=url, backend="memory://rc-consul")
    try:
        from conveyor.exceptions import CapabilityError
        with pytest.raises(CapabilityError, match="'kombu' transport"):
            app.AsyncResult(str(uuid.uuid4())).revoke(terminate=True)
        app.AsyncResult("plain").revoke()  # only marks the state there
        assert app.AsyncResult("plain").state == "REVOKED"
    finally:
        app.close()


def test_pool_restart_is_refused_unless_enabled(worker: Proc, workdir: Path,
                                                url: str) -> None:
    out = run(workdir, url, "control", "pool_restart", "-d", "rc1@test", "--timeout", "10")
    assert "->  rc1@test: ERROR\n    Pool restarts not enabled" in out.stdout, (
        out.stdout + out.stderr)


PROJECT = '''from conveyor import Conveyor

app = Conveyor("proj_pr")
app.conf.worker_pool_restarts = True

import proj_pr_tasks  # noqa: E402,F401 - its tasks, in a module pool_restart reloads
'''
TASKS_MODULE = '''import os

from proj_pr import app

VERSION = {version}


@app.task(name="proj_pr.version")
def version():
    return [VERSION, os.getpid()]
'''


def test_pool_restart_reloads_a_module_into_new_processes_children(
        tmp_path: Path, url: str, app: Conveyor) -> None:
    """Edit a tasks module, ``control pool_restart MODULE --reload``: the next tasks
    run the new code, in new children (Conveyor's CLI; Celery's on Redis)."""
    write_celery_app(tmp_path)  # for Celery's CLI
    (tmp_path / "proj_pr.py").write_text(PROJECT)
    tasks = tmp_path / "proj_pr_tasks.py"
    tasks.write_text(TASKS_MODULE.format(version=1))
    env = _env(tmp_path, url)
    queue = f"rc.restart.{uuid.uuid4().hex[:8]}"

    def version() -> list[int]:
        result = app.send_task("proj_pr.version", queue=queue)
        return result.get(timeout=20)  # type: ignore[no-any-return]

    with conveyor_worker("proj_pr", tmp_path, env, name="rc-restart@test",
                         pool="processes", queues=[queue]) as proc:
        before = {pid for _, pid in (version() for _ in range(6))}
        assert {v for v, _ in (version() for _ in range(2))} == {1}
        tasks.write_text(TASKS_MODULE.format(version=20))  # another size: no stale .pyc
        out = run_cli("proj_pr", tmp_path, env, "control", "pool_restart",
                      "proj_pr_tasks", "--reload", "-d", "rc-restart@test",
                      "--timeout", "10")
        assert "->  rc-restart@test: OK\n    reload started" in out.stdout, (
            out.stdout + out.stderr)
        proc.wait_output("pool_restart: reloaded module proj_pr_tasks", 10)
        after = [version() for _ in range(4)]
        assert {v for v, _ in after} == {20}
        assert not {pid for _, pid in after} & before  # new children ran them
        out = run_cli("proj_pr", tmp_path, env, "control", "pool_restart",
                      "proj_pr_nowhere", "-d", "rc-restart@test", "--timeout", "10")
        assert "ERROR\n    Could not import proj_pr_nowhere: ModuleNotFoundError" in \
            out.stdout, out.stdout + out.stderr
        if url.startswith("redis"):
            out = run(tmp_path, url, "celery", "control", "pool_restart", "-d",
                      "rc-restart@test", "--timeout", "10")
            assert "reload started" in out.stdout, out.stdout + out.stderr
            assert version()[0] == 20
