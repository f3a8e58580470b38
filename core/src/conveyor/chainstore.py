"""Chains whose messages stay small: the steps wait in the result backend.

Celery's wire format puts the rest of a chain into each message (``embed.chain``),
so the n-th message of an N-step chain carries N - n signatures and the chain
sends O(N²) bytes in all. With ``task_chain_embed = "backend"`` the client writes
each later step once, as a record under that step's own task id, and each message
carries only the next step's id in the Conveyor header ``conveyor_chain``: O(N)
bytes in all. The worker that finishes a step reads the next step's record and
sends it with the id of the one after. The record is then overwritten by the
step's own result (the key is the step's result key).

The trade-off: only a Conveyor worker follows ``conveyor_chain``; a Celery worker
ignores the header and ends the chain after the first step. So this is opt-in, for
queues only Conveyor workers consume; the default ``"message"`` keeps Celery's
format. Chains containing a group or chord always use Celery's format.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import states
from .aio import hold_write

if TYPE_CHECKING:
    from .app import Conveyor
    from .canvas import Signature
    from .envelope import Request

log = logging.getLogger("conveyor.chains")

#: The message header naming the next step's task id.
HEADER = "conveyor_chain"


def in_backend(app: Conveyor, steps: Sequence[Signature[Any]]) -> bool:
    """Whether this chain's later steps go to the backend (setting and shape)."""
    return app.conf.task_chain_embed == "backend" and len(steps) > 1 and all(
        not s.get("subtask_type") for s in steps)


def park(app: Conveyor, rest: Sequence[Signature[Any]]) -> str:
    """Write each of ``rest`` (ids frozen) as a record naming the step after it;
    return the first one's id, for the first message's header. (An asyncio caller
    awaits the writes: :func:`conveyor.aio.hold_write`.)"""
    expires = app.results.expires()
    for index, step in enumerate(rest):
        after = rest[index + 1].options["task_id"] if index + 1 < len(rest) else None
        record = {"status": states.PENDING, "result": None, "chain_step": dict(step),
                  "chain_next": after, "task_id": step.options["task_id"]}
        task_id, payload = step.options["task_id"], app.results.dumps(record)
        if not hold_write("store", task_id, states.PENDING, payload, expires=expires,
                          doing="park a chain's steps in the result backend"):
            app.backend.store(task_id, states.PENDING, payload, expires=expires)
    return rest[0].options["task_id"]  # type: ignore[no-any-return]


def send_next(app: Conveyor, request: Request, retval: Any) -> str | None:
    """After ``request`` succeeded: send the step its header names; its task id.

    A missing record (expired, forgotten) is stored as that step's FAILURE, so
    whoever waits on the chain's result learns it will not come."""
    next_id: str | None = request.headers.get(HEADER)
    if not next_id:
        return None
    from .canvas import maybe_signature
    record = app.results.load(app.backend.get(next_id))
    step = maybe_signature(record.get("chain_step"), app)
    if step is None:
        reason = (f"Chain step {next_id} after {request.name}[{request.id}] has no "
                  f"record in the result backend (expired or forgotten?)")
        log.error(reason)
        app.results.store_exception(next_id, states.FAILURE, LookupError(reason))
        return next_id
    after = record.get("chain_next")
    headers = {**(step.options.get("headers") or {}), HEADER: after} if after \
        else step.options.get("headers")
    step.apply_async((retval,), parent_id=request.id,
                     root_id=request.root_id or request.id, headers=headers)
    return next_id
