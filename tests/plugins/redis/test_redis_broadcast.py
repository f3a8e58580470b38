"""Broadcasts on Redis are kombu's: what Conveyor broadcasts a kombu consumer receives,
and what kombu publishes a Conveyor subscription receives (pidbox, replies, events)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange as KombuExchange, Producer, Queue

from conveyor.control.exchanges import EVENTS, PIDBOX, REPLIES, reply_queue
from conveyor.interfaces import Delivery, Message, Subscription


@pytest.fixture
def kombu_conn(broker_url: str, r: redis.Redis) -> Iterator[Connection]:
    conn = Connection(broker_url)
    yield conn
    conn.release()


def _message(body: dict[str, Any], **headers: Any) -> Message:
    return Message(headers, json.dumps(body).encode(), "application/json", "utf-8",
                   {"delivery_mode": 1})


def _receive(sub: Subscription, timeout: float = 5) -> list[Delivery]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = sub.get(timeout=0.3)
        if got:
            return got
    return []


def _drain_kombu(conn: Connection, queue: Queue, ready: Callable[[], None],
                 timeout: float = 5) -> list[tuple[Any, Any]]:
    """Consume ``queue`` with kombu, calling ``ready`` once it listens."""
    got: list[tuple[Any, Any]] = []
    with Consumer(conn, [queue], callbacks=[lambda b, m: got.append((b, m))],
                  accept=["json"], no_ack=True):
        try:  # the first drain subscribes
            conn.drain_events(timeout=0.2)
        except TimeoutError:
            pass
        ready()
        deadline = time.monotonic() + timeout
        while not got and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.3)
            except TimeoutError:
                pass
    return got


def test_a_kombu_pidbox_consumer_gets_a_conveyor_broadcast(
        make_transport: Callable[..., Any], kombu_conn: Connection) -> None:
    transport = make_transport()
    exchange = KombuExchange(PIDBOX.name, "fanout", durable=False)
    queue = Queue(f"w-{uuid.uuid4().hex[:6]}.celery.pidbox", exchange, exclusive=True,
                  auto_delete=True)
    sent = {"method": "ping", "arguments": {}, "destination": None}
    got = _drain_kombu(kombu_conn, queue, lambda: transport.broadcast(
        PIDBOX, "", _message(sent, clock=1)))
    [(body, message)] = got
    assert body == sent and message.headers["clock"] == 1
    assert message.delivery_info["exchange"] == PIDBOX.name


def test_a_conveyor_subscription_gets_kombu_pidbox_commands(
        make_transport: Callable[..., Any], kombu_conn: Connection) -> None:
    sub = make_transport().subscribe(PIDBOX, "", queue="w1.celery.pidbox")
    try:
        exchange = KombuExchange(PIDBOX.name, "fanout", durable=False)
        Producer(kombu_conn.default_channel).publish(
            {"method": "ping"}, exchange=exchange, headers={"clock": 5}, declare=[exchange])
        [d] = _receive(sub)
        assert json.loads(d.message.body) == {"method": "ping"}
        assert d.message.headers["clock"] == 5 and d.exchange == PIDBOX.name
    finally:
        sub.close()


def test_replies_go_both_ways_through_the_kombu_binding(
        make_transport: Callable[..., Any], kombu_conn: Connection,
        r: redis.Redis) -> None:
    transport = make_transport()
    exchange = KombuExchange(REPLIES.name, "direct", durable=False)
    # Conveyor replies to a kombu client's reply queue
    oid = uuid.uuid4().hex
    queue = Queue(reply_queue(oid), exchange, routing_key=oid, auto_delete=True)
    got = _drain_kombu(kombu_conn, queue, lambda: transport.broadcast(
        REPLIES, oid, _message({"w1": {"ok": "pong"}}, ticket="t1")))
    [(body, message)] = got
    assert body == {"w1": {"ok": "pong"}} and message.headers["ticket"] == "t1"
    # a kombu worker replies to Conveyor's reply queue, found through the binding
    mine = uuid.uuid4().hex
    sub = transport.subscribe(REPLIES, mine, queue=reply_queue(mine))
    try:
        Producer(kombu_conn.default_channel).publish(
            {"w2": {"ok": "pong"}}, exchange=exchange, routing_key=mine,
            headers={"ticket": "t2"})
        [d] = _receive(sub)
        assert json.loads(d.message.body) == {"w2": {"ok": "pong"}}
    finally:
        sub.close()
    assert not r.sismember(f"_kombu.binding.{REPLIES.name}",
                           f"{mine}\x06\x16\x06\x16{reply_queue(mine)}")


def test_events_reach_a_celery_style_receiver(
        make_transport: Callable[..., Any], kombu_conn: Connection) -> None:
    """Celery's EventReceiver binds ``#`` to ``celeryev`` (a fanout on Redis)."""
    transport = make_transport()
    exchange = KombuExchange(EVENTS.name, "fanout")
    queue = Queue(f"celeryev.{uuid.uuid4()}", exchange, routing_key="#",
                  auto_delete=True, durable=False)
    event = {"type": "task-succeeded", "uuid": "abc", "hostname": "w1@h"}
    got = _drain_kombu(kombu_conn, queue, lambda: transport.broadcast(
        EVENTS, "task.succeeded", _message(event, hostname="w1@h")))
    [(body, message)] = got
    assert body == event and message.delivery_info["routing_key"] == "task.succeeded"


def test_channel_names_follow_kombu(make_transport: Callable[..., Any], r: redis.Redis,
                                    broker_url: str) -> None:
    """``/{db}.{exchange}/{routing_key}``, with ``global_keyprefix`` in front."""
    db = int(broker_url.rsplit("/", 1)[1])
    transport = make_transport(global_keyprefix="pfx:")
    pubsub = r.pubsub()
    pubsub.psubscribe("*")
    assert pubsub.get_message(timeout=2)["type"] == "psubscribe"
    transport.broadcast(EVENTS, "worker.heartbeat", _message({"type": "worker-heartbeat"}))
    transport.broadcast(PIDBOX, "", _message({"method": "ping"}))
    channels = []
    deadline = time.monotonic() + 5
    while len(channels) < 2 and time.monotonic() < deadline:
        m = pubsub.get_message(timeout=0.5)
        if m and m["type"] == "pmessage":
            channels.append(m["channel"].decode())
    pubsub.close()
    assert channels == [f"pfx:/{db}.celeryev/worker.heartbeat", f"pfx:/{db}.celery.pidbox"]
