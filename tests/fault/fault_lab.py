"""One fault test's world: a task module, a broker, worker processes and a run log.

Tasks append ``S n pid time`` when they start and ``E n pid time`` when they end to
``runs.log`` (one ``O_APPEND`` write per line, so lines from many processes never
mix). That log is how a test counts what ran, how often, and when. Workers run in
their own session so teardown can kill whatever they left behind; the tests assert
first that nothing was left.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from conveyor import Conveyor
from conveyor_pytest.proxy import TcpProxy

HOST, PORT = "127.0.0.1", int(os.environ.get("CONVEYOR_TEST_REDIS_PORT", "6379"))
#: The suite's own db (the Redis plugin tests own 8–13, contract 14, integration 15,
#: canvas 4–7).
REDIS_DB = 3
BROKERS = ("sqlite", "redis")

TASKS = '''
import os, signal, time
from conveyor import Conveyor

HERE = os.path.dirname(os.path.abspath(__file__))
app = Conveyor("faulttasks", broker=os.environ["FAULT_BROKER"],
               backend=os.environ["FAULT_BACKEND"])
app.conf.update(
    broker_transport_options={"visibility_timeout": float(os.environ["FAULT_VT"]),
                              "polling_interval": 0.05},
    task_acks_late=True,
    broker_connection_timeout=1.0,
    worker_max_deliveries=int(os.environ.get("FAULT_MAX_DELIVERIES", "5")),
    task_message_max_size=int(os.environ.get("FAULT_MAX_SIZE", str(4 << 20))),
)
LOG = os.path.join(HERE, "runs.log")


def _log(kind, n):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{kind} {n} {os.getpid()} {time.time()!r}\\n".encode())
    finally:
        os.close(fd)


@app.task(name="fault.work")
def work(n, seconds=0.0, pad=None):
    _log("S", n)
    if seconds:
        time.sleep(seconds)
    _log("E", n)
    return n


@app.task(name="fault.kill_worker")
def kill_worker(n):
    """Kills the process running it (the worker itself on the solo pool)."""
    _log("S", n)
    os.kill(os.getpid(), signal.SIGKILL)
'''


def redis_or_fail() -> None:
    try:
        redis.Redis(HOST, PORT, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        reason = f"Redis on {HOST}:{PORT} does not answer ({exc})"
        if os.environ.get("CONVEYOR_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " (CONVEYOR_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(reason)


class Lab:
    """A task module in ``root``, its broker (SQLite file or Redis db 3), workers."""

    def __init__(self, root: Path, broker: str, vt: float = 1.0) -> None:
        self.root, self.broker, self.vt = root, broker, vt
        (root / "faulttasks.py").write_text(TASKS)
        self.log = root / "runs.log"
        if broker == "sqlite":
            self.broker_url = f"sqlite:///{root}/broker.db"
            self.backend_url = f"sqlite:///{root}/results.db"
        else:
            self.broker_url = self.backend_url = f"redis://{HOST}:{PORT}/{REDIS_DB}"
            self.redis = redis.Redis(HOST, PORT, db=REDIS_DB)
            self.redis.flushdb()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.proxy: TcpProxy | None = None
        self.app = Conveyor("fault-client", broker=self.broker_url,
                            backend=self.backend_url)
        self.app.conf.update(broker_transport_options={"visibility_timeout": vt})

    def through_proxy(self) -> TcpProxy:
        """Workers reach Redis through a proxy the test can cut (results go direct)."""
        self.proxy = TcpProxy(HOST, PORT)
        self.broker_url = f"redis://127.0.0.1:{self.proxy.port}/{REDIS_DB}"
        return self.proxy

    def hold_lock(self, seconds: float) -> subprocess.Popen[bytes]:
        """Another process takes the SQLite write lock for ``seconds``; returns once
        it holds it."""
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(self.root / "broker.db"), str(seconds)],
            stdout=subprocess.PIPE)
        self.procs.append(holder)
        (self.root / f"worker{len(self.procs) - 1}.err").write_bytes(b"")
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        return holder

    # ------------------------------------------------------------ processes
    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "FAULT_BROKER": self.broker_url,
                "FAULT_BACKEND": self.backend_url, "FAULT_VT": str(self.vt), **extra}

    def worker(self, *, pool: str = "threads", concurrency: int = 2,
               prefetch: int | None = None, **env: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "conveyor.cli", "-A", "faulttasks", "-l", "INFO",
               "worker", "-Q", "celery", "-c", str(concurrency), "--pool", pool]
        if prefetch is not None:
            cmd += ["--prefetch-multiplier", str(prefetch)]
        err = open(self.root / f"worker{len(self.procs)}.err", "wb")  # noqa: SIM115
        proc = subprocess.Popen(cmd, cwd=self.root, env=self.env(**env), stderr=err,
                                stdout=err, start_new_session=True)
        err.close()
        self.procs.append(proc)
        return proc

    def wait_consuming(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
        index = self.procs.index(proc)
        self.wait_for(lambda: b"consuming" in (self.root / f"worker{index}.err").read_bytes(),
                      timeout, "the worker to start consuming")

    def stderr(self) -> str:
        return " | ".join((self.root / f"worker{i}.err").read_text(errors="replace")[-3000:]
                          for i in range(len(self.procs)))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            try:  # whatever a failed test left behind in the worker's session
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.app.close()
        if self.proxy is not None:
            self.proxy.cut()
        if self.broker == "redis":
            self.redis.flushdb()
            self.redis.close()

    # ------------------------------------------------------------ tasks
    def send(self, n: int, seconds: float = 0.0, **options: Any) -> Any:
        return self.app.send_task("fault.work", (n, seconds), **options)

    def send_many(self, count: int, seconds: float = 0.0) -> None:
        for start in range(0, count, 500):
            self.app.publish_batch([("fault.work", (n, seconds), {}, {}, {})
                                    for n in range(start, min(count, start + 500))])

    def runs(self, kind: str = "E") -> list[tuple[int, int, float]]:
        """``(n, pid, time)`` of every start (``S``) or end (``E``) so far."""
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == kind:
                out.append((int(parts[1]), int(parts[2]), float(parts[3])))
        return out

    def ended(self) -> Counter[int]:
        return Counter(n for n, _pid, _at in self.runs("E"))

    def wait_for(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.02)
        pytest.fail(f"timed out after {timeout}s waiting for {what}; "
                    f"{len(self.ended())} tasks ended, {self.waiting()} messages on the "
                    f"broker ({self.leased()} leased); workers said: {self.stderr()}")

    # ------------------------------------------------------------ the broker's view
    def leased(self) -> int:
        """Deliveries taken and not settled (SQLite leased rows, Redis ``unacked``)."""
        if self.broker == "sqlite":
            return self.sql("SELECT count(*) FROM conveyor_messages WHERE state = 1")
        return int(self.redis.hlen("unacked"))

    def waiting(self) -> int:
        """Messages still on the broker, leased or not."""
        if self.broker == "sqlite":
            return self.sql("SELECT count(*) FROM conveyor_messages")
        lists = [k for k in self.redis.keys("celery*") if self.redis.type(k) == b"list"]
        return sum(int(self.redis.llen(k)) for k in lists) + self.leased()

    def sql(self, query: str, *params: Any) -> Any:
        with sqlite3.connect(self.root / "broker.db", timeout=30) as db:
            return db.execute(query, params).fetchone()[0]


_HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
