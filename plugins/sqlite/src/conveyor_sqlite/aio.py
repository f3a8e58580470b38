"""The asyncio twins: the blocking transport and backend, their file I/O on a helper.

SQLite is a file, not a network broker: there is no socket to await, so each twin
gives its blocking counterpart one thread of its own (a connection lives in the
thread that opened it) and awaits the calls it hands over. Waiting for a result polls
from the event loop, with the same growing pauses as the blocking backend, so a
thousand waiters share that one thread instead of each holding it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

from conveyor.interfaces import BackendCapabilities, Capabilities, Join, Outgoing, Route

from .backend import FIRST_POLL, MAX_POLL, SQLiteBackend
from .transport import SQLiteTransport

T = TypeVar("T")


class _Helper:
    """The one thread that does a twin's file I/O."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conveyor-sqlite")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, functools.partial(fn, *args))

    def close(self) -> None:
        self._thread.shutdown(wait=False)


class AsyncSQLiteTransport:
    """Publishes for the asyncio client through :class:`SQLiteTransport`."""

    scheme: ClassVar[str] = "sqlite"
    capabilities: ClassVar[Capabilities] = SQLiteTransport.capabilities
    connection_errors = SQLiteTransport.connection_errors

    def __init__(self, url: str, app: Any = None) -> None:
        self._io = _Helper()
        self._sync = SQLiteTransport(url, app)

    async def connect(self) -> None:
        await self._io.run(self._sync.connect)

    async def declare(self, route: Route) -> None:
        await self._io.run(self._sync.declare, route)

    async def publish_many(self, batch: Sequence[Outgoing]) -> None:
        await self._io.run(self._sync.publish_many, batch)

    async def close(self) -> None:
        try:
            await self._io.run(self._sync.close)
        finally:
            self._io.close()


class AsyncSQLiteBackend:
    """Reads and writes results through :class:`SQLiteBackend` on a helper thread."""

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities(joins=True)

    def __init__(self, url: str, app: Any = None) -> None:
        self._io = _Helper()
        self._sync = SQLiteBackend(url, app)

    async def get(self, task_id: str) -> bytes | None:
        return await self._io.run(self._sync.get, task_id)

    async def store(self, task_id: str, state: str, payload: bytes, *,
                    expires: float | None) -> None:
        await self._io.run(functools.partial(self._sync.store, expires=expires),
                           task_id, state, payload)

    async def forget(self, task_id: str) -> None:
        await self._io.run(self._sync.forget, task_id)

    async def join_size(self, group_id: str, size: int, *, expires: float | None) -> None:
        await self._io.run(functools.partial(self._sync.join_size, expires=expires),
                           group_id, size)

    async def join_add(self, group_id: str, task_id: str, index: int | None,
                       payload: bytes, *, expires: float | None, claim_for: float) -> Join:
        return await self._io.run(functools.partial(
            self._sync.join_add, expires=expires, claim_for=claim_for),
            group_id, task_id, index, payload)

    async def join_results(self, group_id: str) -> list[bytes]:
        return await self._io.run(self._sync.join_results, group_id)

    async def join_finish(self, group_id: str, claim: str, *,
                          expires: float | None) -> bool:
        return await self._io.run(functools.partial(self._sync.join_finish,
                                                    expires=expires), group_id, claim)

    async def wait(self, task_id: str, *, timeout: float | None,
                   previous: bytes | None) -> bytes | None:
        """Poll from the loop; pauses grow as the blocking backend's do."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        pause = FIRST_POLL
        while True:
            current = await self.get(task_id)
            if current is not None and current != previous:
                return current
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                pause = min(pause, remaining)
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, MAX_POLL)

    async def close(self) -> None:
        try:
            await self._io.run(self._sync.close)
        finally:
            self._io.close()
