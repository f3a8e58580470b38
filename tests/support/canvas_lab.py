"""The canvas tests' lab: a real ``conveyor worker`` process and a client app, on the
SQLite embedded default and on Redis (broker db 6, results db 7: the canvas tests'
own, flushed before and after; queue names start with ``t.canvas.``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from redis_dbs import flush_dbs

BROKER_DB, RESULT_DB = 6, 7

TASKS = '''
import os, time
from conveyor import Conveyor

app = Conveyor("canvastasks", broker=os.environ["CANVAS_BROKER"],
               backend=os.environ["CANVAS_BACKEND"])
app.conf.update(task_default_queue=os.environ["CANVAS_QUEUE"],
                broker_transport_options={"polling_interval": 0.01})


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
'''


class Lab:
    """A task module, one worker process running it, and a client app."""

    def __init__(self, root: Path, broker: str, backend: str) -> None:
        self.root = root
        self.queue = f"t.canvas.{uuid.uuid4().hex[:8]}"
        (root / "canvastasks.py").write_text(textwrap.dedent(TASKS))
        self.env = {**os.environ, "CANVAS_BROKER": broker, "CANVAS_BACKEND": backend,
                    "CANVAS_QUEUE": self.queue}
        self.err = open(root / "worker.err", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "-A", "canvastasks", "-l", "WARNING",
             "worker", "-Q", self.queue, "-c", "4", "--pool", "threads"],
            cwd=root, env=self.env, stderr=self.err)
        self.app = Conveyor("canvas-client", broker=broker, backend=backend)
        self.app.conf.update(task_default_queue=self.queue,
                             broker_transport_options={"polling_interval": 0.01})

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


@pytest.fixture(scope="module", params=["sqlite", "redis"], name="lab")
def canvas_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp(f"canvas-{request.param}")
    if request.param == "sqlite":
        broker, backend = f"sqlite:///{root}/broker.db", f"sqlite:///{root}/results.db"
    else:
        broker, backend = flush_dbs(BROKER_DB, RESULT_DB)
    lab = Lab(root, broker, backend)
    try:
        yield lab
    finally:
        lab.close()
        if request.param == "redis":
            flush_dbs(BROKER_DB, RESULT_DB)
