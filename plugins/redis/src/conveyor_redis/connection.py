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


def db_number(client: redis.Redis) -> int:
    """The db number the client talks to (for messages and fanout channel names)."""
    return int(client.connection_pool.connection_kwargs.get("db", 0) or 0)


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
