"""The canvas tests' lab: a real ``conveyor worker`` process and a client app, on the
SQLite embedded default, on Redis (broker db 6, results db 7: the canvas tests' own,
flushed before and after; queue names start with ``t.canvas.``) and on RabbitMQ (a
vhost of the lab's own) with its results on Redis (db 7).

Both sides record the size of every task message they send (``Lab.sent_bytes``), so
a test can add up what a whole workflow put on the wire."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, hookimpl
from rabbit_vhosts import HOST, PORT, private_vhost
from redis_dbs import flush_dbs

BROKER_DB, RESULT_DB = 6, 7

TASKS = '''
import json, os, time
from conveyor import Conveyor, hookimpl

app = Conveyor("canvastasks", broker=os.environ["CANVAS_BROKER"],
               backend=os.environ["CANVAS_BACKEND"])
app.conf.update(task_default_queue=os.environ["CANVAS_QUEUE"],
                broker_transport_options=json.loads(os.environ["CANVAS_TRANSPORT_OPTIONS"]))


class Sizes:
    """Appends "<root id> <bytes>" for every task message this worker sends."""

    @hookimpl
    def after_task_publish(self, app, name, message, route):
        with open(os.environ["CANVAS_SIZES"], "a") as f:
            f.write(f"{message.headers.get('root_id')} {message_size(message)}\\n")


def message_size(message):
    return len(message.body) + len(json.dumps(message.headers))


app.register_plugin(Sizes())


@app.task(name="canvas.add")
def add(x, y):
    return x + y


@app.task(name="canvas.nap_add")
def nap_add(x, y, seconds):
    time.sleep(seconds)
    return x + y


@app.task(name="canvas.tsum")
def tsum(values):
    return sum(values)


@app.task(name="canvas.collect")
def collect(values):
    return values


@app.task(name="canvas.boom")
def boom(x):
    raise ValueError(f"boom {x}")


@app.task(name="canvas.remember")
def remember(value):
    return value


@app.task(name="canvas.echo")
def echo(*args):
    return list(args)


@app.task(name="canvas.stamps", bind=True)
def stamps(self, *args):
    return self.request.stamps


@app.task(name="canvas.replace_with", bind=True)
def replace_with(self, x, kind):
    from conveyor import chain, group
    if kind == "task":
        return self.replace(add.s(x, 100))
    if kind == "chain":
        return self.replace(chain(add.s(x, 1), add.s(10)))
    return self.replace(group(add.s(x, i) for i in range(3)))


@app.task(name="canvas.stamps_after_retry", bind=True)
def stamps_after_retry(self):
    if not self.request.retries:
        self.retry(countdown=0.05)
    return [self.request.retries, self.request.stamps]
'''


def message_size(message: Any) -> int:
    """What a task message weighs: its body and its headers as JSON."""
    return len(message.body) + len(json.dumps(message.headers))


class _Sizes:
    """Records the root id and size of every task message the client sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    @hookimpl
    def after_task_publish(self, app: Conveyor, name: str, message: Any, route: Any) -> None:
        self.sent.append((message.headers.get("root_id"), message_size(message)))


class Lab:
    """A task module, one worker process running it, and a client app."""

    def __init__(self, root: Path, broker: str, backend: str,
                 transport_options: dict[str, Any]) -> None:
        self.root = root
        self.queue = f"t.canvas.{uuid.uuid4().hex[:8]}"
        self.transport_options = transport_options
        (root / "canvastasks.py").write_text(textwrap.dedent(TASKS))
        self.env = {**os.environ, "CANVAS_BROKER": broker, "CANVAS_BACKEND": backend,
                    "CANVAS_QUEUE": self.queue, "CANVAS_SIZES": str(root / "sizes.txt"),
                    "CANVAS_TRANSPORT_OPTIONS": json.dumps(transport_options)}
        self.err = open(root / "worker.err", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "-A", "canvastasks", "-l", "WARNING",
             "worker", "-Q", self.queue, "-c", "4", "--pool", "threads"],
            cwd=root, env=self.env, stderr=self.err)
        self.app = self.client("canvas-client")
        self.sizes = _Sizes()
        self.app.register_plugin(self.sizes)

    def client(self, name: str, **conf: Any) -> Conveyor:
        """Another client app on the lab's broker, backend and queue."""
        return Conveyor(name, broker=self.env["CANVAS_BROKER"],
                        backend=self.env["CANVAS_BACKEND"], task_default_queue=self.queue,
                        broker_transport_options=self.transport_options, **conf)

    def sent_bytes(self, root_id: str, messages: int) -> int:
        """The bytes of the ``messages`` task messages of the workflow rooted at
        ``root_id``, the client's and the worker's (read from its file, which the
        worker appends to just after each publish: waited for, 5 s at most)."""
        path = self.root / "sizes.txt"
        deadline = time.monotonic() + 5
        while True:
            lines = path.read_text().splitlines() if path.exists() else []
            sizes = [size for root, size in self.sizes.sent if root == root_id]
            sizes += [int(size) for root, size in map(str.split, lines) if root == root_id]
            if len(sizes) >= messages or time.monotonic() > deadline:
                assert len(sizes) == messages, (root_id, messages, sizes)
                return sum(sizes)
            time.sleep(0.05)

    def s(self, name: str, *args: Any, **options: Any) -> Any:
        return self.app.signature(f"canvas.{name}", args, **options)

    def stderr(self) -> str:
        self.err.flush()
        return (self.root / "worker.err").read_text(errors="replace")[-3000:]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.err.close()
        self.app.close()


#: The brokers every canvas test runs on.
BROKERS = ["sqlite", "redis", "amqp"]
#: Where the tests whose behaviour is the backend's, not the broker's, run (the
#: broker carries the same messages however it stores them): ``@not_on_rabbitmq``.
#: RabbitMQ keeps a representative group, chain and chord, and what it does its own
#: way: dead letters, countdowns parked in its delay layout, revoke broadcasts.
not_on_rabbitmq = pytest.mark.parametrize("lab", ["sqlite", "redis"], indirect=True,
                                          scope="module")


@pytest.fixture(scope="module", params=BROKERS, name="lab")
def canvas_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp(f"canvas-{request.param}")
    with contextlib.ExitStack() as stack:
        polling = {"polling_interval": 0.01}
        if request.param == "sqlite":
            lab = Lab(root, f"sqlite:///{root}/broker.db", f"sqlite:///{root}/results.db",
                      polling)
        else:
            broker, backend = flush_dbs(BROKER_DB, RESULT_DB)
            stack.callback(flush_dbs, BROKER_DB, RESULT_DB)
            if request.param == "amqp":  # RabbitMQ, results on Redis
                vhost = stack.enter_context(contextlib.contextmanager(private_vhost)())
                lab = Lab(root, f"amqp://guest:guest@{HOST}:{PORT}/{vhost}", backend, {})
            else:
                lab = Lab(root, broker, backend, polling)
        stack.callback(lab.close)
        yield lab
