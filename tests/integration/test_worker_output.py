"""What a worker process prints and how its pool is managed, as Celery users expect:
the banner, received/succeeded/retry/failure lines (with the traceback), --logfile,
--max-tasks-per-child, --max-memory-per-child and --autoscale."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conveyor_pytest.fixtures import worker_process

from conveyor import Conveyor

PROJECT = "out_proj"
PROJ = '''
import os
import time
from conveyor import Conveyor

app = Conveyor("out_proj")

def inner(value):
    raise ValueError(f"boom {value}")

@app.task(name="out.add")
def add(x, y):
    return x + y

@app.task(name="out.fails")
def fails(value):
    inner(value)

@app.task(name="out.again", bind=True)
def again(self):
    if self.request.retries == 0:
        self.retry(countdown=0.5, exc=ConnectionError("later"))
    return "done"

@app.task(name="out.pid")
def pid(seconds=0):
    time.sleep(seconds)
    return os.getpid()

HOG = []

@app.task(name="out.hog")
def hog(mib):
    HOG.append(bytearray(os.urandom(1024)) * (mib * 1024))
    return os.getpid()
'''


def _log(proc: subprocess.Popen[bytes]) -> str:
    return Path(proc.log_path).read_text()  # type: ignore[attr-defined]


def test_the_log_says_what_each_task_did_and_shows_tracebacks(
        tmp_path: Path, proj: dict[str, str], client: Conveyor) -> None:
    with worker_process(PROJECT, env=proj, cwd=str(tmp_path), pool="threads",
                        concurrency=2) as proc:
        ok = client.send_task("out.add", (2, 2))
        assert ok.get(timeout=20) == 4
        bad = client.send_task("out.fails", ("x",))
        with pytest.raises(ValueError, match="boom x"):
            bad.get(timeout=20)
        assert client.send_task("out.again").get(timeout=20) == "done"
    log = _log(proc)
    assert f"transport:   {proj['CONVEYOR_BROKER_URL']}" in log
    assert "concurrency: 2 (threads pool)" in log and "queues:      celery" in log
    assert "[tasks]" in log and "  . out.add" in log and "  . out.hog" in log
    assert f"Task out.add[{ok.id}] received" in log
    assert re.search(rf"Task out\.add\[{ok.id}\] succeeded in \d+\.\d{{3}}s: 4\n", log)
    failure = log[log.index(f"Task out.fails[{bad.id}] raised unexpected"):]
    assert "ValueError('boom x')" in failure.splitlines()[0]
    assert "Traceback (most recent call last)" in failure
    assert re.search(r'line \d+, in inner\n +raise ValueError', failure)
    assert re.search(r"Task out\.again\[.+\] retry: Retry in 0\.5s: "
                     r"ConnectionError\('later'\)", log)


def _start(args: list[str], cwd: Path, env: dict[str, str], out: Path
           ) -> subprocess.Popen[bytes]:
    with out.open("wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "conveyor.cli", *args], cwd=cwd,
                                env=env, stdout=sink, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise


def _wait_for(path: Path, text: str, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and text in (found := path.read_text()):
            return found
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path} (exit {proc.poll()})")


def test_logfile_takes_the_log_and_the_banner_stays_on_stdout(
        tmp_path: Path, proj: dict[str, str], client: Conveyor) -> None:
    logfile, out = tmp_path / "worker.log", tmp_path / "stdout.txt"
    proc = _start(["-A", PROJECT, "-l", "INFO", "worker", "--logfile", str(logfile)],
                  tmp_path, {**os.environ, **proj}, out)
    try:
        _wait_for(logfile, "consuming", proc)
        assert client.send_task("out.add", (1, 2)).get(timeout=20) == 3
        _wait_for(logfile, "succeeded in", proc)
    finally:
        assert _stop(proc) == 0
    printed = out.read_text()
    assert "transport:" in printed and "succeeded in" not in printed


def test_a_worker_without_app_or_broker_says_what_it_uses(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CONVEYOR_BROKER_URL", "CONVEYOR_RESULT_BACKEND")}
    out = tmp_path / "stdout.txt"
    proc = _start(["-l", "INFO", "worker"], tmp_path, env, out)
    try:
        printed = _wait_for(out, "consuming", proc)
    finally:
        assert _stop(proc) == 0
    assert "no -A given" in printed
    assert "sqlite:///conveyor.sqlite3 (embedded default: neither broker_url nor " \
           "CONVEYOR_BROKER_URL is set)" in printed


def test_the_banner_masks_the_broker_password(tmp_path: Path, proj: dict[str, str]) -> None:
    out = tmp_path / "stdout.txt"
    env = {**os.environ, **proj, "CONVEYOR_BROKER_URL": "redis://:s3cret@127.0.0.1:1/0"}
    proc = _start(["-A", PROJECT, "worker"], tmp_path, env, out)
    deadline = time.monotonic() + 30
    try:  # nothing answers on port 1: the worker prints its banner, then fails or waits
        while "queues:" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(10)
    printed = out.read_text()
    assert "transport:   redis://:**@127.0.0.1:1/0" in printed, printed
    assert "s3cret" not in printed


def test_max_tasks_per_child_replaces_children(tmp_path: Path, proj: dict[str, str],
                                               client: Conveyor) -> None:
    with worker_process(PROJECT, env=proj, cwd=str(tmp_path), pool="processes",
                        concurrency=1, extra_args=["--max-tasks-per-child", "10"]) as proc:
        pids = [r.get(timeout=30) for r in [client.send_task("out.pid") for _ in range(25)]]
    counts = collections.Counter(pids)
    assert len(counts) == 3 and sorted(counts.values()) == [5, 10, 10], counts
    assert pids[:10] == [pids[0]] * 10 and pids[10] != pids[0]
    assert "Replacing pool child" in _log(proc)


def test_max_memory_per_child_replaces_a_child_that_grew(tmp_path: Path,
                                                         proj: dict[str, str],
                                                         client: Conveyor) -> None:
    with worker_process(PROJECT, env=proj, cwd=str(tmp_path), pool="processes",
                        concurrency=1, extra_args=["--max-memory-per-child", "150000"]):
        first = client.send_task("out.pid").get(timeout=20)
        grown = client.send_task("out.hog", (200,)).get(timeout=20)
        after = client.send_task("out.pid").get(timeout=20)
    assert first == grown, "a child under the limit was replaced"
    assert after != grown, "the child past 150000 KiB kept running tasks"


def test_autoscale_grows_the_pool_under_load(tmp_path: Path, proj: dict[str, str],
                                            client: Conveyor) -> None:
    with worker_process(PROJECT, env=proj, cwd=str(tmp_path), pool="processes",
                        concurrency=1, extra_args=["--autoscale", "4,1"]) as proc:
        start = time.monotonic()
        results = [client.send_task("out.pid", (1,)) for _ in range(8)]
        pids = {r.get(timeout=30) for r in results}
        elapsed = time.monotonic() - start
    assert len(pids) >= 3, pids
    assert elapsed < 6, f"8 one-second tasks took {elapsed:.1f}s: the pool did not grow"
    log = _log(proc)
    assert "concurrency: 1 to 4 (autoscale, processes pool)" in log
    assert "Autoscale: scaling up from 1 to" in log


@pytest.mark.parametrize(("value", "pool", "message"), [
    ("4", "solo", "needs --pool threads or processes"),
    ("1,4", "threads", "1 <= MIN <= MAX"),
    ("four", "threads", "Bad autoscale 'four'"),
])
def test_a_bad_autoscale_is_refused_at_start(value: str, pool: str, message: str) -> None:
    from conveyor.exceptions import ConfigurationError

    app = Conveyor("autoscale-bad", broker="memory://autoscale-bad",
                   backend="memory://autoscale-bad")
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        app.Worker(pool=pool, autoscale=value)
