"""The Redis transport against a real Redis (db 8): every method, kombu's layout."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import redis
from conveyor.exceptions import ConfigurationError, OperationalError, UnknownOptionError
from conveyor.interfaces import Route
from conveyor_redis import RedisTransport
from conveyor_redis.errors import RedisConnectionError
from redis_support import make_message, wait_for

SEP = "\x06\x16"


def ids(deliveries: list[Any]) -> list[int]:
    return [d.message.headers["n"] for d in deliveries]


# ----------------------------------------------------------------- options
def test_unknown_option_is_refused_with_a_suggestion(make_transport: Any) -> None:
    with pytest.raises(UnknownOptionError, match="Did you mean 'visibility_timeout'"):
        make_transport(visiblity_timeout=5)


@pytest.mark.parametrize(("options", "match"), [
    ({"visibility_timeout": 0}, "positive"),
    ({"socket_timeout": 0.5, "polling_interval": 1.0}, "must exceed"),
    ({"delayed_delivery": "later"}, "delayed_delivery"),  # checked by the core
    ({"priority_steps": [1, 2]}, "priority_steps"),
])
def test_bad_option_values_say_what_to_do(make_transport: Any, options: dict[str, Any],
                                          match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        make_transport(**options)


def test_socket_url_form_is_understood() -> None:
    from conveyor_redis.connection import driver_url
    assert driver_url("redis+socket:///tmp/r.sock?virtual_host=3") == "unix:///tmp/r.sock?db=3"
    with pytest.raises(ConfigurationError, match="redis://"):
        driver_url("http://x:secret@h/0")


# ----------------------------------------------------------------- publish / fetch
def test_publish_writes_kombu_layout(make_transport: Any, r: redis.Redis, queue: str) -> None:
    t = make_transport()
    t.connect()
    t.publish(make_message(1), Route(queue))
    t.publish(make_message(2, priority=9), Route(queue))
    assert r.llen(f"{queue}{SEP}9") == 1 and r.llen(queue) == 1
    member = f"{queue}{SEP}{SEP}{queue}".encode()
    assert r.smembers(f"_kombu.binding.{queue}") == {member}
    assert r.smembers(f"_kombu.binding_permanent.{queue}") == {member}
    env = json.loads(r.lindex(queue, 0))
    assert env["properties"]["priority"] == 0
    assert env["properties"]["delivery_info"] == {"exchange": "", "routing_key": queue}
    assert t.depth(queue) == 2


def test_fetch_returns_promptly_when_empty_and_wakes_on_publish(make_transport: Any,
                                                                queue: str) -> None:
    t = make_transport()
    start = time.monotonic()
    assert t.fetch([queue], limit=5, timeout=0.3) == []
    assert 0.25 <= time.monotonic() - start < 1.0
    assert t.fetch([queue], limit=5, timeout=0) == []

    other = make_transport()
    threading.Timer(0.2, lambda: other.publish(make_message(7), Route(queue))).start()
    start = time.monotonic()
    got = t.fetch([queue], limit=5, timeout=5)
    assert ids(got) == [7] and time.monotonic() - start < 1.0
    assert got[0].deliveries == 1 and not got[0].redelivered
    threading.Timer(0.3, lambda: other.publish(make_message(8), Route(queue))).start()
    assert ids(t.fetch([queue], limit=1, timeout=None)) == [8]  # waits until one comes


def test_fetch_takes_up_to_limit_in_one_round_trip(make_transport: Any, r: redis.Redis,
                                                   queue: str, monkeypatch: Any) -> None:
    from conveyor_redis.connection import Line
    t = make_transport()
    t.publish_many([(make_message(i), Route(queue), None) for i in range(10)])
    calls: list[Any] = []
    real = Line.call
    monkeypatch.setattr(Line, "call", lambda self, *args: calls.append(
        args[0]) or real(self, *args))
    t._next_sweep = time.time() + 60
    got = t.fetch([queue], limit=4, timeout=1)
    assert ids(got) == [0, 1, 2, 3]
    assert calls == ["EVALSHA"]
    assert r.hlen("unacked") == 4 and r.zcard("unacked_index") == 4
    before = r.info("commandstats")
    t.ack(got[:2])
    # The ack is written without waiting; its replies are read with the next command.
    assert calls == ["EVALSHA"] and len(t.line.ahead) == 3
    t.ack(got[2:])
    assert calls == ["EVALSHA"] and len(t.line.ahead) == 3
    assert t.depth(queue) == 6 and not t.line.ahead
    assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0
    # plain deletes, no script: two acks, each one HDEL of the record, one ZREM of
    # the index entry and one HDEL of the delivery count
    after = r.info("commandstats")
    delta = {k: after[k]["calls"] - before.get(k, {"calls": 0})["calls"]
             for k in ("cmdstat_hdel", "cmdstat_zrem")}
    assert delta == {"cmdstat_hdel": 4, "cmdstat_zrem": 2}
    assert after.get("cmdstat_fcall") == before.get("cmdstat_fcall")


def test_publish_many_is_one_round_trip_and_fifo(make_transport: Any, queue: str,
                                                 monkeypatch: Any) -> None:
    from conveyor_redis.connection import Line
    t = make_transport()
    t._next_move = time.time() + 60
    writes: list[int] = []
    real = Line.pipeline
    monkeypatch.setattr(Line, "pipeline",
                        lambda self, cmds: writes.append(len(cmds)) or real(self, cmds))
    monkeypatch.setattr(Line, "call", lambda self, *args: pytest.fail("extra call"))
    batch = [(make_message(i, priority=(None if i % 2 else 9)), Route(queue), None)
             for i in range(2500)]
    batch.append((make_message(9999), Route(queue), time.time() + 60))
    t.publish_many(batch)
    assert len(writes) == 1
    monkeypatch.undo()
    assert t.depth(queue) == 2500
    got = t.fetch([queue], limit=3000, timeout=1)
    assert ids(got) == [i for i in range(2500) if i % 2 == 0] + \
        [i for i in range(2500) if i % 2]


def test_priority_order_end_to_end(make_transport: Any, queue: str) -> None:
    """Higher Conveyor priority first; four levels (0, 1-3, 4-6, 7+); FIFO within."""
    t = make_transport()
    sent = [(0, None), (1, 0), (2, 200), (3, 2), (4, 5), (5, 7), (6, 9), (7, 3),
            (8, 6), (9, 1), (10, 4)]
    for n, p in sent:
        t.publish(make_message(n, priority=p), Route(queue))
    got = t.fetch([queue], limit=20, timeout=1)
    assert ids(got) == [2, 5, 6, 4, 8, 10, 3, 7, 9, 0, 1]
    # read back as sent, capped at 9 (None and 0 are both the lowest level)
    assert [d.message.priority for d in got] == [9, 7, 9, 5, 6, 4, 2, 3, 1, 0, 0]


def test_several_queues_polled_step_by_step(make_transport: Any, queue: str) -> None:
    t = make_transport()
    other = queue + ".b"
    t.publish(make_message(1), Route(queue))
    t.publish(make_message(2, priority=9), Route(other))
    t.publish(make_message(3, priority=9), Route(queue))
    got = t.fetch([queue, other], limit=10, timeout=1)
    assert ids(got)[:2] in ([3, 2], [2, 3]) and ids(got)[2] == 1
    assert {d.queue for d in got} == {queue, other}


# ----------------------------------------------------------------- settling
def test_ack_removes_every_trace(make_transport: Any, r: redis.Redis, queue: str) -> None:
    t = make_transport()
    for i in range(3):
        t.publish(make_message(i), Route(queue))
    got = t.fetch([queue], limit=3, timeout=1)
    t.started(got)
    t.flush()  # sent ahead too
    assert r.hlen("unacked") == 3 and r.hlen("_conveyor.deliveries") == 3
    entry = json.loads(r.hget("unacked", got[0].tag.tag))
    assert entry[1:] == ["", queue] and entry[0]["headers"]["n"] == 0
    t.ack(got)
    t.flush()  # the ack was sent ahead; another connection checks it
    assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0
    assert r.hlen("_conveyor.deliveries") == 0


def test_ack_and_start_settles_some_and_charges_others(make_transport: Any,
                                                       r: redis.Redis, queue: str) -> None:
    """The processes pool acks the jobs its children began while it charges the
    ones it hands them: one call, the same effect as ``ack`` then ``started``."""
    t = make_transport()
    for i in range(4):
        t.publish(make_message(i), Route(queue))
    got = t.fetch([queue], limit=4, timeout=1)
    t.started(got[:2])
    t.ack_and_start(got[:2], got[2:])
    t.ack_and_start(got[:2], got[2:])  # run again (a lost reply): changes nothing
    t.flush()
    assert sorted(r.hkeys("unacked")) == sorted(d.tag.tag.encode() for d in got[2:])
    assert r.zcard("unacked_index") == 2
    assert r.hgetall("_conveyor.deliveries") == {d.tag.tag.encode(): b"1" for d in got[2:]}
    t.ack_and_start(got[2:], [])
    t.flush()
    assert r.hlen("unacked") == 0 and r.hlen("_conveyor.deliveries") == 0


def test_ack_refused_for_a_forgotten_script_is_run_again(make_transport: Any,
                                                         r: redis.Redis,
                                                         queue: str) -> None:
    t = make_transport()
    t.publish(make_message(1), Route(queue))
    got = t.fetch([queue], limit=1, timeout=1)
    r.script_flush()  # as after a server restart: the ack's reply is NOSCRIPT
    t.ack(got)
    assert t.depth(queue) == 0  # the next command reads the refusal and acks again
    assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0


def test_an_ack_lost_with_its_connection_is_run_by_the_next_one(make_transport: Any,
                                                                r: redis.Redis,
                                                                queue: str) -> None:
    """The ack goes out without waiting; when the connection is lost before the
    server ran it, the next transport for that Redis runs it: nothing stays leased
    for the visibility timeout to run a finished task again."""
    t = make_transport()
    t.publish(make_message(1), Route(queue))
    t.publish(make_message(2), Route(queue))
    # A connection's first ack loads the ack function there (one round trip a
    # connection, waited for): done before the pause, or it would wait for it.
    t.ack(t.fetch([queue], limit=1, timeout=1))
    got = t.fetch([queue], limit=1, timeout=1)
    r.client_pause(1000, all=False)  # the server holds writes: the ack cannot run yet
    start = time.monotonic()
    t.ack(got)
    assert time.monotonic() - start < 0.5  # did not wait for the reply
    t.abandon()  # connection lost (the worker reconnects) with the ack unconfirmed
    time.sleep(max(0.0, start + 1.1 - time.monotonic()))  # the pause is over
    assert r.hlen("unacked") == 1  # the server never ran it
    fresh = make_transport()
    assert fresh.depth(queue) == 0
    assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0


def test_requeue_gives_back_without_counting(make_transport: Any, queue: str) -> None:
    t = make_transport()
    t.publish(make_message(1), Route(queue))
    t.publish(make_message(2), Route(queue))
    first = t.fetch([queue], limit=1, timeout=1)[0]
    t.requeue(first)
    got = t.fetch([queue], limit=5, timeout=1)
    assert ids(got) == [2, 1]
    assert got[1].deliveries == 1


def test_visibility_timeout_restores_and_counts(make_transport: Any, r: redis.Redis,
                                                queue: str) -> None:
    t = make_transport(visibility_timeout=1)
    t.publish(make_message(1), Route(queue))
    t.publish(make_message(2), Route(queue))
    held = t.fetch([queue], limit=2, timeout=1)
    t.started(held)
    assert t.depth(queue) == 0
    keeper = make_transport(visibility_timeout=1)
    deadline = time.monotonic() + 1.6
    while time.monotonic() < deadline:  # a live worker renews n=2 only
        keeper.extend([held[1]])
        time.sleep(0.2)
    try:
        again = wait_for(lambda: t.fetch([queue], limit=5, timeout=0.3), 3, what="restore")
    except AssertionError as exc:  # say what Redis held, to debug a slow machine
        raise AssertionError(f"{exc}; keys={r.keys('*')} "
                             f"index={r.zrange('unacked_index', 0, -1, withscores=True)} "
                             f"now={time.time()}") from exc
    assert ids(again) == [1]
    assert again[0].redelivered and again[0].deliveries == 2
    assert again[0].message.headers["redelivered"] is True
    assert again[0].tag.tag == held[0].tag.tag  # kombu keeps the delivery tag
    assert r.hexists("unacked", held[1].tag.tag)


def test_only_started_deliveries_are_charged(make_transport: Any, r: redis.Redis,
                                             queue: str) -> None:
    """A delivery is charged when its task starts: one that only waited in a dead
    worker's prefetch comes back uncharged, and charging twice (a reply lost with
    its connection runs ``started`` again) counts once."""
    t = make_transport(visibility_timeout=1)
    t.publish(make_message(1), Route(queue))
    t.publish(make_message(2), Route(queue))
    ran, waited = t.fetch([queue], limit=2, timeout=1)
    t.started([ran])
    t.started([ran])
    t.abandon()  # the worker died holding both; their leases lapse
    sweeper = make_transport(visibility_timeout=1)
    again = wait_for(lambda: sweeper.fetch([queue], limit=5, timeout=0.3), 4,
                     what="restore")
    assert sorted((d.message.headers["n"], d.deliveries) for d in again) == [(1, 2), (2, 1)]
    assert r.hget("_conveyor.deliveries", waited.tag.tag) is None
    sweeper.ack(again)
    sweeper.flush()
    assert r.hlen("_conveyor.deliveries") == 0


def test_restores_an_entry_a_celery_worker_left(make_transport: Any, r: redis.Redis,
                                                queue: str) -> None:
    """kombu's entry ``[envelope, exchange, routing_key]`` goes back via the binding."""
    producer = make_transport()
    producer.publish(make_message(5, priority=9), Route(queue))
    raw = r.rpop(queue)
    env = json.loads(raw)
    env["properties"]["delivery_info"] = {"exchange": queue, "routing_key": queue}
    tag = env["properties"]["delivery_tag"]
    r.hset("unacked", tag, json.dumps([env, queue, queue]))
    r.zadd("unacked_index", {tag: time.time() - 10})
    t = make_transport(visibility_timeout=2)
    got = t.fetch([queue], limit=1, timeout=1)
    assert ids(got) == [5] and got[0].redelivered
    assert got[0].exchange == queue


def test_close_gives_held_deliveries_back(make_transport: Any, r: redis.Redis,
                                          queue: str) -> None:
    t = make_transport()
    for i in range(3):
        t.publish(make_message(i), Route(queue))
    got = t.fetch([queue], limit=2, timeout=1)
    t.ack(got[:1])
    t.close()
    assert r.hlen("unacked") == 0
    again = make_transport().fetch([queue], limit=5, timeout=1)
    assert ids(again) == [1, 2]


def test_close_gives_held_deliveries_back_in_the_order_they_came(
        make_transport: Any, queue: str) -> None:
    """A worker that stops hands back what it had prefetched: the next worker takes
    it first-in, first-out, as if it had never been taken."""
    t = make_transport()
    for i in range(5):
        t.publish(make_message(i), Route(queue))
    assert ids(t.fetch([queue], limit=3, timeout=1)) == [0, 1, 2]
    t.close()
    assert ids(make_transport().fetch([queue], limit=5, timeout=1)) == [0, 1, 2, 3, 4]


def test_abandon_keeps_leases_for_a_new_connection_to_ack(make_transport: Any,
                                                          r: redis.Redis,
                                                          queue: str) -> None:
    """After a lost connection the worker abandons the transport: running tasks stay
    leased (nothing given back) and are acked through the next transport."""
    t = make_transport()
    t.publish(make_message(1), Route(queue))
    running = t.fetch([queue], limit=1, timeout=1)
    t.abandon()
    assert t.depth(queue) == 0 and r.hlen("unacked") == 1
    fresh = make_transport()
    fresh.ack(running)
    fresh.flush()
    assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0


# ----------------------------------------------------------------- delayed delivery
def test_publish_due_parks_then_moves_back_once(make_transport: Any, r: redis.Redis,
                                                queue: str) -> None:
    t = make_transport()
    t.publish(make_message(1), Route(queue), due=time.time() + 0.6)
    t.publish(make_message(2), Route(queue), due=time.time() - 1)  # already due
    assert t.depth(queue) == 1 and r.zcard("_conveyor.delayed") == 1
    from conveyor_redis.delay import split
    list_key, raw = split(r.zrange("_conveyor.delayed", 0, 0)[0])
    assert list_key == f"{queue}{SEP}9" and json.loads(raw)["headers"]["n"] == 1
    assert ids(t.fetch([queue], limit=5, timeout=0)) == [2]
    start = time.monotonic()
    got = t.fetch([queue], limit=5, timeout=3)
    assert ids(got) == [1] and 0.3 < time.monotonic() - start < 1.5
    assert r.zcard("_conveyor.delayed") == 0


def test_due_messages_move_exactly_once_with_racing_consumers(make_transport: Any,
                                                              r: redis.Redis,
                                                              queue: str) -> None:
    producer = make_transport()
    due = time.time() + 0.5
    producer.publish_many([(make_message(i), Route(queue), due) for i in range(300)])
    seen: list[int] = []
    lock = threading.Lock()

    def consume() -> None:
        t = make_transport()
        end = time.monotonic() + 3
        while time.monotonic() < end:
            got = t.fetch([queue], limit=7, timeout=0.2)
            t.ack(got)
            with lock:
                seen.extend(ids(got))

    threads = [threading.Thread(target=consume) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(seen) == list(range(300))


def test_defer_parks_with_the_ack_and_never_restores_early(make_transport: Any,
                                                           r: redis.Redis,
                                                           queue: str) -> None:
    t = make_transport(visibility_timeout=0.5)
    t.publish(make_message(1), Route(queue))
    d = t.fetch([queue], limit=1, timeout=1)[0]
    t.defer(d, time.time() + 2.0)
    assert r.hlen("unacked") == 0 and r.zcard("_conveyor.delayed") == 1
    assert t.fetch([queue], limit=1, timeout=1.2) == []  # sweeps ran: nothing restored
    got = t.fetch([queue], limit=1, timeout=5)
    assert ids(got) == [1] and got[0].deliveries == 1
    t.ack(got)
    assert t.fetch([queue], limit=1, timeout=0.6) == []


def test_defer_of_a_lost_lease_does_not_duplicate(make_transport: Any, r: redis.Redis,
                                                  queue: str) -> None:
    t = make_transport()
    t.publish(make_message(1), Route(queue))
    d = t.fetch([queue], limit=1, timeout=1)[0]
    r.hdel("unacked", d.tag.tag)  # as if a sweep had restored it meanwhile
    t.defer(d, time.time() + 60)
    assert r.zcard("_conveyor.delayed") == 0


# ----------------------------------------------------------------- dead letters
def test_dead_letters_are_durable_listed_requeued_purged(make_transport: Any,
                                                         r: redis.Redis, queue: str) -> None:
    t = make_transport()
    for i in range(3):
        t.publish(make_message(i, priority=9), Route(queue))
    got = t.fetch([queue], limit=3, timeout=1)
    before = time.time()
    for d in got:
        t.dead_letter(d, f"DecodeError: bad {d.message.headers['n']}")
    assert r.hlen("unacked") == 0 and t.depth(queue) == 0
    record = json.loads(r.hget(f"_conveyor.dead.{queue}", got[0].tag.tag))
    assert record["queue"] == queue and record["reason"] == "DecodeError: bad 0"
    assert record["envelope"]["headers"]["n"] == 0 and record["time"] >= before
    dead = make_transport().dead_letters()
    assert [d.message.headers["n"] for d in dead] == [0, 1, 2]
    assert dead[0].id == got[0].tag.tag and dead[0].message.priority == 9
    assert t.dead_letters(queue + ".other") == []

    assert t.requeue_dead([dead[1].id]) == 1
    assert t.requeue_dead([dead[1].id]) == 0
    again = t.fetch([queue], limit=5, timeout=1)
    assert ids(again) == [1] and again[0].deliveries == 1 and again[0].message.priority == 9
    t.ack(again)
    assert t.requeue_dead(queue=queue) == 2
    assert t.depth(queue) == 2 and t.dead_letters() == []
    for d in t.fetch([queue], limit=5, timeout=1):
        t.dead_letter(d, "again")
    assert t.purge_dead(queue + ".other") == 0
    assert t.purge_dead() == 2 and t.dead_letters() == []
    assert not r.exists("_conveyor.dead")


def test_garbage_on_the_queue_is_delivered_for_dead_lettering(make_transport: Any,
                                                              r: redis.Redis,
                                                              queue: str) -> None:
    t = make_transport()
    r.lpush(queue, b"\x00not an envelope")
    (d,) = t.fetch([queue], limit=1, timeout=1)
    assert d.message.headers == {} and d.message.body == b"\x00not an envelope"
    assert d.tag.tag.startswith("conveyor-")
    t.dead_letter(d, "DecodeError: not a task")
    (dead,) = t.dead_letters(queue)
    assert dead.message.body == b"\x00not an envelope" and r.hlen("unacked") == 0
    assert t.requeue_dead() == 1 and r.lindex(queue, 0) == b"\x00not an envelope"


# ----------------------------------------------------------------- purge, prefix, errors
def test_purge_counts_every_step(make_transport: Any, queue: str) -> None:
    t = make_transport()
    for p in (None, 1, 5, 9, 9):
        t.publish(make_message(0, priority=p), Route(queue))
    assert t.purge(queue) == 5 and t.depth(queue) == 0
    assert t.purge(queue) == 0


def test_global_keyprefix_prefixes_every_key(make_transport: Any, r: redis.Redis,
                                             queue: str) -> None:
    t = make_transport(global_keyprefix="pfx:", visibility_timeout=30)
    t.publish(make_message(1), Route(queue))
    t.publish(make_message(2), Route(queue), due=time.time() + 30)
    d = t.fetch([queue], limit=1, timeout=1)[0]
    t.dead_letter(d, "x")
    assert all(k.startswith(b"pfx:") for k in r.keys("*")), r.keys("*")
    assert r.exists("pfx:_conveyor.delayed", f"pfx:_conveyor.dead.{queue}") == 2


def test_lost_brpop_claim_is_pushed_back(make_transport: Any, r: redis.Redis, queue: str,
                                         monkeypatch: Any) -> None:
    """A message BRPOP took whose claim failed is returned, not lost."""
    t = make_transport()
    real = t._claim
    failures = [1]

    def flaky(poll: Any, limit: int, pre: Any) -> Any:
        if pre is not None and failures:  # the claim of a message BRPOP took
            failures.pop()
            raise redis.ConnectionError("connection lost")
        return real(poll, limit, pre)

    monkeypatch.setattr(t, "_claim", flaky)
    threading.Timer(0.2, lambda: make_transport().publish(make_message(3),
                                                           Route(queue))).start()
    got = t.fetch([queue], limit=1, timeout=3)
    assert ids(got) == [3] and not failures
    assert r.hlen("unacked") == 1
    # an orphan left by an abandoned transport is returned by the next one
    from conveyor_redis import consumer
    t.ack(got)
    t.flush()
    consumer._ORPHANS.setdefault(t.url, []).append((queue, got[0].tag.raw))
    again = make_transport().fetch([queue], limit=1, timeout=1)
    assert ids(again) == [3] and not consumer._ORPHANS[t.url]


def _behind_a_proxy(make_transport: Any, queue: str, messages: int) -> tuple[Any, str, Any]:
    """A TCP proxy to Redis, its URL and a transport through it that has swept
    once, with ``messages`` published to ``queue`` (0, 1, …) by another one."""
    from conveyor_pytest.proxy import TcpProxy
    from redis_support import HOST, PORT
    proxy = TcpProxy(HOST, PORT)
    url = f"redis://127.0.0.1:{proxy.port}/8"
    t = make_transport(url)
    assert t.fetch([queue], limit=1, timeout=0) == []  # its first sweep is done
    publisher = make_transport()
    for n in range(messages):
        publisher.publish(make_message(n), Route(queue))
    return proxy, url, t


def test_a_claim_whose_reply_was_lost_is_given_back_at_once(
        make_transport: Any, r: redis.Redis, queue: str) -> None:
    """The connection breaks after Redis ran a claim and before its reply came: the
    claimed messages are leased to nobody. The next fetch gives them back (marked
    redelivered, as a lapsed lease is), instead of leaving them leased until the
    visibility timeout (an hour by default) brings them back."""
    proxy, url, t = _behind_a_proxy(make_transport, queue, 3)
    proxy.drop_replies()
    failed: list[BaseException] = []

    def fetch() -> None:
        try:
            t.fetch([queue], limit=3, timeout=0.5)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            failed.append(exc)

    fetching = threading.Thread(target=fetch)
    fetching.start()
    wait_for(lambda: r.hlen("unacked") == 3, 5, what="the claim to run on the server")
    proxy.cut()
    fetching.join(10)
    assert not fetching.is_alive()
    assert failed and isinstance(failed[0], t.connection_errors)
    assert r.llen(queue) == 0  # all three are leased, and nobody knows it
    proxy.restore()
    again = make_transport(url).fetch([queue], limit=3, timeout=1)
    assert sorted(ids(again)) == [0, 1, 2]
    assert all(d.redelivered for d in again)
    assert r.hlen("unacked") == 3 and r.llen(queue) == 0  # leased once, to this fetch


def test_a_claim_sent_ahead_whose_reply_was_lost_is_given_back_and_its_ack_lands(
        make_transport: Any, r: redis.Redis, queue: str) -> None:
    """A solo worker sends its next claim with the last task's ack; the connection
    breaks after Redis ran both and before the replies came. The ack is sent again,
    and what the claim took (never seen by the worker) is given back by the next
    fetch, not left leased until the visibility timeout."""
    proxy, _, t = _behind_a_proxy(make_transport, queue, 5)
    first = t.fetch([queue], limit=1, timeout=1)
    t.ack_and_fetch_ahead(first, [queue], 1)  # (the claim's function loaded here)
    second = t.fetch([queue], limit=1, timeout=1)
    assert ids(first + second) == [0, 1]
    proxy.drop_replies()
    t.ack_and_fetch_ahead(second, [queue], 3)
    # 2-4 leased to nobody (the ack of 1 went first, in the same write)
    wait_for(lambda: r.hlen("unacked") == 3, 5, what="the claim sent ahead to run")
    assert not any(r.llen(key) for key in r.scan_iter(f"{queue}*"))  # all taken
    proxy.cut()
    proxy.restore()
    again = t.fetch([queue], limit=3, timeout=5)
    assert sorted(ids(again)) == [2, 3, 4]
    assert all(d.redelivered for d in again)
    assert r.hlen("unacked") == 3 and r.llen(queue) == 0  # leased once, to this fetch
    t.ack(again)
    t.flush()
    assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0


def test_a_claim_sent_ahead_and_read_after_its_leases_lapsed_runs_nothing_twice(
        make_transport: Any, r: redis.Redis, queue: str) -> None:
    """The task a claim was sent ahead with runs past the visibility timeout; nobody
    renewed the claim's leases meanwhile (the worker did not know them yet). What
    another consumer took after they lapsed is not returned again; what is still
    this claim's is renewed before it is returned, so no sweep takes it after."""
    t = make_transport(visibility_timeout=1)
    other = make_transport(visibility_timeout=1)
    for n in range(4):
        t.publish(make_message(n), Route(queue))
    first = t.fetch([queue], limit=1, timeout=1)
    t.ack_and_fetch_ahead(first, [queue], 1)  # takes 1, then its task runs long
    time.sleep(1.3)
    taken = other.fetch([queue], limit=1, timeout=1)  # its sweep restores 1: ...
    assert ids(taken) == [1]  # ... and it takes it
    second = t.fetch([queue], limit=1, timeout=1)
    assert ids(second) == [2]  # not 1 again: the next message
    other.ack(taken)
    t.ack_and_fetch_ahead(second, [queue], 1)  # takes 3, then its task runs long
    time.sleep(1.3)  # lapsed, but nobody swept yet
    late = t.fetch([queue], limit=1, timeout=1)
    assert ids(late) == [3]  # still this claim's: returned, renewed
    assert other.fetch([queue], limit=1, timeout=0.3) == []  # its sweep finds it live
    t.ack(late)
    t.flush()
    assert r.hlen("unacked") == 0


def test_unreachable_redis_names_the_masked_url(queue: str) -> None:
    from redis_support import stub_app
    t = RedisTransport("redis://:s3cret@127.0.0.1:1/0", stub_app(socket_timeout=2))
    with pytest.raises(redis.ConnectionError):  # raw: the core's retry policy wants it
        t.connect()
    with pytest.raises(RedisConnectionError) as info:
        t.fetch([queue], limit=1, timeout=0.3)
    assert isinstance(info.value, OperationalError)
    assert isinstance(info.value, t.connection_errors)
    assert "s3cret" not in str(info.value) and "127.0.0.1:1" in str(info.value)


def test_wrong_key_type_is_an_operational_error(make_transport: Any, r: redis.Redis,
                                                queue: str) -> None:
    r.set(queue, "not a list")
    with pytest.raises(OperationalError, match="WRONGTYPE"):
        make_transport().publish(make_message(1, priority=9), Route(queue))


def test_a_refused_push_to_a_declared_queue_is_an_operational_error_naming_it(
        make_transport: Any, r: redis.Redis, queue: str) -> None:
    # Once the route is declared a publish is one LPUSH, its errors wrapped without
    # translate() (perf), as translate() wraps them.
    t = make_transport()
    t.publish(make_message(1, priority=9), Route(queue))  # on the list named queue
    r.delete(queue)
    r.set(queue, "not a list")
    with pytest.raises(OperationalError, match=f"failed while publishing to queue "
                                               f"'{queue}': WRONGTYPE") as info:
        t.publish(make_message(2, priority=9), Route(queue))
    assert isinstance(info.value.__cause__, redis.ResponseError)
    r.delete(queue)
    t.close()


def test_a_refused_batch_names_it_and_an_unreachable_one_stays_retryable(
        make_transport: Any, r: redis.Redis, queue: str) -> None:
    # What translate() does around publish_many: a Redis error names what was being
    # done (its cause kept); a connection error passes through raw, for the core's
    # retry policy to retry.
    from redis_support import stub_app
    t = make_transport()
    t.publish(make_message(1, priority=9), Route(queue))
    r.delete(queue)
    r.set(queue, "not a list")
    batch = [(make_message(n, priority=9), Route(queue), None) for n in (2, 3)]
    with pytest.raises(OperationalError, match="failed while publishing 2 messages: "
                                               "WRONGTYPE") as info:
        t.publish_many(batch)
    assert isinstance(info.value.__cause__, redis.ResponseError)
    r.delete(queue)
    t.close()
    gone = RedisTransport("redis://:s3cret@127.0.0.1:1/0", stub_app(socket_timeout=2))
    with pytest.raises(redis.ConnectionError) as raw:
        gone.publish_many(batch)
    assert not isinstance(raw.value, OperationalError)


def test_a_publish_error_outside_retry_errors_is_still_operational_error() -> None:
    """``retry_errors`` narrows what is retried, not what the caller gets: a refused
    connection is reported as OperationalError naming the masked URL, not retried."""
    from conveyor import Conveyor
    app = Conveyor("h15-unretried", broker="redis://:s3cret@127.0.0.1:1/0",
                   backend="memory://h15-unretried", broker_connection_timeout=2)
    with pytest.raises(OperationalError) as info:
        app.send_task("any.task", retry_policy={"retry_errors": (TimeoutError,),
                                                "max_retries": 5})
    text = str(info.value)
    assert "s3cret" not in text and "redis://:**@127.0.0.1:1/0" in text
    assert "not retried" in text and isinstance(info.value.__cause__, redis.ConnectionError)
    app.close()


def test_line_reads_replies_as_redis_py_does(r: Any, broker_url: str) -> None:
    """A Line reads replies straight from hiredis (``read_reply``): values of every
    shape, one past the parser's read buffer, an error reply raised as redis-py's
    exception with the connection still usable, and a connection the server closed
    raised as a connection error, the next call reconnecting."""
    from conveyor_redis.connection import CONNECTION_ERRORS, Line, client_for

    line = Line(client_for(broker_url).connection_pool)
    try:
        big = b"x" * 200_000  # several reads of the 64 KiB buffer
        assert line.call("SET", "t.redis.big", big) == b"OK"
        assert line.call("GET", "t.redis.big") == big
        assert line.pipeline([("RPUSH", "t.redis.l", "a", "b"), ("LRANGE", "t.redis.l", 0, -1),
                              ("GET", "t.redis.none")]) == [2, [b"a", b"b"], None]
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            line.call("GET", "t.redis.l")
        assert line.call("PING") == b"PONG"  # the same connection, still in step
        with pytest.raises(redis.exceptions.NoScriptError):
            line.call("EVALSHA", "0" * 40, 0)
        assert r.client_kill_filter(_id=line.call("CLIENT", "ID")) == 1
        with pytest.raises(CONNECTION_ERRORS):
            line.call("PING")
        assert line.call("PING") == b"PONG"  # dropped, and taken again
    finally:
        line.close()
