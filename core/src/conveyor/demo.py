"""``conveyor demo``: a real worker process and the calling guide's examples.

Runs in a temporary directory on the embedded SQLite default, so it needs nothing
but Python; prints a short report and exits 0 when every example behaved.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .app import Conveyor
from .canvas import group

app = Conveyor("conveyor.demo")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True)
def progress(self: Any, steps: int) -> str:
    for percent in (50, 90):
        self.update_state(state="PROGRESS", meta={"progress": percent})
        time.sleep(0.2)
    return f"done in {steps} steps"


def _examples() -> list[tuple[str, Callable[[], tuple[Any, Any]]]]:
    def delay() -> tuple[Any, Any]:
        return add.delay(2, 2).get(timeout=10), 4

    def countdown() -> tuple[Any, Any]:
        start = time.monotonic()
        value = add.apply_async((2, 2), countdown=2).get(timeout=15)
        waited = time.monotonic() - start
        return (value, waited >= 2), (4, True)

    def link() -> tuple[Any, Any]:
        parent = add.apply_async((2, 8), link=add.signature((10,)))
        parent.get(timeout=10)
        return parent.children[0].get(timeout=10), 20

    def on_message() -> tuple[Any, Any]:
        seen: list[str] = []

        def show(msg: dict[str, Any]) -> None:
            meta = msg["result"]
            label = msg["status"]
            if isinstance(meta, dict) and "progress" in meta:
                label += f" {meta['progress']}"
            seen.append(label)
            print(f"      on_message: {label}")

        progress.delay(2).get(timeout=10, on_message=show)
        return seen, ["PROGRESS 50", "PROGRESS 90", "SUCCESS"]

    def groups() -> tuple[Any, Any]:
        job = group(add.s(2, 2), add.s(4, 4), add.s(8, 8), add.s(16, 16))
        return job.apply_async().get(timeout=10), [4, 8, 16, 32]

    def expires() -> tuple[Any, Any]:
        result = add.apply_async((1, 1), countdown=2, expires=1)
        try:
            result.get(timeout=15)
        except Exception as exc:  # noqa: BLE001 - the expected TaskRevokedError
            return (result.state, type(exc).__name__), ("REVOKED", "TaskRevokedError")
        return result.state, "REVOKED"

    return [
        ("add.delay(2, 2)", delay),
        ("add.apply_async((2, 2), countdown=2)  (value, waited ≥ 2 s)", countdown),
        ("add.apply_async((2, 8), link=add.signature((10,)))  → child", link),
        ("progress.delay(2).get(on_message=…)", on_message),
        ("group(add.s(2, 2), add.s(4, 4), add.s(8, 8), add.s(16, 16))", groups),
        ("add.apply_async((1, 1), countdown=2, expires=1)", expires),
    ]


def run_demo(keep: bool = False) -> int:
    """Start a worker process, run every example, stop the worker; 0 if all passed."""
    tmp = tempfile.mkdtemp(prefix="conveyor-demo-")
    url = f"sqlite:///{os.path.join(tmp, 'conveyor.sqlite3')}"
    app.conf.update(broker_url=url, result_backend=url)
    env = {**os.environ, "CONVEYOR_BROKER_URL": url, "CONVEYOR_RESULT_BACKEND": url}
    print(f"Conveyor demo — embedded SQLite broker and backend in {tmp}")
    started = time.monotonic()
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "-A", "conveyor.demo", "-l", "WARNING",
         "worker", "-c", "4", "--pool", "threads"], cwd=tmp, env=env)
    failures = 0
    try:
        for title, example in _examples():
            try:
                got, expected = example()
                ok = got == expected
            except Exception as exc:  # noqa: BLE001 - reported as a failed example
                got, ok = f"{type(exc).__name__}: {exc}", False
            failures += not ok
            print(f"  {'ok  ' if ok else 'FAIL'} {title} → {got!r}")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)
        app.close()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{6 - failures}/6 examples behaved, in {time.monotonic() - started:.1f}s; "
          f"worker exited with {worker.returncode}.")
    return 0 if failures == 0 and worker.returncode == 0 else 1
