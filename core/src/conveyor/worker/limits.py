"""``soft_time_limit`` inside the running task, on every pool.

:class:`SoftLimit` raises :class:`~conveyor.exceptions.SoftTimeLimitExceeded` in the
thread running the task when its soft limit passes, so the task can clean up:

- on the main thread (``--pool solo`` from the command line, a ``processes`` child)
  with a ``SIGALRM`` timer, which also interrupts blocking calls such as ``sleep``;
- on any other thread (``--pool threads``) with ``PyThreadState_SetAsyncExc``, the
  only way Python offers to raise in another thread. It takes effect when the thread
  next runs Python code, so a task stuck in one long C call (a ``sleep``, a socket
  read) sees it when that call returns.

The hard ``time_limit`` cannot be enforced inside a thread at all; the threads and solo
pools run a task that has one in a child process (see ``pool.py``).
"""

from __future__ import annotations

import ctypes
import signal
import threading
from types import TracebackType
from typing import Any

from ..exceptions import SoftTimeLimitExceeded

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc


class SoftLimit:
    """``with SoftLimit(seconds, what):`` around the task's own code.

    ``error``/``name`` make it raise another exception: a worker whose broker lives in
    its own memory (``memory://``) cannot hand a task with a hard ``time_limit`` to a
    child process, and raises ``TimeLimitExceeded`` in the task this way instead.
    """

    __slots__ = ("seconds", "what", "error", "name", "_lock", "_armed", "_timer",
                 "_ident", "_previous")

    def __init__(self, seconds: float, what: str,
                 error: type[Exception] = SoftTimeLimitExceeded,
                 name: str = "soft_time_limit") -> None:
        self.seconds = seconds
        self.what = what
        self.error = error
        self.name = name
        self._lock = threading.Lock()
        self._armed = False
        self._timer: threading.Timer | None = None
        self._ident = threading.get_ident()
        self._previous: Any = None

    def __enter__(self) -> SoftLimit:
        self._armed = True
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGALRM, self._on_alarm)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        else:
            self._timer = threading.Timer(self.seconds, self._raise_in_thread)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _on_alarm(self, _signum: int, _frame: Any) -> None:
        if self._armed:
            raise self.error(self._message())

    def _message(self) -> str:
        return f"{self.what}: {self.name}={self.seconds}s exceeded"

    def _raise_in_thread(self) -> None:
        with self._lock:
            if self._armed:
                _set_async_exc(ctypes.c_ulong(self._ident),
                               ctypes.py_object(_with_message(self.error, self._message())))

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._disarm()
        except self.error:
            pass  # fired as the task returned: its outcome stands

    def _disarm(self) -> None:
        if self._timer is None:
            self._armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous or signal.SIG_DFL)
            return
        with self._lock:
            self._armed = False
            self._timer.cancel()
            # NULL drops an exception raised but not yet delivered.
            _set_async_exc(ctypes.c_ulong(self._ident), None)


def _with_message(error: type[Exception], message: str) -> type[Exception]:
    """A subclass of ``error`` raised without arguments that still says ``message``
    (``PyThreadState_SetAsyncExc`` raises a class, never an instance). Same name and
    module, so results and ``except error:`` see the original class."""
    def __init__(self: Exception, *args: Any) -> None:
        error.__init__(self, *(args or (message,)))
    return type(error.__name__, (error,), {"__init__": __init__,
                                           "__module__": error.__module__,
                                           "__qualname__": error.__qualname__})
