"""Redis clients: the URL forms kombu accepts, one shared pool per URL, backoff.

A pool is shared by every transport and backend of a process that uses the same URL
and socket settings, so creating a transport per publish costs no connection setup;
redis-py resets a pool in a forked child by itself. redis-py's own command retries
are switched off: a blindly retried LPUSH can duplicate a message, so the callers
here decide what is safe to repeat.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import hiredis
import redis
from conveyor.utils import mask_url
from conveyor.exceptions import ConfigurationError
from redis.backoff import NoBackoff
from redis.retry import Retry

#: redis-py's hiredis parser and the value its reader gives for a partial reply,
#: read straight by :func:`read_reply` (None: another redis-py layout, whose own
#: ``read_response`` is used).
_hiredis_module: Any = getattr(getattr(redis, "_parsers", None), "hiredis", None)
_HIREDIS_PARSER: Any = getattr(_hiredis_module, "_HiredisParser", None)
NOT_ENOUGH_DATA: Any = getattr(_hiredis_module, "NOT_ENOUGH_DATA", None)
if NOT_ENOUGH_DATA is None:  # pragma: no cover - see above
    _HIREDIS_PARSER = None

log = logging.getLogger("conveyor.redis")
#: Errors after which a connection cannot be trusted; what callers catch to retry or
#: reconnect (``Transport.connection_errors``).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError,
)

_pools: dict[tuple[Any, ...], redis.ConnectionPool] = {}
_pools_lock = threading.Lock()


def driver_url(url: str) -> str:
    """The URL redis-py understands for a Conveyor/kombu Redis URL.

    ``redis://`` and ``rediss://`` pass through; kombu's unix-socket forms
    ``redis+socket:///path`` and ``socket:///path`` (db in ``?virtual_host=N``) become
    ``unix:///path?db=N``.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        return url
    if scheme in ("redis+socket", "socket"):
        query = [("db", v) if k == "virtual_host" else (k, v)
                 for k, v in parse_qsl(parts.query)]
        query_text = f"?{urlencode(query)}" if query else ""
        return f"unix://{parts.netloc}{parts.path}{query_text}"
    raise ConfigurationError(
        f"Cannot use {mask_url(url)!r} as a Redis URL: expected redis://host:port/db, "
        "rediss://host:port/db or redis+socket:///path/to/redis.sock."
    )


def client_for(url: str, *, socket_timeout: float | None = None,
               connect_timeout: float | None = None, keepalive: bool = True,
               health_check_interval: float = 0, max_connections: int | None = None,
               ssl: Mapping[str, Any] | None = None,
               client_name: str | None = None) -> redis.Redis:
    """A client on the process-wide pool for ``url`` and these settings."""
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "socket_keepalive": keepalive,
        "health_check_interval": health_check_interval,
        "retry": Retry(NoBackoff(), 0),
        "protocol": 2,  # RESP2, as kombu speaks it
    }
    if client_name:
        kwargs["client_name"] = client_name
    target = driver_url(url)
    if ssl:
        if not target.lower().startswith("rediss://"):
            raise ConfigurationError(
                f"broker_transport_options['ssl'] is set but {mask_url(url)!r} is not a "
                "rediss:// URL; use rediss:// for TLS."
            )
        kwargs.update(ssl)
    key = (target, max_connections, tuple(sorted((k, repr(v)) for k, v in kwargs.items()
                                                 if k != "retry")))
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            try:
                pool = redis.ConnectionPool.from_url(
                    target, max_connections=max_connections, **kwargs)
            except (ValueError, TypeError) as exc:
                raise ConfigurationError(
                    f"Bad Redis URL or option for {mask_url(url)!r}: {exc}"
                ) from exc
            _pools[key] = pool
    return redis.Redis(connection_pool=pool)


def pack(args: tuple[Any, ...]) -> list[bytes]:
    """One command in the Redis protocol, for ``send_packed_command``.

    perf: hiredis's packer called directly (4 µs for a result write's EVAL, against
    18 µs through redis-py's ``pack_command``, which re-splits and copies the
    arguments first); a Line's commands are never split words nor buffers."""
    try:
        return [hiredis.pack_command(args)]
    except TypeError as exc:  # what redis-py raises for an argument it cannot send
        raise redis.DataError(f"{exc} (in a {args[0]!r} command)") from exc


def pack_many(commands: list[tuple[Any, ...]]) -> list[bytes]:
    """Several commands, packed as :func:`pack` does, for one ``send_packed_command``:
    small ones joined, a large one (a bulk publish's LPUSH) written as it is, not
    copied again.

    perf: redis-py's ``pack_commands`` runs a generator over every argument, and a
    bulk publish's LPUSH has 1,000 (a buffered ``apply_async``, callgrind over
    22,000 - 2,000 messages: 2.0k instructions a message less)."""
    out: list[bytes] = []
    small: list[bytes] = []
    for command in commands:
        packed = pack(command)[0]
        if len(packed) < _JOIN_UNDER:
            small.append(packed)
            continue
        if small:
            out.append(b"".join(small))
            small = []
        out.append(packed)
    if small:
        out.append(b"".join(small))
    return out


#: Packed commands shorter than this are joined into one write (redis-py's cutoff).
_JOIN_UNDER = 6000


#: Whether a socket's timeout can be kept by the kernel (``SO_RCVTIMEO``/``SO_SNDTIMEO``
#: take a ``struct timeval`` of two longs there).
_KERNEL_TIMEOUTS = sys.platform.startswith("linux")


def kernel_timeout(conn: Any) -> None:
    """Have the kernel keep ``conn``'s socket timeout, the socket itself blocking.

    perf: Python waits for a socket that has a timeout in ``poll()`` before every
    send and receive: a second system call for each (a solo worker: 7.4 ``poll`` a
    task, strace). A blocking socket with ``SO_RCVTIMEO``/``SO_SNDTIMEO`` set is
    bounded just the same: a send or receive that times out fails with ``EAGAIN``,
    which redis-py raises as a ``ConnectionError`` (a ``TimeoutError`` before), one of
    :data:`CONNECTION_ERRORS` either way. Plain TCP and unix sockets on Linux only
    (a TLS socket is left as it is).
    """
    sock = getattr(conn, "_sock", None)
    if not _KERNEL_TIMEOUTS or type(sock) is not socket.socket:
        return
    timeout = sock.gettimeout()
    if not timeout:  # already blocking, or non-blocking on purpose
        return
    whole = int(timeout)
    tv = struct.pack("ll", whole, int((timeout - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    sock.settimeout(None)


def read_reply(conn: Any) -> Any:
    """``conn.read_response()``: the next reply, an error reply raised as redis-py's
    exception for it, a broken connection as ``ConnectionError``/``TimeoutError``
    after disconnecting it.

    perf: on a RESP2 connection with redis-py's hiredis parser the reply is taken
    from hiredis's reader here, its socket read into the parser's buffer when the
    reader wants more, without redis-py's layers around both (the host text it
    formats for an error that rarely comes, the parser's push and timeout handling,
    a call frame each); any other connection goes through ``read_response``.
    Every reply a :class:`Line` reads comes here: the ack's, the claim's and a
    result write's in a solo worker's task.
    """
    parser = conn._parser
    if type(parser) is not _HIREDIS_PARSER or conn.protocol != 2:
        return conn.read_response()
    reader, sock = parser._reader, parser._sock
    if reader is None or sock is None:
        raise redis.ConnectionError("Connection closed by server.")
    try:
        reply = reader.gets()
        while reply is NOT_ENOUGH_DATA:
            buffer = parser._buffer
            size = sock.recv_into(buffer)
            if not size:
                raise redis.ConnectionError("Connection closed by server.")
            reader.feed(buffer, 0, size)
            reply = reader.gets()
    except socket.timeout:
        conn.disconnect()
        raise redis.TimeoutError(f"Timeout reading from {conn._host_error()}") from None
    except OSError as exc:
        conn.disconnect()
        raise redis.ConnectionError(
            f"Error while reading from {conn._host_error()} : {exc.args}") from exc
    except BaseException:
        conn.disconnect()  # a protocol error, or interrupted mid-reply
        raise
    if conn.health_check_interval:
        conn.next_health_check = time.monotonic() + conn.health_check_interval
    if isinstance(reply, redis.RedisError):  # an error reply, or a protocol error
        raise reply
    return reply


def python_timeout(conn: Any) -> None:
    """Undo :func:`kernel_timeout` (before ``conn`` goes back to the pool)."""
    sock = getattr(conn, "_sock", None)
    if type(sock) is socket.socket and sock.gettimeout() is None and conn.socket_timeout:
        sock.settimeout(conn.socket_timeout)


class Collect:
    """The ``redo`` of a command sent ahead whose reply its sender wants (a claim sent
    ahead, :meth:`.RedisTransport.ack_and_fetch_ahead`): whoever reads the line's
    replies keeps that one here. It is not idempotent, so it is never run again:
    where its reply is refused or lost, running it as owed calls ``lost`` instead,
    once (the sender gives back what the command may have taken)."""

    __slots__ = ("reply", "_lost")

    def __init__(self, lost: Callable[[], None]) -> None:
        self.reply: Any = None
        self._lost: Callable[[], None] | None = lost

    def __call__(self, _line: Line | None = None) -> None:
        lost, self._lost = self._lost, None
        if lost is not None:
            lost()

    def take(self) -> Any:
        """The reply, its effect now the sender's: ``lost`` is never called after."""
        self._lost = None
        return self.reply


class Line:
    """One pooled connection kept for a user's lifetime; commands go straight to it.

    perf: redis-py's client checks a connection out of the pool, wraps the call in
    retry and observability layers and applies response callbacks for every command:
    tens of µs of Python per command, more than the round trip itself. The hot paths
    (claim, ack, publish, result store) use a held redis-py connection directly: its
    own command packer and reply parser (hiredis's, installed with the plugin), and
    raw replies (bytes, ints, lists). A broken connection is dropped and the next call
    reconnects; a server error reply is raised as redis-py's exception for it
    (``ResponseError``, ``NoScriptError``, …).

    :meth:`send` writes an idempotent command without waiting for its reply (an ack,
    a result write): the round trip overlaps with whatever the caller does next, and
    the reply is read with the line's next command (:meth:`call` writes its own
    command first and reads both: one round trip). A command the server refused, or
    whose reply was lost with the connection, is then owed: it is run again,
    synchronously, before anything else is sent.
    Reading every pending reply before another write that is taken as done (sent
    ahead) also means that, if the process dies, the unread data is only replies to
    commands the server already ran, so closing the socket (which then resets the
    connection) can never discard a write the process counted as made.
    Not thread-safe: one user (transport, or a borrower of :class:`Lines`) at a time.
    """

    __slots__ = ("pool", "conn", "ahead", "owed")

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.pool = pool
        self.conn: Any = None
        #: Commands sent whose replies are unread: how to run each again, and what it is.
        self.ahead: list[tuple[Callable[[Line], Any], str]] = []
        #: Commands that must run again (refused, or their reply was lost).
        self.owed: list[tuple[Callable[[Line], Any], str]] = []

    def _connection(self) -> Any:
        if self.ahead or self.owed:
            self.confirm()
        return self.connection()

    def connection(self) -> Any:
        """The redis-py connection this line holds, taken from the pool if none (its
        own state, such as the functions loaded there, may be read from it)."""
        if self.conn is None:
            conn = self.pool.get_connection()
            try:
                kernel_timeout(conn)
            except OSError:
                pass  # left with Python's timeout: correct, only slower
            self.conn = conn
        return self.conn

    def call(self, *args: Any) -> Any:
        """Send one command and return its raw reply (errors raised).

        perf: commands sent ahead are not confirmed first: this one is written behind
        them and their replies are read before its own, so a result write followed
        by a chord's join, or an ack followed by the next claim, is one round trip.
        Sent-ahead commands the server refused are run again before this returns;
        the server may have run this one before that (they are idempotent writes, and
        nothing else goes over the line in between). Only this command waits behind
        unread replies, and its caller learns of its effect only from its reply, so
        a process dying meanwhile loses nothing it had taken as done.
        """
        if self.owed:
            self.confirm()
        conn = self.connection()
        try:
            conn.send_packed_command(pack(args), check_health=False)
            if self.ahead:
                self._read_ahead()
            try:
                reply = read_reply(conn)
            except redis.ResponseError as exc:
                reply = exc  # the connection is fine: the server answered with an error
        except BaseException:
            self.drop()  # broken or interrupted mid-reply: never reuse it
            raise
        if self.owed:
            try:
                self.confirm()
            except CONNECTION_ERRORS:
                pass  # still owed (confirm kept them): the line's next use runs them
        if isinstance(reply, redis.ResponseError):
            raise reply
        return reply

    def _read_ahead(self) -> None:
        """Read the replies of commands sent ahead; those refused become owed.
        A connection error leaves the unread ones in ``ahead`` (for :meth:`drop`)."""
        while self.ahead:
            try:
                reply = read_reply(self.conn)
            except redis.ResponseError:
                self.owed.append(self.ahead[0])
            else:
                redo = self.ahead[0][0]
                if type(redo) is Collect:
                    redo.reply = reply
            del self.ahead[0]

    def send(self, redo: Callable[[Line], Any], what: str, *args: Any) -> None:
        """Write one idempotent command now; read its reply later (see the class).

        ``redo(line)`` runs the same effect synchronously; ``what`` names it in logs.
        """
        self.send_packed(redo, what, pack(args))

    def send_packed(self, redo: Callable[[Line], Any], what: str, packed: list[bytes],
                    replies: int = 1) -> None:
        """:meth:`send` for commands already packed (:func:`pack`, :func:`pack_many`):
        ``replies`` of them, written at once, one effect: ``redo`` runs it all again
        where any of their replies is refused or lost."""
        self.send_each(packed, [(redo, what)] * replies)

    def send_each(self, packed: list[bytes],
                  each: list[tuple[Callable[[Line], Any], str]]) -> None:
        """:meth:`send` for several commands already packed, written at once, each
        with its own ``(redo, what)`` in ``each``, in order."""
        # perf: _connection() inlined (a frame a task on each of a worker's lines)
        if self.ahead or self.owed:
            self.confirm()
        conn = self.conn or self.connection()
        try:
            conn.send_packed_command(packed, check_health=False)
        except BaseException:
            self.drop()  # may or may not have reached the server: owe them
            self.owed += each
            raise
        self.ahead += each

    def confirm(self) -> None:
        """Read the replies of commands sent ahead, then run again what is owed.

        A connection error is raised (after dropping the connection) with every
        unconfirmed command still owed, for the caller's retry to come back here.
        A command the server refuses twice is logged and dropped: running it again
        cannot help, and the caller that needs the line must not fail for it.
        """
        try:
            self._read_ahead()
        except BaseException:
            self.drop()  # the unread ones become owed
            raise
        owed, self.owed = self.owed, []
        while owed:
            redo, what = owed[0]
            try:
                redo(self)
            except CONNECTION_ERRORS:
                self.owed = owed + self.owed  # still owed; call() dropped the connection
                raise
            except redis.RedisError as exc:
                log.error("Redis refused %s: %s", what, exc)
            del owed[0]

    def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send every command in one write and read every reply (one round trip).

        Error replies come back in place as exceptions, so the caller sees them all.
        """
        conn = self._connection()
        replies: list[Any] = []
        try:
            conn.send_packed_command(pack_many(commands), check_health=False)
            for _ in commands:
                try:
                    replies.append(read_reply(conn))
                except redis.ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            self.drop()
            raise
        return replies

    def drop(self) -> None:
        """Forget a broken connection (it is closed; the pool makes a new one)."""
        conn, self.conn = self.conn, None
        if self.ahead:  # their replies are gone with the connection
            self.owed += self.ahead
            self.ahead = []
        if conn is not None:
            conn.disconnect()
            self.pool.release(conn)

    def close(self) -> None:
        """Give the connection back to the pool, after confirming what was sent.

        Owed commands that cannot be confirmed (the server is unreachable) are logged
        by name as possibly lost (an unconfirmed ack comes back when its lease expires).
        """
        try:
            if self.ahead or self.owed:
                self.confirm()
        except redis.RedisError as exc:
            log.warning("Closing a Redis connection with %d unconfirmed command(s) "
                        "(%s): %s", len(self.owed), ", ".join(w for _, w in self.owed), exc)
            self.owed = []
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                python_timeout(conn)
            except OSError:
                conn.disconnect()  # the pool reconnects it
            self.pool.release(conn)

    def abandon(self) -> list[tuple[Callable[[Line], Any], str]]:
        """Drop the connection without confirming; return what is still owed."""
        self.drop()
        owed, self.owed = self.owed, []
        return owed


class Lines:
    """A small free list of :class:`Line` for a user shared between threads.

    Writes sent ahead (:meth:`Line.send`) stay readable by their writer: a line
    holding a thread's unconfirmed writes is kept for that thread, which gets it back
    at its next :meth:`take`, so it reads its own writes on the same connection, in
    order. A thread that does not come back within :attr:`CONFIRM_AFTER` seconds (an
    idle worker thread, a thread that ended) does not leave them unconfirmed: a
    confirmer thread reads the replies, runs again what was refused or lost (with
    backoff while the server is unreachable) and frees the line; the writer's next
    :meth:`take` waits until it has, so the guarantee holds meanwhile too.
    """

    #: Seconds a kept line waits for its writer before the confirmer takes it.
    CONFIRM_AFTER = 0.05

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.pool = pool
        self._idle: list[Line] = []
        #: By thread id (perf: ``get_ident()`` is a C call, ``current_thread()`` a
        #: Python one; an id reused by a later thread hands it a line to confirm).
        self._kept: dict[int, tuple[Line, float]] = {}
        self._confirming: dict[int, Line] = {}
        self._failed: list[Line] = []
        #: ``_cond``'s lock, entered straight where nothing waits (perf: a
        #: Condition's ``__enter__`` is a Python frame).
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._confirmer: threading.Thread | None = None
        self._resting = False  # the confirmer waits with nothing kept: wake it on give
        self._closed = False

    def take(self, owner: int | None = None) -> Line:
        """The caller's kept line (see the class), else a free one. ``owner``: whose
        kept line, for a line shared by threads in turn (default: this thread)."""
        me = threading.get_ident() if owner is None else owner
        with self._mutex:
            kept = self._kept.pop(me, None)
            if kept is not None:
                return kept[0]
            while me in self._confirming:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
        return Line(self.pool)

    def give(self, line: Line, owner: int | None = None) -> None:
        me = threading.get_ident() if owner is None else owner
        with self._mutex:
            if not (line.ahead or line.owed):
                self._idle.append(line)
                return
            previous = self._kept.get(me)
            if previous is not None and previous[0] is not line:
                self._idle.append(previous[0])  # its next user confirms it first
            self._kept[me] = (line, time.monotonic())
            if self._confirmer is None and not self._closed:
                self._confirmer = threading.Thread(
                    target=self._confirm_loop, name="conveyor-redis-confirm", daemon=True)
                self._confirmer.start()
            elif self._resting:
                self._resting = False  # perf: wake it only from an untimed wait
                self._cond.notify_all()

    def _confirm_loop(self) -> None:
        backoff = Backoff()
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                due = {t: kept[0] for t, kept in self._kept.items()
                       if now - kept[1] >= self.CONFIRM_AFTER}
                for thread in due:
                    del self._kept[thread]
                self._confirming.update(due)
                failed, self._failed = self._failed, []
                if not due and not failed:
                    oldest = min((at for _, at in self._kept.values()), default=None)
                    self._resting = oldest is None
                    self._cond.wait(None if oldest is None
                                    else oldest + self.CONFIRM_AFTER - now)
                    continue
            done: list[Line] = []
            retry: list[Line] = []
            for line in [*due.values(), *failed]:
                try:
                    line.confirm()
                except redis.RedisError as exc:
                    log.warning("Could not confirm %d write(s) sent ahead to Redis (%s); "
                                "retrying", len(line.owed), exc)
                    retry.append(line)
                else:
                    done.append(line)
            with self._cond:
                for thread in due:
                    del self._confirming[thread]
                self._idle += done
                self._failed += retry
                self._cond.notify_all()
                if retry:
                    self._cond.wait(backoff.next())
                else:
                    backoff.reset()

    def close(self) -> None:
        """Stop the confirmer; confirm and release every line (what cannot be
        confirmed is logged as lost by :meth:`Line.close`)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            confirmer = self._confirmer
        if confirmer is not None and confirmer is not threading.current_thread():
            confirmer.join(5.0)
        with self._cond:
            lines = self._idle + [kept[0] for kept in self._kept.values()] + self._failed
            self._idle, self._kept, self._failed = [], {}, []
        for line in lines:
            line.close()


class Backoff:
    """Exponential backoff with jitter, capped; ``reset()`` after a success."""

    def __init__(self, start: float = 0.05, cap: float = 2.0) -> None:
        self.start, self.cap = start, cap
        self.current = start

    def next(self) -> float:
        delay = self.current
        self.current = min(self.cap, self.current * 2)
        return delay * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self.current = self.start
