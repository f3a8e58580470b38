"""Turn redis-py errors into Conveyor's, in one place (httpx's ``map_exceptions`` idea).

Two kinds come out:

* :class:`RedisConnectionError` — the server could not be reached or the connection
  broke. It is *both* an :class:`~conveyor.exceptions.OperationalError` (what users
  catch) and a ``redis.ConnectionError`` (what :attr:`RedisTransport.connection_errors`
  lists), so the core's publish retry and the worker's reconnect loop still see it as
  a retryable connection error.
* :class:`~conveyor.exceptions.OperationalError` — any other Redis error (wrong key
  type, no permission, out of memory, a script error): retrying will not help.

Every message names the URL with its password masked and says what to check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

import redis
from conveyor.utils import mask_url
from conveyor.exceptions import OperationalError

from .connection import CONNECTION_ERRORS, Backoff

__all__ = ["CONNECTION_ERRORS", "RedisConnectionError", "retrying", "translate", "wrap"]


class RedisConnectionError(OperationalError, redis.ConnectionError):
    """Redis is unreachable or the connection broke; retrying may succeed."""


def describe(exc: BaseException, url: str, doing: str) -> str:
    """One sentence: what failed, where, why, and what to check."""
    where = mask_url(url)
    if isinstance(exc, redis.AuthenticationError):
        hint = "Check the user name and password in the URL."
    elif isinstance(exc, redis.BusyLoadingError):
        hint = "The server is loading its data set; it will answer shortly."
    elif isinstance(exc, CONNECTION_ERRORS):
        hint = ("Is redis-server running and reachable there? Check host, port and "
                "firewall, or raise broker_connection_timeout / socket_timeout.")
    elif isinstance(exc, redis.ResponseError) and "WRONGTYPE" in str(exc):
        hint = ("A key Conveyor uses holds another type: choose another queue name or "
                "set broker_transport_options['global_keyprefix'].")
    else:
        hint = "See the Redis server log for details."
    return f"Redis at {where} failed while {doing}: {exc}. {hint}"


def wrap(exc: BaseException, url: str, doing: str) -> OperationalError:
    """The Conveyor error for a redis-py error (to ``raise ... from exc``)."""
    if isinstance(exc, OperationalError):
        return exc
    if isinstance(exc, CONNECTION_ERRORS):
        return RedisConnectionError(describe(exc, url, doing))
    return OperationalError(describe(exc, url, doing))


class translate:  # noqa: N801 - used as a function: ``with translate(url, doing):``
    """Re-raise redis-py errors raised inside the ``with`` block as Conveyor's.

    With ``retryable_raw`` connection errors pass through untouched: the core's
    publish retry policy re-raises any ConveyorError at once and retries only the
    transport's bare ``connection_errors``, then names the URL itself.

    perf: a class, not a ``@contextmanager`` generator (a generator, its wrapper
    object and their frames a use): ``with translate(...)`` around nothing took
    12.0k instructions, this 5.5k (callgrind, 22,000 - 2,000 uses); it is paid on
    every ``publish_many``, ``declare`` and result read.
    """

    __slots__ = ("url", "doing", "retryable_raw")

    def __init__(self, url: str, doing: str, *, retryable_raw: bool = False) -> None:
        self.url, self.doing, self.retryable_raw = url, doing, retryable_raw

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if exc is None or not isinstance(exc, redis.RedisError):
            return
        if self.retryable_raw and isinstance(exc, CONNECTION_ERRORS):
            return
        raise wrap(exc, self.url, self.doing) from exc


T = TypeVar("T")
log = logging.getLogger(__name__)


def retrying(call: Callable[[], T], *, url: str, doing: str, patience: float,
             on_give_up: Callable[[], None] | None = None) -> T:
    """Run an idempotent ``call``, retrying connection errors with backoff for up to
    ``patience`` seconds; then raise the wrapped error (``on_give_up`` first)."""
    deadline, backoff = 0.0, None  # perf: made at the first failure, not per call
    while True:
        try:
            return call()
        except CONNECTION_ERRORS as exc:
            if backoff is None:
                deadline, backoff = time.monotonic() + patience, Backoff()
            pause = backoff.next()
            if time.monotonic() + pause > deadline:
                if on_give_up is not None:
                    on_give_up()
                raise wrap(exc, url, doing) from exc
            log.warning("Redis at %s unreachable while %s (%s); retrying in %.2fs",
                        mask_url(url), doing, exc, pause)
            time.sleep(pause)
        except redis.RedisError as exc:
            raise wrap(exc, url, doing) from exc
