"""The amqp:// transport on the real RabbitMQ: publishing, confirms, errors, the delay
layout, declarations (this session's vhost; queues named ``t.amqp.*``)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from amqp_support import depth, queue_info, rabbitmqctl, url_for, wait_for
from rabbit_vhosts import own_vhost
from conveyor import Conveyor
from conveyor.exceptions import ConfigurationError, OperationalError
from conveyor.interfaces import Route
from conveyor_amqp.errors import ChannelError, UnroutableError
from conveyor_amqp.layout import Delays, strip
from kombu.transport import native_delayed_delivery as kombu_delays

pytestmark = pytest.mark.amqp


@pytest.fixture
def make_app(amqp_url: str) -> Iterator[Any]:
    apps: list[Conveyor] = []

    def make(**conf: Any) -> Conveyor:
        app = Conveyor("t", broker=amqp_url, backend="memory://t-amqp", **conf)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def test_delay_routing_keys_are_kombus() -> None:
    for seconds in (1, 2, 3, 30, 3600, 86400 * 365, 2 ** 28 - 1):
        assert Delays.routing_key(seconds, "celery") == \
            kombu_delays.calculate_routing_key(seconds, "celery")
    # a fraction of a second rounds up: a parked message never comes back early
    assert Delays.routing_key(2.1, "q") == kombu_delays.calculate_routing_key(3, "q")
    again = Delays.routing_key(5, Delays.routing_key(9, "q"))
    assert again == kombu_delays.calculate_routing_key(5, "q") and strip(again) == "q"


def test_delay_layout_is_declared_as_kombu_declares_it(make_app: Any, amqp_vhost: str,
                                                      queue: str) -> None:
    """Conveyor's declarations, then kombu's own over them: RabbitMQ accepts both
    (no PRECONDITION_FAILED), so Celery ≥ 5.5 workers share the layout."""
    app = make_app(broker_transport_options={"delayed_delivery": "broker"})
    app.send_task("t.x", queue=queue, countdown=60)
    import kombu
    with kombu.Connection(app.broker_url) as conn:
        kombu_delays.declare_native_delayed_delivery_exchanges_and_queues(conn, "quorum")
    info = queue_info(amqp_vhost)
    for n in range(28):
        row = info[f"celery_delayed_{n}"]
        assert row["type"] == "quorum"
        assert row["arguments"]["x-message-ttl"] == 2 ** n * 1000
    assert sum(depth(app.broker_url, f"celery_delayed_{n}") for n in range(28)) == 1


def test_broker_parked_countdown_is_never_early_and_runs_once(make_app: Any,
                                                             queue: str) -> None:
    app = make_app(broker_transport_options={"delayed_delivery": "broker"})
    runs: list[float] = []

    @app.task(name="t.stamp")
    def stamp() -> None:
        runs.append(time.time())

    sent = time.time()
    result = stamp.apply_async(queue=queue, countdown=2.5)
    assert depth(app.broker_url, queue) == 0  # parked at the producer
    with app.Worker(queues=[queue], concurrency=1, pool="threads").running():
        result.get(timeout=15)
        time.sleep(1.5)
    assert len(runs) == 1 and runs[0] - sent >= 2.5


def test_confirm_publish_refuses_an_unroutable_message(make_app: Any, amqp_url: str,
                                                       queue: str) -> None:
    """The queue is deleted under a running producer (which declared it once): with
    confirms the publish fails naming exchange and routing key, never a silent loss."""
    app = make_app(broker_transport_options={"confirm_publish": True})
    app.send_task("t.x", queue=queue)
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    conn.channel().queue_delete(queue)
    conn.close()
    with pytest.raises(UnroutableError) as info:
        app.send_task("t.x", queue=queue, retry=False)
    text = str(info.value)
    assert "exchange '(default)'" in text and f"routing key {queue!r}" in text
    assert "not stored" in text and not info.value.nacked


def test_without_confirms_the_same_publish_is_fire_and_forget(make_app: Any, amqp_url: str,
                                                             queue: str) -> None:
    app = make_app()
    app.send_task("t.x", queue=queue)
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    conn.channel().queue_delete(queue)
    conn.close()
    assert app.send_task("t.x", queue=queue).id


def test_exchange_and_routing_key_route_through_rabbitmqs_bindings(
        make_app: Any, amqp_url: str, queue: str) -> None:
    """A topic exchange bound to two queues by someone else (Celery, an operator):
    a message published to it reaches each matching queue; one that matches no
    binding goes to the route's own queue, never dropped."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.exchange_declare(f"{queue}.topic", "topic", durable=True)
    for name, pattern in ((f"{queue}.a", "jobs.#"), (f"{queue}.b", "jobs.urgent.*")):
        ch.queue_declare(name, durable=True)
        ch.queue_bind(name, f"{queue}.topic", routing_key=pattern)
    app = make_app()
    app.send_task("t.x", exchange=f"{queue}.topic", routing_key="jobs.urgent.now")
    app.send_task("t.x", exchange=f"{queue}.topic", routing_key="jobs.later", queue=queue)
    app.send_task("t.x", exchange=f"{queue}.topic", routing_key="nothing.here", queue=queue)
    wait_for(lambda: (depth(amqp_url, f"{queue}.a"), depth(amqp_url, f"{queue}.b"),
                      depth(amqp_url, queue)) == (2, 1, 1), 5, what="routing")
    conn.close()


def test_a_channel_error_carries_rabbitmqs_reply(make_app: Any, queue: str) -> None:
    make_app(task_queue_max_priority=10).send_task("t.x", queue=queue)
    with pytest.raises(ChannelError) as info:
        make_app().send_task("t.x", queue=queue)
    assert info.value.reply_code == 406
    assert "PRECONDITION_FAILED" in str(info.value) and "x-max-priority" in str(info.value)
    assert "task_queue_max_priority" in str(info.value)  # what to change


def test_unreachable_broker_names_the_url_and_masks_the_password() -> None:
    app = Conveyor("t", broker="amqp://guest:secret@127.0.0.1:1/x",
                   backend="memory://t-amqp", task_publish_retry=False)
    with pytest.raises(OperationalError) as info:
        app.send_task("t.x")
    assert "127.0.0.1:1" in str(info.value) and "secret" not in str(info.value)


def test_bad_settings_are_refused_with_the_fix() -> None:
    with pytest.raises(ConfigurationError, match="quorum"):
        Conveyor("t", broker="amqp://", task_queue_max_priority=10,
                 task_default_queue_type="quorum").transport_factory()
    with pytest.raises(ConfigurationError, match="amqps"):
        Conveyor("t", broker="amqp://",
                 broker_transport_options={"ssl": {"ca_certs": "x"}}).transport_factory()
    with pytest.raises(ConfigurationError, match="cert_reqs"):
        Conveyor("t", broker="amqps://",
                 broker_transport_options={"ssl": {"cert_req": 0}}).transport_factory()


def test_amqps_speaks_tls(make_app: Any) -> None:
    """RabbitMQ here has no TLS listener: the TLS handshake on the plain port fails,
    which shows amqps:// really starts TLS (on 5671 by default, port kept here)."""
    app = Conveyor("t", broker="amqps://guest:guest@127.0.0.1:5672/x",
                   backend="memory://t-amqp", task_publish_retry=False,
                   broker_transport_options={"ssl": {"cert_reqs": "none"}})
    with pytest.raises(OperationalError):
        app.send_task("t.x")
    transport = app.transport_factory()
    assert transport.params.ssl_options is not None and transport.params.port == 5672


def test_celery_wire_properties(make_app: Any, queue: str) -> None:
    """What a Celery 5.7 client sends (tests/data wire samples, amqp-json-*)."""
    app = make_app()
    result = app.send_task("t.x", (2, 2), queue=queue, expires=60, time_limit=1.5)
    conn = pika.BlockingConnection(pika.URLParameters(app.broker_url))
    method, props, body = conn.channel().basic_get(queue, auto_ack=True)
    conn.close()
    assert method.exchange == "" and method.routing_key == queue
    assert props.content_type == "application/json" and props.content_encoding == "utf-8"
    assert props.delivery_mode == 2 and props.priority == 0
    assert props.correlation_id == result.id
    assert 59000 <= int(props.expiration) <= 60000
    assert props.headers["id"] == result.id and props.headers["task"] == "t.x"
    assert float(props.headers["timelimit"][0]) == 1.5
    assert body.startswith(b"[[2, 2], {}, ")


def test_a_float_header_too_large_for_an_amqp_decimal_is_sent(make_app: Any,
                                                              queue: str) -> None:
    """A unix time (a pidbox command's ``expires``) keeps whole seconds; a header
    pika cannot write would fail the publish instead."""
    app = make_app()
    app.send_task("t.x", queue=queue, headers={"x-when": 1795515837.816213,
                                               "x-small": 0.25})
    transport = app.transport_factory()
    transport.connect()
    [d] = wait_for(lambda: transport.fetch([queue], limit=1, timeout=1), 10,
                   what="the message")
    transport.ack([d])
    transport.close()
    assert d.message.headers["x-when"] == 1795515838 and d.message.headers["x-small"] == 0.25


def test_routed_to_an_exchange_that_does_not_exist(make_app: Any) -> None:
    with pytest.raises(ChannelError) as info:
        make_app().send_task("t.x", exchange="t.amqp.no-such-exchange", routing_key="k")
    assert info.value.reply_code == 404 and "t.amqp.no-such-exchange" in str(info.value)


def test_depth_and_purge(make_app: Any, queue: str) -> None:
    app = make_app()
    for _ in range(3):
        app.send_task("t.x", queue=queue)
    transport = app.transport_factory()
    transport.connect()
    wait_for(lambda: transport.depth(queue) == 3, 5, what="three waiting")
    assert transport.purge(queue) == 3 and transport.depth(queue) == 0
    transport.close()


def _fetched(transport: Any, queue: str, n: int) -> list[Any]:
    """``n`` deliveries from ``queue`` (within 10 s)."""
    got: list[Any] = []
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        got += transport.fetch([queue], limit=n, timeout=0.5)
    assert len(got) == n
    return got


def _sent_and_fetched(make_app: Any, queue: str, n: int) -> tuple[Any, Any, list[Any]]:
    """An app that sent ``n`` tasks (args ``(0,)`` to ``(n - 1,)``) to ``queue``, a
    transport of its own, and the ``n`` deliveries that transport fetched."""
    app = make_app()
    for i in range(n):
        app.send_task("t.x", args=(i,), queue=queue)
    transport = app.transport_factory()
    transport.connect()
    return app, transport, _fetched(transport, queue, n)


def test_acks_out_of_order_settle_exactly_the_acked_deliveries(make_app: Any,
                                                                queue: str) -> None:
    """Tasks finish out of order: an ack of a run that is not the oldest settles
    those deliveries and no others (the older ones come back when the connection
    closes), and the next ack settles the rest."""
    app, transport, got = _sent_and_fetched(make_app, queue, 6)
    transport.ack([got[1], got[3], got[4]])  # the oldest (got[0]) still running
    transport.close()  # RabbitMQ gives back what was not acked
    wait_for(lambda: depth(app.broker_url, queue) == 3, 10, what="three given back")

    again = app.transport_factory()
    again.connect()
    back = _fetched(again, queue, 3)
    assert sorted(d.message.headers["id"] for d in back) == sorted(
        got[n].message.headers["id"] for n in (0, 2, 5))
    again.ack([back[2], back[0]])
    again.ack([back[1]])
    again.close()
    wait_for(lambda: depth(app.broker_url, queue) == 0, 10, what="nothing given back")
    time.sleep(0.5)  # a late give-back would show here
    assert depth(app.broker_url, queue) == 0



def test_deliveries_come_in_order_and_settle_with_one_ack(make_app: Any,
                                                           queue: str) -> None:
    """Messages waiting before the first fetch arrive with the subscription's
    ``consume-ok`` (pika queues those in its blocking facade) and later ones
    straight from pika's channel: all come in queue order, so an ack of the last
    settles every one of them (``multiple``), and nothing comes back."""
    app, transport, got = _sent_and_fetched(make_app, queue, 40)
    assert [json.loads(d.message.body)[0] for d in got] == [[n] for n in range(40)]
    tags = [d.tag.tag for d in got]
    assert tags == sorted(tags)
    transport.ack(got)
    transport.close()
    time.sleep(0.3)  # a give-back would show here
    assert depth(app.broker_url, queue) == 0


def test_a_message_larger_than_a_frame_arrives_whole_between_small_ones(
        make_app: Any, queue: str) -> None:
    """A delivery's content comes in several frames when its body is larger than
    RabbitMQ's frame size (128 KiB): pika's channel is handed them all, in order,
    after the smaller delivery before it, and each of the three arrives whole."""
    app = make_app()
    big = "x" * 300_000
    for arg in ("first", big, "last"):
        app.send_task("t.x", args=(arg,), queue=queue)
    transport = app.transport_factory()
    transport.connect()
    got = _fetched(transport, queue, 3)
    assert [json.loads(d.message.body)[0] for d in got] == [["first"], [big], ["last"]]
    assert [d.message.headers["task"] for d in got] == ["t.x"] * 3
    transport.ack(got)
    transport.close()
    time.sleep(0.3)  # a give-back would show here
    assert depth(app.broker_url, queue) == 0


def test_a_fetch_waiting_for_messages_returns_as_one_arrives(make_app: Any,
                                                             queue: str) -> None:
    """A delivery ends a fetch's wait at once (pika's channel hands it over as it
    is read), not at the wait's timeout."""
    app = make_app()
    transport = app.transport_factory()
    transport.connect()
    transport.declare(Route(queue))
    assert transport.fetch([queue], limit=4, timeout=0.2) == []  # subscribed
    sender = threading.Timer(0.3, lambda: app.send_task("t.x", queue=queue))
    sender.start()
    start = time.monotonic()
    got = transport.fetch([queue], limit=4, timeout=20)
    waited = time.monotonic() - start
    sender.join()
    assert len(got) == 1 and waited < 10, waited
    transport.ack(got)
    transport.close()


#: A worker's transport in a process of its own: takes the 8 messages of a queue,
#: acks the first as a worker does before it starts a task, and dies at once
#: without closing anything.
DIES_AFTER_AN_ACK = """
import os, sys
from conveyor import Conveyor
url, queue = sys.argv[1:3]
app = Conveyor("t", broker=url, backend="memory://t-early")
transport = app.transport_factory()
transport.connect()
got = []
while len(got) < 8:
    got += transport.fetch([queue], limit=8, timeout=0.5)
transport.ack(got[:1])
print("acked", flush=True)
os._exit(0)
"""


def test_an_early_ack_is_on_the_broker_before_the_task_starts(make_app: Any,
                                                              queue: str) -> None:
    """The worker acks a task that is not ``acks_late`` before it runs it: a worker
    that dies right after that ack gets the other 7 messages back, never the acked
    one (at most once, as Celery's early ack promises)."""
    app = make_app()
    for n in range(8):
        app.send_task("t.x", args=(n,), queue=queue)
    done = subprocess.run([sys.executable, "-c", DIES_AFTER_AN_ACK, app.broker_url, queue],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "acked", done.stderr[-3000:]
    wait_for(lambda: depth(app.broker_url, queue) == 7, 10, what="7 given back")
    time.sleep(0.3)  # a late give-back of the acked one would show here
    assert depth(app.broker_url, queue) == 7


def test_a_publish_after_an_idle_spell_longer_than_the_heartbeats_goes_through(
        queue: str, caplog: pytest.LogCaptureFixture) -> None:
    """A producer that publishes, then idles past two heartbeats of the configured
    ``heartbeat``: its connection asked for none (as Celery's clients do not), so
    RabbitMQ keeps it open; the next publish goes out on it with nothing logged (it
    used to be closed for silence, and each publish after an idle spell was logged
    as a lost connection by pika and Conveyor, then sent again). A worker's
    connection does ask for the configured heartbeat. (A vhost of the test's own:
    the connections there are its own.)"""
    with own_vhost() as vhost:
        app = Conveyor("t", broker=url_for(vhost), backend="memory://t-amqp-idle",
                       broker_transport_options={"heartbeat": 1})
        try:
            _publish_after_idle(app, vhost, queue, caplog)
        finally:
            app.close()


def _publish_after_idle(app: Conveyor, vhost: str, queue: str,
                        caplog: pytest.LogCaptureFixture) -> None:
    app.send_task("t.x", queue=queue)
    with app.pool.acquire() as conn:
        first = conn.transport
    time.sleep(3.5)  # two missed heartbeats and some
    with caplog.at_level(logging.WARNING):
        app.send_task("t.x", queue=queue)
    wait_for(lambda: depth(app.broker_url, queue) == 2, 10, what="both published")
    time.sleep(0.3)
    assert depth(app.broker_url, queue) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    with app.pool.acquire() as conn:
        assert conn.transport is first  # never replaced
    assert set(heartbeats(vhost).values()) == {0}

    worker = app.Worker(queues=[queue], concurrency=1, pool="threads")
    with worker.running():
        wait_for(lambda: 1 in heartbeats(vhost).values(), 10,
                 what="the worker's connections")


def heartbeats(vhost: str) -> dict[str, int]:
    """Each connection of ``vhost`` to the heartbeat it negotiated (0: none)."""
    rows = json.loads(rabbitmqctl("list_connections", "-q", "--formatter", "json",
                                  "vhost", "name", "timeout") or "[]")
    return {row["name"]: int(row["timeout"]) for row in rows if row["vhost"] == vhost}
