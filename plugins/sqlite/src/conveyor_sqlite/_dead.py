"""Dead letters of the ``sqlite://`` transport: their own table, moved atomically.

A dead letter keeps the original message exactly as it was published (the stored
row, not the worker's possibly altered copy), its queue, the reason and the time.
Moving a message in or out of the table happens in one transaction with deleting it
from the other table, so a message is never in both places nor in neither.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from conveyor.interfaces import DeadLetter

from ._db import transaction
from ._schema import MESSAGE_COLUMNS, NOW, READY, decode_row, priority_of

_INSERT_DEAD = (f"INSERT INTO conveyor_dead_letters (queue, reason, time, "
                f"{MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_READY = (f"INSERT INTO conveyor_messages (queue, priority, state, due, "
                 f"{MESSAGE_COLUMNS}) VALUES (?, ?, {READY}, {NOW}, ?, ?, ?, ?, ?, ?, ?)")


def bury(conn: sqlite3.Connection, msg_id: int, lease: int, reason: str) -> bool:
    """Move one delivered message to the dead letters; False if it is no longer ours.

    "Ours" means still leased by this delivery, or back in the ready state after its
    lease ran out; a message another consumer now holds is left to that consumer, so
    the same message is never buried twice.
    """
    with transaction(conn):
        row = conn.execute(
            f"DELETE FROM conveyor_messages WHERE id = ? AND (lease = ? OR state = {READY})"
            f" RETURNING queue, {MESSAGE_COLUMNS}", (msg_id, lease)).fetchone()
        if row is None:
            return False
        conn.execute(_INSERT_DEAD, (row[0], reason, time.time(), *row[1:]))
    return True


def _where(ids: Sequence[str] | None, queue: str | None) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    if ids is not None:
        numbers = [int(i) for i in ids if str(i).isdigit()]
        clauses.append(f"id IN ({', '.join('?' * len(numbers)) or 'NULL'})")
        params.extend(numbers)
    if queue is not None:
        clauses.append("queue = ?")
        params.append(queue)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def listing(conn: sqlite3.Connection, queue: str | None) -> list[DeadLetter]:
    """Every dead letter (of ``queue``), oldest first."""
    where, params = _where(None, queue)
    rows = conn.execute(f"SELECT id, queue, reason, time, {MESSAGE_COLUMNS} "
                        f"FROM conveyor_dead_letters{where} ORDER BY id", params)
    # Leniently: one hand-written row must not make every dead letter unlistable.
    return [DeadLetter(str(r[0]), r[1], r[2], r[3], decode_row(r[0], r[4:])[0])
            for r in rows]


def revive(conn: sqlite3.Connection, ids: Sequence[str] | None,
           queue: str | None) -> int:
    """Put dead letters back at the end of their queue, as fresh messages."""
    if ids is not None and not ids:
        return 0
    where, params = _where(ids, queue)
    with transaction(conn):
        rows = conn.execute(f"SELECT id, queue, {MESSAGE_COLUMNS} "
                            f"FROM conveyor_dead_letters{where} ORDER BY id",
                            params).fetchall()
        conn.executemany(_INSERT_READY, [
            (row[1], priority_of(decode_row(row[0], row[2:])[0]), *row[2:]) for row in rows])
        conn.executemany("DELETE FROM conveyor_dead_letters WHERE id = ?",
                         [(row[0],) for row in rows])
    return len(rows)


def remove(conn: sqlite3.Connection, queue: str | None) -> int:
    """Delete dead letters (of ``queue``); how many."""
    where, params = _where(None, queue)
    return conn.execute(f"DELETE FROM conveyor_dead_letters{where}", params).rowcount
