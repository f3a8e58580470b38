"""Helpers shared by the AMQP plugin tests: a private RabbitMQ vhost, processes, waits.

RabbitMQ on 127.0.0.1:5672 is shared with other runs, so every test session works
in a vhost of its own (``conveyor-test-<random>``), made with ``rabbitmqctl`` and
deleted afterwards; nothing outside it is touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika

HOST, PORT = "127.0.0.1", 5672


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """Run ``rabbitmqctl``; fail with its output."""
    proc = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} exited {proc.returncode}: "
                             f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def make_vhost() -> str:
    name = f"conveyor-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return name


def url_for(vhost: str, scheme: str = "amqp") -> str:
    return f"{scheme}://guest:guest@{HOST}:{PORT}/{vhost}"


def queue_info(vhost: str) -> dict[str, dict[str, Any]]:
    """``rabbitmqctl list_queues`` of the vhost: name -> durable, auto_delete,
    arguments (name -> value), type (message counts there lag: see :func:`depth`)."""
    out = rabbitmqctl("list_queues", "-q", "-p", vhost, "--formatter", "json", "name",
                      "durable", "auto_delete", "arguments", "type")
    rows = {}
    for row in json.loads(out or "[]"):
        row["arguments"] = {name: value for name, _type, value in row["arguments"]}
        rows[row.pop("name")] = row
    return rows


def depth(url: str, queue: str) -> int:
    """Messages ready in ``queue`` now, 0 if it does not exist (rabbitmqctl's
    counts lag by seconds)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0
        raise
    finally:
        conn.close()


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

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.log = cwd / f"proc-{uuid.uuid4().hex[:6]}.log"
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
