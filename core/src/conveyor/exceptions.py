"""Every error Conveyor raises, in one flat hierarchy.

::

    ConveyorError
    ├── ConfigurationError (ValueError)     a setting or option that cannot work
    │   └── UnknownOptionError (TypeError)  an execution option nobody knows
    ├── PluginError (ImportError)           a plugin that cannot be found or loaded
    ├── OperationalError                    the broker or backend is unreachable
    ├── TimeoutError (builtins.TimeoutError) a bounded wait ran out
    ├── TaskRevokedError                    the task was revoked or expired
    ├── DecodeError                         a message that cannot be decoded
    │   ├── ContentDisallowed               content type not in accept_content
    │   └── SecurityError                   bad or missing signature
    ├── NotRegistered (KeyError)            no task of that name in the worker
    ├── NotSupported                        a message asks for what is not built yet
    ├── DeliveryLimitExceeded               delivered worker_max_deliveries times
    ├── MessageSizeExceeded (ValueError)    a body over task_message_max_size
    ├── SoftTimeLimitExceeded               raised inside a task at soft_time_limit
    ├── TimeLimitExceeded                   the task was killed at time_limit
    ├── WorkerLostError                     the pool process died running the task
    ├── MaxRetriesExceededError             Task.retry() past max_retries (no exc)
    └── Retry                               raised by Task.retry() to re-schedule

Messages say what was wrong, with the value, and what to do next.
"""

from __future__ import annotations

import builtins
from typing import Any

from .utils import mask_url


class ConveyorError(Exception):
    """Base class of every Conveyor error."""


class ConfigurationError(ConveyorError, ValueError):
    """A setting, URL or option value that cannot work."""


class UnknownOptionError(ConfigurationError, TypeError):
    """An execution option or setting name that Conveyor does not know."""


class PluginError(ConveyorError, ImportError):
    """A plugin that cannot be found or loaded (names group, name and the fix)."""


class CapabilityError(ConfigurationError):
    """An option or command needs a capability the transport or backend lacks."""


class OperationalError(ConveyorError):
    """The broker or backend could not be reached (after the retry policy).

    Its message is masked as it is made (:func:`conveyor.utils.mask_url`): it quotes
    URLs and driver errors, and ends up in logs and on terminals.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*(mask_url(a) if isinstance(a, str) else a for a in args))


class TimeoutError(ConveyorError, builtins.TimeoutError):  # noqa: A001 - Celery's name
    """A bounded wait (``AsyncResult.get(timeout=...)``) ran out."""


class TaskRevokedError(ConveyorError):
    """The task was revoked or had expired before a worker could run it."""


class ChordError(ConveyorError):
    """A chord's body did not run: a header task failed (the message names it and its
    exception), or the body could not be sent."""


class DecodeError(ConveyorError):
    """A message whose envelope or body cannot be decoded."""


class ContentDisallowed(DecodeError):
    """A message whose content type is not in ``accept_content``."""


class SecurityError(DecodeError):
    """A message with a missing, bad or untrusted signature."""


class NotRegistered(ConveyorError, KeyError):
    """No task of this name is registered in the app."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NotSupported(ConveyorError):
    """A message asks for something Conveyor does not do yet (a Celery chord): the
    worker dead-letters it with the reason rather than half-run it."""


class DeliveryLimitExceeded(ConveyorError):
    """A message was delivered more than ``worker_max_deliveries`` times."""


class MessageSizeExceeded(ConveyorError, ValueError):
    """A message body larger than ``task_message_max_size``: refused at
    ``apply_async``, and dead-lettered by the worker when another client sent it."""


class SoftTimeLimitExceeded(ConveyorError):
    """Raised inside a running task when its ``soft_time_limit`` passes."""


class TimeLimitExceeded(ConveyorError):
    """The task ran past its ``time_limit`` and its process was killed."""


class WorkerLostError(ConveyorError):
    """The pool process running the task died (crash, OOM kill, signal)."""


class MaxRetriesExceededError(ConveyorError):
    """``self.retry()`` was called past ``max_retries`` without an ``exc`` to raise:
    the task fails with this (Celery's name), so waiters get an answer."""


class Ignore(ConveyorError):
    """Raised in a task to end its run without a state: nothing is stored, no
    callbacks or errbacks run, and its message is settled (Celery's ``Ignore``;
    :meth:`Task.replace <conveyor.task.Task.replace>` raises it)."""


class Retry(ConveyorError):
    """Raised by :meth:`Task.retry` so the worker re-schedules the task."""

    def __init__(self, message: str | None = None, exc: BaseException | None = None,
                 when: Any = None) -> None:
        if message is None:
            message = f"Retry in {when}s" if when is not None else "Retry"
        super().__init__(message)
        self.exc = exc
        self.when = when


__all__ = [
    "ConveyorError", "ConfigurationError", "UnknownOptionError", "CapabilityError",
    "PluginError",
    "OperationalError", "TimeoutError", "TaskRevokedError", "DecodeError",
    "ContentDisallowed", "SecurityError", "NotRegistered", "NotSupported",
    "DeliveryLimitExceeded", "MessageSizeExceeded",
    "SoftTimeLimitExceeded", "TimeLimitExceeded", "WorkerLostError",
    "MaxRetriesExceededError", "Retry", "Ignore",
]
