"""Conveyor's embedded default: SQLite transport and result backend.

Standard library only. ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` as
``broker_url`` and ``result_backend``; both may name the same file.
"""

from .backend import SQLiteBackend
from .transport import SQLiteTransport

__all__ = ["SQLiteBackend", "SQLiteTransport"]
