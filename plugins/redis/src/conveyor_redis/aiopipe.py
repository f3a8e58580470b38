"""One pipelined ``redis.asyncio`` connection shared by the coroutines of a loop.

perf: redis-py's asyncio client checks a connection out of its pool for every
command, wraps it in retry and observability layers, and writes it with a
``drain()``: with a hundred coroutines publishing and reading results at once, that
Python (and one ``send()`` per command) cost more than Redis itself. Here every
command of every coroutine goes over one held redis-py connection: its packer and
its (hiredis) reply parser, but commands written during one turn of the event loop
leave in one ``writelines`` and a single reader task hands replies back in order
(Redis answers a connection's commands in the order they came). A coroutine that
stops waiting (cancelled, timed out) leaves its reply to be read and dropped, so the
order never slips.

A broken connection fails every command in flight with redis-py's
``ConnectionError``/``TimeoutError`` (what callers retry on, as on the blocking
side) and the next command reconnects. An error reply is raised in the caller that
sent the command; the connection stays good.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis


class _Call:
    """A command (or MULTI…EXEC block) in flight: ``count`` replies, one future."""

    __slots__ = ("future", "count", "replies")

    def __init__(self, future: asyncio.Future[Any], count: int) -> None:
        self.future, self.count = future, count
        self.replies: list[Any] = []


class Pipe:
    """Commands from any coroutine of one loop over one connection (see the module)."""

    def __init__(self, pool: aioredis.ConnectionPool) -> None:
        """``pool`` only makes the connection: its ``socket_timeout`` is how late a
        reply may be before the connection is given up."""
        self._pool = pool
        self._conn: Any = None
        self._connecting: asyncio.Lock | None = None
        self._waiting: collections.deque[_Call] = collections.deque()
        self._out: list[bytes] = []
        self._writing = False
        self._reader: asyncio.Task[None] | None = None

    async def call(self, *args: Any) -> Any:
        """Run one command; its raw reply (bytes, int, list), or its error raised."""
        replies = await self._send([args])
        return replies[0]

    async def transaction(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """MULTI, ``commands``, EXEC in one write: EXEC's replies (error replies in
        place, as exceptions), or the error that aborted the transaction."""
        replies = await self._send([("MULTI",), *commands, ("EXEC",)])
        return replies[-1]  # type: ignore[no-any-return]

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Every command in one write; every reply, error replies in place."""
        return await self._send(commands, raise_first=False)

    async def _send(self, commands: Sequence[Sequence[Any]], *,
                    raise_first: bool = True) -> list[Any]:
        conn = self._conn
        if conn is None:
            conn = await self._connect()
        loop = asyncio.get_running_loop()
        call = _Call(loop.create_future(), len(commands))
        for args in commands:
            self._out += conn.pack_command(*args)
        self._waiting.append(call)
        if not self._writing:
            self._writing = True
            loop.call_soon(self._write, conn)
        if self._reader is None:
            self._reader = loop.create_task(self._read(conn))
        replies: list[Any] = await call.future
        if raise_first:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    async def _connect(self) -> Any:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is None:
                conn = self._pool.make_connection()  # type: ignore[no-untyped-call]
                await conn.connect()
                self._conn = conn
        return self._conn

    def _write(self, conn: Any) -> None:
        """Everything written this turn of the loop, in one go."""
        self._writing = False
        out, self._out = self._out, []
        if conn is not self._conn or not out:
            return
        try:
            conn._writer.writelines(out)
        except (OSError, RuntimeError, AttributeError) as exc:
            self._broken(conn, redis.ConnectionError(f"Error writing to Redis: {exc}"))

    async def _read(self, conn: Any) -> None:
        """Hand each reply to the call it answers, while any is awaited."""
        try:
            while self._waiting:
                try:
                    reply = await conn.read_response()
                except redis.ResponseError as exc:
                    reply = exc
                call = self._waiting[0]
                call.replies.append(reply)
                if len(call.replies) == call.count:
                    self._waiting.popleft()
                    if not call.future.done():
                        call.future.set_result(call.replies)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._broken(conn, exc if isinstance(exc, redis.RedisError)
                         else redis.ConnectionError(str(exc)))
        except asyncio.CancelledError:
            self._broken(conn, redis.ConnectionError("Redis connection closed"))
            raise
        finally:
            if self._reader is asyncio.current_task():
                self._reader = None

    def _broken(self, conn: Any, exc: BaseException) -> None:
        """Fail what is in flight; the next command connects again."""
        if self._conn is conn:
            self._conn = None
            self._out = []
        waiting, self._waiting = self._waiting, collections.deque()
        for call in waiting:
            if not call.future.done():
                call.future.set_exception(exc)
        with contextlib.suppress(Exception):
            conn._close()  # synchronous: never awaits, even from a cancelled reader

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()
        await self._pool.aclose()
