"""Conveyor worker processes and CLI runs for the tests that drive workers from
outside (remote control, the monitor page, Flower): one place that knows how to write
their project module, start a worker and wait until it consumes, and run Conveyor's
or Celery's CLI against the same project.

The project module and its broker live in ``env`` (``CONVEYOR_BROKER_URL``,
``CONVEYOR_RESULT_BACKEND``, ``PYTHONPATH``; the ``C_*`` variables of
:mod:`celery_peer` for Celery's CLI); everything runs in ``cwd``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from celery_peer import MODULE as CELERY_MODULE
from processes import Proc

#: The tasks a project module may hold (``write_project``), by name.
TASKS = {
    "add": """
def add(x, y):
    return x + y
""",
    "tick": """
def tick(path, n):
    \"\"\"Appends a line to ``path`` every 50 ms, ``n`` times: a side effect to watch.\"\"\"
    for i in range(n):
        with open(path, "a") as f:
            f.write(f"{i}\\n")
        time.sleep(0.05)
    return n
""",
    "boom": """
def boom():
    raise ValueError("boom: the monitor shows this traceback")
""",
}


def write_project(directory: Path, module: str, tasks: Sequence[str]) -> Path:
    """Write ``<module>.py`` into ``directory``: an app named ``module`` holding the
    ``tasks`` (names in ``TASKS``), each registered as ``<module>.<name>``. Returns
    ``directory``."""
    body = "\n".join(f"\n@app.task(name={module + '.' + name!r})" + TASKS[name]
                     for name in tasks)
    (directory / f"{module}.py").write_text(
        f"import time\n\nfrom conveyor import Conveyor\n\napp = Conveyor({module!r})\n{body}")
    return directory


def conveyor_worker(app_spec: str, cwd: Path, env: Mapping[str, str], *,
                    name: str | None = None, queues: Sequence[str] = (),
                    concurrency: int = 2, pool: str = "threads", events: bool = False,
                    ready_timeout: float = 30) -> Proc:
    """``conveyor -A app_spec worker`` (``-n name``, ``-Q queues``, ``-E`` with
    ``events``), started and consuming; use it as a context manager to stop it."""
    args = [sys.executable, "-m", "conveyor.cli", "-A", app_spec, "-l", "INFO", "worker",
            "-c", str(concurrency), "--pool", pool]
    if name:
        args += ["-n", name]
    if queues:
        args += ["-Q", ",".join(queues)]
    if events:
        args.append("-E")
    proc = Proc(args, cwd, env=dict(env))
    try:
        proc.wait_output("consuming", ready_timeout)
    except BaseException:
        proc.stop()
        raise
    return proc


def run_cli(app_spec: str, cwd: Path, env: Mapping[str, str], *args: str,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``conveyor -A app_spec ARGS``, or Celery's CLI on :mod:`celery_peer`'s app when
    ARGS start with ``celery``; its output captured."""
    if args and args[0] == "celery":
        cmd = [sys.executable, "-m", "celery", "-A", CELERY_MODULE, *args[1:]]
    else:
        cmd = [sys.executable, "-m", "conveyor.cli", "-A", app_spec, *args]
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)


__all__ = ["TASKS", "conveyor_worker", "run_cli", "write_project"]
