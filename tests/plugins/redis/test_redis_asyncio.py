"""The asyncio twins against a real Redis (transport db 8, backend db 13): one
pipelined connection for commands, one subscription for waits, surviving killed
connections, and the loop never blocked."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import uuid
import warnings
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from conveyor.interfaces import Route
from conveyor_redis import RedisBackend
from conveyor_redis.aio import AsyncRedisBackend, AsyncRedisTransport
from conveyor_redis.aiopipe import Pipe
from conveyor_redis.delay import split
from redis_support import make_message, stub_app

SEP = "\x06\x16"


def _state(status: str, n: int) -> bytes:
    return json.dumps({"status": status, "result": n}).encode()


def _kill(client: redis.Redis, kind: str) -> int:
    """Kill every connection of ``kind`` (``pubsub`` or ``normal``) but ``client``'s."""
    own = client.client_id()
    killed = 0
    for info in client.client_list(_type=kind):
        if int(info["id"]) != own:
            killed += client.client_kill_filter(_id=info["id"])
    return killed


def test_a_thousand_waits_share_two_connections_and_get_their_own_results(
        rb: redis.Redis, redis_server: str) -> None:
    ids = [str(uuid.uuid4()) for _ in range(1000)]
    writer = RedisBackend(f"{redis_server}/13")

    def store_all() -> None:
        for n, task_id in enumerate(ids):
            writer.store(task_id, "SUCCESS", _state("SUCCESS", n), expires=60)
        writer.flush()

    async def main() -> tuple[list[bytes | None], int]:
        backend = AsyncRedisBackend(f"{redis_server}/13")
        try:
            before = len(rb.client_list())
            waits = [backend.wait(t, timeout=20, previous=None) for t in ids]
            gathered = asyncio.gather(*waits)
            await asyncio.sleep(0.5)  # every wait is subscribed: results come after
            connections = len(rb.client_list()) - before
            await asyncio.to_thread(store_all)
            return await gathered, connections
        finally:
            await backend.close()

    try:
        found, connections = asyncio.run(main())
    finally:
        writer.close()
    assert [json.loads(f or b"null")["result"] for f in found] == list(range(1000))
    assert connections <= 2


def test_a_wait_survives_its_subscription_connection_being_killed(
        rb: redis.Redis, redis_server: str) -> None:
    task_id = str(uuid.uuid4())

    async def main() -> bytes | None:
        backend = AsyncRedisBackend(f"{redis_server}/13")
        try:
            waiting = asyncio.ensure_future(backend.wait(task_id, timeout=10, previous=None))
            await asyncio.sleep(0.3)
            assert _kill(rb, "pubsub") >= 1
            await asyncio.sleep(0.1)
            rb.set(f"celery-task-meta-{task_id}", _state("SUCCESS", 7))
            rb.publish(f"celery-task-meta-{task_id}", _state("SUCCESS", 7))
            started = time.monotonic()
            found = await waiting
            assert time.monotonic() - started < 3  # resubscribed and read, not the 5 s re-read
            return found
        finally:
            await backend.close()

    assert json.loads(asyncio.run(main()) or b"null")["result"] == 7


def test_progress_states_arrive_in_order_and_a_repeated_wait_sees_the_next(
        rb: redis.Redis, redis_server: str) -> None:
    task_id = str(uuid.uuid4())
    key = f"celery-task-meta-{task_id}"

    async def main() -> list[bytes]:
        backend = AsyncRedisBackend(f"{redis_server}/13")
        seen: list[bytes] = []
        previous = None
        try:
            for n in range(3):
                waiting = asyncio.ensure_future(
                    backend.wait(task_id, timeout=10, previous=previous))
                await asyncio.sleep(0.1)
                state = _state("PROGRESS" if n < 2 else "SUCCESS", n)
                rb.set(key, state)
                rb.publish(key, state)
                found = await waiting
                assert found is not None
                seen.append(found)
                previous = found
            return seen
        finally:
            await backend.close()

    assert [json.loads(s)["result"] for s in asyncio.run(main())] == [0, 1, 2]


def test_a_result_for_the_same_task_id_in_another_db_never_reaches_the_waiter(
        rb: redis.Redis, redis_server: str) -> None:
    """Pub/sub ignores db numbers: a Conveyor writer on db 12 (its own channel names
    db 12) and a Celery-style publish of db 12's value are not our db's result."""
    task_id = str(uuid.uuid4())
    key = f"celery-task-meta-{task_id}"
    other = RedisBackend(f"{redis_server}/12")

    async def main() -> tuple[bytes | None, bytes | None]:
        backend = AsyncRedisBackend(f"{redis_server}/13")
        try:
            waiting = asyncio.ensure_future(backend.wait(task_id, timeout=0.8,
                                                         previous=None))
            await asyncio.sleep(0.2)
            other.store(task_id, "SUCCESS", _state("SUCCESS", 12), expires=60)
            other.flush()
            rb.publish(key, _state("SUCCESS", 120))
            foreign = await waiting
            waiting = asyncio.ensure_future(backend.wait(task_id, timeout=5,
                                                         previous=None))
            await asyncio.sleep(0.2)
            rb.set(key, _state("SUCCESS", 13))  # a Celery-style write of our db
            rb.publish(key, _state("SUCCESS", 13))
            return foreign, await waiting
        finally:
            await backend.close()

    try:
        assert asyncio.run(main()) == (None, _state("SUCCESS", 13))
    finally:
        other.forget(task_id)
        other.close()


def test_a_wait_times_out_with_none_and_never_blocks_the_loop(
        rb: redis.Redis, redis_server: str) -> None:
    async def main() -> tuple[bytes | None, float]:
        backend = AsyncRedisBackend(f"{redis_server}/13")
        ticks: list[float] = []

        async def tick() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        ticker = asyncio.ensure_future(tick())
        try:
            found = await backend.wait(str(uuid.uuid4()), timeout=0.6, previous=None)
            gaps = [b - a for a, b in zip(ticks, ticks[1:])]
            return found, max(gaps)
        finally:
            ticker.cancel()
            await backend.close()

    found, worst_gap = asyncio.run(main())
    assert found is None and worst_gap < 0.1


def test_a_killed_command_connection_is_replaced_reads_tried_again_writes_not(
        rb: redis.Redis, redis_server: str) -> None:
    async def main() -> None:
        backend = AsyncRedisBackend(f"{redis_server}/13")
        try:
            rb.set("celery-task-meta-here", b"x")
            assert await backend.get("here") == b"x"
            assert _kill(rb, "normal") >= 1
            assert await backend.get("here") == b"x"  # a read is tried again, once
            assert _kill(rb, "normal") >= 1
            with pytest.raises(redis.ConnectionError):
                await backend.forget("here")  # a write is not: the caller decides
            assert await backend.get("here") == b"x"
        finally:
            await backend.close()

    asyncio.run(main())


def test_cancelled_calls_leave_every_other_reply_in_its_place(
        rb: redis.Redis, redis_server: str) -> None:
    for n in range(100):
        rb.set(f"celery-task-meta-k{n}", str(n))

    async def main() -> list[Any]:
        backend = AsyncRedisBackend(f"{redis_server}/13")
        try:
            calls = [asyncio.ensure_future(backend.get(f"k{n}")) for n in range(100)]
            await asyncio.sleep(0)  # written
            for call in calls[::2]:
                call.cancel()
            kept = await asyncio.gather(*calls[1::2])
            again = await asyncio.gather(*(backend.get(f"k{n}") for n in range(100)))
            return [kept, again]
        finally:
            await backend.close()

    kept, again = asyncio.run(main())
    assert kept == [str(n).encode() for n in range(1, 100, 2)]
    assert again == [str(n).encode() for n in range(100)]


def test_routed_publish_goes_where_the_blocking_one_does(r: redis.Redis,
                                                         broker_url: str) -> None:
    queue = f"t.redis.{uuid.uuid4().hex[:8]}"
    other = f"{queue}.other"
    for bound in (queue, other):
        r.sadd("_kombu.binding.tx", f"rk{SEP}{SEP}{bound}")

    async def main() -> None:
        transport = AsyncRedisTransport(broker_url, stub_app())
        try:
            await transport.publish_many([(make_message(1), Route(queue, "tx", "rk"), None),
                                          (make_message(2), Route(queue), None)])
        finally:
            await transport.close()

    asyncio.run(main())
    lowest = f"{SEP}9"  # an unprioritised message's list
    assert r.llen(queue + lowest) == 2 and r.llen(other + lowest) == 1
    assert json.loads(r.lindex(other + lowest, 0))["headers"]["n"] == 1


def test_a_routes_later_messages_are_what_the_blocking_publish_writes(
        r: redis.Redis, make_transport: Any, queue: str, broker_url: str) -> None:
    """After a route's first message (its bindings with it, in MULTI/EXEC), one
    message is one LPUSH, or a ZADD when it is due later: the same envelope, list
    and parking as the blocking transport's publish (delivery tags aside)."""
    first, later, due = make_message(0), make_message(1), make_message(2)
    when = time.time() + 600

    async def main() -> None:
        transport = AsyncRedisTransport(broker_url, stub_app())
        try:
            for message, at in ((first, None), (later, None), (due, when)):
                await transport.publish_many([(message, Route(queue), at)])
        finally:
            await transport.close()

    asyncio.run(main())
    lowest = f"{queue}{SEP}9"
    written = [json.loads(raw) for raw in r.lrange(lowest, 0, -1)]
    blocking = make_transport()
    delayed = blocking.layout.delayed
    ours = r.zrange(delayed, 0, -1, withscores=True)
    r.delete(lowest, delayed)
    for message, at in ((first, None), (later, None), (due, when)):
        blocking.publish(message, Route(queue), due=at)
    theirs = r.zrange(delayed, 0, -1, withscores=True)
    expected = [json.loads(raw) for raw in r.lrange(lowest, 0, -1)]

    def untagged(envelope: dict[str, Any]) -> dict[str, Any]:
        envelope["properties"]["delivery_tag"] = None
        return envelope

    assert [untagged(e) for e in written] == [untagged(e) for e in expected]
    assert [e["headers"]["n"] for e in written] == [1, 0]
    assert [score for _m, score in ours] == [score for _m, score in theirs] == [when]
    parked = [(split(m)[0], untagged(json.loads(split(m)[1]))) for m, _s in ours + theirs]
    assert parked[0] == parked[1] and parked[0][0] == lowest
    assert r.scard(f"_kombu.binding.{queue}") == 1


def test_concurrent_publishes_all_arrive_over_one_connection(r: redis.Redis,
                                                            broker_url: str) -> None:
    queue = f"t.redis.{uuid.uuid4().hex[:8]}"

    async def main() -> int:
        transport = AsyncRedisTransport(broker_url, stub_app())
        try:
            before = len(r.client_list())
            await asyncio.gather(*(transport.publish_many([(make_message(n), Route(queue),
                                                            None)]) for n in range(500)))
            return len(r.client_list()) - before
        finally:
            await transport.close()

    assert asyncio.run(main()) <= 1
    assert sorted(json.loads(raw)["headers"]["n"]
                  for raw in r.lrange(f"{queue}{SEP}9", 0, -1)) \
        == list(range(500))


def test_the_blocking_and_async_writers_agree(rb: redis.Redis, redis_server: str) -> None:
    """What the async twin stores, the blocking backend reads (same key, same script)."""
    task_id = str(uuid.uuid4())

    async def main() -> None:
        backend = AsyncRedisBackend(f"{redis_server}/13")
        try:
            await backend.store(task_id, "SUCCESS", _state("SUCCESS", 3), expires=60)
            await backend.store(task_id, "FAILURE", _state("FAILURE", 4), expires=60)
        finally:
            await backend.close()

    asyncio.run(main())
    reader = RedisBackend(f"{redis_server}/13")
    try:
        assert json.loads(reader.get(task_id) or b"null")["result"] == 3  # SUCCESS kept
    finally:
        reader.close()
    assert 0 < rb.ttl(f"celery-task-meta-{task_id}") <= 60


def test_a_command_the_packer_refuses_sends_nothing_and_later_replies_stay_in_order(
        rb: redis.Redis, redis_server: str) -> None:
    """An argument Redis cannot take (a dict) fails its own call before anything is
    written; the calls after it on the same connection still get their own replies."""
    key = f"aiopipe-{uuid.uuid4().hex}"

    async def main() -> list[Any]:
        pool = aioredis.ConnectionPool.from_url(f"{redis_server}/13")
        pipe = Pipe(pool, timeout=10)
        try:
            assert await pipe.call("SET", key, "before") == b"OK"
            with pytest.raises(redis.DataError):
                await pipe.call("SET", key, {"not": "packable"})
            return await asyncio.wait_for(asyncio.gather(
                pipe.call("GET", key), pipe.call("INCR", key + ":n"),
                pipe.call("GET", key)), timeout=10)
        finally:
            await pipe.close()
            await pool.disconnect()

    assert asyncio.run(main()) == [b"before", 1, b"before"]
    rb.delete(key, key + ":n")


def test_replies_read_together_reach_their_own_callers_error_replies_included(
        rb: redis.Redis, redis_server: str) -> None:
    """Two hundred calls made in one turn leave in one write and their replies come
    back together: each caller gets its own, an error reply (INCR of text) is raised
    in its own caller only, and one inside a transaction stays in its place."""
    key = f"aiopipe-{uuid.uuid4().hex}"
    rb.set(key, "text")

    async def main() -> tuple[list[Any], list[Any]]:
        pool = aioredis.ConnectionPool.from_url(f"{redis_server}/13")
        pipe = Pipe(pool, timeout=10)
        try:
            await pipe.call("PING")  # open: the calls below share the writer's write
            calls = [pipe.call("INCR", key) if n % 7 == 3 else pipe.call("ECHO", str(n))
                     for n in range(200)]
            found = await asyncio.wait_for(
                asyncio.gather(*calls, return_exceptions=True), timeout=10)
            block = await asyncio.wait_for(pipe.transaction(
                [("ECHO", "a"), ("INCR", key), ("ECHO", "b")]), timeout=10)
            return found, block
        finally:
            await pipe.close()
            await pool.disconnect()

    try:
        found, block = asyncio.run(main())
    finally:
        rb.delete(key)
    for n, reply in enumerate(found):
        if n % 7 == 3:
            assert isinstance(reply, redis.ResponseError), (n, reply)
        else:
            assert reply == str(n).encode(), (n, reply)
    assert block[0] == b"a" and isinstance(block[1], redis.ResponseError) \
        and block[2] == b"b"


def test_a_wait_still_ends_at_its_timeout_when_the_backend_closes_under_it(
        redis_server: str) -> None:
    """Closing the backend (``app.aclose()``) while a coroutine still waits leaves
    that wait bounded: it ends at its timeout with no result, as it did with a
    timer of its own (the pause's shared alarm is not cancelled by the close)."""
    async def main() -> tuple[bytes | None, float]:
        backend = AsyncRedisBackend(f"{redis_server}/13")
        waiting = asyncio.ensure_future(
            backend.wait(str(uuid.uuid4()), timeout=0.5, previous=None))
        await asyncio.sleep(0.1)
        await backend.close()
        started = time.monotonic()
        try:
            return await asyncio.wait_for(waiting, timeout=5), time.monotonic() - started
        finally:
            await backend.close()  # what the wait's last look opened

    found, took = asyncio.run(main())
    assert found is None and took < 2


def _store(writer: RedisBackend, results: dict[str, bytes]) -> None:
    """What a worker does: each result stored (and published) by the script."""
    for task_id, state in results.items():
        writer.store(task_id, "SUCCESS", state, expires=60)
    writer.flush()


def _subscriptions(client: redis.Redis) -> list[tuple[int, int]]:
    """Each subscription connection's id and how many channels it is subscribed to."""
    return [(int(info["id"]), int(info["sub"]))
            for info in client.client_list(_type="pubsub")]


def test_finished_waits_send_no_unsubscribe_and_their_channels_are_dropped_in_bulk(
        rb: redis.Redis, redis_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wait that ends leaves its task's channels subscribed (no UNSUBSCRIBE: only
    its own task publishes there); once ``_ROTATE_AFTER`` are left the subscription
    connection is replaced by one subscribed to the channels still waited on only,
    and a wait that spans the replacement still gets its result."""
    monkeypatch.setattr("conveyor_redis.aio._ROTATE_AFTER", 40)
    url = f"{redis_server}/13"
    writer = RedisBackend(url)
    spanning = str(uuid.uuid4())

    async def main() -> tuple[list[bytes | None], bytes | None, list[tuple[int, int]],
                              int]:
        backend = AsyncRedisBackend(url)
        try:
            before = int(rb.info("commandstats").get("cmdstat_unsubscribe",
                                                     {}).get("calls", 0))
            long = asyncio.ensure_future(backend.wait(spanning, timeout=20, previous=None))
            found: list[bytes | None] = []
            counts = []
            for batch in range(3):  # 3 x 30 waits: the connection is replaced twice
                ids = [str(uuid.uuid4()) for _ in range(30)]
                waits = asyncio.gather(*(backend.wait(t, timeout=10, previous=None)
                                         for t in ids))
                await asyncio.sleep(0.2)
                await asyncio.to_thread(_store, writer, {
                    t: _state("SUCCESS", batch * 30 + n) for n, t in enumerate(ids)})
                found += await waits
                await asyncio.sleep(0.2)
                counts += _subscriptions(rb)
            await asyncio.to_thread(_store, writer, {spanning: _state("SUCCESS", -1)})
            after = int(rb.info("commandstats").get("cmdstat_unsubscribe",
                                                    {}).get("calls", 0))
            return found, await long, counts, after - before
        finally:
            await backend.close()

    try:
        found, spanned, counts, unsubscribes = asyncio.run(main())
    finally:
        writer.close()
    assert [json.loads(f or b"null")["result"] for f in found] == list(range(90))
    assert spanned == _state("SUCCESS", -1)
    assert unsubscribes == 0
    # two channels a task: never more than 40 left (and 30 waiting, and the spanning
    # one) on a connection, though 90 waits ended; the connection was replaced
    assert len(counts) == 3 and max(sub for _id, sub in counts) <= 2 * (40 + 30 + 1)
    assert counts[0][1] == 2 * 31 and len({conn for conn, _sub in counts}) >= 2


def test_a_loop_that_ends_without_close_leaves_no_connection_open(
        rb: redis.Redis, redis_server: str) -> None:
    async def main() -> None:
        backend = AsyncRedisBackend(f"{redis_server}/13")  # never closed
        rb.set("celery-task-meta-left", b"x")
        assert await backend.get("left") == b"x"
        assert await backend.wait(str(uuid.uuid4()), timeout=0.2, previous=None) is None

    gc.collect()  # sockets earlier tests left for the collector are not this loop's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []
