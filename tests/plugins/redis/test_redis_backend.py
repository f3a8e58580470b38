"""The Redis result backend against a real Redis (db 13): Celery's keys and writes."""

from __future__ import annotations

import json
import logging
import pickle
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import pytest
import redis
from conveyor_redis import RedisBackend
from wire_samples import sample

SUCCESS = b'{"status": "SUCCESS", "result": 4, "traceback": null, "children": [], ' \
    b'"date_done": "2026-11-24T10:23:52.653971+00:00", "task_id": "t1"}'


@pytest.fixture
def backend(rb: redis.Redis, redis_server: str) -> Any:
    b = RedisBackend(f"{redis_server}/13")
    yield b
    b.close()


def test_store_is_setex_plus_publish_on_the_key(backend: Any, rb: redis.Redis) -> None:
    """Celery's channel and payload, after Conveyor's own db-qualified channel."""
    ps = rb.pubsub()
    ps.subscribe("celery-task-meta-t1", "conveyor:13:celery-task-meta-t1")
    assert [ps.get_message(timeout=1)["type"] for _ in range(2)] == ["subscribe"] * 2
    backend.store("t1", "SUCCESS", SUCCESS, expires=86400)
    backend.flush()  # the write was sent ahead; another connection checks it
    assert rb.get("celery-task-meta-t1") == SUCCESS
    assert 86390 < rb.ttl("celery-task-meta-t1") <= 86400
    got = [ps.get_message(timeout=1) for _ in range(2)]
    assert [(m["channel"], m["data"]) for m in got] == [
        (b"conveyor:13:celery-task-meta-t1", SUCCESS), (b"celery-task-meta-t1", SUCCESS)]
    ps.close()
    assert backend.get("t1") == SUCCESS and backend.get("missing") is None


@pytest.mark.parametrize(("expires", "pttl"), [(None, (-1, -1)), (0, (-1, -1)),
                                               (2.5, (1500, 2500)), (7, (6000, 7000))])
def test_expiry_forms(backend: Any, rb: redis.Redis, expires: Any,
                      pttl: tuple[int, int]) -> None:
    backend.store("t2", "STARTED", b'{"status": "STARTED"}', expires=expires)
    backend.flush()
    assert pttl[0] <= rb.pttl("celery-task-meta-t2") <= pttl[1]


@pytest.mark.parametrize("encode", [
    json.dumps,
    lambda d: json.dumps(dict(reversed(list(d.items())))),
    lambda d: msgpack.packb(d),
    lambda d: msgpack.packb(dict(reversed(list(d.items())))),
    lambda d: pickle.dumps(d, protocol=4),
    lambda d: pickle.dumps(d, protocol=5),
], ids=["json", "json-any-order", "msgpack", "msgpack-any-order", "pickle4", "pickle5"])
def test_success_is_never_overwritten(backend: Any, rb: redis.Redis, encode: Any) -> None:
    def doc(status: str, result: Any) -> bytes:
        data = encode({"status": status, "result": result, "traceback": None,
                       "children": [], "task_id": "t3"})
        return data.encode() if isinstance(data, str) else data

    progress = doc("PROGRESS", {"status": "SUCCESS"})  # SUCCESS only inside the meta
    backend.store("t3", "PROGRESS", progress, expires=60)
    backend.store("t3", "FAILURE", doc("FAILURE", "boom"), expires=60)
    assert backend.get("t3") == doc("FAILURE", "boom")  # FAILURE may be overwritten
    backend.store("t3", "SUCCESS", doc("SUCCESS", 1), expires=60)
    backend.store("t3", "FAILURE", doc("FAILURE", "late"), expires=60)
    backend.store("t3", "SUCCESS", doc("SUCCESS", 2), expires=60)
    assert backend.get("t3") == doc("SUCCESS", 1)


def test_celery_written_success_is_kept(backend: Any, rb: redis.Redis) -> None:
    stored = sample("backend-success")["stored"]
    rb.set(stored["key"], stored["value"])
    task_id = stored["key"].removeprefix("celery-task-meta-")
    backend.store(task_id, "FAILURE", b'{"status": "FAILURE"}', expires=60)
    assert backend.get(task_id) == stored["value"].encode()


def test_forget(backend: Any, rb: redis.Redis) -> None:
    backend.store("t4", "SUCCESS", SUCCESS, expires=60)
    backend.forget("t4")
    assert backend.get("t4") is None and not rb.exists("celery-task-meta-t4")


def test_wait_returns_a_result_stored_later(backend: Any) -> None:
    threading.Timer(0.3, lambda: backend.store("t5", "SUCCESS", SUCCESS,
                                               expires=60)).start()
    start = time.monotonic()
    assert backend.wait("t5", timeout=5, previous=None) == SUCCESS
    assert time.monotonic() - start < 1.5


def test_wait_sees_a_result_stored_before_it_subscribed(backend: Any) -> None:
    backend.store("t6", "SUCCESS", SUCCESS, expires=60)
    start = time.monotonic()
    assert backend.wait("t6", timeout=5, previous=None) == SUCCESS
    assert time.monotonic() - start < 0.5


def test_wait_is_bounded_and_ignores_what_it_has_seen(backend: Any) -> None:
    backend.store("t7", "STARTED", b'{"status": "STARTED"}', expires=60)
    start = time.monotonic()
    assert backend.wait("t7", timeout=0.4, previous=b'{"status": "STARTED"}') is None
    assert 0.35 < time.monotonic() - start < 1.5
    threading.Timer(0.2, lambda: backend.store("t7", "SUCCESS", SUCCESS,
                                               expires=60)).start()
    assert backend.wait("t7", timeout=5, previous=b'{"status": "STARTED"}') == SUCCESS


def test_publishes_from_another_db_do_not_fool_the_waiter(backend: Any,
                                                          redis_server: str) -> None:
    """Pub/sub ignores db numbers: a same-named key published on db 12 only wakes
    the waiter, which re-reads its own db and keeps waiting."""
    other = redis.Redis.from_url(f"{redis_server}/12")
    threading.Timer(0.2, lambda: other.publish("celery-task-meta-t8", b"foreign")).start()
    threading.Timer(0.5, lambda: backend.store("t8", "SUCCESS", SUCCESS,
                                               expires=60)).start()
    assert backend.wait("t8", timeout=5, previous=None) == SUCCESS
    other.close()


def test_a_conveyor_writer_on_another_db_never_reaches_the_waiter(
        backend: Any, redis_server: str) -> None:
    """Its own channel names db 12, not ours; its Celery-channel message only has
    our db read again."""
    other = RedisBackend(f"{redis_server}/12")
    try:
        threading.Timer(0.1, lambda: other.store("t9", "SUCCESS", b"foreign",
                                                 expires=60)).start()
        assert backend.wait("t9", timeout=0.6, previous=None) is None
        threading.Timer(0.2, lambda: other.store("t9", "FAILURE", b"foreign2",
                                                 expires=60)).start()
        threading.Timer(0.4, lambda: backend.store("t9", "SUCCESS", SUCCESS,
                                                   expires=60)).start()
        assert backend.wait("t9", timeout=5, previous=None) == SUCCESS
    finally:
        other.forget("t9")
        other.close()


def test_a_celery_style_write_on_its_channel_alone_is_seen(backend: Any,
                                                             rb: redis.Redis) -> None:
    """A Celery worker sets the key and publishes on the key's channel only."""
    def celery_write() -> None:
        rb.set("celery-task-meta-t10", SUCCESS)
        rb.publish("celery-task-meta-t10", SUCCESS)

    threading.Timer(0.3, celery_write).start()
    start = time.monotonic()
    assert backend.wait("t10", timeout=5, previous=None) == SUCCESS
    assert time.monotonic() - start < 1.5  # woken, not found by the periodic re-read


def test_a_result_on_the_own_channel_is_not_read_again(backend: Any,
                                                       rb: redis.Redis) -> None:
    """The payload published on Conveyor's channel is the value stored in our db:
    one GET per wait (the first look after subscribing), not a second on waking."""
    backend.store("t11", "STARTED", b'{"status": "STARTED"}', expires=60)
    backend.flush()

    def gets() -> int:
        return int(rb.info("commandstats").get("cmdstat_get", {}).get("calls", 0))

    threading.Timer(0.3, lambda: backend.store("t11", "SUCCESS", SUCCESS,
                                               expires=60)).start()
    before = gets()
    assert backend.wait("t11", timeout=5, previous=b'{"status": "STARTED"}') == SUCCESS
    assert gets() - before == 2  # the first look, and the store script's own GET


def test_many_waiters_in_threads(backend: Any) -> None:
    got: dict[int, Any] = {}

    def waiter(i: int) -> None:
        got[i] = backend.wait(f"m{i}", timeout=5, previous=None)

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    time.sleep(0.2)
    for i in range(8):
        backend.store(f"m{i}", "SUCCESS", b"%d" % i, expires=60)
    for th in threads:
        th.join(5)
    assert got == {i: b"%d" % i for i in range(8)}


def test_unreachable_backend_names_the_masked_url() -> None:
    from conveyor.exceptions import OperationalError
    b = RedisBackend("redis://:hunter2@127.0.0.1:1/0")
    with pytest.raises(OperationalError) as info:
        b.get("x")
    assert "hunter2" not in str(info.value) and "127.0.0.1:1" in str(info.value)


def test_store_is_sent_ahead_and_this_thread_reads_it_back(backend: Any,
                                                          rb: redis.Redis) -> None:
    """A write does not wait for Redis; the writing thread still reads its own
    write (its next call reads the reply first), other threads are not held up.
    The connection's first write loads the script as a function (a round trip of
    its own, once a connection); it is made before the pause."""
    backend.store("t9", "SUCCESS", SUCCESS, expires=60)
    backend.flush()
    rb.client_pause(1000, all=False)  # the server holds writes for 1 s
    start = time.monotonic()
    backend.store("t10", "SUCCESS", SUCCESS, expires=60)
    assert time.monotonic() - start < 0.5
    other: list[Any] = []
    reader = threading.Thread(target=lambda: other.append(backend.get("t10")))
    reader.start()
    reader.join(5)
    assert other == [None]  # not yet written, and that thread did not wait for it
    assert backend.get("t10") == SUCCESS
    assert time.monotonic() - start >= 0.9


def test_writes_from_many_threads_at_once_are_all_stored_and_read_back(
        backend: Any, rb: redis.Redis) -> None:
    """A threads worker's slots store at once: their writes go out in batches, and
    each thread still reads its own last write back at once."""
    def slot(n: int) -> bytes | None:
        for i in range(50):
            backend.store(f"s{n}-{i}", "SUCCESS", b"%d" % i, expires=60)
        return backend.get(f"s{n}-49")  # type: ignore[no-any-return]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(slot, range(8), timeout=10)) == [b"49"] * 8
    backend.flush()
    assert all(rb.get(f"celery-task-meta-s{n}-{i}") == b"%d" % i
               for n in range(8) for i in range(50))


def test_a_refused_write_is_logged_naming_the_task(backend: Any, rb: redis.Redis,
                                                   caplog: Any) -> None:
    rb.rpush("celery-task-meta-t11", "not a result")
    backend.store("t11", "SUCCESS", SUCCESS, expires=60)
    with caplog.at_level(logging.ERROR, logger="conveyor.redis"):
        backend.flush()
    assert "the SUCCESS result of task t11" in caplog.text
    assert "WRONGTYPE" in caplog.text
    assert backend.get("t6") is None  # the line is usable afterwards


def test_a_write_lost_with_its_connection_is_run_again_after_its_thread_ended(
        backend: Any, rb: redis.Redis) -> None:
    """The writer stores a result and ends; the connection that carried the write
    is killed before the server ran it. The write is not lost: the confirmer sees
    the lost reply and runs it again on a new connection."""
    backend.store("warm-up", "SUCCESS", SUCCESS, expires=60)  # loads the function
    backend.flush()
    rb.client_pause(1500, all=False)  # the server holds writes for 1.5 s
    writer = threading.Thread(target=lambda: backend.store("t12", "SUCCESS", SUCCESS,
                                                           expires=60))
    writer.start()
    writer.join(5)
    time.sleep(0.02)
    held = [c for c in rb.client_list()
            if c["db"] == "13" and c["cmd"] == "fcall" and "b" in c["flags"]]
    assert len(held) == 1  # the write, waiting for the pause to end
    rb.client_kill_filter(_id=held[0]["id"])  # the server drops it unexecuted
    deadline = time.monotonic() + 5
    while rb.get("celery-task-meta-t12") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rb.get("celery-task-meta-t12") == SUCCESS


def test_a_write_sent_ahead_and_the_next_command_are_one_round_trip(
        backend: Any, rb: redis.Redis, monkeypatch: Any) -> None:
    """A chord's header task stores its result (sent ahead), then joins: the join is
    written after the result write without waiting for its reply, one round trip
    instead of two (what makes a chord's header tasks quick)."""
    backend.join_size("g13", 2, expires=60)
    backend.store("warm-up", "SUCCESS", SUCCESS, expires=60)  # function loaded
    backend.join_add("g13", "warm-up", 1, b"w", expires=60, claim_for=10)  # script loaded
    backend.flush()  # the warm-up write's reply read: the next write waits for nothing
    from conveyor_redis import connection

    events: list[str] = []
    conn_class = redis.connection.AbstractConnection
    send, read = conn_class.send_packed_command, connection.read_reply
    monkeypatch.setattr(conn_class, "send_packed_command",
                        lambda self, *a, **k: events.append("write") or send(self, *a, **k))
    monkeypatch.setattr(connection, "read_reply",  # a Line reads every reply through it
                        lambda conn: events.append("read") or read(conn))
    backend.store("t13", "SUCCESS", SUCCESS, expires=60)
    join = backend.join_add("g13", "t13", 0, b"r", expires=60, claim_for=10)
    assert events == ["write", "write", "read"]
    monkeypatch.undo()
    assert join.done == 2 and join.claim is not None
    assert rb.get("celery-task-meta-t13") == SUCCESS


def _subscribers(rb: redis.Redis, task_id: str) -> list[int]:
    """Subscribers of the task's Celery channel and of our own (db 13) one."""
    key = f"celery-task-meta-{task_id}"
    return [n for _, n in rb.pubsub_numsub(key, f"conveyor:13:{key}")]


def _until_subscribers(rb: redis.Redis, task_id: str, wanted: list[int]) -> None:
    """(UN)SUBSCRIBE is sent ahead: wait (up to 5 s) until Redis has read it."""
    deadline = time.monotonic() + 5
    while _subscribers(rb, task_id) != wanted:
        assert time.monotonic() < deadline, f"{task_id}: {_subscribers(rb, task_id)}"
        time.sleep(0.01)


def test_a_prepared_wait_is_subscribed_before_the_send_and_misses_nothing(
        backend: Any, rb: redis.Redis) -> None:
    """Only a thread that waits prepares (a delay() loop subscribes to nothing);
    then the subscription is live before the task is sent, and a result stored
    before the wait begins is the wait's answer."""
    backend.prepare_wait("p1")
    assert _subscribers(rb, "p1") == [0, 0]
    backend.store("p0", "SUCCESS", SUCCESS, expires=60)
    assert backend.wait("p0", timeout=5, previous=None) == SUCCESS
    backend.prepare_wait("p2")
    _until_subscribers(rb, "p2", [1, 1])
    backend.store("p2", "SUCCESS", SUCCESS, expires=60)
    assert backend.wait("p2", timeout=5, previous=None) == SUCCESS


def test_a_wait_leaves_its_subscription_to_the_next_wait(backend: Any,
                                                          rb: redis.Redis) -> None:
    """Kept for a wait on the same task again (a progress state, then the end),
    which needs no SUBSCRIBE nor GET; dropped by a wait on another task."""
    backend.store("p8", "STARTED", b'{"status": "STARTED"}', expires=60)
    assert backend.wait("p8", timeout=5, previous=None) == b'{"status": "STARTED"}'
    assert _subscribers(rb, "p8") == [1, 1]
    threading.Timer(0.2, lambda: backend.store("p8", "SUCCESS", SUCCESS,
                                               expires=60)).start()
    assert backend.wait("p8", timeout=5, previous=b'{"status": "STARTED"}') == SUCCESS
    backend.store("p9", "SUCCESS", SUCCESS, expires=60)
    assert backend.wait("p9", timeout=5, previous=None) == SUCCESS
    _until_subscribers(rb, "p8", [0, 0])
    assert _subscribers(rb, "p9") == [1, 1]


def test_a_prepared_wait_nobody_waits_on_is_dropped_by_the_next(
        backend: Any, rb: redis.Redis) -> None:
    backend.store("p3", "SUCCESS", SUCCESS, expires=60)
    assert backend.wait("p3", timeout=5, previous=None) == SUCCESS
    backend.prepare_wait("p4")  # never waited on
    backend.store("p4", "SUCCESS", b"p4", expires=60)
    assert backend.wait("p3", timeout=5, previous=None) == SUCCESS  # drops p4's
    backend.prepare_wait("p5")
    backend.store("p5", "SUCCESS", b"p5", expires=60)
    assert backend.wait("p5", timeout=5, previous=None) == b"p5"
    _until_subscribers(rb, "p4", [0, 0])
    assert backend.wait("p4", timeout=5, previous=None) == b"p4"  # read, not missed


def test_a_broken_subscription_connection_never_fails_the_publish(
        backend: Any, rb: redis.Redis) -> None:
    backend.store("p6", "SUCCESS", SUCCESS, expires=60)
    assert backend.wait("p6", timeout=5, previous=None) == SUCCESS
    rb.client_kill_filter(_type="pubsub")
    backend.prepare_wait("p7")  # the PubSub reconnects, or gives up quietly
    backend.store("p7", "SUCCESS", SUCCESS, expires=60)
    assert backend.wait("p7", timeout=5, previous=None) == SUCCESS


# ------------------------------------------------ scripts sent ahead as functions
def _flush_scripts(rb: redis.Redis) -> None:
    """What a restarted server holds: no cached script, none of Conveyor's functions
    (other libraries on the test server are left alone)."""
    rb.script_flush()
    for lib in rb.function_list(library="conveyor_*"):
        rb.function_delete(dict(zip(lib[::2], lib[1::2]))[b"library_name"])


def _acks_late(backend: Any, rb: redis.Redis, make_transport: Any, queue: str,
               task_id: str) -> bytes | None:
    """An ``acks_late`` task's end on the worker: its result written (sent ahead),
    then its message acked (sent ahead on the broker's connection); returns the
    result as another connection reads it once the server confirmed the ack."""
    from conveyor.interfaces import Route
    from redis_support import make_message
    t = make_transport()
    t.publish_many([(make_message(1), Route(queue), None)])
    got = t.fetch([queue], limit=1, timeout=1)
    backend.store(task_id, "SUCCESS", SUCCESS, expires=60)
    t.ack(got)
    t.flush()
    return rb.get("celery-task-meta-" + task_id)  # type: ignore[no-any-return]


def test_after_script_flush_a_result_is_stored_before_the_ack_that_follows_it(
        backend: Any, rb: redis.Redis, r: redis.Redis, make_transport: Any,
        queue: str) -> None:
    """The write is sent ahead as a function (or EVAL), never as EVALSHA: after a
    SCRIPT FLUSH an EVALSHA would be refused in a reply read later, and the ack
    sent meanwhile would land before the result it must follow."""
    assert _acks_late(backend, rb, make_transport, queue, "t30") == SUCCESS
    rb.script_flush()
    assert _acks_late(backend, rb, make_transport, queue, "t31") == SUCCESS
    assert r.hlen("unacked") == 0


def test_after_a_restart_a_connection_loads_the_function_before_its_first_write(
        backend: Any, rb: redis.Redis, r: redis.Redis, make_transport: Any,
        queue: str) -> None:
    """A restarted server holds no function; the connection the write goes on is
    a new one, which loads it again before the write (fails if a connection kept
    what it loaded across a reconnect: the write would be refused, redone late)."""
    assert _acks_late(backend, rb, make_transport, queue, "t32") == SUCCESS
    _flush_scripts(rb)
    for c in rb.client_list():
        if c["db"] in ("8", "13") and c["name"] == "" and int(c["id"]) != rb.client_id():
            rb.client_kill_filter(_id=c["id"])  # the restart drops every connection
    with pytest.raises(redis.ConnectionError):
        backend.get("t32")  # the thread's line finds its connection gone
    assert _acks_late(backend, rb, make_transport, queue, "t33") == SUCCESS
    assert rb.function_list(library="conveyor_*")


def test_a_function_deleted_under_a_connection_is_loaded_again(
        backend: Any, rb: redis.Redis) -> None:
    """FUNCTION FLUSH on a live server: the refused write is run again (by SHA)
    and the next write on that connection loads the function first."""
    backend.store("t34", "SUCCESS", SUCCESS, expires=60)
    backend.flush()
    _flush_scripts(rb)
    backend.store("t35", "SUCCESS", SUCCESS, expires=60)
    backend.flush()  # refused as an unknown function, run again by SHA
    assert rb.get("celery-task-meta-t35") == SUCCESS
    backend.store("t36", "SUCCESS", SUCCESS, expires=60)
    assert rb.get("celery-task-meta-t36") == SUCCESS  # loaded, then written in order
    assert rb.function_list(library="conveyor_*")


def test_a_server_refusing_functions_gets_eval(rb: redis.Redis, redis_server: str,
                                              monkeypatch: Any) -> None:
    """Before Redis 7, or for a user without FUNCTION rights: EVAL with the source,
    as before; asked once a connection, not before every write."""
    from conveyor_redis.connection import Line
    user = "conveyor-no-functions"
    rb.acl_setuser(user, enabled=True, nopass=True, keys=["*"], channels=["*"],
                   commands=["+@all", "-function"], reset=True)
    host = redis_server.split("://", 1)[1]
    b = RedisBackend(f"redis://{user}@{host}/13")
    try:
        sent: list[Any] = []
        real_send = Line.send_each
        monkeypatch.setattr(Line, "send_each", lambda self, packed, each: sent.extend(
            re.findall(rb"\*\d+\r\n\$\d+\r\n([A-Z]+)\r\n", b"".join(packed)))
            or real_send(self, packed, each))
        calls: list[Any] = []
        real_call = Line.call
        monkeypatch.setattr(Line, "call", lambda self, *args: calls.append(
            args[0]) or real_call(self, *args))
        b.store("t37", "SUCCESS", SUCCESS, expires=60)
        b.store("t38", "SUCCESS", SUCCESS, expires=60)
        b.flush()
        # asked once on each of the two connections results are written on
        assert sent == [b"EVAL", b"EVAL"] and calls == ["FUNCTION", "FUNCTION"]
        assert rb.get("celery-task-meta-t37") == rb.get("celery-task-meta-t38") == SUCCESS
    finally:
        b.close()
        rb.acl_deluser(user)
