"""One pipelined ``redis.asyncio`` connection shared by the coroutines of a loop.

perf: redis-py's asyncio client checks a connection out of its pool for every
command, wraps it in retry and observability layers, writes it with a ``drain()``
and arms a timer around every reply it reads: with a hundred coroutines publishing
and reading results at once, that Python (and one ``send()`` per command) cost more
than Redis itself. Here every command of every coroutine goes over one held redis-py
connection: its (hiredis) reply parser, hiredis's packer; but commands written during
one turn of the event loop leave in one write (a writer task, woken once per turn;
a command sent while nothing is in flight is written at once, a turn sooner, and
the rest of its turn follows in the writer's write) and a single reader task hands
replies back in order (Redis answers a connection's commands in the order they
came). A coroutine that stops waiting (cancelled, timed
out) leaves its reply to be read and dropped, so the order never slips. Replies are
taken in bulk (:class:`Replies`): one read, then every reply already received.

Replies are read without a timer each: one watchdog per ``timeout`` seconds gives the
connection up when replies are awaited and none came in a whole period (redis-py's
``socket_timeout``, at the cost of one timer per period instead of one per reply).

A broken connection fails every command in flight with redis-py's
``ConnectionError``/``TimeoutError`` (what callers retry on, as on the blocking
side) and the next command reconnects. An error reply is raised in the caller that
sent the command; the connection stays good.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis
import redis
import redis.asyncio as aioredis

from .connection import pack

from redis.asyncio.connection import DefaultParser
from redis.utils import HIREDIS_AVAILABLE

try:  # what redis-py's hiredis reader returns when a reply is not complete yet
    from redis._parsers.hiredis import NOT_ENOUGH_DATA
except ImportError:  # another redis-py: every reply is read through read_response
    NOT_ENOUGH_DATA = None
#: Whether connections read with :class:`BulkParser` (redis-py parses with hiredis).
_BULK = HIREDIS_AVAILABLE and NOT_ENOUGH_DATA is not None


class BulkParser(DefaultParser):  # type: ignore[misc,valid-type]
    """redis-py's parser (hiredis's), which also hands out the replies its reader
    already holds, for :class:`Replies`. Given to a connection before it connects
    (:func:`new_connection`); once connected it is the connection's ``bulk_parser``."""

    def on_connect(self, connection: Any) -> None:
        super().on_connect(connection)
        connection.bulk_parser = self

    def taker(self) -> Callable[[], Any] | None:
        """The reader's ``gets``: the next reply it holds, or ``NOT_ENOUGH_DATA``."""
        reader = getattr(self, "_reader", None)
        return reader.gets if isinstance(reader, hiredis.Reader) else None


def new_connection(pool: aioredis.ConnectionPool) -> Any:
    """A new connection of ``pool`` (connect it), reading with :class:`BulkParser`
    (redis-py's public ``set_parser``) when redis-py parses with hiredis."""
    conn = pool.make_connection()  # type: ignore[no-untyped-call]
    if _BULK:
        conn.set_parser(BulkParser)
    return conn


class _Call:
    """A command (or MULTI…EXEC block) in flight: ``count`` replies, one future, and
    ``then``, called with the future as soon as it is done (not a turn later, as a
    done callback would be). ``one``: the future is the single reply itself, or its
    error reply raised (:meth:`Pipe.call`), not the list of replies."""

    __slots__ = ("future", "count", "replies", "then", "one")

    def __init__(self, future: asyncio.Future[Any], count: int,
                 then: Callable[[asyncio.Future[Any]], None] | None = None,
                 one: bool = False) -> None:
        self.future, self.count, self.then, self.one = future, count, then, one
        self.replies: list[Any] = []

    def settle(self) -> None:
        """All replies are in: the future gets them (see ``one``)."""
        future = self.future
        if future.done():  # its caller stopped waiting
            return
        if self.one:
            reply = self.replies[0]
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        else:
            future.set_result(self.replies)
        self.finish()

    def finish(self) -> None:
        if self.then is not None:
            self.then(self.future)


def write_now(conn: Any, packed: list[bytes]) -> bool:
    """Hand ``packed`` to the open connection ``conn``'s transport now (no drain:
    callers only do this when nothing else is waiting to be written); False when it
    cannot be (closed, closing, or a redis-py without the stream writer), and the
    caller writes it the usual way."""
    writer = getattr(conn, "_writer", None)
    if writer is None or not conn.is_connected or writer.transport.is_closing():
        return False
    writer.writelines(packed)
    return True


class Replies:
    """The replies ``conn`` received: the next one read as redis-py reads it, then
    every one already in its hiredis reader's buffer, handed over without another
    read.

    perf: redis-py's ``read_response`` costs four Python frames and a dozen checks a
    reply, and at a hundred round trips in flight one read brings tens of replies
    (subscription confirmations, messages, the replies of a whole pipelined write).
    The buffered ones are taken from the same hiredis reader redis-py feeds (its
    parser's), with redis-py's own checks: an error reply is an exception in place
    (:meth:`read` ``raise_errors=False``) or raised, and one that means the
    connection is unusable (a ``ConnectionError`` reply) is always raised. Without
    a hiredis reader (a connection not made by :func:`new_connection`, another
    redis-py), one reply a read.
    """

    __slots__ = ("conn", "gets")

    def __init__(self, conn: Any) -> None:
        """``conn``: connected, made by :func:`new_connection` (else one reply a read)."""
        self.conn = conn
        parser = getattr(conn, "bulk_parser", None)
        self.gets: Callable[[], Any] | None = None if parser is None else parser.taker()

    async def read(self, *, timeout: float | None = None,
                   raise_errors: bool = True) -> list[Any]:
        """The next reply and those received with it, in order (``timeout``:
        ``read_response``'s)."""
        if raise_errors:
            first = await self.conn.read_response(timeout=timeout)
        else:
            try:
                first = await self.conn.read_response(timeout=timeout)
            except redis.ResponseError as exc:
                first = exc
        replies = [first]
        gets = self.gets
        if gets is None:
            return replies
        fatal = Exception if raise_errors else redis.ConnectionError
        while True:
            reply = gets()
            if reply is NOT_ENOUGH_DATA:
                return replies
            if reply.__class__ is list:  # perf: one check a reply
                if reply and isinstance(reply[0], redis.ConnectionError):
                    raise reply[0]
            elif isinstance(reply, fatal):
                raise reply
            replies.append(reply)


class Pipe:
    """Commands from any coroutine of one loop over one connection (see the module)."""

    def __init__(self, pool: aioredis.ConnectionPool, *, timeout: float | None) -> None:
        """``pool`` only makes the connection (made without a read timeout);
        ``timeout`` is how late a reply may be before the connection is given up
        (None: never)."""
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None
        #: The loop of the connection (perf: asyncio.get_running_loop() is a getpid()
        #: system call a command on Python 3.11).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Lock | None = None
        self._waiting: collections.deque[_Call] = collections.deque()
        self._out: list[bytes] = []
        self._wake: asyncio.Future[None] | None = None  # the idle writer's
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._read = 0  # replies read, for the watchdog
        self._watchdog: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None

    def call(self, *args: Any) -> Awaitable[Any]:
        """Run one command: await its raw reply (bytes, int, list), or its error
        raised.

        perf: on an open connection, the future the reply is set on (its error
        reply set as its exception), not a coroutine that awaits it and unpacks the
        reply: one frame less at each step of a caller's wait."""
        conn = self._conn
        if conn is None:
            return self._connect_and_call(args)
        return self._queue(conn, (args,), one=True)

    async def _connect_and_call(self, args: tuple[Any, ...]) -> Any:
        return await self._queue(await self._connect(), (args,), one=True)

    async def transaction(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """MULTI, ``commands``, EXEC in one write: EXEC's replies (error replies in
        place, as exceptions), or the error that aborted the transaction."""
        replies = await self._send([("MULTI",), *commands, ("EXEC",)])
        return replies[-1]  # type: ignore[no-any-return]

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Every command in one write; every reply, error replies in place."""
        return await self._send(commands, raise_first=False)

    def submit(self, commands: Sequence[Sequence[Any]],
               then: Callable[[asyncio.Future[list[Any]]], None]
               ) -> asyncio.Future[list[Any]] | None:
        """Send ``commands`` with this turn's write, from code that cannot await (a
        callback): a future of every reply, error replies in place, handed to
        ``then`` as soon as it is done. None when the connection is not open (and
        ``then`` never called): await :meth:`pipeline` instead, which opens it."""
        conn = self._conn
        return None if conn is None else self._queue(conn, commands, then)

    @property
    def idle(self) -> bool:
        """Open, nothing in flight, the writer asleep: a command sent now is written
        at once (see :meth:`_queue`)."""
        return self._conn is not None and not self._waiting and self._wake is not None

    async def _send(self, commands: Sequence[Sequence[Any]], *,
                    raise_first: bool = True) -> list[Any]:
        conn = self._conn
        if conn is None:
            conn = await self._connect()
        replies: list[Any] = await self._queue(conn, commands)
        if raise_first:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    def _queue(self, conn: Any, commands: Sequence[Sequence[Any]],
               then: Callable[[asyncio.Future[list[Any]]], None] | None = None, *,
               one: bool = False) -> asyncio.Future[Any]:
        """Send ``commands``; the future of their replies (``one``: see :class:`_Call`)."""
        loop = self._loop
        assert loop is not None  # set with the connection
        call = _Call(loop.create_future(), len(commands), then, one)
        # perf: with nothing in flight (one coroutine's round trip at a time) the
        # command is written now, a turn of the loop sooner than the writer would;
        # commands that follow it in the same turn find it in flight and share the
        # writer's one write, so a busy loop still writes once a turn.
        now = not self._waiting and self._wake is not None and not self._out
        # perf: hiredis's packer (as the blocking side's), not redis-py's asyncio
        # pack_command, which encodes each argument in Python (~20 µs a publish);
        # packed before the call waits, so an argument it refuses sends nothing
        packed = [part for args in commands for part in pack(tuple(args))]
        self._waiting.append(call)
        if not (now and write_now(conn, packed)):
            self._out += packed  # the writer sends it (and whatever follows) in one write
            wake = self._wake
            if wake is not None:
                self._wake = None
                if not wake.done():
                    wake.set_result(None)
        if self._writer is None:
            self._writer = loop.create_task(self._write(conn))
        if self._reader is None:
            self._reader = loop.create_task(self._read_replies(conn))
        if self._watchdog is None and self._timeout is not None:
            self._watchdog = loop.call_later(self._timeout, self._watch, conn, self._read)
        return call.future

    async def _connect(self) -> Any:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is None:
                conn = new_connection(self._pool)
                await conn.connect()
                self._loop = asyncio.get_running_loop()
                self._conn = conn
        return self._conn

    async def _write(self, conn: Any) -> None:
        """Write what the coroutines of a turn sent, in one go; then sleep until the
        next command comes."""
        loop = asyncio.get_running_loop()
        try:
            while self._conn is conn:
                out, self._out = self._out, []
                if out:
                    if not conn.is_connected:  # never let redis-py reconnect it here
                        raise redis.ConnectionError("Redis connection closed")
                    await conn.send_packed_command(out, check_health=False)
                    continue  # more may have come while draining
                wake = self._wake = loop.create_future()
                await wake
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._broken(conn, exc if isinstance(exc, redis.RedisError)
                         else redis.ConnectionError(f"Error writing to Redis: {exc}"))
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None

    async def _read_replies(self, conn: Any) -> None:
        """Hand each reply to the call it answers, for as long as ``conn`` is the
        connection: perf, one task per connection, not one each time a command
        follows a moment with none in flight (a round trip at a time); the replies
        received together are handed over in one pass (:class:`Replies`)."""
        replies = Replies(conn)
        waiting = self._waiting
        try:
            while self._conn is conn:
                for reply in await replies.read(raise_errors=False):
                    if self._conn is not conn:
                        return
                    self._read += 1
                    if not waiting:
                        raise redis.ConnectionError(
                            "Redis sent a reply no command asked for; reconnecting")
                    call = waiting[0]
                    call.replies.append(reply)
                    if len(call.replies) == call.count:
                        waiting.popleft()
                        call.settle()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._broken(conn, exc if isinstance(exc, redis.RedisError)
                         else redis.ConnectionError(str(exc)))
        except asyncio.CancelledError:
            # idle (the loop ends): redis-py closed it already, no task to close it
            self._broken(conn, redis.ConnectionError("Redis connection closed"),
                         disconnect=bool(self._waiting))
            raise
        finally:
            if self._reader is asyncio.current_task():
                self._reader = None

    def _watch(self, conn: Any, read: int) -> None:
        """Every ``timeout`` seconds while replies are awaited: give the connection
        up when none came since the last look."""
        self._watchdog = None
        if conn is not self._conn or not self._waiting:
            return
        if self._read == read:
            self._broken(conn, redis.TimeoutError(
                f"Timeout reading from Redis: no reply in {self._timeout}s"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(
            self._timeout, self._watch, conn, self._read)  # type: ignore[arg-type]

    def _broken(self, conn: Any, exc: BaseException, *, disconnect: bool = True) -> None:
        """Fail what is in flight and stop the reader and writer of ``conn``; the
        next command connects again. ``disconnect``: close it too."""
        if self._conn is not conn:
            return
        self._conn = None
        self._out = []
        waiting, self._waiting = self._waiting, collections.deque()
        for call in waiting:
            if not call.future.done():
                call.future.set_exception(exc)
                call.finish()
        current = asyncio.current_task()
        for task in (self._reader, self._writer):
            if task is not None and task is not current:
                task.cancel()
        self._reader = self._writer = self._wake = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if not disconnect:
            return
        # redis-py closes a connection whose read or write failed, and a cancelled
        # read's; this closes one given up for its silence.
        self._closing = asyncio.get_running_loop().create_task(
            conn.disconnect(nowait=True))

    async def close(self) -> None:
        conn, tasks = self._conn, [t for t in (self._reader, self._writer) if t]
        if conn is not None:
            self._broken(conn, redis.ConnectionError("Redis connection closed"))
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        closing, self._closing = self._closing, None
        if closing is not None:
            with contextlib.suppress(Exception):
                await closing
        await self._pool.aclose()
