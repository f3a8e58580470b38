"""The SQLite transport, tested directly: ordering, delay, leases, dead letters."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import threading
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.exceptions import ConfigurationError, OperationalError, UnknownOptionError
from conveyor.interfaces import Message, Route, Transport
from conveyor_sqlite import SQLiteTransport, _db
from conveyor_sqlite import transport as transport_module
from conveyor_sqlite._db import ForkSafe
from conveyor_sqlite._schema import (
    MESSAGE_COLUMNS, READY, SCHEMA, message_columns, message_row,
)

Q = Route("celery")


def ns(deliveries):
    return [d.message.headers["n"] for d in deliveries]


# ----------------------------------------------------------------- configuration
def test_entry_point_and_protocol(transport):
    found = entry_points(group="conveyor.transports", name="sqlite")
    assert [ep.load() for ep in found] == [SQLiteTransport]
    assert isinstance(transport, Transport)
    assert transport.capabilities.delays and transport.capabilities.priorities
    assert sqlite3.OperationalError in transport.connection_errors


@pytest.mark.parametrize("url, path", [
    ("sqlite:///rel/b.db", str(Path.cwd() / "rel/b.db")),
    ("sqlite:////abs/b.db", "/abs/b.db"),
])
def test_url_paths(url, path):
    assert SQLiteTransport(url).path == path


@pytest.mark.parametrize("url, words", [
    ("sqlite://", "no database path"),
    ("sqlite:///", "no database path"),
    ("sqlite://host/b.db", "names a host"),
    ("sqlite:///:memory:", "memory://"),
    ("sqlite:///b.db?timeout=3", "broker_transport_options"),
])
def test_bad_urls_say_how_to_write_one(url, words):
    with pytest.raises(ConfigurationError, match="sqlite:///relative") as info:
        SQLiteTransport(url)
    assert words in str(info.value)


def test_missing_directory_is_a_clear_error(tmp_path):
    transport = SQLiteTransport(f"sqlite:///{tmp_path}/nope/b.db")
    with pytest.raises(ConfigurationError, match="does not exist"):
        transport.connect()


def test_not_a_database_is_wrapped(tmp_path):
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(OperationalError, match="junk.db"):
        SQLiteTransport(f"sqlite:///{tmp_path}/junk.db").connect()


def test_unknown_option_is_rejected_with_a_suggestion(make_transport):
    with pytest.raises(UnknownOptionError, match="visibility_timeout"):
        make_transport(visibility_timout=5)
    with pytest.raises(ConfigurationError, match="positive"):
        make_transport(polling_interval=0)


# ----------------------------------------------------------------- ordering
def test_higher_priority_first_fifo_within(transport, new_message):
    for n, priority in enumerate([None, 5, 255, 0, 5, 1, None]):
        transport.publish(new_message(n, priority), Q)
    got = transport.fetch(["celery"], limit=10, timeout=0)
    assert ns(got) == [2, 1, 4, 5, 0, 3, 6]
    assert [d.deliveries for d in got] == [1] * 7
    assert not any(d.redelivered for d in got)


def test_fifo_across_batches(transport, new_message):
    for n in range(100):
        transport.publish(new_message(n, 3), Q)
    seen = []
    while batch := transport.fetch(["celery"], limit=7, timeout=0):
        seen += ns(batch)
        transport.ack(batch)
    assert seen == list(range(100))


def test_several_queues_merge_by_priority(transport, new_message):
    transport.publish(new_message(0, 1), Route("a"))
    transport.publish(new_message(1, 9), Route("b"))
    transport.publish(new_message(2, 1), Route("b"))
    transport.publish(new_message(3), Route("other"))
    got = transport.fetch(["a", "b"], limit=10, timeout=0)
    assert ns(got) == [1, 0, 2]
    assert [d.queue for d in got] == ["b", "a", "b"]


def test_message_round_trips_exactly(transport, new_message):
    message = new_message(7, 4, eta=None, timelimit=[None, 3], argsrepr="(1,)")
    message.body = bytes(range(256))
    message.content_type, message.content_encoding = "application/x-python-serialize", "binary"
    transport.publish(message, Route("q", exchange="ex", routing_key="rk"))
    (got,) = transport.fetch(["q"], limit=1, timeout=0)
    assert got.message == message
    assert (got.exchange, got.routing_key, got.queue) == ("ex", "rk", "q")


@pytest.mark.parametrize("call", [
    {}, {"priority": 7}, {"reply_to": "client \u00e9", "countdown": 30},
    {"task_id": 'odd "id" \u2603', "headers": {"x": [1, "\u00fc"]}},
    {"parent_id": "p", "root_id": "r", "group_id": "g", "group_index": 2, "retries": 1},
])
def test_core_built_messages_are_stored_as_their_dicts_encode(transport, call):
    """A message the core built is stored without making its headers' and properties'
    dicts; the text is what encoding the dicts writes, and it reads back equal."""
    app = Conveyor("stored", broker="memory://stored")
    message, route, *_ = app.prepare("proj.add", (2, "\u00e9"), {"k": [1]}, call, {}, None)
    stored = message_columns(message, route)
    if "headers" in call:  # edited headers: the core hands over a plain Message
        assert type(message) is Message
    else:  # no dict was made
        assert message.laid is None and message.props is None
    compact = {"separators": (",", ":"), "ensure_ascii": False}
    assert stored[0] == json.dumps(message.headers, **compact)
    assert stored[4] == json.dumps(message.properties, **compact)
    built, _, *_ = app.prepare("proj.add", (2, "\u00e9"), {"k": [1]}, call, {}, None)
    transport.publish(built, Route("celery"))
    (got,) = transport.fetch(["celery"], limit=1, timeout=0)
    assert got.message == built
    assert got.message.priority == call.get("priority")


def test_header_numbers_read_back_as_stored(transport, new_message):
    """Integers past 64 bits stay integers (a fast JSON parser would read them as
    floats), and the largest 64-bit ones, floats and non-ASCII text read back as
    they were written."""
    values = {"big": 2**70, "negative": -(2**64) - 1, "edge": 2**64 - 1, "tenth": 0.1,
              "huge": 1e300, "text": "\u00e9\u2603 12345678901234567890"}
    transport.publish(new_message(0, **values), Q)
    (got,) = transport.fetch([Q.queue], limit=1, timeout=0)
    assert {key: got.message.headers[key] for key in values} == values
    assert [type(got.message.headers[key]) for key in values] == [
        type(value) for value in values.values()]


def test_rows_a_claim_cannot_read_in_one_piece_read_as_stored(transport, new_message):
    """A claim reads a row's names joined by NULs and its headers and properties as
    one JSON array; a name holding a NUL, or columns that are not JSON objects, are
    read column by column instead: the NUL stays, the bad row says why."""
    message = new_message(1)
    message.content_type = "application/x\0y"
    transport.publish(message, Route("q", exchange="e\0x", routing_key="r\0k"))
    transport.publish(new_message(2), Route("q"))
    transport.publish(new_message(3), Route("q"))
    conn = transport._conn()
    conn.execute("UPDATE conveyor_messages SET properties = '[1]' WHERE id = 2")
    conn.execute("UPDATE conveyor_messages SET headers = '{\"n\":3', "
                 "properties = '\"x\":1}' WHERE id = 3")  # JSON only when joined
    first, second, third = transport.fetch(["q"], limit=3, timeout=0)
    assert first.message == message and first.error is None
    assert (first.exchange, first.routing_key, first.queue) == ("e\0x", "r\0k", "q")
    assert second.error is not None and "properties column holds JSON list" in second.error
    assert second.message.headers["n"] == 2 and second.queue == "q"
    assert third.error is not None and "cannot be decoded" in third.error


def test_headers_must_be_json(transport, new_message):
    with pytest.raises(TypeError, match="JSON"):
        transport.publish(new_message(0, when=object()), Q)


def test_publish_many_is_one_transaction(transport, new_message):
    batch = [(new_message(n), Q, None) for n in range(3)]
    batch.append((new_message(3, when=object()), Q, None))
    with pytest.raises(TypeError):
        transport.publish_many(batch)
    assert transport.depth("celery") == 0
    transport.publish_many(batch[:3])
    assert transport.depth("celery") == 3


def test_a_publish_error_says_what_failed_and_a_locked_file_is_retryable(transport,
                                                                          new_message):
    """One message's publish (every apply_async): a locked database surfaces as the
    transport's connection error, which the core's retry policy retries; anything
    else as Conveyor's OperationalError naming the file."""
    conn = transport._conn()
    conn.execute("PRAGMA busy_timeout = 50")
    with sqlite3.connect(transport.path, isolation_level=None) as other:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(transport.connection_errors, match="locked"):
            transport.publish(new_message(0), Q)
        other.execute("ROLLBACK")
        other.execute("CREATE TRIGGER no_inserts BEFORE INSERT ON conveyor_messages "
                      "BEGIN SELECT RAISE(ABORT, 'inserts refused'); END")
    with pytest.raises(OperationalError, match="inserts refused") as info:
        transport.publish(new_message(1), Q)
    assert transport.path in str(info.value)
    assert not isinstance(info.value, transport.connection_errors)


# ----------------------------------------------------------------- delay
def test_due_time_is_respected(transport, new_message):
    due = time.time() + 0.3
    transport.publish(new_message(0), Q, due=due)
    transport.publish(new_message(1), Q, due=time.time() - 1)  # already due
    assert ns(transport.fetch(["celery"], limit=5, timeout=0)) == [1]
    assert transport.depth("celery") == 0  # parked ones are not waiting
    got = transport.fetch(["celery"], limit=5, timeout=2)
    assert ns(got) == [0]
    assert time.time() >= due


def test_fetch_wakes_at_the_due_time_not_a_poll_later(make_transport, new_message):
    transport = make_transport(polling_interval=5)
    due = time.time() + 0.2
    transport.publish(new_message(0), Q, due=due)
    got = transport.fetch(["celery"], limit=1, timeout=3)
    assert ns(got) == [0]
    assert due <= time.time() < due + 0.2


def test_defer_parks_until_due_and_does_not_count(transport, new_message):
    transport.publish(new_message(0), Q)
    (first,) = transport.fetch(["celery"], limit=1, timeout=0)
    due = time.time() + 0.3
    transport.defer(first, due)
    assert transport.fetch(["celery"], limit=1, timeout=0) == []
    (again,) = transport.fetch(["celery"], limit=1, timeout=2)
    assert time.time() >= due
    assert again.deliveries == 1 and not again.redelivered


def test_due_messages_are_released_while_the_queue_is_busy(transport, new_message):
    transport.publish_many([(new_message(n), Q, None) for n in range(400)])
    due = time.time() + 0.2
    transport.publish(new_message(-1, 9), Q, due=due)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        (got,) = transport.fetch(["celery"], limit=1, timeout=0)
        transport.ack([got])
        if got.message.headers["n"] == -1:
            break
        time.sleep(0.002)
    assert got.message.headers["n"] == -1
    assert due <= time.time() < due + 0.15
    assert transport.depth("celery") > 0  # it overtook a non-empty queue


def test_parked_messages_cost_no_claim_time(transport, new_message):
    far = time.time() + 3600
    transport.publish_many([(new_message(n), Q, far) for n in range(20_000)])
    transport.publish(new_message(-1), Q)
    start = time.perf_counter()
    for _ in range(50):
        transport.fetch(["celery"], limit=1, timeout=0)
    assert time.perf_counter() - start < 0.5
    assert transport.depth("celery") == 0


# ----------------------------------------------------------------- leases
def test_unacked_delivery_comes_back_after_visibility_timeout(make_transport, new_message):
    dead, alive = make_transport(visibility_timeout=0.5), make_transport()
    dead.publish(new_message(0), Q)
    (lost,) = dead.fetch(["celery"], limit=1, timeout=0)
    dead.started([lost])
    assert alive.fetch(["celery"], limit=1, timeout=0.2) == []
    (back,) = alive.fetch(["celery"], limit=1, timeout=2)
    assert back.redelivered and back.deliveries == 2
    assert back.message == lost.message
    dead.ack([lost])  # the old holder's late ack must not settle the new lease
    alive.ack([back])
    assert alive.fetch(["celery"], limit=1, timeout=0) == []
    assert alive._conn().execute("SELECT count(*) FROM conveyor_messages").fetchone() == (0,)


def test_a_lapsed_delivery_that_never_started_is_not_charged(make_transport, new_message):
    """Only a delivery whose task started counts towards worker_max_deliveries: one
    that merely waited in a dead worker's prefetch comes back uncharged."""
    dead, alive = make_transport(visibility_timeout=0.3), make_transport()
    dead.publish(new_message(0), Q)
    dead.publish(new_message(1), Q)
    ran, waited = dead.fetch(["celery"], limit=2, timeout=0)
    dead.started([ran])
    time.sleep(0.4)
    back = {d.message.headers["n"]: d for d in alive.fetch(["celery"], limit=2, timeout=2)}
    assert (back[0].deliveries, back[0].redelivered) == (2, True)
    assert (back[1].deliveries, back[1].redelivered) == (1, False)


def test_late_ack_wins_while_nobody_else_holds_it(make_transport, new_message):
    transport = make_transport(visibility_timeout=0.2)
    transport.publish(new_message(0), Q)
    (slow,) = transport.fetch(["celery"], limit=1, timeout=0)
    time.sleep(0.3)
    assert transport.depth("celery") == 1  # lapsed: deliverable again
    transport.ack([slow])
    assert transport.depth("celery") == 0


def test_extend_keeps_a_live_lease(make_transport, new_message):
    holder, other = make_transport(visibility_timeout=0.4), make_transport()
    holder.publish(new_message(0), Q)
    (held,) = holder.fetch(["celery"], limit=1, timeout=0)
    holder.started([held])
    for _ in range(4):
        time.sleep(0.2)
        holder.extend([held])
        assert other.fetch(["celery"], limit=1, timeout=0) == []
    (back,) = other.fetch(["celery"], limit=1, timeout=2)
    assert back.deliveries == 2


def test_requeue_gives_back_unstarted(transport, new_message):
    for n in range(3):
        transport.publish(new_message(n), Q)
    first = transport.fetch(["celery"], limit=2, timeout=0)
    for d in first:
        transport.requeue(d)
    again = transport.fetch(["celery"], limit=3, timeout=0)
    assert ns(again) == [0, 1, 2]  # back at the head, order kept
    assert [d.deliveries for d in again] == [1, 1, 1]


def test_close_returns_unsettled_deliveries(make_transport, new_message):
    first = make_transport()
    first.publish(new_message(0), Q)
    (held,) = first.fetch(["celery"], limit=1, timeout=0)
    first.started([held])
    first.close()
    (back,) = make_transport().fetch(["celery"], limit=1, timeout=0)
    assert back.message == held.message and back.deliveries == 2


def test_messages_survive_reopening(make_transport, new_message):
    first = make_transport()
    first.publish(new_message(0, 2), Q)
    first.publish(new_message(1), Q, due=time.time() + 60)
    first.close()
    second = make_transport()
    assert second.depth("celery") == 1
    assert ns(second.fetch(["celery"], limit=5, timeout=0)) == [0]


# ----------------------------------------------------------------- acks
def _rows(transport: SQLiteTransport, table: str = "conveyor_messages") -> int:
    return transport._conn().execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _wal_frames(transport: SQLiteTransport) -> int:
    size = os.path.getsize(transport.path + "-wal")
    return max(size - 32, 0) // (4096 + 24)  # WAL header, then (header + page) a frame


def test_an_ack_writes_one_page_and_is_applied_by_a_later_claim(transport, new_message):
    """An ack records ``(id, lease)`` in a table a claim empties: one WAL page a
    commit (deleting the ~600-byte row from the table and the due index wrote 3-5);
    the rows go with a claim once ``_PURGE_EVERY`` acks are recorded, or when the
    consumer finds nothing to claim."""
    count = transport_module._PURGE_EVERY + 2
    transport.publish_many([(new_message(n), Q, None) for n in range(count)])
    deliveries = transport.fetch(["celery"], limit=count - 1, timeout=0)
    for delivery in deliveries[:-1]:
        before = _wal_frames(transport)
        transport.ack([delivery])
        assert _wal_frames(transport) - before == 1
    assert _rows(transport) == count and _rows(transport, "conveyor_acked") == count - 2
    (last,) = transport.fetch(["celery"], limit=1, timeout=0)
    assert ns([last]) == [count - 1]
    assert _rows(transport) == 2 and _rows(transport, "conveyor_acked") == 0
    transport.ack([deliveries[-1], last])
    assert _rows(transport) == 2 and transport.depth("celery") == 0
    assert transport.stats("celery").leased == 0
    assert transport.fetch(["celery"], limit=5, timeout=0) == []  # found nothing:
    assert _rows(transport) == 0 and _rows(transport, "conveyor_acked") == 0  # applied


def test_an_acked_message_never_comes_back_after_its_consumer_died(make_transport,
                                                                    new_message):
    """The consumer recorded its acks and died before applying them: its leases
    lapse, and the release that would make the messages ready again applies the
    acks first, in its transaction. Reads that count leased or lapsed messages leave
    recorded acks out meanwhile."""
    dead, alive = make_transport(visibility_timeout=0.3), make_transport()
    for n in range(3):
        dead.publish(new_message(n), Q)
    done, running, waiting = dead.fetch(["celery"], limit=3, timeout=0)
    dead.ack([done, running])
    assert dead.stats("celery").leased == 1  # only ``waiting`` is still held
    dead._unsettled.clear()  # died: no close() to give anything back or apply acks
    ForkSafe.abandon(dead._db)
    dead._db = None
    assert _rows(alive) == 3 and _rows(alive, "conveyor_acked") == 2
    time.sleep(0.4)
    assert alive.depth("celery") == 1
    (back,) = alive.fetch(["celery"], limit=3, timeout=1)
    assert ns([back]) == [2]
    assert alive.fetch(["celery"], limit=3, timeout=0) == []
    assert _rows(alive, "conveyor_acked") == 0 and _rows(alive) == 1


def test_an_ack_of_a_lapsed_message_made_ready_again_deletes_it(make_transport,
                                                               new_message):
    holder, other = make_transport(visibility_timeout=0.2), make_transport()
    holder.publish(new_message(0), Q)
    holder.publish(new_message(1), Q)
    slow, gone = holder.fetch(["celery"], limit=2, timeout=0)
    time.sleep(0.3)
    other.purge("nothing-here")  # a release elsewhere: not of this queue
    conn = other._conn()
    conn.execute("UPDATE conveyor_messages SET state = 0, lease = NULL")  # released
    holder.ack([slow, gone])
    assert other.depth("celery") == 0 and _rows(other) == 0


def test_a_database_made_before_conveyor_acked_opens_and_works(db_url, make_transport,
                                                               new_message):
    """The first schema had no ``conveyor_acked`` table: opening such a file adds it
    and leaves the messages in it deliverable."""
    path = SQLiteTransport(db_url).path
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    for statement in SCHEMA:
        if "conveyor_acked" not in statement:
            old.execute(statement)
    route = Route("celery")
    old.execute("INSERT INTO conveyor_messages (queue, priority, state, due, "
                f"{MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                message_row(new_message(7), route, "celery", READY, time.time()))
    assert old.execute("SELECT count(*) FROM sqlite_master WHERE name = "
                       "'conveyor_acked'").fetchone() == (0,)
    old.close()
    transport = make_transport()
    (delivery,) = transport.fetch(["celery"], limit=2, timeout=0)
    assert ns([delivery]) == [7]
    transport.ack([delivery])
    assert transport.fetch(["celery"], limit=2, timeout=0) == []
    assert _rows(transport) == 0 and transport.depth("celery") == 0


# ----------------------------------------------------------------- checkpoints
def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "conveyor-sqlite-checkpoint"]


def _child_starts_afresh(path: str) -> None:
    os._exit(0 if _db.Checkpointer.for_path(path)._thread is None else 1)


def test_the_wal_is_checkpointed_by_a_thread_not_by_the_commits(transport, new_message,
                                                                 monkeypatch):
    """Every ``CHECKPOINT_EVERY`` commits a thread copies the WAL into the database
    file (the commits themselves only past ``FALLBACK_CHECKPOINT`` pages, well
    beyond what these write); a forked child does not take its parent's thread for
    its own; the thread ends once commits stop."""
    monkeypatch.setattr(_db, "CHECKPOINT_IDLE", 0.3)
    conn = transport._conn()
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == \
        _db.FALLBACK_CHECKPOINT > 3 * _db.CHECKPOINT_EVERY
    size = os.path.getsize(transport.path)
    for n in range(_db.CHECKPOINT_EVERY):
        transport.publish(new_message(n), Q)
    deadline = time.monotonic() + 10
    # Pages reach the database file only through a checkpoint.
    while os.path.getsize(transport.path) == size and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.path.getsize(transport.path) > size
    if _checkpoint_threads():  # still idling: a child must not count it as its own
        child = multiprocessing.get_context("fork").Process(
            target=_child_starts_afresh, args=(transport.path,))
        child.start()
        child.join(timeout=30)
        assert child.exitcode == 0
    while _checkpoint_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _checkpoint_threads()
    assert ns(transport.fetch(["celery"], limit=2, timeout=0)) == [0, 1]


# ----------------------------------------------------------------- dead letters, purge
def test_dead_letters_round_trip(transport, new_message):
    for n in range(3):
        transport.publish(new_message(n, 4), Route("q1" if n < 2 else "q2"))
    got = transport.fetch(["q1", "q2"], limit=3, timeout=0)
    before = time.time()
    for d in got:
        transport.dead_letter(d, f"bad {d.message.headers['n']}")
    assert transport.depth("q1") == transport.depth("q2") == 0
    dead = transport.dead_letters()
    assert [(x.queue, x.reason) for x in dead] == [("q1", "bad 0"), ("q1", "bad 1"),
                                                    ("q2", "bad 2")]
    assert [x.message for x in dead] == [d.message for d in got]
    assert all(before - 1 <= x.time <= time.time() for x in dead)
    assert [x.id for x in transport.dead_letters("q2")] == [dead[2].id]

    assert transport.requeue_dead([dead[1].id, "no-such-id"]) == 1
    (back,) = transport.fetch(["q1"], limit=5, timeout=0)
    assert back.message == dead[1].message and back.deliveries == 1
    assert back.message.priority == 4
    transport.ack([back])
    assert transport.requeue_dead(queue="q2") == 1
    assert transport.depth("q2") == 1
    assert transport.purge_dead("q1") == 1
    assert transport.dead_letters() == []
    assert transport.purge_dead() == 0


def test_dead_letter_ids_are_never_reused(transport, new_message):
    transport.publish(new_message(0), Q)
    (d,) = transport.fetch(["celery"], limit=1, timeout=0)
    transport.dead_letter(d, "x")
    (first,) = transport.dead_letters()
    transport.purge_dead()
    transport.publish(new_message(1), Q)
    (d,) = transport.fetch(["celery"], limit=1, timeout=0)
    transport.dead_letter(d, "y")
    assert transport.dead_letters()[0].id != first.id


def test_purge_and_depth(transport, new_message):
    for n in range(5):
        transport.publish(new_message(n), Q)
    transport.publish(new_message(9), Route("other"))
    transport.publish(new_message(10), Q, due=time.time() + 60)
    transport.fetch(["celery"], limit=1, timeout=0)  # one leased
    assert transport.depth("celery") == 4
    assert transport.purge("celery") == 4
    assert transport.depth("celery") == 0
    assert transport.depth("other") == 1
    assert transport.depth("nothing") == 0


# ----------------------------------------------------------------- concurrency
def _consume(url: str, out: str) -> None:
    transport = SQLiteTransport(url)
    seen = []
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 1.0:
        batch = transport.fetch(["celery"], limit=10, timeout=0.1)
        if batch:
            idle_since = time.monotonic()
            seen += [d.message.headers["n"] for d in batch]
            transport.ack(batch)
    Path(out).write_text(json.dumps(seen))
    transport.close()


def test_each_delivery_goes_to_exactly_one_consumer(transport, db_url, tmp_path,
                                                   new_message):
    total = 5000
    half = [(new_message(n), Q, None) for n in range(total // 2)]
    transport.publish_many(half)
    ctx = multiprocessing.get_context("fork")
    outs = [str(tmp_path / f"seen{i}.json") for i in range(4)]
    procs = [ctx.Process(target=_consume, args=(db_url, out)) for out in outs]
    for p in procs:
        p.start()
    try:
        thread = threading.Thread(target=_consume, args=(db_url, str(tmp_path / "t.json")))
        thread.start()
        for n in range(total // 2, total):  # the other half arrives while they consume
            transport.publish(new_message(n), Q)
        thread.join(timeout=60)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    finally:
        for p in procs:
            p.kill()
    seen = [n for out in [*outs, str(tmp_path / "t.json")]
            for n in json.loads(Path(out).read_text())]
    assert len(seen) == len(set(seen)) == total
    assert sum(bool(json.loads(Path(o).read_text())) for o in outs) >= 2  # really shared


def _publish_from_child(transport: SQLiteTransport, message) -> None:
    transport.publish(message, Q)
    transport.close()


def test_a_forked_child_opens_its_own_connection(transport, new_message):
    transport.publish(new_message(0), Q)
    (held,) = transport.fetch(["celery"], limit=1, timeout=0)
    child = multiprocessing.get_context("fork").Process(
        target=_publish_from_child, args=(transport, new_message(1)))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    # The child's close() neither closed our connection nor gave back our lease.
    assert transport.depth("celery") == 1
    transport.ack([held])
    assert ns(transport.fetch(["celery"], limit=5, timeout=0)) == [1]
