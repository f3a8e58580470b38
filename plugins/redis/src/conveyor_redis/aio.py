"""The asyncio twins (``redis.asyncio``): a producer transport and the result backend.

The same bytes as the blocking classes: messages are shaped by the blocking
transport's own code (:meth:`.PublisherMixin.commands`) and stored in one MULTI/EXEC;
results are the same keys, written by the same Lua script. Only the I/O is awaited,
over one pipelined connection per twin (:class:`.aiopipe.Pipe`).

Waiting for results shares one subscription connection per backend: a reader task
hands each waiter of a channel the state published on it, so ten thousand
concurrent ``aget()`` calls cost one connection, not ten thousand. Each wait
subscribes to the key's two channels (Celery's and Conveyor's own, see
:mod:`.backend`), and once the subscription is confirmed its key is read (so a
result stored before the subscription is not missed), as the blocking backend does.
perf: the waits of one turn of the loop share one SUBSCRIBE, the keys confirmed
together are read in one MGET, and a waiter's coroutine wakes once, when its state
comes; a wait alone (one round trip at a time) writes its SUBSCRIBE and its MGET
at once instead of a turn of the loop later by a writer task; a wait that ends
sends no UNSUBSCRIBE: its channels stay subscribed (only its own task publishes on
them) until a few thousand are left, when the connection is replaced. As in the
blocking backend, a payload published on the own channel (which names the db) is
used as it comes, and a message on Celery's channel (a Celery
writer, or another db's result for the same task id: pub/sub ignores db numbers)
has the key read again; the key is also read every few seconds, and after a lost
connection, whatever the notifications say.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

import redis
import redis.asyncio as aioredis
from conveyor.utils import mask_url
from conveyor.interfaces import BackendCapabilities, Capabilities, Join, Outgoing, Route

from .aiopipe import Feed, Pipe, new_connection, write_now
from .backend import KEY_PREFIX, STORE, _REREAD_EVERY, db_of, own_channel
from .channel import PublisherMixin, check, routed_exchanges
from .connection import CONNECTION_ERRORS, driver_url, pack
from .errors import wrap
from .joins import ADD, FINISH, _seconds, keys
from .layout import Layout
from .transport import RedisTransport

log = logging.getLogger("conveyor.redis")
_BROKEN: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, OSError)
#: Pause before the subscription connection is opened again after it broke.
_RESUBSCRIBE_PAUSE = 0.2
#: Channels left subscribed (see :meth:`AsyncRedisBackend._leave`) before the
#: subscription connection is replaced by a new one (which drops them all at once):
#: at most twice as many subscriptions on the server for this client, and a new
#: connection, a SUBSCRIBE and an MGET of the waits in flight every so many waits.
_ROTATE_AFTER = 2000
#: How late a reply on the command connection may be before it is given up.
_REPLY_TIMEOUT = 10.0


def _pool(url: str, *, socket_timeout: float | None, connect_timeout: float | None,
          keepalive: bool = True, ssl: dict[str, Any] | None = None
          ) -> aioredis.ConnectionPool:
    extra: dict[str, Any] = dict(ssl or {})
    return aioredis.ConnectionPool.from_url(
        driver_url(url), socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout, socket_keepalive=keepalive,
        protocol=2, **extra)


class _Shaper(PublisherMixin):
    """The blocking transport's message shaping, without its connection."""

    def __init__(self, url: str, layout: Layout) -> None:
        self.url, self.layout = url, layout
        self._declared: set[Route] = set()
        self._lists: dict[tuple[str, int], str] = {}
        self._next_move = float("inf")  # producers here leave moving to consumers


class AsyncRedisTransport:
    """Publishes for the asyncio client; workers consume with :class:`RedisTransport`.

    Takes the same ``broker_transport_options`` (checked the same way), so a message
    sent here is byte-for-byte what ``apply_async`` sends.
    """

    scheme: ClassVar[str] = "redis"
    capabilities: ClassVar[Capabilities] = RedisTransport.capabilities
    connection_errors = CONNECTION_ERRORS
    #: One instance serves every coroutine of its loop at once (one pipelined
    #: connection), so the core keeps no pool of them.
    multiplexed: ClassVar[bool] = True

    def __init__(self, url: str = "redis://", app: Any = None) -> None:
        self.url = url
        given = dict(app.conf.broker_transport_options) if app is not None else {}
        self.options = o = RedisTransport.check_options(given)
        connect = o["socket_connect_timeout"]
        if connect is None and app is not None:
            connect = app.conf.broker_connection_timeout
        self._timeout = o["socket_timeout"]
        self._pool_args = {"connect_timeout": connect, "keepalive": bool(o["socket_keepalive"]),
                           "ssl": o["ssl"]}
        self._shaper = _Shaper(url, Layout(o["global_keyprefix"], o["sep"],
                                           o["priority_steps"]))
        self._pipe: Pipe | None = None

    async def connect(self) -> None:
        if self._pipe is None:
            self._pipe = Pipe(_pool(self.url, socket_timeout=None, **self._pool_args),
                              timeout=self._timeout)

    async def close(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            await pipe.close()

    async def declare(self, route: Route) -> None:
        await self.publish_many([])  # bindings are written with the first message

    async def publish_many(self, batch: Sequence[Outgoing]) -> None:
        """One MULTI/EXEC: every message is stored, or none and an error."""
        if not batch:
            return
        if self._pipe is None:
            await self.connect()
        pipe = self._pipe
        assert pipe is not None
        shaper = self._shaper
        if len(batch) == 1 and not batch[0][1].routed:  # perf: the common case
            message, route, due = batch[0]
            if route in shaper._declared:
                # perf: one message shaped as the blocking publish() shapes it (its
                # envelope and push), not through commands()' batch bookkeeping:
                # 7.5 -> 3.4 µs a message
                raw, list_key = shaper._envelope(message, route)
                await pipe.call(*shaper._push(list_key, raw, due))
                return
            tables: dict[str, Any] = {}
        else:
            exchanges = routed_exchanges(batch)
            tables = shaper.parse_tables(exchanges, check(
                await pipe.pipeline(shaper.table_reads(exchanges)))) if exchanges else {}
        commands, routes = shaper.commands(batch, tables)
        if len(commands) == 1:  # perf: one command is atomic as it is
            await pipe.call(*commands[0])
            return
        check(await pipe.transaction(commands))
        shaper._declared |= routes


class _Waiter:
    """One ``wait()``: the state it was handed (a notification, or the key read once
    its subscription was confirmed), and the future it sleeps on."""

    __slots__ = ("key", "previous", "payload", "error", "future")

    def __init__(self, key: bytes, previous: bytes | None) -> None:
        self.key, self.previous = key, previous
        self.payload: bytes | None = None
        self.error: BaseException | None = None
        self.future: asyncio.Future[bool] | None = None

    def notify(self, payload: bytes) -> None:
        """A state published on the channel: the newest, so it wins."""
        if payload != self.previous:
            self.payload = payload
            self.wake()

    def read(self, payload: bytes | None) -> None:
        """The key as read after subscribing: used unless a notification came."""
        if payload is not None and self.payload is None and payload != self.previous:
            self.payload = payload
            self.wake()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.wake()

    def wake(self) -> None:
        future = self.future
        if future is not None and not future.done():
            future.set_result(True)

#: The resolution of a wait's pause (:class:`_Alarms`), in seconds.
_TICK = 0.005


class _Alarms:
    """The end of the waiters' pauses: one loop timer for all the pauses that end
    within the same ``_TICK`` (each ends at the tick's end, at most ``_TICK``
    late).

    perf: every wait sleeps with a pause (its timeout, or the few seconds before
    its key is read again) and nearly every one is woken by its result first. A
    timer each (``call_later``, then ``cancel``) costs a dozen Python calls of the
    loop's timer heap a round trip; the waits started together share one here, and
    a wait woken first only leaves its tick's set.
    """

    __slots__ = ("_due",)

    def __init__(self) -> None:
        self._due: dict[int, tuple[asyncio.TimerHandle, set[asyncio.Future[bool]]]] = {}

    def add(self, loop: asyncio.AbstractEventLoop, when: float,
            future: asyncio.Future[bool]) -> int:
        """Set ``future`` False once ``loop``'s clock is past ``when``; the tick to
        :meth:`remove` it from."""
        tick = math.ceil(when / _TICK)
        due = self._due.get(tick)
        if due is None:
            due = self._due[tick] = (loop.call_at(tick * _TICK, self._ring, tick), set())
        due[1].add(future)
        return tick

    def remove(self, tick: int, future: asyncio.Future[bool]) -> None:
        due = self._due.get(tick)
        if due is not None:
            due[1].discard(future)
            if not due[1]:
                due[0].cancel()
                del self._due[tick]

    def _ring(self, tick: int) -> None:
        due = self._due.pop(tick, None)
        if due is not None:
            for future in due[1]:
                if not future.done():
                    future.set_result(False)


def _settle(lost: asyncio.Future[None], error: BaseException) -> None:
    """The subscription connection is lost (:class:`.aiopipe.Feed`): say why."""
    if not lost.done():
        lost.set_exception(error)


class _Channel:
    __slots__ = ("waiters", "confirmed")

    def __init__(self) -> None:
        self.waiters: list[_Waiter] = []
        self.confirmed = False


class AsyncRedisBackend:
    """Celery-compatible Redis result backend for the asyncio client."""

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities(joins=True)

    def __init__(self, url: str = "redis://", app: Any = None) -> None:
        self.url = url
        timeout = app.conf.broker_connection_timeout if app is not None else 4.0
        pool = _pool(url, socket_timeout=None, connect_timeout=timeout)
        self._pipe = Pipe(pool, timeout=_REPLY_TIMEOUT)
        self.db = db_of(pool)
        #: A key's own channel is this + the key (:func:`.backend.own_channel`).
        self._own = own_channel(self.db, "").encode("utf-8")
        #: The subscription connection reads for ever: no read timeout.
        self._sub_pool = _pool(url, socket_timeout=None, connect_timeout=timeout)
        self._listener: asyncio.Task[None] | None = None
        self._channels: dict[bytes, _Channel] = {}
        #: Channels to subscribe after this turn (one command, so waiters that
        #: arrive together share one write).
        self._subscribing: set[bytes] = set()
        #: Channels no wait is on any more, still subscribed (see :meth:`_leave`):
        #: whether their subscription is confirmed.
        self._left: dict[bytes, bool] = {}
        #: Set to have the listener replace the subscription connection.
        self._rotation: asyncio.Future[None] | None = None
        #: Whether a subscription connection is open (channels left are kept only then).
        self._up = False
        #: Waiters whose subscription is confirmed and whose key is not read yet
        #: (read together after this turn), and reads that had to open a connection.
        self._unread: list[_Waiter] = []
        self._reads: set[asyncio.Task[None]] = set()
        #: Whether a flush of the turn's subscriptions and reads is scheduled.
        self._flush_due = False
        #: The subscription connection while it is open.
        self._sub_conn: Any = None
        #: The end of the waits' pauses (timeouts, rereads).
        self._alarms = _Alarms()

    @staticmethod
    def key(task_id: str) -> str:
        return KEY_PREFIX + task_id

    async def get(self, task_id: str) -> bytes | None:
        key = self.key(task_id)
        try:
            try:
                return await self._pipe.call("GET", key)  # type: ignore[no-any-return]
            except CONNECTION_ERRORS:  # idle too long, server restarted: once more
                return await self._pipe.call("GET", key)  # type: ignore[no-any-return]
        except redis.RedisError as exc:
            raise wrap(exc, self.url, f"reading the result of task {task_id}") from exc

    async def store(self, task_id: str, state: str, payload: bytes, *,
                    expires: float | None) -> None:
        ttl, unit = (int(expires * 1000), "ms") if expires else (0, "s")
        try:
            key = self.key(task_id)
            await self._pipe.call("EVAL", STORE.source, 1, key, payload, ttl, unit,
                                  own_channel(self.db, key))
        except redis.RedisError as exc:
            raise wrap(exc, self.url, f"storing the {state} result of {task_id}") from exc

    async def forget(self, task_id: str) -> None:
        try:
            await self._pipe.call("DEL", self.key(task_id))
        except redis.RedisError as exc:
            raise wrap(exc, self.url, f"forgetting the result of {task_id}") from exc

    # ------------------------------------------------------------- chord joins
    async def _run(self, doing: str, group_id: str, *command: Any) -> Any:
        try:
            return await self._pipe.call(*command)
        except redis.RedisError as exc:
            raise wrap(exc, self.url, f"{doing} of group {group_id}") from exc

    async def join_size(self, group_id: str, size: int, *, expires: float | None) -> None:
        j, _t, s, _d, c = keys(group_id)
        ttl = _seconds(expires)
        size_set = ("SET", s, int(size), "EX", ttl) if ttl else ("SET", s, int(size))
        try:
            check(await self._pipe.transaction([("DEL", c), size_set]))
        except redis.RedisError as exc:
            raise wrap(exc, self.url, f"setting the join size of group {group_id}") from exc

    async def join_add(self, group_id: str, task_id: str, index: int | None,
                       payload: bytes, *, expires: float | None, claim_for: float) -> Join:
        score = "+inf" if index is None else str(int(index))
        token = uuid.uuid4().hex
        done, size, claimed = await self._run(
            "joining a member", group_id, "EVAL", ADD.source, 5, *keys(group_id),
            f"{task_id}:{score}", payload, score, _seconds(expires),
            max(1, round(claim_for)), token)
        if done < 0:
            return Join(-1, None, None)
        return Join(int(done), None if size < 0 else int(size), token if claimed else None)

    async def join_results(self, group_id: str) -> list[bytes]:
        found: list[bytes] = await self._run("reading the join", group_id,
                                             "ZRANGE", keys(group_id)[0], 0, -1)
        return found

    async def join_finish(self, group_id: str, claim: str, *,
                          expires: float | None) -> bool:
        return bool(await self._run("finishing the join", group_id, "EVAL",
                                    FINISH.source, 5, *keys(group_id), claim,
                                    _seconds(expires)))

    # ------------------------------------------------------------- waiting
    def _join(self, channel: bytes, previous: bytes | None) -> _Waiter:
        """One more waiter on ``channel`` (subscribed on the first; its key read
        once the subscription is confirmed, with the other reads of the turn)."""
        waiter = _Waiter(channel, previous)
        found = self._channels.get(channel)
        if found is None:
            alone = not self._channels
            found = self._channels[channel] = _Channel()
            found.waiters.append(waiter)
            left = self._left.pop(channel, None)
            if left is not None:  # still subscribed since an earlier wait on it
                if left:  # confirmed: its key is read; else it is once confirmed
                    found.confirmed = True
                    self._unread.append(waiter)
                    self._schedule()
                return waiter
            # perf: the only wait (one round trip at a time) subscribes now, a turn
            # of the loop sooner; waits that come together share the writer's one
            # SUBSCRIBE after the turn.
            if not (alone and self._write_now("SUBSCRIBE", channel)):
                self._subscribing.add(channel)
                self._schedule()
            return waiter
        if found.confirmed:
            self._unread.append(waiter)
        found.waiters.append(waiter)
        self._schedule()
        return waiter

    def _write_now(self, command: str, channel: bytes) -> bool:
        """Write ``command`` for ``channel``'s two channels now, if nothing else is
        waiting to be written; else False (the turn's flush does)."""
        conn = self._sub_conn
        if conn is None or self._flush_due or self._subscribing or self._unread:
            return False
        if not conn.is_connected:
            return False
        return write_now(conn, pack((command, channel, self._own + channel)))

    def _leave(self, channel: bytes, waiter: _Waiter) -> None:
        found = self._channels.get(channel)
        if found is None:
            return
        waiters = found.waiters
        if len(waiters) != 1 or waiters[0] is not waiter:  # perf: the usual one alone
            if waiter in waiters:  # a wait leaves once; this one may have gone already
                waiters.remove(waiter)
            if waiters:
                return
        del self._channels[channel]
        if channel in self._subscribing:
            self._subscribing.discard(channel)  # not subscribed yet: never will be
            return
        # perf: no UNSUBSCRIBE (its write, the two replies to read and Redis's work a
        # wait): the channel stays subscribed, and only its task (one this client
        # waited on) publishes on it. Once _ROTATE_AFTER are left, the connection
        # is replaced: closing it drops them all at once.
        if not self._up:  # none is open: nothing is subscribed
            return
        self._left[channel] = found.confirmed
        if len(self._left) >= _ROTATE_AFTER:
            rotation = self._rotation
            if rotation is not None and not rotation.done():
                rotation.set_result(None)

    def _schedule(self) -> None:
        """Have what this turn asked for written after it (:meth:`_flush`); start
        the listener if none runs (it flushes once connected)."""
        if not self._flush_due and self._sub_conn is not None:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    def _turn(self) -> list[bytes]:
        """What this turn of the loop asked for: the keys of the waiters whose
        subscription is confirmed, read in one MGET; and the subscriptions,
        returned for one write."""
        unread, self._unread = self._unread, []
        if unread:
            self._read(unread)
        out: list[bytes] = []
        own = self._own
        new, self._subscribing = self._subscribing, set()
        if new:
            out += pack(("SUBSCRIBE", *(name for channel in new
                                         for name in (channel, own + channel))))
        return out

    def _flush(self) -> None:
        """Once after each turn of the loop that asked (:meth:`_schedule`), write
        what it asked for in one go (see :meth:`_turn`). perf: a callback, not a
        writer task woken by a future (a task step and three coroutine frames a
        write). A write that cannot go (the connection is closing) is left to the
        listener, which subscribes every channel waited on again once reconnected."""
        self._flush_due = False
        conn = self._sub_conn
        if conn is not None:
            out = self._turn()
            if out:
                write_now(conn, out)

    def _read(self, waiters: list[_Waiter]) -> None:
        """Read the keys of ``waiters`` in one MGET, handed to each as it comes."""
        future = self._pipe.submit([("MGET", *(waiter.key for waiter in waiters))],
                                   functools.partial(self._got, waiters))
        if future is None:  # the command connection is not open: a task opens it
            self._read_later(waiters, tries=2)

    def _got(self, waiters: list[_Waiter], future: asyncio.Future[list[Any]]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            found = future.result()[0]
            if not isinstance(found, Exception):
                for waiter, payload in zip(waiters, found):
                    waiter.read(payload)
                return
            error = found
        if isinstance(error, CONNECTION_ERRORS):  # dropped: once more, as get() does
            self._read_later(waiters, tries=1)
        else:
            self._fail(waiters, error)

    def _read_later(self, waiters: list[_Waiter], *, tries: int) -> None:
        task = asyncio.get_running_loop().create_task(self._read_keys(waiters, tries))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _read_keys(self, waiters: list[_Waiter], tries: int) -> None:
        keys = [waiter.key for waiter in waiters]
        for tried in range(1, tries + 1):
            try:
                found = await self._pipe.call("MGET", *keys)
            except CONNECTION_ERRORS as exc:
                if tried < tries:
                    continue
                self._fail(waiters, exc)
                return
            except redis.RedisError as exc:
                self._fail(waiters, exc)
                return
            for waiter, payload in zip(waiters, found):
                waiter.read(payload)
            return

    def _fail(self, waiters: list[_Waiter], error: BaseException) -> None:
        if isinstance(error, redis.RedisError):
            error = wrap(error, self.url, f"reading the result of {len(waiters)} tasks")
        for waiter in waiters:
            waiter.fail(error)

    async def _listen(self) -> None:
        """Keep the subscription connection (its replies dispatched as they are
        read, its writes flushed once a turn); reconnect and subscribe every
        channel waited on again when it breaks, or at once when it is replaced for
        the channels left on it (see :meth:`_leave`)."""
        loop = asyncio.get_running_loop()
        pause = _RESUBSCRIBE_PAUSE
        while True:
            conn = new_connection(self._sub_pool)
            feed: Feed | None = None
            rotated = False
            try:
                await conn.connect()
                pause = _RESUBSCRIBE_PAUSE
                self._subscribing = set(self._channels)
                self._up = True
                rotation = self._rotation = loop.create_future()
                lost: asyncio.Future[None] = loop.create_future()
                # perf: replies are dispatched as they are read (see Feed)
                feed = Feed(conn, self._dispatch, functools.partial(_settle, lost),
                            errors_fatal=True)
                self._sub_conn = conn
                self._flush()  # every channel waited on, and the reads left waiting
                done, _pending = await asyncio.wait([lost, rotation],
                                                    return_when=asyncio.FIRST_COMPLETED)
                rotated = rotation in done
                if lost in done:
                    lost.result()  # raises what broke the connection
            except _BROKEN as exc:
                (log.warning if pause == _RESUBSCRIBE_PAUSE else log.debug)(
                    "Result subscription to %s broke (%s); resubscribing",
                    mask_url(self.url), exc)
            finally:
                # before any await: a wait joining or leaving meanwhile finds no
                # channel subscribed (a new connection subscribes afresh)
                self._up = False
                if feed is not None:
                    feed.detach()
                self._left.clear()
                for found in self._channels.values():  # read again once resubscribed
                    found.confirmed = False
                self._sub_conn = None
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            if not rotated:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _dispatch(self, reply: Any) -> None:
        """One reply on the subscription connection. A key's two channels are
        subscribed together, Celery's first: the reply for our own channel is the
        one that says both are. A message before the confirmation is not trusted
        (the key is read once confirmed)."""
        kind, channel = reply[0], reply[1]
        own = channel.startswith(self._own)
        if own:
            channel = channel[len(self._own):]
        if kind == b"message":
            found = self._channels.get(channel)
            if found is None or not found.confirmed:
                return
            if own:  # stored in our db by the script: the value as it is now
                for waiter in found.waiters:
                    waiter.notify(reply[2])
            else:  # a Celery writer, or another db's result: read our db's key
                unsure = [w for w in found.waiters if w.payload != reply[2]]
                if unsure:  # (not the echo of the own channel's message just used)
                    self._unread += unsure
                    self._schedule()
        elif not own:
            return  # Celery's channel's subscription: ours follows at once
        elif kind == b"subscribe":
            found = self._channels.get(channel)
            if found is None:
                if channel in self._left:  # left before its confirmation came
                    self._left[channel] = True
            elif not found.confirmed:
                found.confirmed = True
                if not self._unread and self._pipe.idle:
                    self._read(list(found.waiters))  # perf: the MGET leaves now
                else:  # with the others confirmed in this turn
                    self._unread += found.waiters
                    self._schedule()

    async def wait(self, task_id: str, *, timeout: float | None,
                   previous: bytes | None) -> bytes | None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = None if timeout is None else now + timeout
        channel = self.key(task_id).encode("utf-8")
        waiter = self._join(channel, previous)
        alarms = self._alarms
        try:
            while True:
                if waiter.payload is not None:
                    return waiter.payload
                if waiter.error is not None:
                    raise waiter.error
                wake = now + _REREAD_EVERY
                if deadline is not None and deadline < wake:
                    if deadline <= now:  # one last look, as the blocking backend does
                        return await self._changed(task_id, previous)
                    wake = deadline
                # until woken (True), or the pause is over (False; up to _TICK late)
                future = waiter.future = loop.create_future()
                tick = alarms.add(loop, wake, future)
                try:
                    woken = await future
                finally:
                    waiter.future = None
                    alarms.remove(tick, future)
                if not woken:  # no news for a while: read the key
                    found = await self._changed(task_id, previous)
                    if found is not None:
                        return found
                now = loop.time()
        finally:
            self._leave(channel, waiter)

    async def _changed(self, task_id: str, previous: bytes | None) -> bytes | None:
        current = await self.get(task_id)
        return current if current is not None and current != previous else None

    async def close(self) -> None:
        # the alarms stay: a wait still sleeping ends its pause (its timeout) as it
        # would have with a timer of its own
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        reads, self._reads = self._reads, set()
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        await self._pipe.close()
        await self._sub_pool.aclose()


class SecureAsyncRedisTransport(AsyncRedisTransport):
    """``rediss://``: the same over TLS."""

    scheme = "rediss"
