"""pytest fixtures: a real app and a real worker, with production's encoding.

Nothing here is an "always eager" shortcut: messages are serialized, compressed,
routed and decoded exactly as in production, so an unserializable argument fails in
a test as it would in production.

Override ``conveyor_config`` in a conftest to pick a broker/backend::

    @pytest.fixture
    def conveyor_config():
        return {"broker_url": "redis://localhost:6379/5", "result_backend": "..."}

``async def`` tests (pytest-asyncio) take ``async_conveyor_app`` instead: the same app,
whose asyncio connections (``adelay``, ``aget``) belong to the test's event loop and
are closed on it when the test ends::

    @pytest.mark.asyncio
    async def test_add(async_conveyor_app, conveyor_worker):
        result = await add.adelay(2, 2)
        assert await result.aget(timeout=10) == 4
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import pytest_asyncio

from conveyor import Conveyor
from conveyor.worker import Worker

_counter = itertools.count()


def services_required() -> bool:
    """True in CI (``CONVEYOR_REQUIRE_SERVICES=1``): a missing broker fails tests."""
    return os.environ.get("CONVEYOR_REQUIRE_SERVICES") == "1"


def service_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (laptop) or fail (CI) when a service does not answer."""
    if service_answers(host, port):
        return
    message = f"{name} is not answering on {host}:{port}"
    if services_required():
        pytest.fail(f"{message} and CONVEYOR_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(f"{message}; start it to run this test")


@pytest.fixture
def conveyor_config() -> dict[str, Any]:
    """Settings for ``conveyor_app``; by default a private in-memory broker/backend."""
    name = f"memory://pytest-{os.getpid()}-{next(_counter)}"
    return {"broker_url": name, "result_backend": name}


@pytest.fixture
def conveyor_app(conveyor_config: Mapping[str, Any]) -> Iterator[Conveyor]:
    """A Conveyor app configured with ``conveyor_config``."""
    app = Conveyor(f"pytest-app-{next(_counter)}", config=dict(conveyor_config))
    yield app
    app.close()


@pytest_asyncio.fixture
async def async_conveyor_app(conveyor_app: Conveyor) -> AsyncIterator[Conveyor]:
    """``conveyor_app`` for ``async def`` tests: the asyncio connections it opens on
    the test's event loop are closed on that loop after the test (a loop that
    closes first would leave them dangling)."""
    yield conveyor_app
    await conveyor_app.aclose()


@pytest.fixture
def conveyor_worker_options() -> dict[str, Any]:
    """Options for ``conveyor_worker`` (queues, concurrency, pool, …)."""
    return {"concurrency": 2, "pool": "threads"}


@pytest.fixture
def conveyor_worker(conveyor_app: Conveyor,
                    conveyor_worker_options: Mapping[str, Any]) -> Iterator[Worker]:
    """A real worker running in a thread for the test; stopped (warm) after it.

    Tasks must be registered on ``conveyor_app`` before the fixture is requested, or
    the worker dead-letters them as not registered — exactly as in production.
    """
    worker = conveyor_app.Worker(**conveyor_worker_options)
    with worker.running():
        yield worker


@contextmanager
def worker_process(app_spec: str, *, queues: Sequence[str] | None = None,
                   concurrency: int = 1, pool: str = "solo", loglevel: str = "INFO",
                   env: Mapping[str, str] | None = None, cwd: str | None = None,
                   stop_timeout: float = 20.0, ready_timeout: float = 20.0,
                   extra_args: Sequence[str] = ()) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``conveyor -A app_spec worker`` as a process for the block; always stopped.

    Waits until the worker logs that it is consuming (bounded by ``ready_timeout``),
    sends SIGTERM on exit (warm shutdown) and kills it after ``stop_timeout``.
    """
    cmd = [sys.executable, "-m", "conveyor.cli", "-A", app_spec, "-l", loglevel,
           "worker", "-c", str(concurrency), "--pool", pool, *extra_args]
    if queues:
        cmd += ["-Q", ",".join(queues)]
    log_path = os.path.join(cwd or os.getcwd(), f".worker-{os.getpid()}-{next(_counter)}.log")
    log = open(log_path, "w+b")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, cwd=cwd)
    proc.log_path = log_path  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            with open(log_path, "rb") as f:
                if b"consuming" in f.read():
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log_path, "rb") as f:
                    output = f.read().decode(errors="replace")
                raise RuntimeError(f"worker did not start (exit {proc.returncode}):\n{output}")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()
