"""The ``memory://`` result backend: a dict and a condition variable."""

from __future__ import annotations

import threading
import time
from typing import Any

_stores: dict[str, tuple[dict[str, tuple[bytes, str, float | None]], threading.Condition]] = {}
_lock = threading.Lock()


class MemoryBackend:
    """In-process results shared per URL; waiters sleep on a condition, never spin."""

    def __init__(self, url: str = "memory://", app: Any = None) -> None:
        name = url.split("://", 1)[1] if "://" in url else url
        with _lock:
            self._data, self._cond = _stores.setdefault(name or "default",
                                                        ({}, threading.Condition()))

    def _live(self, task_id: str) -> bytes | None:
        found = self._data.get(task_id)
        if found is None:
            return None
        payload, _state, deadline = found
        if deadline is not None and deadline <= time.monotonic():
            del self._data[task_id]
            return None
        return payload

    def get(self, task_id: str) -> bytes | None:
        with self._cond:
            return self._live(task_id)

    def store(self, task_id: str, state: str, payload: bytes, *,
              expires: float | None) -> None:
        with self._cond:
            current = self._data.get(task_id)
            if current is not None and current[1] == "SUCCESS":
                return
            deadline = time.monotonic() + expires if expires else None
            self._data[task_id] = (payload, state, deadline)
            self._cond.notify_all()

    def wait(self, task_id: str, *, timeout: float | None,
             previous: bytes | None) -> bytes | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                current = self._live(task_id)
                if current is not None and current != previous:
                    return current
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def forget(self, task_id: str) -> None:
        with self._cond:
            self._data.pop(task_id, None)

    def close(self) -> None:
        pass
