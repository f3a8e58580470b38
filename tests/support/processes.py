"""Subprocesses and bounded waits shared by the broker test suites (Redis, AMQP)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
        if not self._out.closed:
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
