"""Real worker processes (the ``conveyor worker`` CLI) on the SQLite embedded default.

Every test writes a small task module into its temporary directory, starts workers
as subprocesses against a database there, and sends tasks from this process by name.
Tasks append one line per execution to ``executions.log`` (``n pid time``), which is
how a test sees what ran, where, when and how often. Every wait is bounded and every
worker process is killed in the fixture's teardown.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor

TASKS = '''
import os, time
from conveyor import Conveyor

HERE = os.path.dirname(os.path.abspath(__file__))
app = Conveyor("sqltasks", broker=f"sqlite:///{HERE}/broker.db",
               backend=f"sqlite:///{HERE}/results.db")
app.conf.update(
    broker_transport_options={"visibility_timeout": float(os.environ["SQLTASKS_VT"]),
                              "polling_interval": 0.02},
    worker_eta_horizon=float(os.environ["SQLTASKS_HORIZON"]),
)
LOG = os.path.join(HERE, "executions.log")


def _log(n):
    with open(LOG, "a") as f:
        f.write(f"{n} {os.getpid()} {time.time()!r}\\n")


@app.task(name="sqltasks.record", ignore_result=True)
def record(n):
    _log(n)


@app.task(name="sqltasks.nap", ignore_result=True)
def nap(n, seconds):
    _log(n)
    time.sleep(seconds)


@app.task(name="sqltasks.once_hangs", acks_late=True)
def once_hangs(n, marker):
    """Hangs on its first run (the test kills that worker), returns on the next."""
    _log(n)
    if not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(120)
    return n
'''


class Lab:
    """One test's directory: the task module, its database, workers and the log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sqltasks.py").write_text(TASKS)
        self.log = root / "executions.log"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.app = Conveyor("client", broker=f"sqlite:///{root}/broker.db",
                            backend=f"sqlite:///{root}/results.db")

    def send(self, name: str, *args: Any, **options: Any) -> Any:
        return self.app.send_task(f"sqltasks.{name}", args, **options)

    def worker(self, *, vt: float = 3600, horizon: float = 30, pool: str = "solo",
               concurrency: int = 1, prefetch: int | None = None
               ) -> subprocess.Popen[bytes]:
        env = {**os.environ, "SQLTASKS_VT": str(vt), "SQLTASKS_HORIZON": str(horizon)}
        cmd = [sys.executable, "-m", "conveyor.cli", "-A", "sqltasks", "-l", "WARNING",
               "worker", "-Q", "celery", "-c", str(concurrency), "--pool", pool]
        if prefetch is not None:
            cmd += ["--prefetch-multiplier", str(prefetch)]
        proc = subprocess.Popen(cmd, cwd=self.root, env=env,
                                stderr=open(self.root / f"worker{len(self.procs)}.err", "wb"))
        self.procs.append(proc)
        return proc

    def executions(self) -> list[tuple[int, int, float]]:
        if not self.log.exists():
            return []
        rows = []
        for line in self.log.read_text().splitlines():
            n, pid, at = line.split()
            rows.append((int(n), int(pid), float(at)))
        return rows

    def wait_for(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            for proc in self.procs:
                if proc.poll() not in (None, 0, -signal.SIGKILL, -signal.SIGTERM):
                    pytest.fail(f"worker exited with {proc.returncode}: {self.stderr()}")
            time.sleep(0.02)
        pytest.fail(f"timed out after {timeout}s waiting for {what}; "
                    f"executions: {len(self.executions())}; workers said: {self.stderr()}")

    def wait_executed(self, count: int, timeout: float) -> list[tuple[int, int, float]]:
        return self.wait_for(lambda: len(self.executions()) >= count and self.executions(),
                             timeout, f"{count} executions")

    def stderr(self) -> str:
        return " | ".join((self.root / f"worker{i}.err").read_text()[-2000:]
                          for i in range(len(self.procs)))

    def rows(self, where: str = "1") -> int:
        with sqlite3.connect(self.root / "broker.db") as db:
            return db.execute(f"SELECT count(*) FROM conveyor_messages WHERE {where}"
                              ).fetchone()[0]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self.app.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# --------------------------------------------------------------------------- tests
def test_priority_order(lab):
    priorities = [None, 3, 255, 0, 3, 9, None, 1]
    for n, priority in enumerate(priorities):
        lab.send("record", n, priority=priority)
    lab.worker()
    ran = [n for n, _pid, _at in lab.wait_executed(len(priorities), 30)]
    assert ran == [2, 5, 1, 4, 7, 0, 3, 6]


def test_countdown_never_early(lab):
    # Horizon 0.5 s: the 0.3 s countdowns are held in worker memory, the longer ones
    # are parked in the database (defer) and come back through the due index.
    lab.worker(horizon=0.5)
    lab.send("record", -1)
    lab.wait_executed(1, 30)
    sent = {}
    for n, countdown in enumerate([0.3, 1.5, 0.3, 2.0, 1.0]):
        sent[n] = (time.time(), countdown)
        lab.send("record", n, countdown=countdown)
    ran = lab.wait_executed(6, 30)
    for n, _pid, at in ran[1:]:
        published, countdown = sent[n]
        assert at >= published + countdown, f"task {n} ran {published + countdown - at}s early"
        assert at < published + countdown + 1.0, f"task {n} ran {at - published - countdown}s late"


def test_far_future_tasks_cost_no_worker_memory(lab):
    worker = lab.worker()
    lab.send("record", -1)
    lab.wait_executed(1, 30)
    before = rss_kib(worker.pid)
    far = [("sqltasks.record", (n,), {}, {"countdown": 3600}, {}) for n in range(10_000)]
    for start in range(0, len(far), 1000):
        lab.app.publish_batch(far[start:start + 1000])
    lab.wait_for(lambda: lab.rows("state = 2") == 10_000, 90, "10,000 parked rows")
    grown = rss_kib(worker.pid) - before
    print(f"worker RSS {before} KiB, +{grown} KiB with 10,000 parked tasks")
    assert grown < 20 * 1024, f"worker RSS grew {grown} KiB holding far-future tasks"
    assert lab.executions()[1:] == []
    lab.send("record", 1)  # and it still serves the queue
    lab.wait_executed(2, 30)


def test_acks_late_task_survives_sigkill(lab):
    marker = lab.root / "started-once"
    first = lab.worker(vt=1.0)
    result = lab.send("once_hangs", 7, str(marker))
    lab.wait_executed(1, 30)
    first.kill()
    first.wait(timeout=10)
    killed_at = time.time()
    lab.worker(vt=1.0)
    assert result.get(timeout=30) == 7
    runs = lab.executions()
    assert [n for n, *_ in runs] == [7, 7]
    assert runs[1][1] != runs[0][1]  # the second run is in the new worker
    # Not before the lease ran out: renewed every vt/4, it ends >= 0.75 s after the kill.
    assert runs[1][2] >= killed_at + 0.7


def test_two_workers_execute_nothing_twice(lab):
    total = 5000
    calls = [("sqltasks.record", (n,), {}, {}, {}) for n in range(total)]
    for start in range(0, total, 1000):
        lab.app.publish_batch(calls[start:start + 1000])
    lab.worker()
    lab.worker()
    ran = lab.wait_executed(total, 120)
    numbers = [n for n, *_ in ran]
    assert len(numbers) == total and set(numbers) == set(range(total))
    assert len({pid for _n, pid, _at in ran}) == 2
    assert lab.rows() == 0


def test_sigterm_warm_shutdown_loses_nothing(lab):
    total = 60
    for n in range(total):
        lab.send("nap", n, 0.05)
    worker = lab.worker(pool="threads", concurrency=2)
    lab.wait_executed(10, 30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    done = len(lab.executions())
    assert done < total, "the worker finished everything before SIGTERM; test is void"
    # Prefetched messages were given back at once, not left to a lease running out.
    assert lab.rows("state = 1") == 0
    assert lab.rows("state = 0") == total - done
    lab.worker(pool="threads", concurrency=2)
    ran = [n for n, *_ in lab.wait_executed(total, 60)]
    time.sleep(0.2)  # nothing more arrives
    assert sorted(ran) == sorted(n for n, *_ in lab.executions()) == list(range(total))
