"""Helpers shared by the Redis plugin tests (messages, wire samples, processes)."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from conveyor.interfaces import Message
from processes import Proc, wait_for
from wire_samples import samples

__all__ = ["HOST", "PORT", "Proc", "b64", "client_samples", "make_message", "stub_app",
           "wait_for"]

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


def b64(text: str) -> bytes:
    return base64.b64decode(text)
