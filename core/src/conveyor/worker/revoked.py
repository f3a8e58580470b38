"""Task ids revoked in this worker process, and what a revoked task becomes.

A ``revoke`` control command (``conveyor control revoke``, ``celery control revoke``,
``AsyncResult.revoke()``) adds the id here: the worker then skips the task if it has
not started (acked, recorded ``REVOKED``), and a task terminated while it runs is
recorded ``REVOKED`` instead of ``FAILURE``. Ids are kept ``result_expires`` seconds
(Celery keeps its ``revoked`` set the same way), at most :data:`MAX_IDS` of them.
``revoke_by_stamped_headers`` adds stamp values: a task carrying one (canvas
stamping) is skipped the same way, for as long as the worker runs.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import chords, states
from ..exceptions import TaskRevokedError

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..envelope import Request

log = logging.getLogger("conveyor.worker")

#: The most ids kept; the oldest go first (Celery's ``REVOKES_MAX``).
MAX_IDS = 50_000
#: How long an id is kept when ``result_expires`` is 0/None (Celery's 3 hours).
DEFAULT_KEEP = 3 * 3600.0


class Revoked:
    """A set of ids with an expiry each; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: OrderedDict[str, float] = OrderedDict()
        #: Ids whose running task is being terminated, and the reason to record.
        self._terminated: dict[str, str] = {}
        #: ``revoke_by_stamped_headers``: stamp name → the revoked values (kept as
        #: long as the worker runs, as Celery keeps them).
        self._stamps: dict[str, list[Any]] = {}

    def add(self, task_ids: list[str], keep: float | None) -> None:
        until = time.monotonic() + (keep or DEFAULT_KEEP)
        with self._lock:
            for task_id in task_ids:
                self._ids.pop(task_id, None)
                self._ids[task_id] = until
            while len(self._ids) > MAX_IDS:
                self._ids.popitem(last=False)

    def __contains__(self, task_id: object) -> bool:
        if not self._ids:  # perf: the common case, no lock
            return False
        with self._lock:
            until = self._ids.get(task_id)  # type: ignore[call-overload]
            if until is None:
                return False
            if until < time.monotonic():
                del self._ids[task_id]  # type: ignore[arg-type]
                return False
            return True

    def __bool__(self) -> bool:
        return bool(self._ids) or bool(self._stamps)

    def add_stamps(self, stamps: Mapping[str, Any]) -> None:
        """Revoke every task stamped with one of these values (a value or a list of
        them, by stamp name), from now on."""
        with self._lock:
            for name, values in stamps.items():
                kept = self._stamps.setdefault(str(name), [])
                kept.extend(v for v in _listed(values) if v not in kept)
                del kept[:-MAX_IDS]

    def stamped(self, request: Request) -> bool:
        """Whether ``request`` carries a revoked stamp value."""
        if not self._stamps:
            return False
        stamps = request.stamps
        with self._lock:
            return any(value in revoked
                       for name, revoked in self._stamps.items() if name in stamps
                       for value in _listed(stamps[name]))

    def covers(self, request: Request) -> bool:
        """Whether ``request`` is revoked, by its id or by a stamp."""
        return request.id in self or self.stamped(request)

    def ids(self) -> list[str]:
        """The ids still kept, oldest first."""
        now = time.monotonic()
        with self._lock:
            for task_id in [k for k, until in self._ids.items() if until < now]:
                del self._ids[task_id]
            return list(self._ids)

    def terminating(self, task_id: str, reason: str = "terminated") -> None:
        """``task_id`` is being stopped while it runs: record it REVOKED."""
        with self._lock:
            self._terminated[task_id] = reason

    def terminated(self, task_id: str) -> str | None:
        """The reason when ``task_id`` was terminated (and forget it), else None."""
        if not self._terminated:
            return None
        with self._lock:
            return self._terminated.pop(task_id, None)

    def clear(self) -> None:
        with self._lock:
            self._ids.clear()
            self._terminated.clear()
            self._stamps.clear()


def _listed(value: Any) -> list[Any]:
    """A stamp's values: a list or tuple is several, anything else one."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


#: This process's revoked ids (a worker per process, as in Celery).
REVOKED = Revoked()


class Terminated(BaseException):
    """Raised inside a task running on a thread of the worker process when it is
    revoked with ``terminate=True`` (a thread cannot be killed). A ``BaseException``,
    so the task's own ``except Exception:`` does not swallow it."""


_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc


class Running:
    """Which thread of this process runs which task, so a terminate can stop it.

    :func:`~.execute.execute` calls :meth:`enter` and :meth:`leave` around a task
    (two dict operations: nothing measurable per task). :meth:`interrupt` raises
    :class:`Terminated` in the task's thread with ``PyThreadState_SetAsyncExc``; the
    lock makes sure the exception is raised only while the thread is inside
    ``execute`` (``leave`` withdraws one not yet delivered), where the pool catches
    whatever escapes, so it never kills a pool thread between tasks. It takes
    effect when the thread next runs Python code: a task blocked in one long C call
    (a ``sleep``, a socket read) stops when that call returns.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[str, int] = {}
        self._signalled: set[str] = set()

    def enter(self, task_id: str) -> None:
        self._threads[task_id] = threading.get_ident()

    def leave(self, task_id: str) -> None:
        ident = self._threads.pop(task_id, None)
        if self._signalled:  # perf: only while a terminate is under way
            with self._lock:
                if task_id in self._signalled:
                    self._signalled.discard(task_id)
                    if ident is not None:
                        _set_async_exc(ctypes.c_ulong(ident), None)
                    # It finished before the exception reached it: its outcome
                    # stands, and a later run of the same id (a retry) is not
                    # taken for terminated.
                    REVOKED.terminated(task_id)

    def interrupt(self, task_id: str) -> bool:
        """Raise :class:`Terminated` in the thread running ``task_id``; False when
        no thread of this process runs it."""
        with self._lock:
            self._signalled.add(task_id)
            ident = self._threads.get(task_id)
            if ident is None:
                self._signalled.discard(task_id)
                return False
            _set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(Terminated))
            return True


#: The tasks running on threads of this process.
RUNNING = Running()


def record(app: Conveyor, request: Request, hostname: str, reason: str,
           task: Any = None) -> None:
    """Record ``request`` REVOKED as Celery does (``mark_as_revoked``): the state, the
    ``task_revoked`` hook, and the chord part counted as failed. No errbacks."""
    log.info("Task %s[%s] %s", request.name, request.id,
             "terminated" if reason == "terminated" else "revoked: not run")
    try:
        app.results.store(request.id, states.REVOKED, states.revoked_dict(reason),
                          request=request, hostname=hostname)
    except Exception:  # noqa: BLE001 - the task is skipped either way
        log.exception("Could not record REVOKED for %s", request.id)
    app.notify("task_revoked", request=request, expired=False)
    chords.part_returned(app, request, states.REVOKED, TaskRevokedError(reason))
