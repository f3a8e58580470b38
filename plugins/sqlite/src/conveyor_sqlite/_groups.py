"""Saved groups (:class:`~conveyor.interfaces.GroupBackend`): what
``GroupResult.save()`` stores, one row per group id, invisible once expired."""

from __future__ import annotations

import sqlite3
import time

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS conveyor_groups (
        group_id TEXT PRIMARY KEY,
        payload BLOB NOT NULL,
        expires REAL)""",
)


def save(conn: sqlite3.Connection, group_id: str, payload: bytes,
         expires: float | None) -> None:
    deadline = time.time() + float(expires) if expires else None
    conn.execute("INSERT OR REPLACE INTO conveyor_groups (group_id, payload, expires) "
                 "VALUES (?, ?, ?)", (group_id, bytes(payload), deadline))


def get(conn: sqlite3.Connection, group_id: str) -> bytes | None:
    row = conn.execute("SELECT payload FROM conveyor_groups WHERE group_id = ? AND "
                       "(expires IS NULL OR expires > ?)", (group_id, time.time())
                       ).fetchone()
    return None if row is None else bytes(row[0])


def forget(conn: sqlite3.Connection, group_id: str) -> None:
    conn.execute("DELETE FROM conveyor_groups WHERE group_id = ?", (group_id,))
