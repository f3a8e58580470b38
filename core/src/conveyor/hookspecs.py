"""Every hook a plugin may implement (pluggy, project name ``conveyor``).

Names follow Celery's signals so users' habits carry over. Implement them with
``@conveyor.hookimpl`` in a module or object, and register it through the
``conveyor.hooks`` entry point group or ``Conveyor(plugins=[...])``. An
implementation may accept any subset of a spec's arguments. Unless a spec says
otherwise, an exception raised by an implementation is logged and does not stop the
publish or the task (observing must not break the observed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .app import Conveyor
    from .envelope import Request
    from .interfaces import Message, Route
    from .worker.worker import Worker

hookspec = pluggy.HookspecMarker("conveyor")
hookimpl = pluggy.HookimplMarker("conveyor")


@hookspec(historic=True)
def app_configured(app: Conveyor) -> None:
    """The app was finalized: its hook plugins are registered and it is about to
    publish or consume for the first time. Historic: late plugins are called too."""


@hookspec(firstresult=True)
def route_task(name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
               options: dict[str, Any], task: Any) -> dict[str, Any] | None:
    """Choose execution options for a task call, after the router plugins found
    nothing. ``options`` holds what the call, signature and task gave. Return a dict
    (e.g. ``{"queue": "priority.high"}``) to route; the first non-None result wins."""


@hookspec
def before_task_publish(app: Conveyor, name: str, message: Message, route: Route,
                        options: dict[str, Any]) -> None:
    """Just before a task message is sent. ``message.headers`` may be edited in place
    (add tracing headers, stamps). Raising here aborts the publish and the caller
    sees the exception."""


@hookspec
def after_task_publish(app: Conveyor, name: str, message: Message, route: Route) -> None:
    """After the broker took ``message`` for ``route``: when ``apply_async`` sends it,
    before the call returns; for a buffering publisher, when its buffer went out.
    Headers edited here are not sent."""


@hookspec
def message_received(message: Message, queue: str) -> None:
    """A worker received ``message`` from ``queue``, before decoding it (it may be
    garbage that ends in the dead letters)."""


@hookspec
def message_dead_lettered(message: Message, queue: str, reason: str) -> None:
    """A worker moved a message it could not handle to the dead letters."""


@hookspec
def task_prerun(task: Any, task_id: str, args: list[Any], kwargs: dict[str, Any],
                request: Request) -> None:
    """In the worker, just before the task function runs."""


@hookspec
def task_postrun(task: Any, task_id: str, args: list[Any], kwargs: dict[str, Any],
                 retval: Any, state: str, request: Request) -> None:
    """In the worker, after the task ran and its state was stored."""


@hookspec
def task_success(task: Any, result: Any, request: Request) -> None:
    """In the worker, after the task returned ``result``, its callbacks were sent
    and its SUCCESS state was stored; ``request`` is the running request."""


@hookspec
def task_failure(task: Any, task_id: str, exception: BaseException, traceback: str,
                 request: Request) -> None:
    """The task raised ``exception`` (``traceback`` is its formatted text)."""


@hookspec
def task_retry(task: Any, request: Request, reason: BaseException) -> None:
    """The task called ``self.retry()``; it was re-published."""


@hookspec
def task_revoked(request: Request, expired: bool) -> None:
    """The worker did not run the task, or stopped it: it had expired (``expired``), or
    was revoked (``revoke``; with ``terminate``, while it ran)."""


@hookspec
def worker_start(worker: Worker) -> None:
    """The worker is starting (before connecting)."""


@hookspec
def worker_ready(worker: Worker) -> None:
    """The worker is connected and consuming."""


@hookspec
def worker_shutdown(worker: Worker) -> None:
    """The worker has stopped consuming and is about to exit."""
