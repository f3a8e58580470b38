"""Running one task request: hooks, the call, its state, callbacks and errbacks.

This runs wherever the task runs (a pool thread, a child process or the consumer
itself with ``--pool solo``); it stores results and publishes follow-up messages
through the app, so the consumer only has to settle the delivery.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import reprlib
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from .. import chainstore, chords, states
from ..canvas import Signature, maybe_signature
from ..exceptions import Ignore, Retry, TaskRevokedError, TimeLimitExceeded
from ..task import current_request
from .aiolimits import SoftLimited
from .limits import SoftLimit
from .revoked import REVOKED, RUNNING
from .revoked import record as record_revoked

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..envelope import Request

log = logging.getLogger("conveyor.worker")


class EventLoopThread:
    """The process's one long-lived event loop for ``async def`` tasks.

    Every coroutine task of this process runs on it (a forked pool child starts its
    own: :meth:`reset`), so tasks may share loop-bound objects such as an
    ``aiohttp`` session or a ``redis.asyncio`` pool.
    """

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def loop(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="conveyor-asyncio",
                                 daemon=True).start()
                cls._loop = loop
            return cls._loop

    @classmethod
    def reset(cls) -> None:
        """Forget the parent's loop (its thread did not survive the fork)."""
        cls._loop = None


#: The ``task_*`` settings a run reads when neither the message nor the task says.
TASK_DEFAULTS = ("task_ignore_result", "task_track_started", "task_soft_time_limit",
                 "task_time_limit", "task_acks_late")


def _read_defaults(conf: Any) -> dict[str, Any]:
    return {name: conf[name] for name in TASK_DEFAULTS}


def task_defaults(app: Conveyor) -> dict[str, Any]:
    """``{"task_time_limit": app.conf.task_time_limit, ...}`` for :data:`TASK_DEFAULTS`,
    read once per change of the settings (perf: a worker reads them for every task,
    and a setting costs microseconds to read)."""
    return app.conf.derived("worker.task_defaults", _read_defaults)  # type: ignore[no-any-return]


class _Callers:
    """The hook callers every run asks whether anyone listens (perf: the hooks of
    every task are not built for nobody), looked up once per app: a caller stays the
    same object while plugins come and go, and ``get_hookimpls()`` says who listens
    now (three ``getattr(app.hooks, name)`` a task: 4.2k instructions, these 2.9k)."""

    __slots__ = ("prerun", "success", "postrun")

    def __init__(self, hooks: Any) -> None:
        self.prerun, self.success, self.postrun = (
            hooks.task_prerun, hooks.task_success, hooks.task_postrun)


def _hook_callers(app: Conveyor) -> _Callers:
    return app.conf.derived(  # type: ignore[no-any-return]
        "worker.hook_callers", lambda _conf: _Callers(app.hooks))


def _arguments(task: Any, request: Request) -> list[Any]:
    return [task, *request.args] if task.bind else list(request.args)


def _autoretry(task: Any, exc: Exception) -> None:
    if task.autoretry_for:
        task.autoretry(exc)  # raises Retry, or exc past max_retries


def _call(task: Any, request: Request) -> Any:
    """Run the task where the caller blocks; an exception may become a retry
    (``autoretry_for``). perf: one function, the arguments made here (two calls a
    task less)."""
    try:
        if task.is_async:  # a blocking caller (solo, a pool child): wait for the loop
            return asyncio.run_coroutine_threadsafe(
                _await(task, request), EventLoopThread.loop()).result()
        args = [task, *request.args] if task.bind else request.args
        soft = request.soft_time_limit or task.soft_time_limit \
            or task_defaults(task.app)["task_soft_time_limit"]
        if not soft:
            return task.run(*args, **request.kwargs)
        with SoftLimit(soft, f"Task {task.name}[{request.id}]"):
            return task.run(*args, **request.kwargs)
    except Exception as exc:
        _autoretry(task, exc)
        raise


async def _await(task: Any, request: Request) -> Any:
    """Run a coroutine task; ``soft_time_limit`` raises inside it at the await it is
    suspended in (:mod:`.aiolimits`), ``time_limit`` cancels it."""
    current_request.set(request)  # this asyncio task's own context
    coro: Any = task.run(*_arguments(task, request), **request.kwargs)
    soft = request.soft_time_limit or task.soft_time_limit \
        or task.app.conf.task_soft_time_limit
    if soft:
        coro = SoftLimited(coro, soft, f"Task {task.name}[{request.id}]")
    limit = request.time_limit or task.time_limit or task.app.conf.task_time_limit
    if not limit:
        return await coro
    try:
        return await asyncio.wait_for(coro, limit)
    except asyncio.TimeoutError:
        raise TimeLimitExceeded(f"Task {task.name}[{request.id}] exceeded "
                                f"time_limit={limit}s and was cancelled") from None


def expired(request: Request) -> bool:
    return request.expires is not None and request.expires <= dt.datetime.now(dt.timezone.utc)


def execute(app: Conveyor, request: Request, hostname: str) -> str:
    """Run ``request`` to completion and record its outcome; return the state."""
    run = _Execution(app, request, hostname)
    if not run.begin():
        return states.REVOKED
    token = current_request.set(request)
    RUNNING.enter(request.id)
    try:
        return run.finish(_call, None)
    finally:
        RUNNING.leave(request.id)
        current_request.reset(token)


async def execute_async(app: Conveyor, request: Request, hostname: str) -> str:
    """:func:`execute` for a coroutine task, on the process's event loop: it awaits
    the task, so it holds no pool thread while the task waits."""
    run = _Execution(app, request, hostname)
    if not run.begin():
        return states.REVOKED
    current_request.set(request)
    try:
        try:
            retval = await _await(run.task, request)
        except Exception as exc:
            _autoretry(run.task, exc)
            raise
    except BaseException as exc:  # noqa: BLE001 - sorted out by finish()
        return run.finish(None, exc)
    return run.finish(None, None, retval)


class _Execution:
    """One run of a request, split around the call itself so that the blocking and
    the asyncio paths share every step before and after it."""

    def __init__(self, app: Conveyor, request: Request, hostname: str) -> None:
        self.app, self.request, self.hostname = app, request, hostname
        self.task = app.tasks[request.name]
        request.hostname = hostname
        self.hooks = _hook_callers(app)
        self.ignore = False
        self.started = 0.0  # set by begin(), as the task is about to run

    def begin(self) -> bool:
        """Prerun steps; False when the request expired (recorded REVOKED)."""
        app, request, task, hostname = self.app, self.request, self.task, self.hostname
        if request.expires is not None and expired(request):
            log.info("Task %s[%s] expired before it ran; marked REVOKED",
                     request.name, request.id)
            app.results.store(request.id, states.REVOKED, states.revoked_dict("expired"),
                              request=request, hostname=hostname)
            app.notify("task_revoked", request=request, expired=True)
            chords.part_returned(app, request, states.REVOKED, TaskRevokedError("expired"))
            return False
        defaults = task_defaults(app)
        self.ignore = request.ignore_result if request.ignore_result is not None else (
            task.ignore_result if task.ignore_result is not None
            else defaults["task_ignore_result"])
        if self.hooks.prerun.get_hookimpls():
            app.notify("task_prerun", task=task, task_id=request.id, args=request.args,
                       kwargs=request.kwargs, request=request)
        track = task.track_started if task.track_started is not None \
            else defaults["task_track_started"]
        if track and not self.ignore:
            app.results.store(request.id, states.STARTED,
                              {"pid": _pid(), "hostname": hostname},
                              request=request, hostname=hostname)
        self.started = time.perf_counter()
        return True

    def finish(self, call: Any, error: BaseException | None, retval: Any = None) -> str:
        """Run ``call(task, request)`` when given, else take ``error``/``retval``
        as its outcome; record it and run the postrun steps. Returns the state."""
        app, request, task, hostname = self.app, self.request, self.task, self.hostname
        try:
            if call is not None:
                retval = call(task, request)
            elif error is not None:
                raise error
        except Retry as exc:
            state = states.RETRY
            reason = exc.exc if exc.exc is not None else exc
            if not self.ignore:
                app.results.store(request.id, states.RETRY, states.exception_to_dict(reason),
                                  traceback=states.format_traceback(reason),
                                  children=[[[request.id, None], None]],
                                  request=request, hostname=hostname)
            log.info("Task %s[%s] retry: %s%s", request.name, request.id, exc,
                     f": {exc.exc!r}" if exc.exc is not None else "")
            app.notify("task_retry", task=task, request=request, reason=reason)
        except Ignore as exc:
            state = states.IGNORED
            log.info("Task %s[%s] ignored: %s", request.name, request.id, exc)
        except BaseException as exc:  # noqa: BLE001 - a task may raise anything
            if isinstance(exc, (KeyboardInterrupt, SystemExit)) and not isinstance(
                    exc, TaskRevokedError):
                raise
            why = REVOKED.terminated(request.id)
            if why is not None:  # stopped by ``revoke(terminate=True)``
                state = states.REVOKED
                record_revoked(app, request, hostname, why)
            else:
                state = states.FAILURE
                on_failure(app, task, request, exc, hostname, store=not self.ignore)
                chords.part_returned(app, request, state, exc)
        else:
            state = states.SUCCESS
            # perf: the usual task has no callback, chain or chord: two calls less
            children = apply_callbacks(app, request, retval) if (
                request.callbacks or request.chain or chainstore.HEADER in request.headers
            ) else []
            if not self.ignore:
                app.results.store(request.id, states.SUCCESS, retval, children=children,
                                  request=request, hostname=hostname)
            if request.chord:
                chords.part_returned(app, request, state, retval)
            if log.isEnabledFor(logging.INFO):
                log.info("Task %s[%s] succeeded in %.3fs: %s", request.name, request.id,
                         time.perf_counter() - self.started, _short_repr(retval))
            if self.hooks.success.get_hookimpls():
                app.notify("task_success", task=task, result=retval, request=request)
        if self.hooks.postrun.get_hookimpls():
            app.notify("task_postrun", task=task, task_id=request.id, args=request.args,
                       kwargs=request.kwargs, retval=retval, state=state, request=request)
        return state


def on_failure(app: Conveyor, task: Any, request: Request, exc: BaseException,
               hostname: str, *, store: bool = True) -> None:
    """Record FAILURE, then run errbacks (directly when they take the request).

    A task terminated by ``revoke(terminate=True)`` (its pool child killed) is
    recorded REVOKED instead, as Celery does, with no errbacks."""
    reason = REVOKED.terminated(request.id)
    if reason is not None:
        record_revoked(app, request, hostname, reason)
        return
    text = states.format_traceback(exc)
    log.error("Task %s[%s] raised unexpected: %r\n%s", request.name, request.id, exc,
              text.rstrip() or "(no traceback)")
    if store:
        app.results.store_exception(request.id, states.FAILURE, exc, traceback=text,
                                    request=request, hostname=hostname)
    for errback in request.errbacks or ():
        try:
            _errback(app, _sig(app, errback), request, exc, text)
        except Exception:  # noqa: BLE001 - one broken errback must not stop the others
            log.exception("Errback %s of %s[%s] failed", errback.get("task"),
                          request.name, request.id)
    if task is not None:
        app.notify("task_failure", task=task, task_id=request.id, exception=exc,
                   traceback=text, request=request)


def _errback(app: Conveyor, sig: Signature[Any], request: Request,
             exc: BaseException, text: str) -> None:
    target = app.tasks.get(sig.name)
    if target is not None and _takes_request(target):
        # Celery's rule: an errback taking (request, exc, traceback) runs here, now.
        target(request, exc, text, *sig.args, **sig.kwargs)
        return
    sig.apply_async((request.id,), parent_id=request.id, root_id=request.root_id)


def _takes_request(task: Any) -> bool:
    try:
        params = [p for p in task.__signature__.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (AttributeError, ValueError):
        return False
    return len(params) >= 3 or any(
        p.kind == inspect.Parameter.VAR_POSITIONAL
        for p in task.__signature__.parameters.values())


def apply_callbacks(app: Conveyor, request: Request, retval: Any) -> list[Any]:
    """Publish ``link`` callbacks and the next chain step; return the children."""
    children: list[Any] = []
    root = request.root_id or request.id
    for callback in request.callbacks or ():
        sig = _sig(app, callback)
        task_id = sig.options.get("task_id") or str(uuid.uuid4())
        sig.apply_async((retval,), task_id=task_id, parent_id=request.id, root_id=root)
        children.append([[task_id, None], None])
    after = chainstore.send_next(app, request, retval)
    if after is not None:
        children.append([[after, None], None])
    if request.chain:
        rest = list(request.chain)
        nxt = _sig(app, rest.pop())
        task_id = nxt.options.get("task_id") or str(uuid.uuid4())
        nxt.apply_async((retval,), task_id=task_id, chain=rest or None,
                        parent_id=request.id, root_id=root)
        children.append([[task_id, None], None])
    return children


def _sig(app: Conveyor, data: Any) -> Signature[Any]:
    """A signature from a message (a chain, group or chord by its subtask_type)."""
    sig = maybe_signature(data, app)
    assert sig is not None
    return sig


#: Longest result shown in a "succeeded" log line (Celery cuts long ones too).
_REPR_LIMIT = 256
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = _REPR_LIMIT


def _short_repr(value: Any) -> str:
    text = _repr.repr(value)
    return text if len(text) <= _REPR_LIMIT else f"{text[:_REPR_LIMIT - 3]}..."


def _pid() -> int:
    import os
    return os.getpid()
