"""The asyncio client's I/O: publishing and result waits awaited on the running loop.

Only the I/O differs from the blocking client. Options resolve through the same plan,
messages come from the same template, ``before_task_publish``/``after_task_publish``
run as they do, the publish retry policy is the same (its pauses are
``asyncio.sleep``). The I/O goes to the scheme's asyncio twins, found by URL scheme in
the entry point groups ``conveyor.async_transports`` and ``conveyor.async_backends``.
Each is made once per event loop, since asyncio connections belong to the loop that
opened them. A scheme without a twin raises :class:`AsyncUnsupportedError`: the loop
is never blocked behind the caller's back, and no thread pool stands in front of a
network broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from .connection import gave_up, retry_sleeps, retryable, scheme_of
from .exceptions import ConfigurationError
from .interfaces import Outgoing
from .plugins import find
from .settings import DEFAULT_RETRY_POLICY
from .utils import mask_url

if TYPE_CHECKING:
    from .app import Conveyor
    from .result import AsyncResult

log = logging.getLogger(__name__)

TRANSPORTS = "conveyor.async_transports"
BACKENDS = "conveyor.async_backends"

T = TypeVar("T")

#: Where :meth:`Conveyor.publish` and ``publish_batch`` put what they built instead of
#: sending it, inside :func:`deferred` (None: send as usual).
HELD: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "conveyor_held_publishes", default=None)


class AsyncUnsupportedError(ConfigurationError):
    """The broker's or backend's plugin has no asyncio path."""


class BackendWrite(NamedTuple):
    """A result backend write a canvas makes before it sends (a chord's join size,
    a chain's parked steps), held inside :func:`deferred` for the loop's backend."""

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    doing: str


def hold_write(method: str, *args: Any, doing: str, **kwargs: Any) -> bool:
    """Inside :func:`deferred`: hold the backend call ``method(*args, **kwargs)`` to
    be awaited on the loop's asyncio backend, in order with the publishes; True.
    Outside (a blocking caller): False, and the caller writes it itself."""
    held = HELD.get()
    if held is None:
        return False
    held.append(BackendWrite(method, args, kwargs, doing))
    return True


#: (group, scheme) → whether a plugin offers it (reading entry points takes ms).
_offered: dict[tuple[str, str], bool] = {}


def _twin(app: Conveyor, group: str, url: str, kind: str) -> Any:
    scheme = scheme_of(url)
    offered = _offered.get((group, scheme))
    if offered is None:
        offered = _offered[group, scheme] = any(info.name == scheme
                                                for info in find(group))
    if not offered:
        raise AsyncUnsupportedError(
            f"The {scheme!r} {kind} ({mask_url(url)}) has no asyncio path: no plugin "
            f"in the {group!r} entry point group is named {scheme!r}. Call the blocking "
            f"API (delay, apply_async, get) from a thread of your own, or use a "
            f"{kind} that has one (redis, sqlite).")
    return app.loader.load(group, scheme)(url, app)


class _Sender:
    """One async transport with the publish retry policy around it."""

    def __init__(self, app: Conveyor, url: str) -> None:
        self.app, self.url = app, url
        self.transport: Any = _twin(app, TRANSPORTS, url, "transport")
        self.connected = False

    async def _reset(self, broken: Any) -> None:
        if self.transport is not broken:
            return  # another coroutine sharing it replaced it already
        self.connected = False
        self.transport = _twin(self.app, TRANSPORTS, self.url, "transport")
        with contextlib.suppress(Exception):  # being replaced anyway
            await broken.close()

    async def publish_many(self, batch: Sequence[Outgoing], *,
                           retry: bool, policy: Mapping[str, Any] | None) -> None:
        attempts = 0
        sleeps: Iterator[float] | None = None  # perf: made at the first failure only
        while True:
            attempts += 1
            transport = self.transport
            try:
                if not self.connected:
                    await transport.connect()
                    self.connected = True
                await transport.publish_many(batch)
                return
            except Exception as exc:
                policy = policy or DEFAULT_RETRY_POLICY
                errors = tuple(transport.connection_errors)
                if not retryable(exc, tuple(policy.get("retry_errors") or errors), errors):
                    raise
                if sleeps is None:
                    sleeps = retry_sleeps(policy) if retry else iter(())
                pause = next(sleeps, None)
                await self._reset(transport)
                if pause is None:
                    raise gave_up(self.url, "publish", exc, attempts) from exc
                log.warning("publish to %s failed (%s); retrying in %.2fs",
                            mask_url(self.url), exc, pause)
                await asyncio.sleep(pause)


class _LoopClients:
    """What one app uses on one event loop: a bounded pool of senders (as
    ``broker_pool_limit`` bounds the blocking pool), or one sender for a transport
    that serves every coroutine at once (``multiplexed``); and one backend."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        self.idle: list[_Sender] = []
        self.slots = asyncio.Semaphore(max(1, int(app.conf.broker_pool_limit or 1)))
        self.shared: _Sender | None = None
        self.multiplexed: bool | None = None
        self._backend: Any = None
        self._replies: bool | None = None

    @property
    def replies(self) -> bool:
        """Whether the app's result backend takes replies (``rpc://``), asked once."""
        if self._replies is None:
            self._replies = bool(self.app.backend.capabilities.replies)
        return self._replies

    @contextlib.asynccontextmanager
    async def sender(self) -> AsyncIterator[_Sender]:
        if self.shared is not None:
            yield self.shared
            return
        if self.multiplexed is None:  # the first sender says which it is
            first = _Sender(self.app, self.app.broker_url)
            self.multiplexed = bool(getattr(first.transport, "multiplexed", False))
            if self.multiplexed:
                self.shared = first  # perf: no pool, no semaphore from now on
                yield first
                return
            self.idle.append(first)
        async with self.slots:
            sender = self.idle.pop() if self.idle else _Sender(self.app, self.app.broker_url)
            try:
                yield sender
            finally:
                self.idle.append(sender)

    @property
    def backend(self) -> Any:
        if self._backend is None:
            self._backend = _twin(self.app, BACKENDS, self.app.backend_url, "result backend")
        return self._backend

    async def close(self) -> None:
        senders, self.idle = self.idle, []
        if self.shared is not None:
            senders.append(self.shared)
            self.shared = None
        for sender in senders:
            if sender.connected:
                await sender.transport.close()
        backend, self._backend = self._backend, None
        if backend is not None:
            await backend.close()


_clients: weakref.WeakKeyDictionary[Conveyor, weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, _LoopClients]] = weakref.WeakKeyDictionary()


#: The last (loop, app, clients) :func:`clients` found, held weakly: perf, a round
#: trip asks twice (publish, wait), nearly always for the same app on the same loop,
#: and two ``WeakKeyDictionary`` lookups cost more than the rest of the call.
_last: tuple[weakref.ref[asyncio.AbstractEventLoop], weakref.ref[Conveyor],
             weakref.ref[_LoopClients]] | None = None


def clients(app: Conveyor) -> _LoopClients:
    """The app's async clients on the running loop (made on first use)."""
    global _last
    loop = asyncio.get_running_loop()
    last = _last
    if last is not None and last[0]() is loop and last[1]() is app:
        found = last[2]()
        if found is not None:
            return found
    per_loop = _clients.get(app)
    if per_loop is None:
        per_loop = _clients[app] = weakref.WeakKeyDictionary()
    found = per_loop.get(loop)
    if found is None:
        found = per_loop[loop] = _LoopClients(app)
    _last = (weakref.ref(loop), weakref.ref(app), weakref.ref(found))
    return found


def reply_to(app: Conveyor) -> str:
    """The reply queue of the loop's backend (a ``replies`` backend, ``rpc://``),
    for a message built inside :func:`deferred`: named now, and made ready (declared,
    consumed) before anything is sent, so no result sent to it can be lost."""
    twin = clients(app).backend
    if not twin.replies_ready:
        hold_write("ready_replies", doing="declare and consume its reply queue")
    return str(twin.reply_to)


def backend(app: Conveyor) -> Any:
    """The app's async result backend on the running loop."""
    return clients(app).backend


async def aclose(app: Conveyor) -> None:
    """Close the app's async connections on the running loop."""
    global _last
    _last = None  # the next call makes new clients
    per_loop = _clients.get(app)
    found = per_loop.pop(asyncio.get_running_loop(), None) if per_loop is not None else None
    if found is not None:
        await found.close()


def _no_publisher(publisher: Any) -> None:
    if publisher is not None:
        raise ConfigurationError(
            "publisher= holds a blocking connection; the asyncio calls (adelay, "
            "aapply_async, asend_task) publish through the loop's own connections. "
            "Leave publisher out, or call apply_async.")


def publish(app: Conveyor, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
            call: Mapping[str, Any], sig: Mapping[str, Any], task: Any
            ) -> Coroutine[Any, Any, AsyncResult[Any]]:
    """:meth:`Conveyor.publish` with the send awaited: :func:`deferred`'s coroutine,
    for the caller to await (perf: not awaited in a coroutine of its own, one frame
    less at every step of a publish)."""
    return deferred(app, lambda: app.publish(name, args, kwargs, call, sig, task))


async def deferred(app: Conveyor, build: Callable[[], T]) -> T:
    """Run a blocking call (a canvas's ``apply_async``) with its I/O held, then send
    what it built on the running loop; return what it returned.

    So every canvas (chains of groups, chords, …) is sent by its own code, and only
    the I/O is awaited: its publishes, and what it writes to the result backend
    first (a chord's counter, a chain's steps parked in the backend; see
    :func:`hold_write`), in the order it made them.
    """
    loop_clients = clients(app)
    if loop_clients.replies:  # naming the reply queue declares it: I/O
        loop_clients.backend  # noqa: B018 - raises AsyncUnsupportedError without a twin
    held: list[Any] = []
    token = HELD.set(held)
    try:
        result = build()
    finally:
        HELD.reset(token)
    for run in held:
        if not isinstance(run, BackendWrite):
            _no_publisher(run.publisher)
    if held:
        if loop_clients.shared is not None:  # perf: no context manager
            await _send(app, loop_clients.shared, held)
        else:
            async with loop_clients.sender() as sender:
                await _send(app, sender, held)
    return result


async def _send(app: Conveyor, sender: _Sender, held: list[Any]) -> None:
    for run in held:
        if isinstance(run, BackendWrite):
            await _write(app, run)
            continue
        await sender.publish_many(run.batch, retry=run.retry, policy=run.policy)
        app.publishing.published(run.names, run.batch)


#: Held backend calls that need a capability of the twin (``AsyncJoinBackend``,
#: ``AsyncReplyBackend``); ``store`` is the required protocol's.
_NEEDS = {"join_size": "joins", "ready_replies": "replies"}


async def _write(app: Conveyor, write: BackendWrite) -> None:
    backend = clients(app).backend
    needs = _NEEDS.get(write.method)
    if needs is not None and not getattr(backend.capabilities, needs):
        raise AsyncUnsupportedError(
            f"The {scheme_of(app.backend_url)!r} result backend's asyncio twin "
            f"({type(backend).__name__}) cannot {write.doing} ({write.method}): it "
            f"does not declare BackendCapabilities.{needs}. Call the blocking apply_async from a thread of "
            f"your own, or use a result backend whose twin does (redis, sqlite).")
    await getattr(backend, write.method)(*write.args, **write.kwargs)
