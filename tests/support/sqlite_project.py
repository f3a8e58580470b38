"""A throwaway project module on the embedded SQLite broker, for tests that run a real
worker process (``worker_process(module, env=..., cwd=...)``) and a client beside it."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conveyor import Conveyor


def sqlite_project(tmp_path: Path, module: str, source: str) -> dict[str, str]:
    """Write ``module.py`` into ``tmp_path``; return the worker's environment (broker
    and backend on one SQLite file there, the module importable)."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    url = f"sqlite:///{tmp_path / f'{module}.sqlite3'}"
    return {"CONVEYOR_BROKER_URL": url, "CONVEYOR_RESULT_BACKEND": url,
            "PYTHONPATH": str(tmp_path)}


@contextmanager
def client_of(env: dict[str, str]) -> Iterator[Conveyor]:
    """An app that sends to and reads results from the project's SQLite file."""
    app = Conveyor(f"client-of-{env['PYTHONPATH']}", broker=env["CONVEYOR_BROKER_URL"],
                   backend=env["CONVEYOR_RESULT_BACKEND"])
    try:
        yield app
    finally:
        app.close()
