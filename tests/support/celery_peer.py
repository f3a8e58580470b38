"""A real Celery 5.7 worker as a test peer: its app module and its subprocess.

Shared by the interop suites (Redis, AMQP, remote control), so every suite runs the
same Celery app: tasks ``interop.add`` and ``interop.record``, JSON and msgpack
accepted, one message prefetched. Celery is a test-only dependency; the app runs in
its own process, configured through ``C_*`` environment variables:

``C_BROKER``, ``C_BACKEND``, ``C_QUEUE`` (required); ``C_VT`` (Redis
``visibility_timeout``), ``C_MAXPRI`` (``task_queue_max_priority``), ``C_QUORUM``
(quorum default queue) when set.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from processes import Proc

#: The module name the app is written as (``celery -A celery_interop``).
MODULE = "celery_interop"

CELERY_APP = '''
import os
from celery import Celery

app = Celery("interop", broker=os.environ["C_BROKER"], backend=os.environ["C_BACKEND"])
app.conf.update(accept_content=["json", "msgpack"], task_default_queue=os.environ["C_QUEUE"],
                worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)
if os.environ.get("C_VT"):
    app.conf.broker_transport_options = {"visibility_timeout": float(os.environ["C_VT"])}
if os.environ.get("C_MAXPRI"):
    app.conf.task_queue_max_priority = int(os.environ["C_MAXPRI"])
if os.environ.get("C_QUORUM"):
    app.conf.task_default_queue_type = "quorum"


@app.task(name="interop.add")
def add(x, y):
    return x + y


@app.task(name="interop.record")
def record(path, n):
    with open(path, "a") as f:
        f.write(f"{n}\\n")
    return n
'''


def write_celery_app(directory: Path) -> Path:
    """Write the Celery app module into ``directory`` (the worker's cwd)."""
    (directory / f"{MODULE}.py").write_text(textwrap.dedent(CELERY_APP))
    return directory


def celery_worker(workdir: Path, broker: str, backend: str, queue: str,
                  *extra: str, ready_timeout: float = 40, **env: str) -> Proc:
    """Start ``celery worker -P solo`` on ``queue`` (named ``<queue>@host``) and wait
    until it is ready; ``extra`` arguments go to the worker's command line, ``env``
    to its environment (the ``C_*`` options above).

    Its event heartbeat stays on (no ``--without-heartbeat``): that timer is also what
    wakes its event loop, which on RabbitMQ otherwise polls 10 s at a time, so a
    SIGTERM took 10 s to stop it instead of 2."""
    proc = Proc([sys.executable, "-m", "celery", "-A", MODULE, "worker",
                 "-P", "solo", "-c", "1", "-Q", queue, "-l", "INFO", "--without-gossip",
                 "--without-mingle", "-n", f"{queue}@%h", *extra],
                workdir, env={"C_BROKER": broker, "C_BACKEND": backend, "C_QUEUE": queue,
                              **env})
    proc.wait_output("ready.", ready_timeout)
    return proc
