"""The ``sqlite://`` result backend: task states in a SQLite file.

Safe to call from many threads and processes at once: each thread gets its own
connection (SQLite connections are not meant to be shared mid-statement), opened on
first use and closed when the thread ends or :meth:`SQLiteBackend.close` is called.

Two rules live in SQL, so they hold across processes without a read-modify-write:
a stored ``SUCCESS`` is never overwritten (the upsert's ``WHERE`` refuses it), and an
expired row is invisible from the moment it expires (every read filters on
``expires``); expired rows are deleted now and then by whoever stores.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from typing import TYPE_CHECKING, ClassVar

from conveyor.interfaces import BackendCapabilities, Join

from . import _groups, _joins
from ._db import Connection, ForkSafe, Notifier, database_path, mapped_errors, open_connection

if TYPE_CHECKING:
    from conveyor import Conveyor

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS conveyor_results (
        task_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        payload BLOB NOT NULL,
        expires REAL)""",
    """CREATE INDEX IF NOT EXISTS conveyor_results_expires
        ON conveyor_results (expires) WHERE expires IS NOT NULL""",
    *_joins.SCHEMA,
    *_groups.SCHEMA,
)
_GET = ("SELECT payload FROM conveyor_results "
        "WHERE task_id = ? AND (expires IS NULL OR expires > ?)")
# An expired SUCCESS is gone as far as readers know, so it may be replaced.
_STORE = ("INSERT INTO conveyor_results (task_id, state, payload, expires) "
          "VALUES (?, ?, ?, ?) ON CONFLICT (task_id) DO UPDATE SET "
          "state = excluded.state, payload = excluded.payload, expires = excluded.expires "
          "WHERE conveyor_results.state != 'SUCCESS' OR conveyor_results.expires <= ?")
# Bounded, so a store that happens to sweep never stalls for long.
_SWEEP = ("DELETE FROM conveyor_results WHERE rowid IN (SELECT rowid FROM "
          "conveyor_results WHERE expires <= ? LIMIT 1000)")
SWEEP_EVERY = 60.0
#: ``wait`` polls from FIRST to MAX seconds apart: prompt for short tasks, and a
#: change by another process is seen within MAX; one in this process at once.
FIRST_POLL, MAX_POLL = 0.005, 0.05


class SQLiteBackend:
    """Result backend in a SQLite file (see the module docstring)."""

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities(joins=True,
                                                                      groups=True)

    def __init__(self, url: str = "sqlite:///conveyor.sqlite3",
                 app: Conveyor | None = None) -> None:
        self.url = url
        self.app = app
        self.path = database_path(url)
        self._local = threading.local()
        self._open: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._generation = 0
        self._fork = ForkSafe()
        self._notifier = Notifier.for_path(self.path)
        self._next_sweep = 0.0

    def _conn(self) -> sqlite3.Connection:
        if self._fork.forked():
            for conn in list(self._open):
                ForkSafe.abandon(conn)
            self._open = weakref.WeakSet()
            self._lock = threading.Lock()
            self._generation += 1
        local = self._local
        if getattr(local, "generation", -1) != self._generation:
            with mapped_errors(self.path, "result backend (connect)"):
                conn = open_connection(self.path, SCHEMA)
            with self._lock:
                self._open.add(conn)
            local.conn, local.generation = conn, self._generation
        return local.conn  # type: ignore[no-any-return]

    def get(self, task_id: str) -> bytes | None:
        conn = self._conn()
        with mapped_errors(self.path, "result backend (get)"):
            row = conn.execute(_GET, (task_id, time.time())).fetchone()
        return None if row is None else bytes(row[0])

    def store(self, task_id: str, state: str, payload: bytes, *,
              expires: float | None) -> None:
        """Write ``state`` unless ``SUCCESS`` is already stored; wake waiters."""
        now = time.time()
        deadline = now + float(expires) if expires else None
        conn = self._conn()
        with mapped_errors(self.path, "result backend (store)"):
            conn.execute(_STORE, (task_id, state, bytes(payload), deadline, now))
            if now >= self._next_sweep:
                self._next_sweep = now + SWEEP_EVERY
                conn.execute(_SWEEP, (now,))
        self._notifier.notify()

    def wait(self, task_id: str, *, timeout: float | None,
             previous: bytes | None) -> bytes | None:
        """Block until the payload differs from ``previous``; None on timeout.

        Polls with a sleep growing from 5 to 50 ms; a store from this process wakes
        it at once. Each poll is one primary-key lookup.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = FIRST_POLL
        seen = self._notifier.version
        while True:
            current = self.get(task_id)
            if current is not None and current != previous:
                return current
            nap = delay
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                nap = min(nap, remaining)
            version = self._notifier.wait(seen, nap)
            if version == seen:
                delay = min(delay * 1.5, MAX_POLL)
            seen = version

    def forget(self, task_id: str) -> None:
        conn = self._conn()
        with mapped_errors(self.path, "result backend (forget)"):
            conn.execute("DELETE FROM conveyor_results WHERE task_id = ?", (task_id,))
        self._notifier.notify()

    # ------------------------------------------------------------------ joins
    def join_size(self, group_id: str, size: int, *, expires: float | None) -> None:
        with mapped_errors(self.path, "result backend (join)"):
            _joins.set_size(self._conn(), group_id, size, expires)

    def join_add(self, group_id: str, task_id: str, index: int | None, payload: bytes, *,
                 expires: float | None, claim_for: float) -> Join:
        with mapped_errors(self.path, "result backend (join)"):
            return _joins.add(self._conn(), group_id, task_id, index, payload, expires,
                              claim_for)

    def join_results(self, group_id: str) -> list[bytes]:
        with mapped_errors(self.path, "result backend (join)"):
            return _joins.results(self._conn(), group_id)

    def join_finish(self, group_id: str, claim: str, *, expires: float | None) -> bool:
        with mapped_errors(self.path, "result backend (join)"):
            return _joins.finish(self._conn(), group_id, claim, expires)

    # ------------------------------------------------------------------ groups
    def save_group(self, group_id: str, payload: bytes, *, expires: float | None) -> None:
        with mapped_errors(self.path, "result backend (save group)"):
            _groups.save(self._conn(), group_id, payload, expires)

    def get_group(self, group_id: str) -> bytes | None:
        with mapped_errors(self.path, "result backend (get group)"):
            return _groups.get(self._conn(), group_id)

    def forget_group(self, group_id: str) -> None:
        with mapped_errors(self.path, "result backend (forget group)"):
            _groups.forget(self._conn(), group_id)

    def close(self) -> None:
        """Close every thread's connection; the next call from a thread reopens."""
        with self._lock:
            conns, self._open = list(self._open), weakref.WeakSet()
            self._generation += 1
        for conn in conns:
            conn.close()
