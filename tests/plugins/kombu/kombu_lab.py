"""A kombu-bridged broker, a result backend and a worker for it, per kombu transport.

``kombu+memory://`` lives in one process, so its worker is a thread of the test;
``kombu+filesystem://`` and ``kombu+redis://`` get real ``conveyor worker`` processes.
Tasks come from a module written for each test, loaded by both sides.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from processes import Proc
from redis_dbs import flush_dbs

from conveyor import Conveyor

CONVEYOR_BIN = str(Path(sys.executable).parent / "conveyor")
TRANSPORTS = ("memory", "filesystem", "redis")
#: This suite's Redis db, for kombu's broker keys and the results (``celery-task-meta-*``
#: keys, which kombu never names): db 3 is the fault suite's.
REDIS_DB = 2

TASKS = '''
import json, os, time
from conveyor import Conveyor

app = Conveyor("kombu-lab", broker=os.environ["K_BROKER"], backend=os.environ["K_BACKEND"],
               broker_transport_options=json.loads(os.environ["K_OPTIONS"]),
               worker_max_deliveries=int(os.environ.get("K_MAX_DELIVERIES", "5")))


@app.task(name="k.add")
def add(x, y):
    return x + y


@app.task(name="k.nap")
def nap(n):
    time.sleep(0.2)
    return n


@app.task(name="k.record")
def record(path, n):
    with open(path, "a") as f:
        f.write(f"{n}\\n")
    return n


@app.task(name="k.slow_once", acks_late=True)
def slow_once(marker):
    """Hangs on its first run (to be killed there), returns on the next."""
    earlier = open(marker).read().split() if os.path.exists(marker) else []
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(0 if earlier else 60)
    return "done"
'''


@dataclass
class Lab:
    """One kombu transport's broker URL and options, a backend, and the tasks."""

    kind: str
    broker: str
    backend: str
    options: dict[str, Any]
    path: Path
    queue: str = field(default_factory=lambda: f"kombu-{uuid.uuid4().hex[:8]}")
    _apps: list[Conveyor] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"K_BROKER": self.broker, "K_BACKEND": self.backend,
                "K_OPTIONS": json.dumps(self.options)}

    def app(self, **settings: Any) -> Conveyor:
        """A client app on the bridge (no tasks: it sends by name)."""
        app = Conveyor("kombu-client", broker=self.broker, backend=self.backend,
                       broker_transport_options=self.options, **settings)
        self._apps.append(app)
        return app

    def tasks(self, **env: str) -> ModuleType:
        """The task module loaded in this process (for an in-process worker)."""
        name = f"k_tasks_{uuid.uuid4().hex[:6]}"
        saved = {k: os.environ.get(k) for k in {**self.env, **env}}
        os.environ.update({**self.env, **env})
        try:
            spec = importlib.util.spec_from_file_location(name, self.path / "k_tasks.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self._apps.append(module.app)
        return module

    def process(self, *extra: str, **env: str) -> Proc:
        """A ``conveyor worker`` process consuming the lab's queue."""
        proc = Proc([CONVEYOR_BIN, "-A", "k_tasks", "-l", "INFO", "worker", "-Q", self.queue,
                     *extra], self.path, env={**self.env, **env})
        proc.wait_output("consuming", 30)
        return proc

    @contextlib.contextmanager
    def worker(self, **env: str) -> Iterator[None]:
        """A worker on the queue: a thread for memory, a process otherwise."""
        if self.kind == "memory":
            w = self.tasks(**env).app.Worker(queues=[self.queue], concurrency=2,
                                             pool="threads")
            with w.running():
                yield
        else:
            with self.process("-c", "2", "-P", "threads", **env):
                yield

    def close(self) -> None:
        for app in self._apps:
            app.close()


def make_lab(kind: str, tmp_path: Path) -> Lab:
    (tmp_path / "k_tasks.py").write_text(textwrap.dedent(TASKS))
    sqlite = f"sqlite:///{tmp_path / 'results.sqlite3'}"
    if kind == "memory":
        return Lab(kind, "kombu+memory://", sqlite, {"polling_interval": 0.01}, tmp_path)
    if kind == "filesystem":
        folder = tmp_path / "broker"
        folder.mkdir()
        return Lab(kind, "kombu+filesystem://", sqlite,
                   {"polling_interval": 0.02, "data_folder_in": str(folder),
                    "data_folder_out": str(folder), "control_folder": str(folder)}, tmp_path)
    (url,) = flush_dbs(REDIS_DB)
    return Lab(kind, f"kombu+{url}", url,
               {"visibility_timeout": 2, "polling_interval": 0.05,
                "unacked_restore_throttle": 1}, tmp_path)


__all__ = ["CONVEYOR_BIN", "TRANSPORTS", "Lab", "make_lab"]
