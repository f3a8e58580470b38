"""Broker connections for publishing: a bounded pool, and the publish retry policy.

``apply_async`` borrows a connection, publishes, and gives it back; a ``publisher``
keeps one for many sends. A publish that fails with one of the transport's
``connection_errors`` is retried by the policy (``max_retries``, ``interval_start``,
``interval_step``, ``interval_max``), reconnecting in between; when it is exhausted
the caller gets :class:`OperationalError` naming the broker (password masked) and
the cause. No call returns a task id for a message the broker did not take.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from ._suggest import mask_url
from .exceptions import ConfigurationError, ConveyorError, OperationalError
from .interfaces import Message, Route, Transport
from .settings import DEFAULT_RETRY_POLICY

if TYPE_CHECKING:
    from .app import Conveyor

log = logging.getLogger(__name__)
T = TypeVar("T")


def scheme_of(url: str) -> str:
    """The plugin name for a URL: its scheme up to the first ``+``."""
    if "://" not in url:
        raise ConfigurationError(
            f"Broker/backend URL {mask_url(url)!r} has no scheme; write it like "
            "'redis://localhost:6379/0' or 'sqlite:///conveyor.sqlite3'.")
    return url.split("://", 1)[0].split("+", 1)[0].lower()


def retry_sleeps(policy: Mapping[str, Any]) -> Iterator[float]:
    """The sleeps between attempts: start, start+step, … capped at max."""
    interval = float(policy.get("interval_start", 0) or 0)
    step = float(policy.get("interval_step", 0.2) or 0)
    cap = float(policy.get("interval_max", 0.2) or 0)
    for _ in range(int(policy.get("max_retries", 3) or 0)):
        yield min(interval, cap)
        interval += step


class Connection:
    """One transport connection with the retry policy around its calls."""

    def __init__(self, app: Conveyor, url: str) -> None:
        self.app = app
        self.url = url
        self.transport: Transport = app.transport_factory(url)
        self._connected = False

    def _connect(self) -> None:
        if not self._connected:
            self.transport.connect()
            self._connected = True

    def _reset(self) -> None:
        try:
            self.transport.close()
        except Exception:  # noqa: BLE001 - the connection is being replaced anyway
            pass
        self._connected = False
        self.transport = self.app.transport_factory(self.url)

    def ensure(self, fn: Callable[[Transport], T], *, retry: bool = True,
               policy: Mapping[str, Any] | None = None, what: str = "publish") -> T:
        """Run ``fn(transport)``, retrying connection errors by ``policy``."""
        policy = policy or DEFAULT_RETRY_POLICY
        errors = policy.get("retry_errors") or self.transport.connection_errors
        sleeps = retry_sleeps(policy) if retry else iter(())
        attempts = 0
        while True:
            attempts += 1
            try:
                self._connect()
                return fn(self.transport)
            except ConveyorError:
                raise
            except tuple(errors) as exc:
                delay = next(sleeps, None)
                if delay is None:
                    self._reset()
                    raise OperationalError(
                        f"Cannot {what} to broker {mask_url(self.url)}: "
                        f"{type(exc).__name__}: {exc} (gave up after {attempts} "
                        f"attempt{'s' if attempts > 1 else ''}; see retry_policy)."
                    ) from exc
                log.warning("%s to %s failed (%s); retrying in %.2fs", what,
                            mask_url(self.url), exc, delay)
                self._reset()
                if delay:
                    time.sleep(delay)

    def publish(self, message: Message, route: Route, due: float | None = None, *,
                retry: bool = True, policy: Mapping[str, Any] | None = None) -> None:
        self.ensure(lambda t: t.publish(message, route, due=due), retry=retry, policy=policy)

    def publish_many(self, batch: Sequence[tuple[Message, Route, float | None]], *,
                     retry: bool = True, policy: Mapping[str, Any] | None = None) -> None:
        self.ensure(lambda t: t.publish_many(batch), retry=retry, policy=policy)

    def close(self) -> None:
        try:
            self.transport.close()
        finally:
            self._connected = False


class ConnectionPool:
    """At most ``broker_pool_limit`` publishing connections, reused LIFO."""

    def __init__(self, app: Conveyor, url: str, limit: int) -> None:
        self.app = app
        self.url = url
        self.limit = max(1, int(limit or 1))
        self._idle: list[Connection] = []
        self._created = 0
        self._cond = threading.Condition()

    @contextmanager
    def acquire(self, block: bool = True, timeout: float | None = None) -> Iterator[Connection]:
        """Borrow a connection; with ``block`` wait for one (up to ``timeout``)."""
        conn = self._take(block, timeout)
        try:
            yield conn
        finally:
            with self._cond:
                self._idle.append(conn)
                self._cond.notify()

    def _take(self, block: bool, timeout: float | None) -> Connection:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._created < self.limit:
                    self._created += 1
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if not block or (remaining is not None and remaining <= 0):
                    raise OperationalError(
                        f"All {self.limit} broker connections are in use "
                        "(broker_pool_limit); raise it or pass block=True.")
                self._cond.wait(remaining)
        try:
            return Connection(self.app, self.url)
        except BaseException:
            with self._cond:
                self._created -= 1
            raise

    def close(self) -> None:
        with self._cond:
            for conn in self._idle:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    log.debug("error closing connection", exc_info=True)
            self._idle.clear()
            self._created = 0
