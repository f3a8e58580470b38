"""Tasks: a typed wrapper around a function with the calling API.

``Task[P, R]`` keeps the function's parameters (``ParamSpec``), so
``add.delay(1, "x")`` and ``add.s(1, 2, 3)`` are type errors, ``add.delay(...)`` is an
``AsyncResult[R]``, and ``inspect.signature(add)`` is the function's own.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import random
from types import MappingProxyType
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, TypeVar, Unpack

from . import aio, chainstore, exceptions, maps, states
from .utils import did_you_mean
from .canvas import Signature
from .connection import DEFAULT_BUFFER
from .connection import Publisher as Publisher  # where it lived first; re-exported
from .exceptions import ConfigurationError, Retry, UnknownOptionError
from .ratelimit import parse_rate
from .replace import replacement
from .result import AsyncResult

if TYPE_CHECKING:
    from .app import Conveyor
    from .connection import Connection
    from .envelope import Request
    from .options import ExecutionOptions

P = ParamSpec("P")
R = TypeVar("R")

#: The request of the task running in this thread/coroutine (set by the worker).
current_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "conveyor_request", default=None)

#: The options of a call that gives none (``delay()``): one object, never changed.
NO_OPTIONS: Mapping[str, Any] = MappingProxyType({})

#: Attributes ``@app.task(...)`` accepts (execution defaults and worker behaviour).
TASK_OPTIONS = frozenset({
    "name", "bind", "serializer", "compression", "queue", "exchange", "routing_key",
    "priority", "ignore_result", "time_limit", "soft_time_limit", "expires", "shadow",
    "retry_policy", "acks_late", "max_retries", "default_retry_delay",
    "track_started", "typing", "rate_limit", "autoretry_for", "dont_autoretry_for",
    "retry_kwargs", "retry_backoff", "retry_backoff_max", "retry_jitter",
})


class Task(Generic[P, R]):
    """A registered task. Call it to run here; ``delay``/``apply_async`` to send."""

    # Execution defaults (None: fall through to the router and app settings).
    serializer: str | None = None
    compression: str | None = None
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    priority: int | None = None
    ignore_result: bool | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    expires: Any = None
    shadow: str | None = None
    retry_policy: Mapping[str, Any] | None = None
    # Worker behaviour.
    acks_late: bool | None = None
    max_retries: int | None = 3
    default_retry_delay: float = 180
    track_started: bool | None = None
    typing: bool = True
    #: Celery's ``"10/s"``, ``"100/m"``, ``"1000/h"``: starts per worker.
    rate_limit: str | float | None = None
    #: Exceptions that re-send the task (``retry(exc=...)``) instead of failing it.
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    #: Extra ``retry()`` arguments for automatic retries (``max_retries``, ``countdown``).
    retry_kwargs: Mapping[str, Any] | None = None
    #: True or a factor: automatic retries wait ``factor * 2**retries`` seconds.
    retry_backoff: bool | int = False
    retry_backoff_max: int = 600
    #: Draw each backoff countdown uniformly from ``[0, countdown]``.
    retry_jitter: bool = True

    OperationalError = exceptions.OperationalError

    def __init__(self, app: Conveyor, fn: Callable[..., Any], *, name: str,
                 bind: bool = False, **attrs: Any) -> None:
        for key in attrs:
            if key not in TASK_OPTIONS:
                raise UnknownOptionError(
                    f"@task() got an unknown option {key!r}.{did_you_mean(key, TASK_OPTIONS)}")
        self.app = app
        self.name = name
        self.run = fn
        self.bind = bind
        self.is_async = inspect.iscoroutinefunction(fn)
        for key, value in attrs.items():
            setattr(self, key, value)
        parse_rate(self.rate_limit)  # a bad rate fails here, not in the worker
        for key in ("autoretry_for", "dont_autoretry_for"):
            classes = getattr(self, key)
            if not isinstance(classes, tuple) or not all(
                    isinstance(c, type) and issubclass(c, BaseException) for c in classes):
                raise ConfigurationError(
                    f"@task({key}=...) of {name!r} takes a tuple of exception classes, "
                    f"not {classes!r}.")
        functools.update_wrapper(self, fn)
        sig = inspect.signature(fn)
        if bind:
            params = list(sig.parameters.values())[1:]
            sig = sig.replace(parameters=params)
        self.__signature__ = sig

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    def __setattr__(self, name: str, value: Any) -> None:
        before = self.__dict__.get("app")
        object.__setattr__(self, name, value)
        self.__dict__.pop("_defaults", None)  # attributes changed: recompute
        # ... and so does what the app's publish path kept for this task's calls.
        for app in (before, self.__dict__.get("app")):
            publishing = getattr(app, "publishing", None)
            if publishing is not None:
                publishing.forget()

    def execution_defaults(self) -> dict[str, Any]:
        """The execution options this task's attributes set (the task layer of the
        resolution order), computed once until an attribute changes."""
        found: dict[str, Any] | None = self.__dict__.get("_defaults")
        if found is None:
            from .options import TASK_ATTRIBUTES
            found = {name: value for name in TASK_ATTRIBUTES
                     if (value := getattr(self, name, None)) is not None}
            self.__dict__["_defaults"] = found
        return found

    def __reduce__(self) -> Any:
        return (_task_by_name, (self.app.main, self.name))

    # ------------------------------------------------------------------ here
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function in this process; no message, no result stored."""
        if self.bind:
            return self.run(self, *args, **kwargs)  # type: ignore[no-any-return]
        return self.run(*args, **kwargs)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ calling
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments: ``apply_async(args, kwargs)``."""
        return self.app.publishing.publish(self.name, args, kwargs, NO_OPTIONS, NO_OPTIONS,
                                           self)

    def apply_async(self, args: Sequence[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None,
                    **options: Unpack[ExecutionOptions]) -> AsyncResult[R]:
        """Send the task with execution options (``countdown``, ``queue``, …)."""
        return self.app.publishing.publish(self.name, args or (), kwargs or {}, options, {},
                                           self)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """``delay`` for asyncio code: the same message, sent by the loop's own
        connection (see :mod:`conveyor.aio`)."""
        return await aio.publish(self.app, self.name, args, kwargs, {}, {}, self)

    async def aapply_async(self, args: Sequence[Any] | None = None,
                           kwargs: Mapping[str, Any] | None = None,
                           **options: Unpack[ExecutionOptions]) -> AsyncResult[R]:
        """``apply_async`` for asyncio code."""
        return await aio.publish(self.app, self.name, args or (), kwargs or {}, options, {},
                                 self)

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]:
        """A signature of this call (``add.s(2, 2)``)."""
        return Signature(self, args, kwargs, app=self.app)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]:
        """An immutable signature: callbacks do not prepend the parent's result."""
        return Signature(self, args, kwargs, immutable=True, app=self.app)

    def signature(self, args: Sequence[Any] | None = None,
                  kwargs: Mapping[str, Any] | None = None,
                  **options: Unpack[ExecutionOptions]) -> Signature[R]:
        """A signature with partial args (e.g. a callback ``add.signature((10,))``)."""
        return Signature(self, args, kwargs, options, app=self.app)

    subtask = signature

    def map(self, it: Iterable[Any]) -> maps.xmap:
        """One ``celery.map`` task calling this task on each item, one after
        another; its result is the list of theirs (``add.map([1, 2])``). See
        :mod:`conveyor.maps`."""
        return maps.xmap(Signature(self, app=self.app), it, app=self.app)

    def starmap(self, it: Iterable[Any]) -> maps.xstarmap:
        """Like :meth:`map`, each item spread as arguments (``add.starmap([(1, 2)])``)."""
        return maps.xstarmap(Signature(self, app=self.app), it, app=self.app)

    def chunks(self, it: Iterable[Any], n: int) -> maps.chunks:
        """The items in parts of ``n``, a ``celery.starmap`` task a part, sent as a
        group by ``apply_async()`` (``add.chunks(pairs, 10)``)."""
        return maps.chunks(Signature(self, app=self.app), it, n, app=self.app)

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:  # noqa: N802 - Celery's name
        return AsyncResult(task_id, self.app)

    def get_publisher(self, connection: Connection, *, buffer: int = DEFAULT_BUFFER
                      ) -> Publisher:
        """A publisher that reuses ``connection`` (from ``app.pool.acquire()``).

        Used bare (``pub = add.get_publisher(conn)``) it sends each message at once.
        Inside ``with ... as pub:`` it buffers up to ``buffer`` messages and sends
        them in one pipelined batch; see :class:`~conveyor.connection.Publisher` for
        when a buffer goes out (full, ``pub.flush()``, a result read, block exit).
        """
        return Publisher(connection, buffer=buffer)

    # ------------------------------------------------------------------ inside a worker
    @property
    def request(self) -> Request | None:
        """The request being executed (None outside a worker)."""
        return current_request.get()

    def update_state(self, task_id: str | None = None, state: str | None = None,
                     meta: Any = None) -> None:
        """Store a custom state (e.g. ``PROGRESS``) for this or another task."""
        request = self.request
        task_id = task_id or (request.id if request is not None else None)
        if task_id is None:
            raise exceptions.ConveyorError(
                "update_state() needs a task_id outside a running task.")
        self.app.results.store(task_id, state or states.PROGRESS, meta,
                               request=request if request and request.id == task_id else None)

    def autoretry(self, exc: BaseException) -> None:
        """Re-send the running task when ``exc`` is one ``autoretry_for`` names
        (raising :class:`~conveyor.exceptions.Retry`, or ``exc`` past
        ``max_retries``); return when it is not. The worker calls this for every
        exception a task raises."""
        if not isinstance(exc, self.autoretry_for) or isinstance(
                exc, (Retry, *self.dont_autoretry_for)):
            return
        options = dict(self.retry_kwargs or {})
        request = self.request
        if self.retry_backoff and request is not None:
            options["countdown"] = backoff(self.retry_backoff, request.retries,
                                           self.retry_backoff_max, self.retry_jitter)
        self.retry(exc=exc, **options)

    def retry(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              exc: BaseException | None = None, countdown: float | None = None,
              eta: Any = None, max_retries: int | None = None, **options: Any) -> NoReturn:
        """Re-send this task (same id, ``retries + 1``) and stop the current run.

        Raises :class:`~conveyor.exceptions.Retry` for the worker to record ``RETRY``;
        past ``max_retries`` raises ``exc``, or without one
        :class:`~conveyor.exceptions.MaxRetriesExceededError`: either way the task
        ends in ``FAILURE``, so ``get()`` returns (a ``RETRY`` nobody re-sends would
        leave every waiter waiting for ever).
        """
        request = self.request
        if request is None:
            raise exceptions.ConveyorError("retry() can only be called inside a running task.")
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise exceptions.MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}]: max_retries={limit} exceeded "
                f"(retries={request.retries}).")
        if countdown is None and eta is None:
            countdown = self.default_retry_delay
        call = {
            "task_id": request.id, "retries": request.retries + 1, "countdown": countdown,
            "eta": eta, "parent_id": request.id, "root_id": request.root_id,
            "priority": request.priority, "queue": request.delivery_info.get("queue"),
            "group_id": request.group, "group_index": request.group_index,
        }
        stamped = request.stamped_headers
        if stamped:  # a retry keeps its canvas stamps
            call.update(request.stamps, stamped_headers=stamped)
        call.update(options)
        embed = {"link": request.callbacks, "link_error": request.errbacks,
                 "chain": request.chain}
        call.update({k: v for k, v in embed.items() if v})
        if request.headers.get(chainstore.HEADER):  # the chain goes on after a retry too
            call["headers"] = {**(call.get("headers") or {}),
                               chainstore.HEADER: request.headers[chainstore.HEADER]}
        self.app.publish(self.name, args if args is not None else request.args,
                         kwargs if kwargs is not None else request.kwargs, call, {}, self)
        raise Retry(exc=exc, when=countdown if countdown is not None else eta)


    def replace(self, sig: Signature[Any]) -> NoReturn:
        """Replace this running task with ``sig`` and stop the current run.

        ``sig`` (a task, chain, group or chord) takes over this task's id, so
        whoever waits on its result gets the replacement's; its callbacks,
        errbacks, place in a group or chord and the rest of its chain (see
        :mod:`conveyor.replace`). The task itself is stored nothing
        (:class:`~conveyor.exceptions.Ignore`), as in Celery; write ``return
        self.replace(sig)`` to show the run ends there.
        """
        request = self.request
        if request is None:
            raise exceptions.ConveyorError(
                "replace() can only be called inside a running task.")
        self.on_replace(replacement(self.app, request, sig))

    def on_replace(self, sig: Signature[Any]) -> NoReturn:
        """Send the replacement ``sig`` and end the run (override it to do more,
        calling this one last, as Celery's ``on_replace``)."""
        sig.apply_async()
        raise exceptions.Ignore(f"replaced by {sig.name}")


def backoff(factor: bool | int, retries: int, maximum: int, jitter: bool) -> int:
    """Celery's exponential countdown: ``factor * 2**retries`` seconds (``True`` is a
    factor of 1), at most ``maximum``, drawn from ``[0, that]`` with ``jitter``."""
    countdown: int = min(maximum, int(max(1, factor)) << retries)
    if jitter:
        countdown = random.randrange(countdown + 1)
    return max(0, countdown)


def _task_by_name(app_main: str | None, name: str) -> Task[Any, Any]:
    from .app import app_by_main
    return app_by_main(app_main).tasks[name]
