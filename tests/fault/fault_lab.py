"""One fault test's world: a task module, a broker, worker processes and a run log.

Brokers: SQLite (a file of the test's own), Redis (db 3) and RabbitMQ (a vhost of the
fault suite's own, its queues deleted before and after each test; results go to a
SQLite file there).

Tasks append ``S n pid time`` when they start and ``E n pid time`` when they end to
``runs.log`` (one ``O_APPEND`` write per line, so lines from many processes never
mix). That log is how a test counts what ran, how often, and when. Workers run in
their own session so teardown can kill whatever they left behind; the tests assert
first that nothing was left.
"""

from __future__ import annotations

import json
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

import pika
import pytest
import redis

from rabbit_vhosts import HOST as AMQP_HOST
from rabbit_vhosts import PORT as AMQP_PORT
from rabbit_vhosts import rabbitmqctl

from conveyor import Conveyor
from conveyor_pytest.proxy import TcpProxy

HOST, PORT = "127.0.0.1", int(os.environ.get("CONVEYOR_TEST_REDIS_PORT", "6379"))
#: The suite's own db (the Redis plugin tests own 8–13, contract 14, integration 15,
#: canvas 4–7).
REDIS_DB = 3
BROKERS = ("sqlite", "redis", "amqp")
#: The queues a fault test's tasks and dead letters use on RabbitMQ.
AMQP_QUEUES = ("celery", "celery.conveyor.dead", "conveyor.dead.index")
#: The ``user_properties`` name of a figure line (see conftest's terminal summary).
FIGURE = "fault figure"

TASKS = '''
import json, os, signal, time
from conveyor import Conveyor

HERE = os.path.dirname(os.path.abspath(__file__))
app = Conveyor("faulttasks", broker=os.environ["FAULT_BROKER"],
               backend=os.environ["FAULT_BACKEND"])
app.conf.update(
    broker_transport_options=json.loads(os.environ["FAULT_OPTIONS"]),
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
    """A task module in ``root``, its broker (SQLite file, Redis db 3 or a RabbitMQ
    vhost), workers."""

    def __init__(self, root: Path, broker: str, vt: float = 1.0,
                 vhost: str | None = None) -> None:
        self.root, self.broker, self.vt, self.vhost = root, broker, vt, vhost
        (root / "faulttasks.py").write_text(TASKS)
        self.log = root / "runs.log"
        if broker == "sqlite":
            self.broker_url = f"sqlite:///{root}/broker.db"
            self.backend_url = f"sqlite:///{root}/results.db"
        elif broker == "redis":
            self.broker_url = self.backend_url = f"redis://{HOST}:{PORT}/{REDIS_DB}"
            self.redis = redis.Redis(HOST, PORT, db=REDIS_DB)
            self.redis.flushdb()
        else:
            assert vhost is not None, "an amqp lab needs the fault suite's vhost"
            self.broker_url = self.amqp_url()
            self.backend_url = f"sqlite:///{root}/results.db"
            self.rabbit = pika.BlockingConnection(pika.URLParameters(self.broker_url))
            self.delete_queues()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.proxy: TcpProxy | None = None
        self.node: pytest.Item | None = None
        self.app = Conveyor("fault-client", broker=self.broker_url,
                            backend=self.backend_url)
        if broker != "amqp":
            self.app.conf.update(broker_transport_options={"visibility_timeout": vt})

    def amqp_url(self, port: int = AMQP_PORT) -> str:
        return f"amqp://guest:guest@{AMQP_HOST}:{port}/{self.vhost}"

    def options(self) -> dict[str, Any]:
        """The workers' ``broker_transport_options`` (RabbitMQ has no visibility
        timeout: a lost connection gives its deliveries back at once)."""
        if self.broker == "amqp":
            return {}
        return {"visibility_timeout": self.vt, "polling_interval": 0.05}

    def channel(self) -> Any:
        """A channel on the lab's own RabbitMQ connection (made again when a test
        had the broker close it)."""
        try:
            return self.rabbit.channel()
        except pika.exceptions.AMQPConnectionError:
            self.rabbit = pika.BlockingConnection(pika.URLParameters(self.amqp_url()))
            return self.rabbit.channel()

    def delete_queues(self) -> None:
        channel = self.channel()
        for queue in AMQP_QUEUES:
            channel.queue_delete(queue)
        channel.close()

    def through_proxy(self) -> TcpProxy:
        """Workers reach Redis or RabbitMQ through a proxy the test can cut (results
        go direct)."""
        if self.broker == "amqp":
            self.proxy = TcpProxy(AMQP_HOST, AMQP_PORT)
            self.broker_url = self.amqp_url(self.proxy.port)
        else:
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

    def figure(self, text: str) -> None:
        """Record a figure of this test: printed in the run's terminal summary."""
        line = f"[fault] {self.broker}: {text}"
        print("\n" + line)
        if self.node is not None:
            self.node.user_properties.append((FIGURE, line))

    # ------------------------------------------------------------ processes
    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "FAULT_BROKER": self.broker_url,
                "FAULT_BACKEND": self.backend_url,
                "FAULT_OPTIONS": json.dumps(self.options()), **extra}

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

    def said(self, index: int = 0) -> str:
        """Everything worker ``index`` logged."""
        return (self.root / f"worker{index}.err").read_text(errors="replace")

    def stderr(self, tail: int | None = 3000) -> str:
        """What the workers logged: the last ``tail`` characters of each (all of it
        with ``None``, for a test that looks for a line anywhere)."""
        return " | ".join(
            (self.root / f"worker{i}.err").read_text(errors="replace")[-(tail or 0):]
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
        elif self.broker == "amqp":
            self.delete_queues()
            if self.rabbit.is_open:
                self.rabbit.close()

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
        """Deliveries taken and not settled (SQLite leased rows, Redis ``unacked``,
        RabbitMQ's unacknowledged messages)."""
        if self.broker == "sqlite":
            return self.sql("SELECT count(*) FROM conveyor_messages WHERE state = 1")
        if self.broker == "amqp":
            return self.rabbit_count("messages_unacknowledged")
        return int(self.redis.hlen("unacked"))

    def waiting(self) -> int:
        """Messages still on the broker, leased or not."""
        if self.broker == "sqlite":
            return self.sql("SELECT count(*) FROM conveyor_messages")
        if self.broker == "amqp":
            # Ready messages are counted at once; the unacknowledged ones only
            # through rabbitmqctl (slower), so only when none are ready.
            return self.ready("celery") or self.leased()
        lists = [k for k in self.redis.keys("celery*") if self.redis.type(k) == b"list"]
        return sum(int(self.redis.llen(k)) for k in lists) + self.leased()

    def ready(self, queue: str) -> int:
        """Messages ready in a RabbitMQ queue (0 when it does not exist)."""
        channel = self.channel()
        try:
            return int(channel.queue_declare(queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return 0
            raise
        finally:
            if channel.is_open:
                channel.close()

    def rabbit_count(self, field: str) -> int:
        """A ``rabbitmqctl list_queues`` count summed over the fault queues."""
        out = rabbitmqctl("list_queues", "-q", "-p", str(self.vhost), "--formatter",
                          "json", "name", field)
        return sum(int(row[field]) for row in json.loads(out or "[]")
                   if row["name"] in AMQP_QUEUES)

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
