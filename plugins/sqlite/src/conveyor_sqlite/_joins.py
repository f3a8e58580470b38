"""Group joins (:class:`~conveyor.interfaces.JoinBackend`) in two tables.

``conveyor_joins`` holds one row per group (size, claim, done, expiry) and
``conveyor_join_members`` one row per member counted (keyed ``task_id:index``, so a
redelivered member is counted once). Each call is one ``BEGIN IMMEDIATE``
transaction, so adding a member and counting them is atomic across processes. An
expired group is treated as absent and deleted by the next call that meets it.
"""

from __future__ import annotations

import math
import sqlite3
import time
import uuid

from conveyor.interfaces import Join

from ._db import transaction

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS conveyor_joins (
        group_id TEXT PRIMARY KEY,
        size INTEGER,
        claim TEXT,
        claim_until REAL NOT NULL DEFAULT 0,
        done INTEGER NOT NULL DEFAULT 0,
        expires REAL)""",
    """CREATE TABLE IF NOT EXISTS conveyor_join_members (
        group_id TEXT NOT NULL,
        member TEXT NOT NULL,
        idx REAL NOT NULL,
        payload BLOB NOT NULL,
        PRIMARY KEY (group_id, member))""",
)


def _deadline(now: float, expires: float | None) -> float | None:
    return now + float(expires) if expires else None


def _live(conn: sqlite3.Connection, group_id: str,
          now: float) -> tuple[int | None, str | None, float, int] | None:
    """The group's row (size, claim, claim_until, done), dropping it if expired."""
    row = conn.execute("SELECT size, claim, claim_until, done, expires FROM conveyor_joins "
                       "WHERE group_id = ?", (group_id,)).fetchone()
    if row is None:
        return None
    if row[4] is not None and row[4] <= now:
        conn.execute("DELETE FROM conveyor_joins WHERE group_id = ?", (group_id,))
        conn.execute("DELETE FROM conveyor_join_members WHERE group_id = ?", (group_id,))
        return None
    return row[0], row[1], row[2], row[3]


def set_size(conn: sqlite3.Connection, group_id: str, size: int,
             expires: float | None) -> None:
    now = time.time()
    with transaction(conn):
        _live(conn, group_id, now)
        conn.execute(
            "INSERT INTO conveyor_joins (group_id, size, expires) VALUES (?, ?, ?) "
            "ON CONFLICT (group_id) DO UPDATE SET size = excluded.size, claim = NULL, "
            "claim_until = 0, done = 0, expires = excluded.expires",
            (group_id, int(size), _deadline(now, expires)))


def add(conn: sqlite3.Connection, group_id: str, task_id: str, index: int | None,
        payload: bytes, expires: float | None, claim_for: float) -> Join:
    now = time.time()
    deadline = _deadline(now, expires)
    with transaction(conn):
        row = _live(conn, group_id, now)
        if row is not None and row[3]:
            return Join(-1, None, None)
        conn.execute(
            "INSERT OR IGNORE INTO conveyor_join_members (group_id, member, idx, payload) "
            "VALUES (?, ?, ?, ?)",
            (group_id, f"{task_id}:{'+inf' if index is None else index}",
             math.inf if index is None else float(index), bytes(payload)))
        conn.execute(
            "INSERT INTO conveyor_joins (group_id, expires) VALUES (?, ?) "
            "ON CONFLICT (group_id) DO UPDATE SET expires = excluded.expires",
            (group_id, deadline))
        (done,) = conn.execute("SELECT count(*) FROM conveyor_join_members "
                               "WHERE group_id = ?", (group_id,)).fetchone()
        size = row[0] if row is not None else None
        claim = None
        if size is not None and done == size and (row is None or row[1] is None
                                                 or row[2] <= now):
            claim = uuid.uuid4().hex
            conn.execute("UPDATE conveyor_joins SET claim = ?, claim_until = ? "
                         "WHERE group_id = ?", (claim, now + claim_for, group_id))
        return Join(int(done), size, claim)


def results(conn: sqlite3.Connection, group_id: str) -> list[bytes]:
    rows = conn.execute(
        "SELECT m.payload FROM conveyor_join_members m JOIN conveyor_joins j "
        "USING (group_id) WHERE m.group_id = ? AND (j.expires IS NULL OR j.expires > ?) "
        "ORDER BY m.idx, m.payload", (group_id, time.time())).fetchall()
    return [bytes(r[0]) for r in rows]


def finish(conn: sqlite3.Connection, group_id: str, claim: str,
           expires: float | None) -> bool:
    now = time.time()
    with transaction(conn):
        row = _live(conn, group_id, now)
        if row is None or row[1] != claim:
            return False
        conn.execute("DELETE FROM conveyor_join_members WHERE group_id = ?", (group_id,))
        conn.execute("UPDATE conveyor_joins SET size = NULL, claim = NULL, done = 1, "
                     "expires = ? WHERE group_id = ?", (_deadline(now, expires), group_id))
        return True
