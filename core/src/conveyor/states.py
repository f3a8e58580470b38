"""Task states and the stored state document (docs/architecture.md, "Result
documents" and "Stored exceptions")."""

from __future__ import annotations

import builtins
import datetime as dt
import sys
import time
import traceback as tb
from typing import Any

from . import exceptions as errors

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
PROGRESS = "PROGRESS"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
RETRY = "RETRY"
REVOKED = "REVOKED"
#: A run that raised :class:`~conveyor.exceptions.Ignore`: never stored (Celery's).
IGNORED = "IGNORED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
EXCEPTION_STATES = frozenset({FAILURE, RETRY, REVOKED})

#: Celery's names for the errors Conveyor has too, so results cross over.
_CELERY_ERRORS = {
    "NotRegistered": errors.NotRegistered,
    "TaskRevokedError": errors.TaskRevokedError,
    "TimeLimitExceeded": errors.TimeLimitExceeded,
    "SoftTimeLimitExceeded": errors.SoftTimeLimitExceeded,
    "ContentDisallowed": errors.ContentDisallowed,
    "SecurityError": errors.SecurityError,
    "TimeoutError": errors.TimeoutError,
    "MaxRetriesExceededError": errors.MaxRetriesExceededError,
    "ChordError": errors.ChordError,
}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def exception_to_dict(exc: BaseException) -> dict[str, Any]:
    """``{"exc_type", "exc_message", "exc_module"}`` with the args as a list."""
    cls = type(exc)
    return {
        "exc_type": cls.__qualname__,
        "exc_message": _jsonable(list(exc.args)),
        "exc_module": cls.__module__,
    }


def revoked_dict(reason: str) -> dict[str, Any]:
    """What Celery stores for a revoked/expired task (reason 'expired'/'revoked')."""
    return {"exc_type": "TaskRevokedError", "exc_message": [reason],
            "exc_module": "celery.exceptions"}


def dict_to_exception(data: Any) -> BaseException:
    """Rebuild a stored exception: the real class when its module is already
    imported, Conveyor's own for Celery's names, else a synthesized class of that
    name keeping the message.

    Never imports what ``exc_module`` names: a result backend may be shared with
    other clients, and importing a module runs its code (Celery's CVE-2021-23727).
    """
    if isinstance(data, BaseException):
        return data
    if not isinstance(data, dict) or "exc_type" not in data:
        return Exception(data)
    name = str(data.get("exc_type"))
    module = str(data.get("exc_module") or "builtins")
    args = data.get("exc_message") or []
    if not isinstance(args, (list, tuple)):
        args = [args]
    cls: Any = None
    if module.startswith("celery.") and name in _CELERY_ERRORS:
        cls = _CELERY_ERRORS[name]
    elif module == "builtins":
        cls = getattr(builtins, name, None)
    else:
        cls = sys.modules.get(module)
        for part in name.split("."):
            cls = getattr(cls, part, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        cls = type(name.rsplit(".", 1)[-1], (Exception,), {"__module__": module})
    try:
        rebuilt: BaseException = cls(*args)
    except Exception:  # noqa: BLE001 - constructor with another signature
        rebuilt = Exception.__new__(cls)
        rebuilt.args = tuple(args)
    return rebuilt


def format_traceback(exc: BaseException) -> str:
    return "".join(tb.format_exception(type(exc), exc, exc.__traceback__))


#: The whole second :func:`now_iso` last wrote, and its text up to the seconds.
_second: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """``datetime.now(timezone.utc).isoformat()``, the same text (microseconds, none
    when they are 0, and ``+00:00``).

    perf: the date and time of day are laid out once a second, not for every result
    a worker stores (15.7k instructions a call, this 2.8k; callgrind).
    """
    global _second
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    second = _second
    if second[0] != sec:
        second = _second = (sec, dt.datetime.fromtimestamp(sec, dt.timezone.utc)
                            .isoformat()[:-6])
    micro = ns // 1000
    return f"{second[1]}.{micro:06d}+00:00" if micro else f"{second[1]}+00:00"


def state_document(task_id: str, status: str, result: Any, *, traceback: str | None = None,
                   children: list[Any] | None = None, ready: bool | None = None,
                   group_id: str | None = None, parent_id: str | None = None,
                   extended: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stored JSON in Celery's key order."""
    doc: dict[str, Any] = {
        "status": status,
        "result": result,
        "traceback": traceback,
        "children": children if children is not None else [],
        "date_done": now_iso() if (ready if ready is not None else status in READY_STATES)
        else None,
    }
    if group_id:
        doc["group_id"] = group_id
    if parent_id:
        doc["parent_id"] = parent_id
    if extended:
        doc.update(extended)
    doc["task_id"] = task_id
    return doc
