"""Redis clients: the URL forms kombu accepts, one shared pool per URL, backoff.

A pool is shared by every transport and backend of a process that uses the same URL
and socket settings, so creating a transport per publish costs no connection setup;
redis-py resets a pool in a forked child by itself. redis-py's own command retries
are switched off: a blindly retried LPUSH can duplicate a message, so the callers
here decide what is safe to repeat.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from conveyor._suggest import mask_url
from conveyor.exceptions import ConfigurationError
from redis.backoff import NoBackoff
from redis.retry import Retry


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
    Not thread-safe: one user (transport, or a borrower of :class:`Lines`) at a time.
    """

    __slots__ = ("pool", "conn")

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.pool = pool
        self.conn: Any = None

    def _connection(self) -> Any:
        if self.conn is None:
            self.conn = self.pool.get_connection()
        return self.conn

    def call(self, *args: Any) -> Any:
        """Send one command and return its raw reply (errors raised)."""
        conn = self._connection()
        try:
            conn.send_packed_command(conn.pack_command(*args), check_health=False)
            return conn.read_response()
        except redis.ResponseError:
            raise  # the connection is fine: the server answered with an error
        except BaseException:
            self.drop()  # broken or interrupted mid-reply: never reuse it
            raise

    def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send every command in one write and read every reply (one round trip).

        Error replies come back in place as exceptions, so the caller sees them all.
        """
        conn = self._connection()
        replies: list[Any] = []
        try:
            conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            self.drop()
            raise
        return replies

    def drop(self) -> None:
        """Forget a broken connection (it is closed; the pool makes a new one)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.disconnect()
            self.pool.release(conn)

    def close(self) -> None:
        """Give the connection back to the pool."""
        conn, self.conn = self.conn, None
        if conn is not None:
            self.pool.release(conn)


class Lines:
    """A small free list of :class:`Line` for a user shared between threads."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.pool = pool
        self._idle: list[Line] = []
        self._lock = threading.Lock()

    def take(self) -> Line:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return Line(self.pool)

    def give(self, line: Line) -> None:
        with self._lock:
            self._idle.append(line)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for line in idle:
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
