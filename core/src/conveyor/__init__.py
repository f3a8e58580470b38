"""Conveyor: call Python functions later or elsewhere, over the Celery protocol.

The public API is re-exported here; everything else is an implementation detail.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .app import Conveyor, current_app
from .discovery import shared_task
from .canvas import Signature, chain, chord, group, signature
from .hookspecs import hookimpl
from .maps import chunks, xmap, xstarmap
from .result import AsyncResult, GroupResult
from .stamping import StampingVisitor
from .task import Task

try:
    __version__ = version("conveyor-core")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Conveyor", "current_app", "shared_task", "Task", "Signature", "signature", "chain",
    "chord", "group", "chunks", "xmap", "xstarmap", "StampingVisitor",
    "AsyncResult", "GroupResult", "hookimpl", "__version__",
]
