"""Chord joins: counting a chord's header results in the backend, then the body.

A chord's client sets the join's size (:func:`set_size`) before it publishes the
header tasks; every header task carries the body in its message (``embed.chord``)
and, once its result is stored, adds its own result to the join
(:func:`part_returned`). The one whose result completes the count holds the claim:
it reads the results in header order and sends the body with them, or, when a
header task failed, fails the chord. No task polls (Celery's ``chord_unlock``).

The backend does the counting (``JoinBackend``: one transaction on SQLite, Celery
5.7's own Lua script and ``.j``/``.s``/``.d``/``.c`` keys on Redis), so a chord
whose header runs partly on Celery workers still joins.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from . import states
from .aio import hold_write
from .canvas import Signature, maybe_signature, sig_list
from .envelope import Request
from .exceptions import ChordError, ConfigurationError

if TYPE_CHECKING:
    from .app import Conveyor
    from .interfaces import JoinBackend

log = logging.getLogger("conveyor.chords")

#: How long a claim to send a chord's body lasts (seconds): if its holder dies
#: before :meth:`JoinBackend.join_finish`, a redelivered header task claims again.
CLAIM_FOR = 10.0
#: States of a header task that fail its chord (Celery's PROPAGATE_STATES).
FAILING = frozenset({states.FAILURE, states.REVOKED})


def joins(app: Conveyor) -> JoinBackend | None:
    """The app's backend if it can count a join, else None."""
    backend = app.backend
    return cast("JoinBackend", backend) if backend.capabilities.joins else None


def check_backend(app: Conveyor) -> JoinBackend:
    """The app's join-capable backend, or a ConfigurationError saying what to use."""
    backend = joins(app)
    if backend is None:
        raise ConfigurationError(
            f"A chord needs a result backend that can count its header's results; "
            f"{type(app.backend).__name__} ({app.backend_url.split('://', 1)[0]}://) "
            f"cannot. Set result_backend to one that can, e.g. "
            f"'redis://localhost:6379/0' or 'sqlite:///results.sqlite3'.")
    return backend


def _expires(app: Conveyor) -> float | None:
    return app.results.expires("result_chord_expires")


def set_size(app: Conveyor, group_id: str, size: int) -> None:
    """Before the header goes out: the join of ``group_id`` waits for ``size``
    (awaited by an asyncio caller, :func:`conveyor.aio.hold_write`)."""
    backend = check_backend(app)
    if not hold_write("join_size", group_id, size, expires=_expires(app),
                      doing="count a chord's header results"):
        backend.join_size(group_id, size, expires=_expires(app))


def part_returned(app: Conveyor, request: Request, state: str, result: Any) -> None:
    """Count a finished header task (``result``: its value, or the exception) and,
    if it completed the chord, send the body or fail the chord.

    Never raises: a join that cannot be recorded is logged, naming the chord."""
    if not request.chord or not request.group:
        return
    try:
        _part_returned(app, request, state, result)
    except Exception:  # noqa: BLE001 - the header task's own outcome is stored already
        log.exception("Chord %s: could not record header task %s[%s]",
                      request.group, request.name, request.id)


def _part_returned(app: Conveyor, request: Request, state: str, result: Any) -> None:
    group_id = cast(str, request.group)
    backend = joins(app)
    if backend is None:
        log.error("Chord %s: header task %s[%s] ended %s, but the result backend "
                  "(%s) cannot count a chord's results, so its body never runs.",
                  group_id, request.name, request.id, state, type(app.backend).__name__)
        return
    value = states.exception_to_dict(result) if isinstance(result, BaseException) \
        else result
    payload = app.results.dumps([1, request.id, state, value])
    expires = _expires(app)
    join = backend.join_add(group_id, request.id, request.group_index, payload,
                            expires=expires, claim_for=CLAIM_FOR)
    if join.claim is None:
        return
    body = maybe_signature(request.chord, app)
    assert body is not None
    try:
        values = _ordered_values(app, backend.join_results(group_id))
    except ChordError as exc:
        log.error("Chord %s failed: %s", group_id, exc)
        fail(app, body, exc, request)
    else:
        body.apply_async((values,), parent_id=request.id,
                         root_id=request.root_id or request.id)
    finally:
        if not backend.join_finish(group_id, join.claim, expires=max(300.0, 2 * CLAIM_FOR)):
            log.warning("Chord %s: the claim lapsed before the join was cleaned up; "
                        "its data is left to expire", group_id)


def _ordered_values(app: Conveyor, payloads: list[bytes]) -> list[Any]:
    """Header results in order, or ChordError for the first header task that failed."""
    values = []
    for payload in payloads:
        _tag, task_id, state, value = app.results.decode(payload)
        if state in FAILING:
            exc = states.dict_to_exception(value)
            raise ChordError(f"Dependency {task_id} raised {exc!r}")
        values.append(value)
    return values


def fail(app: Conveyor, body: Signature[Any], exc: ChordError, request: Request) -> None:
    """Store the body FAILURE with ``exc`` and run the body's ``link_error``s."""
    from .worker.execute import on_failure
    body_id = body.options.get("task_id")
    if not body_id:
        log.error("Chord %s failed and its body has no task id to fail: %s",
                  request.group, exc)
        return
    failed = Request(body_id, body.name, list(body.args), dict(body.kwargs), {},
                     errbacks=[dict(s) for s in sig_list(body.options.get("link_error"))],
                     root_id=request.root_id, parent_id=request.id, group=request.group)
    on_failure(app, None, failed, exc, request.hostname or "", store=True)
