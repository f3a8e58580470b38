"""Helpers shared by the Redis plugin tests (messages, wire samples, processes)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from conveyor.interfaces import Message
from wire_samples import samples

#: The Redis the suite uses; CONVEYOR_TEST_REDIS_PORT points it at another local one
#: (so parallel runs on one machine cannot flush each other's dbs).
HOST, PORT = "127.0.0.1", int(os.environ.get("CONVEYOR_TEST_REDIS_PORT", "6379"))


def stub_app(**options: Any) -> Any:
    """Just what BaseTransport reads from an app."""
    return SimpleNamespace(conf=SimpleNamespace(broker_transport_options=options,
                                                broker_connection_timeout=2.0))


def make_message(n: int = 0, priority: int | None = None, **headers: Any) -> Message:
    task_id = str(uuid.uuid4())
    return Message({"lang": "py", "task": "tests.noop", "id": task_id, "n": n, **headers},
                   b'[[], {}, {"callbacks": null, "errbacks": null, "chain": null, '
                   b'"chord": null}]',
                   properties={"correlation_id": task_id, "reply_to": "t-reply",
                               "delivery_mode": 2, "priority": priority})


def client_samples() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file name, message)`` for every client-side Redis capture."""
    for name, data in samples("redis-*"):
        for message in data.get("messages", []):
            if "envelope" in message and "raw" in message:
                yield f"{name}.json", message


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll ``predicate`` until truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def b64(text: str) -> bytes:
    return base64.b64decode(text)


class Proc:
    """A subprocess in its own process group, always killed (test teardown)."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:
        self.log = log or cwd / f"proc-{uuid.uuid4().hex[:6]}.log"
        self._out = self.log.open("wb")
        self.popen = subprocess.Popen(args, cwd=cwd, env={**os.environ, **(env or {})},
                                      stdout=self._out, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    def wait_output(self, text: str, timeout: float) -> None:
        wait_for(lambda: text in self.output() or self.popen.poll() is not None, timeout,
                 what=f"{text!r} in the output of {self.popen.args}")
        if text not in self.output():
            raise AssertionError(f"process exited ({self.popen.returncode}) before "
                                 f"printing {text!r}:\n{self.output()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        self.kill(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.popen.wait(5)
        self._out.close()

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
