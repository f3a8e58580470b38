"""Hook implementations: give every task message a trace id and log it when it runs.

This module is registered as it is (the ``conveyor.hooks`` entry point names the
module): pluggy finds the functions marked with ``@hookimpl``. Each may accept any
subset of its spec's arguments (see ``conveyor.hookspecs``). Hooks observe; one that
raises is logged and does not stop the task, except ``before_task_publish``, whose
exception aborts the publish, so it must not fail on ordinary messages.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from conveyor import hookimpl

#: The header this plugin adds; custom headers travel beside Celery's own.
TRACE_HEADER = "x-example-trace"

log = logging.getLogger(__name__)


@hookimpl
def before_task_publish(message: Any) -> None:
    """Stamp a trace id on the message, keeping one the caller already set."""
    message.headers.setdefault(TRACE_HEADER, uuid.uuid4().hex)


@hookimpl
def task_prerun(task_id: str, request: Any) -> None:
    """Log the trace id next to the task id, so logs of both sides can be joined."""
    log.info("task %s runs with trace %s", task_id, request.headers.get(TRACE_HEADER))
