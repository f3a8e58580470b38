"""Broker connections for publishing: a bounded pool and the publish retry policy.

``apply_async`` borrows a connection, publishes, and gives it back; a
:class:`Publisher` keeps one for many sends, through the app's publish path
(:mod:`conveyor.publish`). A publish that fails with one of the transport's ``connection_errors`` is retried by the policy (``max_retries``, ``interval_start``,
``interval_step``, ``interval_max``), reconnecting in between; when it is exhausted
the caller gets :class:`OperationalError` naming the broker (password masked) and
the cause. No call returns a task id for a message the broker did not take, except
through a buffering publisher: there, reading such a result raises that error.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .utils import mask_url
from .exceptions import ConfigurationError, ConveyorError, OperationalError
from .interfaces import Message, Outgoing, Route, Transport
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


def retryable(exc: BaseException, errors: tuple[type[BaseException], ...],
              connection_errors: tuple[type[BaseException], ...]) -> bool:
    """Whether a failed call is tried again: ``exc`` is one of ``errors`` (the retry
    policy's ``retry_errors``, else the transport's ``connection_errors``), and not
    one of Conveyor's own errors unless the transport lists it as a connection
    error. A plugin raises a lost connection as both (AMQP's
    ``AmqpConnectionError``); a refused route or a missing capability is final,
    whatever ``retry_errors`` says."""
    if isinstance(exc, ConveyorError) and not isinstance(exc, connection_errors):
        return False
    return isinstance(exc, errors)


def gave_up(url: str, what: str, exc: BaseException, attempts: int) -> OperationalError:
    """The error once the retry policy is exhausted: the broker (password masked),
    the cause, and how many attempts were made."""
    return OperationalError(
        f"Cannot {what} to broker {mask_url(url)}: {type(exc).__name__}: {exc} "
        f"(gave up after {attempts} attempt{'s' if attempts > 1 else ''}; "
        "see retry_policy).")


class Connection:
    """One transport connection with the retry policy around its calls.

    It declares each route once (``transport.declare``) before the first message
    to it, and again after a reconnect.
    """

    def __init__(self, app: Conveyor, url: str) -> None:
        self.app = app
        self.url = url
        self.transport: Transport = app.transport_factory(url)
        self._connected = False
        self._declared: set[Route] = set()

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
        self._declared.clear()
        self.transport = self.app.transport_factory(self.url)

    def _send(self, transport: Transport, batch: Sequence[Outgoing]) -> None:
        declared = self._declared
        last = None
        for _message, route, _due in batch:
            if route is not last:  # perf: a batch is mostly one route
                last = route
                if route not in declared:
                    transport.declare(route)
                    declared.add(route)
        transport.publish_many(batch)

    def ensure(self, fn: Callable[[Transport], T], *, retry: bool = True,
               policy: Mapping[str, Any] | None = None, what: str = "publish",
               failed: Exception | None = None) -> T:
        """Run ``fn(transport)``, retrying connection errors by ``policy``.

        Whatever fails for good comes out as :class:`OperationalError` naming the
        broker (password masked) and the cause, retried or not. ``failed``: what a
        first attempt the caller made itself raised (it counts as one).

        perf: the policy is read at the first failure only (the transport is still
        the one the first attempt used), so a call that succeeds at once pays for
        none of it.
        """
        attempts = 0
        errors: tuple[type[BaseException], ...] = ()
        sleeps: Iterator[float] | None = None
        while True:
            attempts += 1
            exc = failed
            if exc is None:
                try:
                    if not self._connected:
                        self._connect()
                    return fn(self.transport)
                except Exception as error:
                    exc = error
            failed = None
            if sleeps is None:
                policy = policy or DEFAULT_RETRY_POLICY
                errors = tuple(policy.get("retry_errors") or self.transport.connection_errors)
                sleeps = retry_sleeps(policy) if retry else iter(())
            if not retryable(exc, errors, tuple(self.transport.connection_errors)):
                if isinstance(exc, ConveyorError):
                    raise exc
                self._reset()
                raise OperationalError(
                    f"Cannot {what} to broker {mask_url(self.url)}: "
                    f"{type(exc).__name__}: {exc} (not retried: only the transport's "
                    "connection errors are, or retry_policy['retry_errors'])."
                ) from exc
            delay = next(sleeps, None)
            if delay is None:
                self._reset()
                raise gave_up(self.url, what, exc, attempts) from exc
            log.warning("%s to %s failed (%s); retrying in %.2fs", what,
                        mask_url(self.url), mask_url(str(exc)), delay)
            self._reset()
            if delay:
                time.sleep(delay)

    def publish(self, message: Message, route: Route, due: float | None = None, *,
                retry: bool = True, policy: Mapping[str, Any] | None = None) -> None:
        batch = [(message, route, due)]
        self.ensure(lambda t: self._send(t, batch), retry=retry, policy=policy)

    def publish_many(self, batch: Sequence[Outgoing], *,
                     retry: bool = True, policy: Mapping[str, Any] | None = None) -> None:
        self.ensure(lambda t: self._send(t, batch), retry=retry, policy=policy)

    def close(self) -> None:
        try:
            self.transport.close()
        finally:
            self._connected = False


#: Messages a publisher's ``with`` block holds before it sends them (``buffer=``).
DEFAULT_BUFFER = 1000


class Publisher:
    """Sends task messages through one connection: ``apply_async(..., publisher=pub)``.

    Made by ``task.get_publisher(conn, buffer=1000)`` with a connection from
    ``app.pool.acquire()``. Outside a ``with`` block every message is sent before
    ``apply_async`` returns, as without a publisher. Inside one::

        with app.pool.acquire() as conn, add.get_publisher(conn) as pub:
            for i in range(10_000):
                add.apply_async((i, i), publisher=pub)

    messages are buffered and each buffer goes to the broker as one pipelined batch
    (the transport's ``publish_many``; on Redis one MULTI/EXEC round trip) with the
    retry policy as usual. A buffer is sent when it holds ``buffer`` messages, when a
    message comes with other ``retry``/``retry_policy`` options than those buffered,
    on :meth:`flush`, when a result returned through the publisher is read (``get``,
    ``state``, ``ready``, …: so waiting on one never deadlocks), and when the block
    exits, with an exception too (what was handed over is sent; if that fails as
    well, the failure is logged and noted on the exception that propagates).

    ``before_task_publish`` hooks run in ``apply_async``; ``after_task_publish`` hooks
    run once the batch has gone out. When sending fails the caller of whatever
    flushed gets :class:`OperationalError`, and so does anyone who later reads the
    result of a message from that batch (the broker may not have it). After its block
    the publisher sends unbuffered again (it may be entered again), through the same
    connection: use it only while you still hold that connection. A publisher can be
    shared between threads (it serializes its use of the connection), but the
    connection must not be used elsewhere meanwhile.
    """

    def __init__(self, connection: Connection, *, buffer: int = DEFAULT_BUFFER) -> None:
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ConfigurationError(
                f"Publisher buffer must be a positive int (messages), not {buffer!r}.")
        self.connection = connection
        self.buffer = buffer
        self._depth = 0
        self._batch: list[tuple[Message, Route, float | None]] = []
        self._names: list[str] = []
        self._retry = True
        self._policy: Mapping[str, Any] | None = None
        self._unsent: dict[str, Exception] = {}
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        mode = f"buffering {len(self._batch)}/{self.buffer}" if self._depth else "unbuffered"
        return f"<Publisher {mask_url(self.connection.url)} {mode}>"

    @property
    def buffering(self) -> bool:
        """True inside the ``with`` block: messages wait for a flush."""
        return self._depth > 0

    @property
    def pending(self) -> int:
        """How many messages wait to be sent."""
        return len(self._batch)

    def __enter__(self) -> Publisher:
        with self._lock:
            self._depth += 1
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        with self._lock:
            self._depth = max(0, self._depth - 1)
            try:
                self.flush()
            except Exception as error:
                if exc is None:
                    raise
                # The body's exception is the one to see; do not replace it.
                log.error("Publisher could not send its buffer while %s propagated: %s",
                          type(exc).__name__, error, exc_info=error)
                exc.add_note(f"While it propagated, the publisher's buffer could not be "
                             f"sent: {type(error).__name__}: {error}")

    def flush(self) -> None:
        """Send every buffered message now (one ``publish_many``; a no-op when none
        waits). A buffer only ever holds messages with the same retry options."""
        with self._lock:
            self._send()

    def _send(self) -> None:
        batch = self._batch
        if not batch:
            return
        names = self._names
        self._batch, self._names = [], []
        conn = self.connection
        try:
            if len(batch) == 1:
                conn.publish(*batch[0], retry=self._retry, policy=self._policy)
            else:
                conn.publish_many(batch, retry=self._retry, policy=self._policy)
        except Exception as exc:
            for message, _route, _due in batch:
                self._unsent[message.headers.get("id") or ""] = exc
            n = len(batch)
            exc.add_note(f"A publisher's batch of {n} buffered message{'s' if n > 1 else ''} "
                         "failed; reading their results raises OperationalError.")
            raise
        conn.app.publishing.published(names, batch)

    def _accepts(self, retry: bool, policy: Mapping[str, Any] | None) -> bool:
        return retry == self._retry and (policy is self._policy or policy == self._policy)

    def put(self, name: str, message: Message, route: Route, due: float | None,
             retry: bool, policy: Mapping[str, Any] | None) -> bool:
        """Send or buffer one message; True when it waits in the buffer."""
        with self._lock:
            if not self._depth:
                self.connection.publish(message, route, due, retry=retry, policy=policy)
                self.connection.app.publishing.published([name], [(message, route, due)])
                return False
            batch = self._batch
            if batch and (retry != self._retry or (policy is not self._policy
                                                   and policy != self._policy)):
                self._send()  # a buffer holds one kind of retry options
                batch = self._batch
            self._retry, self._policy = retry, policy
            batch.append((message, route, due))
            self._names.append(name)
            if len(batch) >= self.buffer:
                self._send()
                return False
            return True

    def put_many(self, names: list[str], batch: list[tuple[Message, Route, float | None]],
                  retry: bool, policy: Mapping[str, Any] | None) -> int:
        """Send or buffer several messages (a group): pipelined either way.

        Returns how many of the last ones wait in the buffer.
        """
        with self._lock:
            if not self._depth:
                self.connection.publish_many(batch, retry=retry, policy=policy)
                self.connection.app.publishing.published(names, batch)
                return 0
            if self._batch and not self._accepts(retry, policy):
                self._send()
            self._retry, self._policy = retry, policy
            start = 0
            while start < len(batch):
                room = self.buffer - len(self._batch)
                self._batch += batch[start:start + room]
                self._names += names[start:start + room]
                start += room
                if len(self._batch) >= self.buffer:
                    self._send()
            return min(len(self._batch), len(batch))

    def settle(self, task_id: str) -> None:
        """Before a result is read: send the buffer, and fail for a message that
        could not be sent."""
        with self._lock:
            self._send()
            error = self._unsent.get(task_id)
        if error is not None:
            raise OperationalError(
                f"Task {task_id} may never have reached the broker: the publisher's "
                f"batch it was in failed ({type(error).__name__}: {error}).") from error


class ConnectionPool:
    """At most ``broker_pool_limit`` publishing connections, reused LIFO.

    perf: borrowing an idle connection and giving it back take no lock (a list's
    ``pop`` and ``append`` are atomic); only a borrower finding none idle takes the
    condition, and a return takes it only while someone waits (was two
    ``Condition`` round trips and a generator a borrow: ``delay()`` on SQLite
    138.9k -> 110.3k instructions, callgrind, diff of 2500 and 500 calls).
    """

    def __init__(self, app: Conveyor, url: str, limit: int) -> None:
        self.app = app
        self.url = url
        self.limit = max(1, int(limit or 1))
        self._idle: list[Connection] = []
        self._created = 0
        #: Borrowers inside :meth:`_take`, counted under ``_cond`` before they look
        #: for an idle connection: a return either comes before that look (and is
        #: found) or sees the count (and wakes them).
        self._waiting = 0
        self._cond = threading.Condition()

    def acquire(self, block: bool = True, timeout: float | None = None) -> Borrowed:
        """Borrow a connection for a ``with`` block; with ``block`` wait for one (up
        to ``timeout``) when all ``broker_pool_limit`` are in use."""
        return Borrowed(self, block, timeout)

    def publish(self, message: Message, route: Route, due: float | None, retry: bool,
                policy: Mapping[str, Any] | None) -> None:
        """Publish one message through a borrowed connection (what
        ``with pool.acquire() as conn: conn.publish(...)`` does).

        perf: every ``apply_async`` publishes this way. Borrowing and giving back
        inline saves the context manager's four calls, and the usual publish (the
        connection up, its route declared) is the transport's call itself: the
        retry policy comes in only when that fails (as the first of
        :meth:`Connection.ensure`'s attempts): 4.9k -> 4.1k instructions a publish
        against ``Connection.publish`` in the same place, and the context manager's
        calls saved on top (callgrind, transport stubbed).
        """
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._take(True, None)
        try:
            batch = [(message, route, due)]
            if conn._connected and route in conn._declared:
                try:
                    conn.transport.publish_many(batch)
                    return
                except Exception as exc:  # noqa: BLE001 - ensure() decides, as for any
                    failed: Exception | None = exc
            else:
                failed = None
            conn.ensure(lambda t: conn._send(t, batch), retry=retry, policy=policy,
                        failed=failed)
        finally:  # as _give_back
            self._idle.append(conn)
            if self._waiting:
                with self._cond:
                    self._cond.notify()

    def _give_back(self, conn: Connection) -> None:
        self._idle.append(conn)
        if self._waiting:
            with self._cond:
                self._cond.notify()

    def _take(self, block: bool, timeout: float | None) -> Connection:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._waiting += 1
            try:
                while True:
                    with contextlib.suppress(IndexError):  # lock-free borrowers race us
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
            finally:
                self._waiting -= 1
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


class Borrowed:
    """``with pool.acquire() as conn``: a connection taken on entry and given back
    on exit (a class, not ``@contextmanager``: every ``apply_async`` borrows one)."""

    __slots__ = ("pool", "block", "timeout", "conn")

    def __init__(self, pool: ConnectionPool, block: bool, timeout: float | None) -> None:
        self.pool, self.block, self.timeout = pool, block, timeout

    def __enter__(self) -> Connection:
        pool = self.pool
        try:
            conn = pool._idle.pop()
        except IndexError:
            conn = pool._take(self.block, self.timeout)
        self.conn = conn
        return conn

    def __exit__(self, *exc: object) -> None:
        self.pool._give_back(self.conn)
