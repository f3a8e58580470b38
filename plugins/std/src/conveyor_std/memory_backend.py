"""The ``memory://`` result backend: a dict and a condition variable.

Group joins (:class:`~conveyor.interfaces.JoinBackend`) keep the same rules as on
Redis and SQLite — each member counted once, one claim, a "done" mark that outlives
the join — in a dict under the same lock.

:class:`AsyncMemoryBackend` is its asyncio twin: the same store, and a waiter on an
event loop is woken by the writing thread through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from conveyor.interfaces import BackendCapabilities, Join


@dataclass
class _JoinState:
    """One group's join: members by ``task_id:index``, size, claim, expiry."""

    members: dict[str, tuple[float, bytes]] = field(default_factory=dict)
    size: int | None = None
    claim: str | None = None
    claim_until: float = 0.0
    done: bool = False
    deadline: float | None = None


class _Store:
    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, str, float | None]] = {}
        self.joins: dict[str, _JoinState] = {}
        self.groups: dict[str, tuple[bytes, float | None]] = {}
        self.cond = threading.Condition()
        #: How to wake each asyncio waiter (called with ``cond`` held).
        self.wakers: set[Callable[[], None]] = set()


_stores: dict[str, _Store] = {}
_lock = threading.Lock()


class MemoryBackend:
    """In-process results shared per URL; waiters sleep on a condition, never spin."""

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities(joins=True,
                                                                      groups=True)

    def __init__(self, url: str = "memory://", app: Any = None) -> None:
        name = url.split("://", 1)[1] if "://" in url else url
        with _lock:
            store = _stores.setdefault(name or "default", _Store())
        self._data, self._joins, self._cond = store.data, store.joins, store.cond
        self._groups = store.groups
        self._wakers = store.wakers

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
            for wake in self._wakers:
                wake()

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

    # ------------------------------------------------------------------ groups
    def save_group(self, group_id: str, payload: bytes, *, expires: float | None) -> None:
        with self._cond:
            self._groups[group_id] = (payload, time.monotonic() + expires if expires
                                      else None)

    def get_group(self, group_id: str) -> bytes | None:
        with self._cond:
            payload, deadline = self._groups.get(group_id, (None, None))
            if deadline is not None and deadline <= time.monotonic():
                del self._groups[group_id]
                return None
            return payload

    def forget_group(self, group_id: str) -> None:
        with self._cond:
            self._groups.pop(group_id, None)

    # ------------------------------------------------------------------ joins
    def _join(self, group_id: str) -> _JoinState:
        state = self._joins.get(group_id)
        now = time.monotonic()
        if state is None or (state.deadline is not None and state.deadline <= now):
            state = self._joins[group_id] = _JoinState()
        return state

    @staticmethod
    def _touch(state: _JoinState, expires: float | None) -> None:
        if expires:
            state.deadline = time.monotonic() + expires

    def join_size(self, group_id: str, size: int, *, expires: float | None) -> None:
        with self._cond:
            state = self._join(group_id)
            state.size, state.done, state.claim = int(size), False, None
            self._touch(state, expires)

    def join_add(self, group_id: str, task_id: str, index: int | None, payload: bytes, *,
                 expires: float | None, claim_for: float) -> Join:
        with self._cond:
            state = self._join(group_id)
            if state.done:
                return Join(-1, None, None)
            score = math.inf if index is None else float(index)
            state.members.setdefault(f"{task_id}:{'+inf' if index is None else index}",
                                     (score, bytes(payload)))
            self._touch(state, expires)
            done, now = len(state.members), time.monotonic()
            claim = None
            if state.size is not None and done == state.size \
                    and (state.claim is None or state.claim_until <= now):
                claim = state.claim = uuid.uuid4().hex
                state.claim_until = now + claim_for
            return Join(done, state.size, claim)

    def join_results(self, group_id: str) -> list[bytes]:
        with self._cond:
            members = self._join(group_id).members
            return [payload for _score, payload in sorted(members.values())]

    def join_finish(self, group_id: str, claim: str, *, expires: float | None) -> bool:
        with self._cond:
            state = self._joins.get(group_id)
            if state is None or state.claim != claim:
                return False
            done = self._joins[group_id] = _JoinState(done=True)
            self._touch(done, expires)
            return True


class AsyncMemoryBackend:
    """The asyncio twin of :class:`MemoryBackend` (same store, nothing blocks)."""

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities()

    def __init__(self, url: str = "memory://", app: Any = None) -> None:
        self._sync = MemoryBackend(url, app)

    async def get(self, task_id: str) -> bytes | None:
        return self._sync.get(task_id)

    async def store(self, task_id: str, state: str, payload: bytes, *,
                    expires: float | None) -> None:
        self._sync.store(task_id, state, payload, expires=expires)

    async def forget(self, task_id: str) -> None:
        self._sync.forget(task_id)

    async def wait(self, task_id: str, *, timeout: float | None,
                   previous: bytes | None) -> bytes | None:
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(changed.set)

        sync = self._sync
        with sync._cond:
            sync._wakers.add(wake)
        deadline = None if timeout is None else loop.time() + timeout
        try:
            while True:
                current = sync.get(task_id)
                if current is not None and current != previous:
                    return current
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
                changed.clear()
        finally:
            with sync._cond:
                sync._wakers.discard(wake)

    async def close(self) -> None:
        pass
