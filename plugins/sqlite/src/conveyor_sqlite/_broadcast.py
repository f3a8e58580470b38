"""Broadcasts (``Capabilities.broadcast``) in the SQLite file, for remote control.

A subscription is a row of ``conveyor_subscriptions`` (exchange, kind, binding key);
a broadcast inserts, in one transaction, a copy of the message into
``conveyor_broadcasts`` for every subscription whose binding key matches (AMQP's rules,
:meth:`~conveyor.interfaces.Exchange.matches`), and none when nobody subscribes. A
subscriber polls its rows without the write lock, taking them with one ``DELETE …
RETURNING`` when there are some; a publish in the same process wakes it at once.

A subscriber that dies leaves its row behind: it marks it alive while it reads, and a
broadcast deletes subscriptions not seen for their ``expires`` (default
:data:`DEFAULT_EXPIRES`) together with their undelivered copies.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from typing import Any

from conveyor.interfaces import Delivery, Exchange, Message, Route

from ._db import Notifier, mapped_errors, open_connection, transaction
from ._schema import MESSAGE_COLUMNS, SCHEMA, message_columns, message_from

#: Seconds a subscription that stopped reading is kept when it gave no ``expires``.
DEFAULT_EXPIRES = 60.0
#: How often a reading subscription marks itself alive, at most (seconds).
_ALIVE_EVERY = 2.0
_FIRST_SLEEP = 0.005

_SUBSCRIBE = ("INSERT INTO conveyor_subscriptions (exchange, kind, binding_key, queue, "
              "alive, expires) VALUES (?, ?, ?, ?, ?, ?)")
_ALIVE = "UPDATE conveyor_subscriptions SET alive = ? WHERE id = ?"
_STALE = "SELECT id FROM conveyor_subscriptions WHERE alive + expires < ?"
_FORGET = "DELETE FROM conveyor_subscriptions WHERE id = ?"
_FORGET_ROWS = "DELETE FROM conveyor_broadcasts WHERE subscription = ?"
_SUBSCRIBERS = "SELECT id, binding_key FROM conveyor_subscriptions WHERE exchange = ?"
_INSERT = (f"INSERT INTO conveyor_broadcasts (subscription, {MESSAGE_COLUMNS}) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_ANY = "SELECT 1 FROM conveyor_broadcasts WHERE subscription = ? LIMIT 1"
_TAKE = (f"DELETE FROM conveyor_broadcasts WHERE subscription = ? "
         f"RETURNING id, {MESSAGE_COLUMNS}")


def broadcast(conn: sqlite3.Connection, path: str, exchange: Exchange, routing_key: str,
              message: Message) -> None:
    """Copy ``message`` to every live matching subscription (see the module docstring)."""
    now = time.time()
    columns = message_columns(message, Route(exchange.name, exchange.name, routing_key))
    with mapped_errors(path, f"broker (broadcast to {exchange.name!r})"), transaction(conn):
        for (stale,) in conn.execute(_STALE, (now,)).fetchall():
            conn.execute(_FORGET, (stale,))
            conn.execute(_FORGET_ROWS, (stale,))
        rows = [(sid, *columns) for sid, key in conn.execute(_SUBSCRIBERS, (exchange.name,))
                if exchange.matches(key, routing_key)]
        if rows:
            conn.executemany(_INSERT, rows)
    Notifier.for_path(path).notify()


class SQLiteSubscription:
    """One subscription, on a connection of its own."""

    def __init__(self, path: str, busy_timeout: float, poll: float, exchange: Exchange,
                 binding_key: str, queue: str | None, expires: float | None) -> None:
        self.path, self.exchange, self.binding_key = path, exchange, binding_key
        self.queue = queue or f"{uuid.uuid4()}.{exchange.name}"
        self.expires = float(expires or DEFAULT_EXPIRES)
        self.poll = poll
        self._notifier = Notifier.for_path(path)
        with self._errors("subscribe"):
            self._conn: sqlite3.Connection | None = open_connection(path, SCHEMA,
                                                                   busy_timeout)
        self._id = self._register()

    def _errors(self, what: str) -> mapped_errors:
        return mapped_errors(self.path, f"broker ({what} on exchange {self.exchange.name!r})")

    def _register(self) -> int:
        assert self._conn is not None
        self._alive = time.monotonic()
        with self._errors("subscribe"):
            cursor = self._conn.execute(_SUBSCRIBE, (
                self.exchange.name, self.exchange.kind, self.binding_key, self.queue,
                time.time(), self.expires))
        return int(cursor.lastrowid or 0)

    def _mark_alive(self, conn: sqlite3.Connection) -> None:
        if time.monotonic() - self._alive < _ALIVE_EVERY:
            return
        self._alive = time.monotonic()
        if conn.execute(_ALIVE, (time.time(), self._id)).rowcount == 0:
            self._id = self._register()  # swept while this process stalled: again

    def _take(self, conn: sqlite3.Connection) -> list[Delivery]:
        self._mark_alive(conn)
        if conn.execute(_ANY, (self._id,)).fetchone() is None:
            return []
        with transaction(conn):
            rows = sorted(conn.execute(_TAKE, (self._id,)).fetchall())
        out = []
        for row in rows:
            try:
                message = message_from(row[1:])
            except (ValueError, TypeError):
                continue  # not written by Conveyor: nothing to answer
            out.append(Delivery(message, self.queue, None, exchange=self.exchange.name,
                                routing_key=str(row[7])))
        return out

    def get(self, timeout: float) -> list[Delivery]:
        conn = self._conn
        if conn is None:
            return []
        deadline = time.monotonic() + max(0.0, timeout)
        seen = self._notifier.version
        sleep = _FIRST_SLEEP
        with self._errors("receive"):
            while True:
                found = self._take(conn)
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                seen = self._notifier.wait(seen, min(left, sleep))
                sleep = min(sleep * 2, self.poll)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            with transaction(conn):
                conn.execute(_FORGET, (self._id,))
                conn.execute(_FORGET_ROWS, (self._id,))
        except sqlite3.Error:
            pass  # swept by a later broadcast once it expires
        finally:
            conn.close()


def subscribe(transport: Any, exchange: Exchange, binding_key: str, queue: str | None,
              expires: float | None) -> SQLiteSubscription:
    return SQLiteSubscription(transport.path, transport.busy_timeout,
                              transport.polling_interval, exchange, binding_key, queue,
                              expires)
