"""One pipelined ``redis.asyncio`` connection shared by the coroutines of a loop.

perf: redis-py's asyncio client checks a connection out of its pool for every
command, wraps it in retry and observability layers, writes it with a ``drain()``
and arms a timer around every reply it reads: with a hundred coroutines publishing
and reading results at once, that Python (and one ``send()`` per command) cost more
than Redis itself. Here every command of every coroutine goes over one held redis-py
connection, a hiredis reply parser and hiredis's packer; but commands written during
one turn of the event loop leave in one write (a callback after the turn; a
command sent while nothing is in flight is written at once, a turn sooner, and the
rest of its turn follows in that write) and replies are handed back
in order (Redis answers a connection's commands in the order they came) by a
:class:`Feed`, in the transport's own read callback. A coroutine that stops waiting
(cancelled, timed out) leaves its reply to be read and dropped, so the order never
slips.

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
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis
import redis
import redis.asyncio as aioredis

from redis.asyncio.connection import DefaultParser

from .connection import pack

#: What a hiredis reader's ``gets`` returns while no reply is complete (its default:
#: a RESP2 reply is never False).
_MORE = False
#: Bytes handed to the hiredis reader at a time. perf: the reader moves the rest of
#: its buffer to the front each time 1 KiB of it was taken, so a 64 KiB burst of
#: replies fed at once was moved tens of times (see the commit that set it).
_FEED_SIZE = 8192


def new_connection(pool: aioredis.ConnectionPool) -> Any:
    """A new connection of ``pool`` (connect it, then give it a :class:`Feed`)."""
    return pool.make_connection()  # type: ignore[no-untyped-call]


class Feed(asyncio.Protocol):
    """Reads an open redis-py connection's socket itself: what each read brings goes
    through a hiredis reader, and every complete reply is handed to ``on_reply``
    there and then, in the transport's read callback.

    perf: redis-py's way to a reply is the transport's callback filling a
    StreamReader, a reader task woken a turn of the loop later, then four Python
    frames of ``read_response`` and a socket-read coroutine: at concurrency 100 the
    loop turns about once a round trip, so that was paid for nearly every reply.
    redis-py keeps the rest (connect, handshake, writes, drain, close): its own
    protocol stays behind this one for the writes' flow control and the close.

    An error reply is handed over as its exception (redis-py's classes), unless
    ``errors_fatal``; one that says the connection is unusable (a redis-py
    ``ConnectionError``, such as LOADING) always goes to ``on_lost`` instead, as
    does the end of the connection (a ``ConnectionError``), once.
    """

    def __init__(self, conn: Any, on_reply: Callable[[Any], None],
                 on_lost: Callable[[BaseException], None], *,
                 errors_fatal: bool = False) -> None:
        """``conn``: connected; from now on only this reads its socket."""
        self._transport = conn._writer.transport
        self._behind = self._transport.get_protocol()
        reader = hiredis.Reader(protocolError=redis.exceptions.InvalidResponse,
                                replyError=DefaultParser.parse_error)
        self._feed, self._gets = reader.feed, reader.gets
        self._on_reply: Callable[[Any], None] | None = on_reply
        self._on_lost = on_lost
        self._fatal = Exception if errors_fatal else redis.ConnectionError
        self._transport.set_protocol(self)

    def detach(self) -> None:
        """Hand nothing more to anyone (the connection is given up)."""
        self._on_reply = None

    def data_received(self, data: bytes) -> None:
        size = len(data)
        if size <= _FEED_SIZE:
            self._feed(data)
            self._hand_over()
            return
        for start in range(0, size, _FEED_SIZE):
            self._feed(data, start, min(_FEED_SIZE, size - start))
            self._hand_over()

    def _hand_over(self) -> None:
        gets, fatal = self._gets, self._fatal
        while True:
            on_reply = self._on_reply
            if on_reply is None:
                return
            reply = gets()
            if reply is _MORE:
                return
            if reply.__class__ is list:  # perf: one check a reply
                if reply and isinstance(reply[0], redis.ConnectionError):
                    self._lose(reply[0])
                    return
            elif isinstance(reply, fatal):
                self._lose(reply)
                return
            on_reply(reply)

    def _lose(self, error: BaseException) -> None:
        if self._on_reply is not None:
            self._on_reply = None
            self._on_lost(error)
        self._transport.close()

    def eof_received(self) -> bool:
        self._behind.eof_received()
        self._lose(redis.ConnectionError("Connection closed by server."))
        return False  # close it (redis-py's protocol would keep it half open)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(redis.ConnectionError(
            "Connection closed." if exc is None else f"Error reading from Redis: {exc}"))
        self._behind.connection_lost(exc)  # redis-py's streams see the close

    def pause_writing(self) -> None:
        self._behind.pause_writing()

    def resume_writing(self) -> None:
        self._behind.resume_writing()


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
        self._flush_due = False  # a flush is scheduled (see _queue)
        #: Waits while the connection is open; the loop's end cancels it (see _hold).
        self._guard: asyncio.Task[None] | None = None
        self._feed: Feed | None = None  # the open connection's
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
        """Open, nothing in flight or waiting to be written: a command sent now is
        written at once (see :meth:`_queue`)."""
        return self._conn is not None and not self._waiting and not self._out

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
        # command is written now, a turn of the loop sooner than the flush would;
        # commands that follow it in the same turn find it in flight and share the
        # flush's one write, so a busy loop still writes once a turn.
        now = not self._waiting and not self._out
        # perf: hiredis's packer (as the blocking side's), not redis-py's asyncio
        # pack_command, which encodes each argument in Python (~20 µs a publish);
        # packed before the call waits, so an argument it refuses sends nothing
        packed = [part for args in commands for part in pack(tuple(args))]
        self._waiting.append(call)
        if not (now and write_now(conn, packed)):
            self._out += packed  # the flush sends it (and whatever follows) in one write
            if not self._flush_due:
                self._flush_due = True
                loop.call_soon(self._flush)
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
                self._feed = Feed(conn, self._reply, functools.partial(self._broken, conn))
                self._guard = self._loop.create_task(self._hold(conn))
        return self._conn

    def _flush(self) -> None:
        """Write what the coroutines of a turn sent, in one go, after the turn.

        perf: a callback the loop runs, not a writer task woken by a future (a task
        step and three coroutine frames a write). No drain: the transport buffers
        what the socket does not take yet, as the writer's queue did before it."""
        self._flush_due = False
        out, self._out = self._out, []
        conn = self._conn  # what a broken connection left unwritten was dropped
        if conn is not None and out and not write_now(conn, out):
            self._broken(conn, redis.ConnectionError("Redis connection closed"))

    async def _hold(self, conn: Any) -> None:
        """Wait for ever; when the loop ends with ``conn`` open (no :meth:`close`),
        asyncio cancels this, and the connection is closed while a callback can
        still run."""
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            if self._conn is conn:
                self._broken(conn, redis.ConnectionError("Redis connection closed"),
                             disconnect=False)
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            raise

    def _reply(self, reply: Any) -> None:
        """Hand a reply of the open connection to the call it answers (:class:`Feed`)."""
        self._read += 1
        waiting = self._waiting
        if not waiting:
            self._broken(self._conn, redis.ConnectionError(
                "Redis sent a reply no command asked for; reconnecting"))
            return
        call = waiting[0]
        call.replies.append(reply)
        if len(call.replies) == call.count:
            waiting.popleft()
            call.settle()

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
        """Fail what is in flight and stop reading and writing ``conn``; the next
        command connects again. ``disconnect``: close it too."""
        if self._conn is not conn:
            return
        self._conn = None
        feed, self._feed = self._feed, None
        if feed is not None:
            feed.detach()
        self._out = []
        waiting, self._waiting = self._waiting, collections.deque()
        for call in waiting:
            if not call.future.done():
                call.future.set_exception(exc)
                call.finish()
        guard, self._guard = self._guard, None
        if guard is not None and guard is not asyncio.current_task():
            guard.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if not disconnect:
            return
        # redis-py closes a connection whose write failed; this closes one whose
        # read failed or that was given up for its silence.
        self._closing = asyncio.get_running_loop().create_task(
            conn.disconnect(nowait=True))

    async def close(self) -> None:
        conn, tasks = self._conn, [t for t in (self._guard,) if t]
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
