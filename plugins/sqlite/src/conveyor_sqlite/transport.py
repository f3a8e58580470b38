"""The ``sqlite://`` transport: Conveyor's embedded default broker.

Durable, serverless, shared by many producer and worker processes on one machine.
Each transport instance owns one connection and is used by one thread at a time (the
:class:`~conveyor.interfaces.Transport` contract). The tables and states are
described in :mod:`conveyor_sqlite._schema`; in short:

* a claim is one ``UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING …`` statement,
  which SQLite runs under its single write lock, so each delivery goes to exactly one
  consumer, and a batch costs one commit;
* delayed messages are rows parked under an index on their due time, so a task due
  next month costs disk, not worker memory;
* a delivery is a lease that ends after ``visibility_timeout`` seconds unless it is
  settled or extended; a consumer that died gives its messages back that way;
* broadcasts (remote control) are copies per subscriber in their own table
  (:mod:`._broadcast`);
* an idle ``fetch`` first asks cheaply, without the write lock, whether anything is
  ready or due, and sleeps between polls (``polling_interval``, backing off from a few
  milliseconds), so idle workers neither spin nor hold up producers. A publish in the
  same process wakes a waiting fetch at once.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, ClassVar

from conveyor.exceptions import ConfigurationError
from conveyor.interfaces import (
    LEASE, BaseTransport, Binding, Capabilities, DeadLetter, Delivery, Exchange, Message,
    Outgoing, QueueStats, Route,
)

from . import _broadcast, _dead
from ._db import (
    BUSY_TIMEOUT, Checkpointer, ForkSafe, Notifier, database_path, mapped_errors,
    open_connection,
    transaction,
)
from ._schema import (
    CLAIMED_AGAIN, LEASED, MESSAGE_COLUMNS, NOT_ACKED, NOW, PARKED, PURGE, PURGE_ACKED,
    READY, SCHEMA, Queries, claimed, decode_row, message_row, queries_for,
)

if TYPE_CHECKING:
    from conveyor import Conveyor

_INSERT = (f"INSERT INTO conveyor_messages (queue, priority, state, due, {MESSAGE_COLUMNS})"
           f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# A settle applies while the message is still leased by this delivery, or is back in
# the ready state after the lease lapsed (nobody else holds it yet).
_OURS = f"id = ? AND (lease = ? OR state = {READY})"
# An ack is recorded while the delivery's lease holds the message (applied later:
# see _schema); one whose lease lapsed and whose message is ready again is deleted
# at once, as any settle of ours may (``_ACK_READY``, only when the record took none).
_ACK = (f"INSERT OR IGNORE INTO conveyor_acked (id, lease) SELECT id, lease FROM "
        f"conveyor_messages WHERE id = ? AND lease = ? AND state = {LEASED}")
_ACK_READY = f"DELETE FROM conveyor_messages WHERE id = ? AND state = {READY}"
_DEFER = f"UPDATE conveyor_messages SET state = {PARKED}, due = ?, lease = NULL WHERE {_OURS}"
_REQUEUE = (f"UPDATE conveyor_messages SET state = {READY}, lease = NULL, due = {NOW} "
            f"WHERE id = ? AND lease = ? AND state = {LEASED}")
# A delivery is charged when its task starts, not when it is taken: a message that
# only waited in a worker's prefetch when that worker died did not run.
_STARTED = (f"UPDATE conveyor_messages SET deliveries = deliveries + 1 "
            f"WHERE id = ? AND lease = ? AND state = {LEASED}")
_RELEASE = (f"UPDATE conveyor_messages SET state = {READY}, lease = NULL, due = {NOW} "
            f"WHERE id = ? AND lease = ? AND state = {LEASED}")
_EXTEND = (f"UPDATE conveyor_messages SET due = ? "
           f"WHERE id = ? AND lease = ? AND state = {LEASED}")
_BIND = ("INSERT OR IGNORE INTO conveyor_bindings (exchange, routing_key, pattern, queue) "
         "VALUES (?, ?, ?, ?)")
_BINDINGS = ("SELECT routing_key, pattern, queue FROM conveyor_bindings "
             "WHERE exchange = ? ORDER BY rowid")
_FIRST_SLEEP = 0.002
#: A claimed row's id and priority (RETURNING id, priority, ...).
_ID, _PRIORITY = itemgetter(0), itemgetter(1)
#: Acks a consumer records before its next claim applies them (see _schema): a purge
#: of many deletes whole leaves of the table, of a few rewrites them.
_PURGE_EVERY = 32
#: While busy, how often a consumer still looks for due parked messages (seconds).
_PROBE_EVERY = 0.05


class SQLiteTransport(BaseTransport):
    """Broker in a SQLite file (see the module docstring for how and why)."""

    scheme = "sqlite"
    capabilities: ClassVar[Capabilities] = Capabilities(
        delays=True, leases=True, dead_letters=True, priorities=True, purge=True,
        inspect=True, abandon=True, broadcast=True, settlement=LEASE)
    #: Only "cannot open" and "locked" errors surface as these (see ``_db``); others
    #: become :class:`~conveyor.exceptions.OperationalError`, as retrying won't help.
    connection_errors: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)
    default_options: ClassVar[dict[str, Any]] = {
        "visibility_timeout": 3600.0,
        "polling_interval": 0.05,
    }

    def __init__(self, url: str = "sqlite:///conveyor.sqlite3",
                 app: Conveyor | None = None) -> None:
        super().__init__(url, app)
        self.path = database_path(url)
        self.visibility_timeout = self._lease_time = _positive(self.options,
                                                               "visibility_timeout")
        self.polling_interval = _positive(self.options, "polling_interval")
        # The caller's bound on one attempt (a publish, a claim) waiting for the write
        # lock; the publish retry policy decides how many attempts.
        self.busy_timeout = BUSY_TIMEOUT if self.connect_timeout is None \
            else float(self.connect_timeout)
        self._db: sqlite3.Connection | None = None
        # perf: made once, for the calls every task makes (see mapped_errors.check)
        self._publish_errors = self._errors("publish")
        self._ack_errors = self._errors("ack")
        self._fork = ForkSafe()
        self._notifier = Notifier.for_path(self.path)
        self._checkpointer = Checkpointer.for_path(self.path)
        self._sleep = _FIRST_SLEEP
        self._unsettled: dict[int, int] = {}  # id -> lease, returned on close()
        self._queries: dict[tuple[str, ...], Queries] = {}
        self._busy = False
        self._next_probe = 0.0
        #: Acks this transport recorded since it last applied them (see _schema).
        self._acked = 0

    # ------------------------------------------------------------ connection
    def connect(self) -> None:
        self._conn()

    def _conn(self) -> sqlite3.Connection:
        if self._fork.forked():
            ForkSafe.abandon(self._db)
            self._db = None
            self._unsettled.clear()  # the parent's leases are the parent's
            self._acked = 0  # and the acks it recorded
        conn = self._db
        if conn is None:
            with self._errors("connect"):
                conn = self._db = open_connection(self.path, SCHEMA, self.busy_timeout,
                                                  background_checkpoints=True)
        return conn

    def _errors(self, what: str) -> mapped_errors:
        return mapped_errors(self.path, f"broker ({what})")

    def close(self) -> None:
        """Give unsettled deliveries back (counted: they may have started), then close."""
        if self._fork.forked():  # the parent's connection and leases stay the parent's
            ForkSafe.abandon(self._db)
            self._db = None
            self._unsettled.clear()
        if self._db is None:
            return
        try:
            if self._unsettled or self._acked:
                with self._errors("close"), transaction(self._db):
                    _purge(self._db)
                    self._db.executemany(_RELEASE, list(self._unsettled.items()))
                self._acked = 0
                self._notifier.notify()
        finally:
            self._unsettled.clear()
            self._db.close()
            self._db = None

    def abandon(self) -> None:
        """Close without giving anything back (after a connection error): tasks still
        running keep their leases and are acked through a new connection."""
        self._unsettled.clear()
        acked, self._acked = self._acked, 0  # no write through a failing connection:
        self.close()
        self._acked = acked  # a later claim through a new one applies them

    def declare(self, route: Route) -> None:
        """A queue is the set of rows naming it; declaring records its binding."""
        conn = self._conn()
        with self._errors("declare"):
            conn.execute(_BIND, (route.queue, *route.own_binding()))

    # ------------------------------------------------------------ publishing
    @staticmethod
    def _row(message: Message, route: Route, due: float | None, now: float,
             queue: str) -> tuple[Any, ...]:
        if due is not None and due > now:
            return message_row(message, route, queue, PARKED, due)
        return message_row(message, route, queue, READY, now)

    def publish(self, message: Message, route: Route, *, due: float | None = None) -> None:
        self.publish_many(((message, route, due),))

    def publish_many(self, batch: Sequence[Outgoing]) -> None:
        """All in one transaction: every message is stored, or none is. A routed
        message gets a row in each queue its exchange's bindings name."""
        if len(batch) == 1 and not batch[0][1].routed:
            # perf: one message to its queue (every apply_async) is one autocommit
            # INSERT, no transaction around it.
            message, route, due = batch[0]
            row = self._row(message, route, due, time.time(), route.queue)
            conn = self._conn()
            try:
                conn.execute(_INSERT, row)
            except sqlite3.Error as exc:
                self._publish_errors.check(exc)
                raise
            self._checkpointer.committed()
            self._notifier.notify()
            return
        now = time.time()
        conn = self._conn()
        with self._errors("publish"), transaction(conn):
            tables: dict[str, list[Binding]] = {}
            rows = []
            for message, route, due in batch:
                if not route.routed:
                    rows.append(self._row(message, route, due, now, route.queue))
                    continue
                table = tables.get(route.exchange)
                if table is None:
                    table = tables[route.exchange] = [
                        Binding(*row) for row in conn.execute(_BINDINGS, (route.exchange,))]
                rows += [self._row(message, route, due, now, queue)
                         for queue in route.destinations(table)]
            conn.executemany(_INSERT, rows)
        self._checkpointer.committed()
        self._notifier.notify()

    # ------------------------------------------------------------ broadcasts
    def broadcast(self, exchange: Exchange, routing_key: str, message: Message) -> None:
        _broadcast.broadcast(self._conn(), self.path, exchange, routing_key, message)

    def subscribe(self, exchange: Exchange, binding_key: str = "", *,
                  queue: str | None = None,
                  expires: float | None = None) -> _broadcast.SQLiteSubscription:
        return _broadcast.subscribe(self, exchange, binding_key, queue, expires)

    # ------------------------------------------------------------ consuming
    def fetch(self, queues: Sequence[str], *, limit: int,
              timeout: float | None) -> list[Delivery]:
        """Up to ``limit`` due deliveries, highest priority first, then oldest first.

        Waits at most ``timeout`` seconds for the first one (``None``: until one
        comes). Between polls it sleeps
        from a few milliseconds up to ``polling_interval`` (never past the next due
        time), and keeps that backoff across calls until something arrives.
        """
        if limit <= 0 or not queues:
            return []
        queues = tuple(queues)
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        seen = self._notifier.version
        while True:
            found, next_due = self._claim(queues, limit)
            if found:
                self._sleep = _FIRST_SLEEP
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            nap = min(self._sleep, remaining)
            if next_due is not None:
                nap = min(nap, max(next_due - time.time(), 0.0) + 0.001)
            version = self._notifier.wait(seen, nap)
            if version == seen:  # nothing published here: back off
                self._sleep = min(self._sleep * 2, self.polling_interval)
            seen = version

    def _claim(self, queues: tuple[str, ...],
               limit: int) -> tuple[list[Delivery], float | None]:
        """One attempt: release what is due, then lease up to ``limit`` ready rows
        (one transaction, one commit, when both are done).

        A read-only probe comes first, so an idle poll never takes the write lock.
        While the last claim found work the probe is skipped (the queue is likely
        not empty) except every ``_PROBE_EVERY`` seconds, to release due messages.
        """
        conn = self._conn()
        now = time.time()
        sql = self._queries.get(queues)
        if sql is None:
            sql = self._queries[queues] = queries_for(queues)
        with self._errors("fetch"):
            release = False
            if not self._busy or now >= self._next_probe:
                self._next_probe = now + _PROBE_EVERY
                next_due, ready = conn.execute(sql.probe, queues + queues).fetchone()
                release = next_due is not None and next_due <= now
                if not (ready or release):
                    self._busy = False
                    self._purge_idle(conn)
                    return [], next_due
            token = random.getrandbits(62)
            params: list[Any] = [now + self._lease_time, token]
            for queue in queues:
                params += (queue, limit)
            if len(queues) > 1:
                params.append(limit)
            if release or self._acked >= _PURGE_EVERY:
                # A release purges acks first (an acked row must not come back),
                # anyone's; a claim applies this transport's own acks with it.
                with transaction(conn):
                    _purge(conn)
                    if release:
                        conn.execute(sql.release, (*queues, now))
                    rows = conn.execute(sql.claim, params).fetchall()
                self._acked = 0
                self._checkpointer.committed()
            else:
                rows = conn.execute(sql.claim, params).fetchall()
                if rows:
                    self._checkpointer.committed()
                else:
                    self._purge_idle(conn)
        self._busy = bool(rows)
        # RETURNING order is unspecified: restore priority-then-FIFO order (two
        # stable sorts by C key functions; perf: no Python call a row).
        rows.sort(key=_ID)
        rows.sort(key=_PRIORITY, reverse=True)
        out = []
        unsettled = self._unsettled
        for row in rows:
            msg_id, seen = row[0], row[2]
            unsettled[msg_id] = token
            found = claimed(row)
            if found is None:
                out.append(self._decode(conn, msg_id, token, seen))
                continue
            message, queue, exchange, routing_key = found
            out.append(Delivery(message, queue, (msg_id, token), seen > 0, seen + 1,
                                exchange, routing_key))
        return out, None

    def _decode(self, conn: sqlite3.Connection, msg_id: int, token: int,
                seen: int) -> Delivery:
        """A claimed row :func:`claimed` refused, read column by column: its message,
        or what can be read of it and why it cannot be delivered."""
        with self._errors("fetch"):
            queue, exchange, routing_key, *columns = conn.execute(
                CLAIMED_AGAIN, (msg_id,)).fetchone()
        message, error = decode_row(msg_id, columns)
        return Delivery(message, queue, (msg_id, token), seen > 0, seen + 1, exchange,
                        routing_key, error)

    def _purge_idle(self, conn: sqlite3.Connection) -> None:
        """Nothing to claim: apply the acks this transport recorded, so an idle
        consumer leaves none behind (they would count as leased in the file)."""
        if self._acked:
            with transaction(conn):
                _purge(conn)
            self._acked = 0
            self._checkpointer.committed()

    # ------------------------------------------------------------ settling
    def _settle(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        conn = self._conn()
        with self._errors("settle"):
            if len(params) == 1:
                conn.execute(sql, params[0])
            elif params:
                with transaction(conn):
                    conn.executemany(sql, params)
        self._checkpointer.committed()

    def _tags(self, deliveries: Sequence[Delivery]) -> list[tuple[int, int]]:
        for d in deliveries:
            self._unsettled.pop(d.tag[0], None)
        return [d.tag for d in deliveries]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Record the acks (one commit, one small page: see ``_schema``); a delivery
        whose message is ready again after its lease lapsed is deleted instead.

        perf: one delivery (a worker's every early ack) is one statement under a
        mapper made once (``try`` costs nothing until it raises, ``with`` two calls).
        """
        conn = self._conn()
        try:
            if len(deliveries) == 1:
                tag = deliveries[0].tag
                self._unsettled.pop(tag[0], None)
                recorded = conn.execute(_ACK, tag).rowcount
                if not recorded:
                    conn.execute(_ACK_READY, tag[:1])
            elif deliveries:
                params = self._tags(deliveries)
                with transaction(conn):
                    recorded = conn.executemany(_ACK, params).rowcount
                    if recorded < len(params):
                        conn.executemany(_ACK_READY, [tag[:1] for tag in params])
            else:
                return
        except sqlite3.Error as exc:
            self._ack_errors.check(exc)
            raise
        self._acked += recorded
        self._checkpointer.committed()

    def started(self, deliveries: Sequence[Delivery]) -> None:
        """Charge these deliveries (see ``_STARTED``); what a lapsed lease gives back
        then counts towards ``worker_max_deliveries``."""
        self._settle(_STARTED, [d.tag for d in deliveries])

    def requeue(self, delivery: Delivery) -> None:
        """Back to the head of its priority (unstarted, so not counted)."""
        self._settle(_REQUEUE, self._tags([delivery]))
        self._notifier.notify()

    def defer(self, delivery: Delivery, due: float) -> None:
        """Park until ``due`` (the delivery it ends did not run, so is not counted)."""
        self._settle(_DEFER, [(due, *tag) for tag in self._tags([delivery])])

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        until = time.time() + self._lease_time
        self._settle(_EXTEND, [(until, *d.tag) for d in deliveries])

    # ------------------------------------------------------------ dead letters
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move to the dead letters, unless another consumer holds it by now."""
        msg_id, lease = self._tags([delivery])[0]
        conn = self._conn()
        with self._errors("dead_letter"):
            _dead.bury(conn, msg_id, lease, reason)

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        conn = self._conn()
        with self._errors("dead_letters"):
            return _dead.listing(conn, queue)

    def requeue_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        conn = self._conn()
        with self._errors("requeue_dead"):
            count = _dead.revive(conn, ids, queue)
        self._notifier.notify()
        return count

    def purge_dead(self, queue: str | None = None) -> int:
        conn = self._conn()
        with self._errors("purge_dead"):
            return _dead.remove(conn, queue)

    # ------------------------------------------------------------ inspection
    def purge(self, queue: str) -> int:
        """Delete what :meth:`depth` counts: ready messages and those due by now."""
        conn = self._conn()
        with self._errors("purge"), transaction(conn):
            _purge(conn)
            conn.execute(queries_for([queue]).release, (queue, time.time()))
            return conn.execute(f"DELETE FROM conveyor_messages WHERE state = {READY} "
                                "AND queue = ?", (queue,)).rowcount

    def depth(self, queue: str) -> int:
        """Messages deliverable now: ready, plus parked or lapsed-lease ones now due."""
        conn = self._conn()
        with self._errors("depth"):
            row = conn.execute(
                f"SELECT (SELECT count(*) FROM conveyor_messages WHERE state = {READY} "
                "AND queue = ?) + (SELECT count(*) FROM conveyor_messages WHERE "
                f"state != {READY} AND queue = ? AND due <= ? AND {NOT_ACKED})",
                (queue, queue, time.time())).fetchone()
        return int(row[0])


    def stats(self, queue: str) -> QueueStats:
        """Counts by state in one read; parked or leased rows now due count as ready,
        as :meth:`depth` counts them."""
        conn = self._conn()
        now = time.time()
        with self._errors("stats"):
            rows = conn.execute(
                f"SELECT CASE WHEN state = {READY} OR due <= :now THEN priority END, "
                "state, count(*), min(due) FROM conveyor_messages WHERE queue = :q "
                f"AND {NOT_ACKED} GROUP BY 1, 2", {"q": queue, "now": now}).fetchall()
            dead = conn.execute("SELECT count(*) FROM conveyor_dead_letters "
                                "WHERE queue = ?", (queue,)).fetchone()[0]
        waiting: dict[int, int] = {}
        delayed = leased = 0
        next_due = since = None
        for priority, state, count, first in rows:
            if priority is not None:
                waiting[priority] = waiting.get(priority, 0) + count
                since = first if since is None else min(since, first)
            elif state == PARKED:
                delayed, next_due = count, first
            else:
                leased = count
        return QueueStats(queue, waiting, delayed, next_due, leased, int(dead),
                          max(now - since, 0.0) if since is not None else None)


def _purge(conn: sqlite3.Connection) -> None:
    """Apply every recorded ack (anyone's); inside a write transaction."""
    conn.execute(PURGE)
    conn.execute(PURGE_ACKED)


def _positive(options: dict[str, Any], key: str) -> float:
    try:
        value = float(options[key])
    except (TypeError, ValueError):
        value = 0.0
    if value <= 0:
        raise ConfigurationError(
            f"broker_transport_options[{key!r}] must be a positive number of seconds, "
            f"not {options[key]!r}.")
    return value
