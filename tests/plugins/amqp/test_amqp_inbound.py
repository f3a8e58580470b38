"""The consumer's own frame reader (:mod:`conveyor_amqp.inbound`) gives exactly what
pika's decoder gives: properties and headers value for value and type for type,
whether decoded in full or from a kept layout; deliveries split anywhere across
reads; other frames still reach pika; and, on the real RabbitMQ, every delivery a
transport fetches equals what a plain pika consumer reads from the same messages."""

from __future__ import annotations

import datetime
import struct
import uuid
from decimal import Decimal
from typing import Any

import pika
import pytest
from conveyor_amqp import frames as marshal
from conveyor_amqp import inbound
from pika import frame
from pika.spec import Basic, BasicProperties

from conveyor import Conveyor
from conveyor.interfaces import Route

HEADERS: list[dict[str, Any] | None] = [
    None,
    {},
    {"lang": "py", "task": "t.add", "id": "6f1c0c1e-0000-4000-8000-000000000001",
     "shadow": None, "eta": None, "retries": 0, "timelimit": [None, 30],
     "ignore_result": False, "stamps": {}, "argsrepr": "(2, 2)"},
    {"flag": True, "one": 1, "zero": 0, "no": False},
    {"big": 2**40, "neg": -(2**31) - 1, "small": -5},
    {"nested": {"a": [1, "x", None, {"b": Decimal("1.25")}]}, "d": Decimal("-3")},
    {"unicode": "grüße ✓", "bytes": b"\x00\xff", "empty": ""},
    {"when": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)},
]

PROPS: list[dict[str, Any]] = [
    {},
    {"content_type": "application/json", "content_encoding": "utf-8",
     "delivery_mode": 2, "priority": 0},
    {"content_encoding": "binary", "priority": 255, "correlation_id": "c",
     "reply_to": "r", "expiration": "1000"},
    {"content_type": "application/x-msgpack", "message_id": "m", "timestamp": 17,
     "type": "t", "user_id": "guest", "app_id": "a", "cluster_id": "k"},
]


def _payload(props: BasicProperties) -> bytes:
    """A content header frame's properties, as pika marshals them."""
    return frame.Header(1, 10, props).marshal()[19:-1]


def _pikas(payload: bytes) -> BasicProperties:
    return BasicProperties().decode(payload)


def _same(got: BasicProperties, want: BasicProperties) -> None:
    assert vars(got) == vars(want)
    assert repr(got) == repr(want)
    # type for type (True == 1 and 1 == 1.0 would hide a wrong kind)
    assert _types(vars(got)) == _types(vars(want))


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value).__name__


@pytest.fixture(autouse=True)
def _fresh_layouts() -> None:
    inbound._layouts.clear()


@pytest.mark.parametrize("headers", HEADERS)
@pytest.mark.parametrize("props", PROPS)
def test_properties_decode_as_pikas(headers: dict[str, Any] | None,
                                    props: dict[str, Any]) -> None:
    payload = _payload(BasicProperties(headers=headers, **props))
    buf = b"prefix" + payload + b"\xce"
    for _ in range(3):  # in full, then from the layout it left
        _same(inbound.properties(buf, 6, 6 + len(payload)), _pikas(payload))


def test_field_kinds_pika_never_writes_decode_as_pikas() -> None:
    """Kinds other clients send (b B U u s i f d x, a bad UTF-8 key or string):
    decoded by pika's own code, so the same values."""
    entries = [(b"b", b"b", struct.pack(">b", -3)), (b"B", b"B", b"\xfe"),
               (b"U", b"U", struct.pack(">h", -300)), (b"u", b"u", struct.pack(">H", 60_000)),
               (b"s", b"s", struct.pack(">h", -2)), (b"i", b"i", struct.pack(">I", 2**32 - 1)),
               (b"f", b"f", struct.pack(">f", 1.5)), (b"d", b"d", struct.pack(">d", 2.5)),
               (b"\xff\xfe", b"S", struct.pack(">I", 2) + b"\xc3\x28"),
               (b"L", b"L", struct.pack(">q", -(2**40)))]
    body = b"".join(bytes([len(k)]) + k + kind + v for k, kind, v in entries)
    payload = struct.pack(">H", BasicProperties.FLAG_HEADERS) + \
        struct.pack(">I", len(body)) + body
    for _ in range(2):
        _same(inbound.properties(payload, 0, len(payload)), _pikas(payload))


def _celery_like(task_id: str, **extra: Any) -> bytes:
    headers = {"lang": "py", "task": "t.add", "id": task_id, "shadow": None,
               "eta": None, "retries": 0, "timelimit": [None, None],
               "root_id": task_id, "parent_id": None, "argsrepr": "(2, 2)",
               "origin": "gen1@host", "ignore_result": False, "stamps": {}, **extra}
    return _payload(BasicProperties(content_type="application/json",
                                    content_encoding="utf-8", headers=headers,
                                    delivery_mode=2, priority=0,
                                    correlation_id=task_id))


def test_a_layout_decodes_only_the_strings_that_changed() -> None:
    """Messages of one task differ in their ids: after two, those are the layout's
    holes and a third of that size is decoded from it, equal to pika's, with
    arrays and tables of its own (never shared with another message)."""
    seen = []
    for _ in range(4):
        payload = _celery_like(str(uuid.uuid4()))
        got = inbound.properties(payload, 0, len(payload))
        _same(got, _pikas(payload))
        seen.append(got)
    layout = inbound._layouts[len(payload)]
    assert [name or key for name, key, _, _ in layout.holes] == [
        "id", "root_id", "correlation_id"]
    assert len({id(p.headers["timelimit"]) for p in seen}) == 4
    assert len({id(p.headers["stamps"]) for p in seen}) == 4
    assert len({id(p.headers) for p in seen}) == 4
    seen[2].headers["timelimit"].append(1)
    seen[2].headers["task"] = "changed"
    payload = _celery_like(str(uuid.uuid4()))
    _same(inbound.properties(payload, 0, len(payload)), _pikas(payload))


def test_a_payload_of_the_same_size_that_differs_elsewhere_is_decoded_in_full() -> None:
    """Same size, other values outside the holes (an int, a bool, another task
    name of the same length, a key renamed): never read from the layout."""
    task_id = str(uuid.uuid4())
    for payload in (_celery_like(task_id), _celery_like(str(uuid.uuid4())),
                    _celery_like(task_id, retries=7), _celery_like(task_id, x=True),
                    _celery_like(task_id, x=False), _celery_like(task_id, y=False),
                    _celery_like(task_id, task="t.mul"), _celery_like(task_id, task="t.sub")):
        for _ in range(2):
            _same(inbound.properties(payload, 0, len(payload)), _pikas(payload))


def _deliver_frames(channel: int, tag: int, props: BasicProperties, body: bytes,
                    consumer: str = "ctag1", step: int = 131064) -> bytes:
    out = [frame.Method(channel, Basic.Deliver(consumer, tag, tag % 2 == 0, "ex",
                                                "rk")).marshal(),
           marshal.header(channel, len(body), props)]
    out += [frame.Body(channel, body[at:at + step]).marshal()
            for at in range(0, len(body), step)]
    return b"".join(out)


class _Connection:
    """What :class:`inbound.Reader` uses of pika's connection: its frame buffer,
    counters, and frame processing (recorded here)."""

    def __init__(self) -> None:
        self._frame_buffer = b""
        self.bytes_received = 0
        self.frames_received = 0
        self.processed: list[Any] = []

    def _on_data_available(self, data: bytes) -> None:
        raise AssertionError("pika's own reader is not used while the Reader is in place")

    def _process_frame(self, value: Any) -> None:
        self.frames_received += 1
        self.processed.append(value)


class _Channel:
    channel_number = 3

    def __init__(self) -> None:
        self._consumers: dict[str, Any] = {}
        self._cancelled: set[str] = set()


def test_deliveries_split_anywhere_across_reads_are_read_whole() -> None:
    """Three deliveries (one with an empty body, one of three body frames) and frames
    of pika's between them, fed in pieces of every size: the consumer gets each
    delivery whole and in order, pika gets every other frame in order, and pika's
    byte and frame counts come out as its own reader leaves them."""
    bodies = [b"[[2, 2], {}, {}]", b"", bytes(range(256)) * 5]
    stream = b"".join([
        frame.Method(3, Basic.ConsumeOk("ctag1")).marshal(),
        _deliver_frames(3, 1, BasicProperties(headers={"id": "a"}), bodies[0]),
        frame.Heartbeat().marshal(),
        _deliver_frames(3, 2, BasicProperties(priority=3), bodies[1]),
        frame.Method(5, Basic.Ack(9)).marshal(),
        _deliver_frames(3, 3, BasicProperties(headers={"id": "c", "n": [1]}), bodies[2],
                        step=500),
        frame.Method(3, Basic.Cancel("ctag2")).marshal(),
    ])
    for size in (1, 7, 8, 9, 100, 4096, len(stream)):
        conn, chan = _Connection(), _Channel()
        got: list[tuple[Any, ...]] = []

        def consumer(ch: Any, method: Any, props: Any, body: bytes) -> None:
            got.append((ch, method, props, body))

        chan._consumers["ctag1"] = consumer
        reader = inbound.Reader(conn, chan)
        reader.take(consumer)
        for at in range(0, len(stream), size):
            conn._on_data_available(stream[at:at + size])
        assert [body for _, _, _, body in got] == bodies, size
        assert [m.delivery_tag for _, m, _, _ in got] == [1, 2, 3]
        assert all(ch is chan for ch, _, _, _ in got)
        assert [vars(m) for _, m, _, _ in got] == [
            vars(Basic.Deliver("ctag1", n, n % 2 == 0, "ex", "rk")) for n in (1, 2, 3)]
        assert got[2][2].headers == {"id": "c", "n": [1]} and got[1][2].priority == 3
        assert [type(f).__name__ for f in conn.processed] == [
            "Method", "Heartbeat", "Method", "Method"]
        assert conn.bytes_received == len(stream) and conn._frame_buffer == b""
        assert conn.frames_received == 4 + 3 + 2 + 5  # pika's, then three deliveries'
        reader.remove()
        assert "_on_data_available" not in vars(conn)


def test_a_delivery_to_another_consumer_or_a_cancelled_one_is_pikas() -> None:
    """Only deliveries to the consumers given to the Reader, and not being
    cancelled, are read here: the others go to pika frame by frame."""
    conn, chan = _Connection(), _Channel()
    got: list[Any] = []
    chan._consumers.update(mine=lambda *a: got.append(a), theirs=lambda *a: None,
                           going=None)
    chan._consumers["going"] = chan._consumers["mine"]
    chan._cancelled.add("going")
    reader = inbound.Reader(conn, chan)
    reader.take(chan._consumers["mine"])
    conn._on_data_available(
        _deliver_frames(3, 1, BasicProperties(), b"x", consumer="theirs")
        + _deliver_frames(3, 2, BasicProperties(), b"y", consumer="going")
        + _deliver_frames(3, 3, BasicProperties(), b"z", consumer="mine")
        + _deliver_frames(4, 4, BasicProperties(), b"w", consumer="mine"))
    assert [a[3] for a in got] == [b"z"]
    assert [type(f).__name__ for f in conn.processed] == ["Method", "Header", "Body"] * 3


def test_a_broken_frame_is_refused_as_pika_refuses_it() -> None:
    conn, chan = _Connection(), _Channel()
    inbound.Reader(conn, chan)
    bad = bytearray(frame.Heartbeat().marshal())
    bad[-1] = 0
    with pytest.raises(pika.exceptions.InvalidFrameError):
        conn._on_data_available(bytes(bad))


def test_a_frame_pika_fails_on_is_not_read_again() -> None:
    """pika's own loop takes a frame off its buffer before processing it: so does
    the Reader, and an error there leaves the rest for the next read."""
    conn, chan = _Connection(), _Channel()
    inbound.Reader(conn, chan)
    calls: list[Any] = []

    def process(value: Any) -> None:
        calls.append(value)
        if len(calls) == 1:
            raise RuntimeError("boom")

    conn._process_frame = process  # type: ignore[method-assign]
    beat = frame.Heartbeat().marshal()
    with pytest.raises(RuntimeError):
        conn._on_data_available(beat + beat[:3])
    assert conn._frame_buffer == beat[:3] and conn.bytes_received == len(beat)
    conn._on_data_available(beat[3:])
    assert len(calls) == 2 and conn._frame_buffer == b""
    assert conn.bytes_received == 2 * len(beat)


# ---------------------------------------------------------------- real RabbitMQ
@pytest.mark.amqp
def test_fetched_deliveries_equal_pikas_own(amqp_url: str, queue: str) -> None:
    """Messages of every shape (Celery tasks, other properties, an empty body, a
    body of several frames), published twice: the transport's fetch (its Reader)
    and a plain pika consumer read the same properties, headers and bodies."""
    app = Conveyor("t", broker=amqp_url, backend="memory://t-inbound")
    try:
        transport: Any = app.transport_factory()
        transport.connect()
        transport.declare(Route(queue))
        # subscribed before they are sent, so all come through the Reader (those
        # waiting at the subscription come with its consume-ok, through pika)
        assert transport.fetch([queue], limit=32, timeout=0.1) == []
        other = f"{queue}.pika"
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        ch = conn.channel()
        ch.queue_declare(other, durable=True)
        sent = []
        for n in range(12):
            task_id = str(uuid.uuid4())
            headers = HEADERS[n % len(HEADERS)]
            if n % 3 == 0:
                headers = {"lang": "py", "task": "t.x", "id": task_id,
                           "root_id": task_id, "timelimit": [None, None], "stamps": {}}
            props = BasicProperties(**{"correlation_id": task_id,
                                       **PROPS[n % len(PROPS)]}, headers=headers)
            body = b"" if n == 5 else (b"%d" % n) * (200_000 if n == 7 else 10)
            sent.append((props, body))
            for name in (queue, other):
                ch.basic_publish("", name, body, props)
        theirs = []
        for _ in range(len(sent)):
            method, props, body = next(ch.consume(other, inactivity_timeout=10))
            assert method is not None
            theirs.append((props, body))
            ch.basic_ack(method.delivery_tag)
        ch.cancel()
        conn.close()
        mine: list[Any] = []
        for _ in range(100):
            mine += transport.fetch([queue], limit=32, timeout=0.2)
            if len(mine) >= len(sent):
                break
        assert len(mine) == len(sent)
        for d, (props, body) in zip(mine, theirs, strict=True):
            _, _, got_props, got_body = d.tag.raw
            _same(got_props, props)
            assert got_body == body
        transport.ack(mine)
        transport.close()
    finally:
        app.close()
