"""Results: ``AsyncResult`` and ``GroupResult``.

``get()`` waits on the backend's change notifications (never a busy loop), calls
``on_message`` with every state change, and re-raises the task's exception.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

# perf: imported once here, not in every aget() (an import statement in a function
# costs ~1 µs a call); aio names AsyncResult only for type checking, so no cycle
from . import aio, states
from .exceptions import ConveyorError, TaskRevokedError, TimeoutError

if TYPE_CHECKING:
    from .app import Conveyor
    from .connection import Publisher

R = TypeVar("R")


def _stored(key: str, doc: str) -> Any:
    """A read-only property giving ``key`` of the stored state document."""
    return property(lambda self: self._meta().get(key), doc=doc)


class AsyncResult(Generic[R]):
    """The pending result of a task call, by task id."""

    # perf: a bulk publish makes one per message; without a __dict__ each costs the
    # garbage collector one object less.
    #: :func:`sent` sets each of these without ``__init__``: keep the two alike.
    __slots__ = ("id", "app", "ignored", "parent", "_cache", "publisher")

    def __init__(self, id: str, app: Conveyor | None = None, *, ignored: bool = False,
                 parent: AsyncResult[Any] | None = None,
                 publisher: Publisher | None = None) -> None:
        if app is None:
            from .app import current_app
            app = current_app()
        self.id = id
        self.app = app
        self.ignored = ignored
        self.parent = parent
        self._cache: dict[str, Any] | None = None
        #: The buffering publisher that may still hold this task's message: every
        #: read flushes it first, so waiting on the result cannot wait forever.
        self.publisher = publisher

    def _settle(self) -> None:
        """Make sure the message went out (flush its publisher's buffer); raise
        :class:`OperationalError` if it never can."""
        publisher = self.publisher
        if publisher is not None:
            publisher.settle(self.id)
            self.publisher = None

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # ---------------------------------------------------------------- meta
    def _meta(self) -> dict[str, Any]:
        if self.publisher is not None:
            self._settle()
        if self._cache is not None:
            return self._cache
        meta = self.app.results.load(self.app.backend.get(self.id))
        if meta.get("status") in states.READY_STATES:
            self._cache = meta
        return meta

    @property
    def state(self) -> str:
        return str(self._meta().get("status", states.PENDING))

    status = state

    @property
    def result(self) -> Any:
        """The return value, or the exception for failed states, or progress meta."""
        meta = self._meta()
        value = meta.get("result")
        if meta.get("status") in states.EXCEPTION_STATES:
            return states.dict_to_exception(value)
        return value

    info = result

    @property
    def traceback(self) -> str | None:
        return self._meta().get("traceback")

    @property
    def date_done(self) -> str | None:
        return self._meta().get("date_done")

    # With ``result_extended=True`` the worker stores what it ran (Celery's
    # properties); otherwise, and before a worker stored a state, these are None.
    name = _stored("name", "The task's name.")
    args = _stored("args", "The positional arguments it ran with.")
    kwargs = _stored("kwargs", "The keyword arguments it ran with.")
    worker = _stored("worker", "The host name of the worker that ran it.")
    queue = _stored("queue", "The queue it was delivered from.")
    retries = _stored("retries", "How many times it had been retried then.")

    @property
    def children(self) -> list[AsyncResult[Any]]:
        out: list[AsyncResult[Any]] = []
        for child in self._meta().get("children") or []:
            try:
                out.append(AsyncResult(child[0][0], self.app))
            except (TypeError, IndexError):
                continue
        return out

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    # ---------------------------------------------------------------- waiting
    def get(self, timeout: float | None = None, propagate: bool = True,
            on_message: Callable[[dict[str, Any]], None] | None = None,
            interval: float = 0.5, disable_sync_subtasks: bool = True) -> R:
        """Wait for the task to finish and return its value.

        Raises :class:`conveyor.exceptions.TimeoutError` when ``timeout`` passes,
        the task's own exception when it failed (with ``propagate``), and
        :class:`TaskRevokedError` when it was revoked or expired. With
        ``ignore_result`` there is nothing to wait for: returns None at once.
        ``interval`` is accepted for Celery compatibility; backends are notified.
        Inside a running task it raises ``RuntimeError`` unless
        ``disable_sync_subtasks=False`` (see :func:`forbid_in_task`).
        """
        if disable_sync_subtasks:
            forbid_in_task()
        if self.publisher is not None:
            self._settle()
        if self.ignored:
            return None  # type: ignore[return-value]
        meta = self._wait(timeout, on_message)
        return self._outcome(meta, propagate)

    wait = get  # Celery's older name

    def _wait(self, timeout: float | None,
              on_message: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
        if self.publisher is not None:
            self._settle()
        if self._cache is not None:
            return self._cache
        backend = self.app.backend
        steps = self._waiting(timeout, on_message)
        try:
            ask = next(steps)
            while True:
                ask = steps.send(backend.wait(self.id, timeout=ask[0], previous=ask[1]))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _waiting(self, timeout: float | None,
                 on_message: Callable[[dict[str, Any]], None] | None
                 ) -> Generator[tuple[float | None, bytes | None], bytes | None,
                                dict[str, Any]]:
        """The steps of a wait, without its I/O: yields ``(timeout, previous)`` for
        the backend's ``wait`` and is sent what it returned, until the state is
        ready (returned) or the time is up (:class:`TimeoutError`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # wait() returns a stored state at once, so no get() first (one round trip less)
        payload = yield timeout, None
        seen: bytes | None = None
        while True:
            if payload is not None and payload != seen:
                seen = payload
                meta = self._observe(payload, on_message)
                if meta is not None:
                    return meta
            payload = yield self._remaining(deadline, timeout), seen

    def _observe(self, payload: bytes,
                 on_message: Callable[[dict[str, Any]], None] | None
                 ) -> dict[str, Any] | None:
        """Decode a new state, report it to ``on_message``; its meta once ready."""
        meta = self.app.results.load(payload)
        if on_message is not None:
            on_message({"task_id": self.id, "status": meta.get("status"),
                        "result": meta.get("result"), "traceback": meta.get("traceback"),
                        "children": meta.get("children")})
        if meta.get("status") in states.READY_STATES:
            self._cache = meta
            return meta
        return None

    def _remaining(self, deadline: float | None, timeout: float | None) -> float | None:
        """Seconds left to wait; raises :class:`TimeoutError` once none are."""
        if deadline is None:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"Task {self.id} did not finish within {timeout}s. "
                "Is a worker consuming its queue?")
        return remaining

    def _outcome(self, meta: dict[str, Any], propagate: bool) -> R:
        status = meta.get("status")
        value = meta.get("result")
        if status == states.SUCCESS:
            return cast(R, value)
        exc = states.dict_to_exception(value)
        if status == states.REVOKED and not isinstance(exc, TaskRevokedError):
            exc = TaskRevokedError(*getattr(exc, "args", ()) or ("revoked",))
        if propagate:
            raise exc
        return exc  # type: ignore[return-value]

    async def aget(self, timeout: float | None = None, propagate: bool = True,
                   on_message: Callable[[dict[str, Any]], None] | None = None) -> R:
        """``get()`` for asyncio code: waits on the backend's asyncio twin (Redis
        pub/sub, …), so the event loop runs on while it waits. The steps of
        :meth:`_wait`, awaited (perf: here, not in a coroutine of their own: one
        frame less a wait)."""
        if self.ignored:
            return None  # type: ignore[return-value]
        if self.publisher is not None:
            raise ConveyorError(
                f"Task {self.id} may still sit in a buffering publisher: call "
                "pub.flush() (or leave its with block) before awaiting aget().")
        meta = self._cache
        if meta is None:
            backend = aio.backend(self.app)
            steps = self._waiting(timeout, on_message)
            try:
                ask = next(steps)
                while True:
                    ask = steps.send(await backend.wait(self.id, timeout=ask[0],
                                                        previous=ask[1]))
            except StopIteration as done:
                meta = done.value
        return self._outcome(meta, propagate)

    # ---------------------------------------------------------------- control
    def forget(self) -> None:
        """Delete the stored result."""
        if self.publisher is not None:
            self._settle()
        self._cache = None
        self.app.backend.forget(self.id)

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM", wait: bool = False,
               timeout: float | None = None, *, broadcast: bool = True) -> None:
        """Revoke the task: mark it REVOKED so waiters stop waiting, and tell every
        worker (``app.control.revoke``) to skip it, or with ``terminate`` to stop it
        where it runs (``signal`` for a process-pool child); ``wait`` waits up to
        ``timeout`` seconds (default 1) for the workers' replies. ``broadcast=False``
        only marks the state (:meth:`GroupResult.revoke` tells the workers once).

        On a transport without broadcasts (``Capabilities.broadcast``; e.g. kombu's
        Consul transport through the bridge) the workers cannot be told:
        ``terminate`` raises :class:`~conveyor.exceptions.CapabilityError`, and a
        plain revoke only marks the state (a worker that runs the task anyway stores
        its outcome over it).
        """
        if self.publisher is not None:
            self._settle()
        self.app.results.store(self.id, states.REVOKED, states.revoked_dict("revoked"))
        self._cache = None
        if broadcast and (terminate or self.app.transport_factory().capabilities.broadcast):
            self.app.control.revoke(self.id, terminate=terminate, signal=signal,
                                    reply=wait, timeout=timeout or 1.0)


def forbid_in_task() -> None:
    """Raise ``RuntimeError`` when called inside a running task (Celery's rule).

    A task that waits for another task holds its worker slot while it waits; when
    every slot waits, nothing runs the awaited tasks and the workers deadlock.
    """
    from .task import current_request  # task.py imports this module
    request = current_request.get()
    if request is not None:
        raise RuntimeError(
            f"Never call result.get() inside a task (here: {request.name}[{request.id}]): "
            "waiting for another task holds this worker slot, and when every slot "
            "waits the workers deadlock. Chain the tasks (chain(a.s(), b.s())) or "
            "link a callback; pass disable_sync_subtasks=False if you must wait.")


def sent(task_id: str, app: Conveyor, ignored: bool) -> AsyncResult[Any]:
    """``AsyncResult(task_id, app, ignored=ignored)``: the handle of a message just
    sent.

    perf: calling the class runs ``__init__`` in an interpreter frame of its own,
    out of the one publishing; this sets the same attributes without it (one per
    ``delay()``; see ``PublishPath.publish``).
    """
    result: AsyncResult[Any] = _new(AsyncResult)
    result.id, result.app, result.ignored = task_id, app, ignored
    result.parent = result._cache = result.publisher = None
    return result


_new = object.__new__


class GroupResult(Generic[R]):
    """The results of a group, in order (also a chord header's, as the body's
    ``parent``)."""

    def __init__(self, id: str, results: Sequence[AsyncResult[R]],
                 app: Conveyor | None = None, *, parent: Any = None) -> None:
        self.id = id
        self.results = list(results)
        self.app = app
        self.parent = parent

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    def __iter__(self) -> Any:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult[R]:
        return self.results[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GroupResult) and other.id == self.id \
            and other.results == self.results

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    @property
    def children(self) -> list[AsyncResult[R]]:
        return self.results

    def get(self, timeout: float | None = None, propagate: bool = True,
            on_message: Callable[[dict[str, Any]], None] | None = None,
            disable_sync_subtasks: bool = True) -> list[R]:
        """Every member's value in group order; ``timeout`` bounds the whole wait.

        With ``propagate`` the first failed member (in order) raises its exception;
        without, its place in the list holds the exception."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            out.append(result.get(timeout=remaining, propagate=propagate,
                                  on_message=on_message,
                                  disable_sync_subtasks=disable_sync_subtasks))
        return out

    join = get  # Celery's name for waiting on every member

    async def aget(self, timeout: float | None = None, propagate: bool = True,
                   on_message: Callable[[dict[str, Any]], None] | None = None
                   ) -> list[R]:
        """``get()`` for asyncio code: the members are awaited together."""
        waits = [r.aget(propagate=propagate, on_message=on_message) for r in self.results]
        try:
            return list(await asyncio.wait_for(asyncio.gather(*waits), timeout))
        except asyncio.TimeoutError:
            raise TimeoutError(f"Group {self.id} did not finish within {timeout}s. "
                               "Is a worker consuming its queue?") from None

    def ready(self) -> bool:
        """Every member finished (succeeded, failed or was revoked)."""
        return all(r.ready() for r in self.results)

    def waiting(self) -> bool:
        """Some member has not finished yet."""
        return not self.ready()

    def successful(self) -> bool:
        """Every member succeeded."""
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        """Some member failed."""
        return any(r.failed() for r in self.results)

    def completed_count(self) -> int:
        """How many members succeeded."""
        return sum(1 for r in self.results if r.successful())

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM") -> None:
        """Revoke every member (see :meth:`AsyncResult.revoke` for what that does),
        telling the workers in one command."""
        for result in self.results:
            result.revoke(terminate=terminate, signal=signal, broadcast=False)
        app = self.app or (self.results[0].app if self.results else None)
        if app is not None and (terminate or app.transport_factory().capabilities.broadcast):
            app.control.revoke([r.id for r in self.results], terminate=terminate,
                               signal=signal)

    def forget(self) -> None:
        """Delete every member's stored result."""
        for result in self.results:
            result.forget()

    def save(self) -> GroupResult[R]:
        """Store the member ids under the group id, so :meth:`restore` finds them in
        another process (on Redis in Celery's ``celery-taskset-meta-<id>``, so Celery
        restores it too). Needs a backend that stores groups."""
        self._app().results.save_group(self.id, [r.id for r in self.results])
        return self

    @classmethod
    def restore(cls, id: str, app: Conveyor | None = None) -> GroupResult[Any] | None:
        """The group saved under ``id``, or None when nothing is saved."""
        if app is None:
            from .app import current_app
            app = current_app()
        ids = app.results.restore_group(id)
        if ids is None:
            return None
        return cls(id, [AsyncResult(task_id, app) for task_id in ids], app)

    def delete(self) -> None:
        """Remove what :meth:`save` stored."""
        self._app().results.forget_group(self.id)

    def _app(self) -> Conveyor:
        if self.app is None:
            from .app import current_app
            self.app = current_app()
        return self.app
