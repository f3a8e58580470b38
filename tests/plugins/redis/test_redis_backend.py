"""The Redis result backend against a real Redis (db 13): Celery's keys and writes."""

from __future__ import annotations

import json
import logging
import pickle
import threading
import time
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
    write (its next call reads the reply first), other threads are not held up."""
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
    backend.get("warm-up")
    rb.client_pause(1500, all=False)  # the server holds writes for 1.5 s
    writer = threading.Thread(target=lambda: backend.store("t12", "SUCCESS", SUCCESS,
                                                           expires=60))
    writer.start()
    writer.join(5)
    time.sleep(0.02)
    held = [c for c in rb.client_list()
            if c["db"] == "13" and c["cmd"] == "eval" and "b" in c["flags"]]
    assert len(held) == 1  # the write, waiting for the pause to end
    rb.client_kill_filter(_id=held[0]["id"])  # the server drops it unexecuted
    deadline = time.monotonic() + 5
    while rb.get("celery-task-meta-t12") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rb.get("celery-task-meta-t12") == SUCCESS


def test_a_write_sent_ahead_and_the_next_command_are_one_round_trip(
        backend: Any, rb: redis.Redis, monkeypatch: Any) -> None:
    """A chord's header task stores its result (sent ahead), then joins: the join is
    written behind the result write and both replies are read after it, one round
    trip instead of two (what makes a chord's header tasks quick)."""
    backend.join_size("g13", 2, expires=60)
    backend.join_add("g13", "warm-up", 1, b"w", expires=60, claim_for=10)  # script loaded
    events: list[str] = []
    conn_class = redis.connection.AbstractConnection
    send, read = conn_class.send_packed_command, conn_class.read_response
    monkeypatch.setattr(conn_class, "send_packed_command",
                        lambda self, *a, **k: events.append("write") or send(self, *a, **k))
    monkeypatch.setattr(conn_class, "read_response",
                        lambda self, *a, **k: events.append("read") or read(self, *a, **k))
    backend.store("t13", "SUCCESS", SUCCESS, expires=60)
    join = backend.join_add("g13", "t13", 0, b"r", expires=60, claim_for=10)
    assert events == ["write", "write", "read", "read"]
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
