"""``Task.replace``: a running task hands its place in a workflow to a signature.

The replacement takes over the task's id (whoever waits on the task's result gets
the replacement's), its callbacks and errbacks, its place in a group or chord and
the rest of its chain; the task itself ends without a state
(:class:`~conveyor.exceptions.Ignore`). Celery's rules and messages, so a Celery
worker runs what a Conveyor worker sends and the other way round: a group becomes a
chord whose body is the built-in ``celery.accumulate`` task (its result is the
list of the group's results), and ``replaced_task_nesting`` counts the replacements.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import chainstore
from .canvas import Signature, chain, chord, group, maybe_signature, sig_list
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .app import Conveyor
    from .envelope import Request

#: The built-in task a group replacing a task is joined by (Celery's name).
ACCUMULATE = "celery.accumulate"


def register(app: Conveyor) -> None:
    """Register ``celery.accumulate`` on ``app`` (every app has it, as every Celery
    app does, so any worker can run the body of a replacing group)."""

    @app.task(name=ACCUMULATE)
    def accumulate(*args: Any, **kwargs: Any) -> Any:
        index = kwargs.get("index")
        return args[index] if index is not None else args


def replacement(app: Conveyor, request: Request, sig: Signature[Any]) -> Signature[Any]:
    """What to send in place of the task ``request`` runs: a copy of ``sig`` that
    has its id, callbacks, errbacks, group or chord membership and following steps.
    """
    if not isinstance(sig, Signature):
        raise TypeError(f"replace() needs a signature, not {sig!r}")
    if sig.options.get("chord") is not None:
        raise ConfigurationError("A signature replacing a task must not be part of a chord.")
    new: Signature[Any] = sig.clone().bind(app)
    accumulate = app.signature(ACCUMULATE, kwargs={"index": 0})
    if isinstance(new, group):  # a chord, so what follows can hang on its body
        new = chord(new, accumulate, app=app)
    elif isinstance(new, chain) and isinstance(new.tasks[-1], group):
        new = chain(*new.tasks, accumulate, app=app, **new.options)
    for callback in sig_list(request.callbacks):
        new.link(_sig(callback, app))
    for errback in sig_list(request.errbacks):
        new.link_error(_sig(errback, app))
    new.freeze(request.id)
    nesting = request.replaced_task_nesting + 1
    if isinstance(new, chain):
        for step in new.tasks:
            step.set(replaced_task_nesting=nesting)
    place: dict[str, Any] = {key: value for key, value in (
        ("chord", request.chord), ("group_id", request.group),
        ("group_index", request.group_index), ("root_id", request.root_id),
        ("parent_id", request.parent_id), ("replaced_task_nesting", nesting))
        if value is not None}
    parked = request.headers.get(chainstore.HEADER)
    if parked:  # the rest of a chain kept in the backend goes on after the replacement
        end = tail(new)
        end.options["headers"] = {**(end.options.get("headers") or {}),
                                  chainstore.HEADER: parked}
    rest = [_sig(step, app).set(replaced_task_nesting=nesting)
            for step in reversed(request.chain or ())]
    if rest:  # the steps after the task follow its replacement, with their own ids
        return chain(new, *rest, app=app, **place)
    return new.set(**place)


def tail(sig: Signature[Any]) -> Signature[Any]:
    """The task of ``sig`` whose result is the whole's: a chain's last, a chord's
    body."""
    if isinstance(sig, chain):
        return tail(sig.tasks[-1])
    if isinstance(sig, chord) and sig.body is not None:
        return tail(sig.body)
    return sig


def _sig(data: Any, app: Conveyor) -> Signature[Any]:
    found = maybe_signature(data, app)
    assert found is not None
    return found
