"""A delivery's frames decoded by the AMQP plugin's reader are pika's, value for
value, whatever the properties and field table hold; other frames are pika's own."""

from __future__ import annotations

import datetime as dt
import struct
from decimal import Decimal
from typing import Any

import pytest
from conveyor_amqp import inbound
from pika import frame, spec
from pika.exceptions import InvalidFrameError
from pika.spec import Basic, BasicProperties

from tests.support.wire_samples import sample

HEADERS: list[dict[str, Any] | None] = [
    None,
    {},
    {"lang": "py", "task": "t.add", "id": "6f1c0c1e-0000-4000-8000-000000000001",
     "shadow": None, "eta": None, "retries": 0, "timelimit": [None, 30],
     "ignore_result": False, "stamps": {}, "argsrepr": "(2, 2)"},
    {"flag": True, "one": 1, "zero": 0, "no": False},
    {"big": 2**40, "neg": -(2**31) - 1, "small": -5},
    {"nested": {"a": [1, "x", None, {"b": Decimal("1.25")}, [True, []]]},
     "d": Decimal("-3")},
    {"unicode": "grüße ✓", "bytes": b"\x00\xff", "empty": "", "when":
     dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)},
]

PROPS: list[dict[str, Any]] = [
    {},
    {"content_type": "application/json", "content_encoding": "utf-8",
     "delivery_mode": 2, "priority": 0},
    {"content_encoding": "binary", "priority": 255, "correlation_id": "c",
     "reply_to": "r", "expiration": "1000"},
    {"content_type": "application/x-msgpack", "message_id": "m", "timestamp": 2**40,
     "type": "t", "user_id": "guest", "app_id": "a", "cluster_id": "k"},
]

#: Another frame after the one decoded: a reader must stop at its frame's end.
NEXT = frame.Body(5, b"next").marshal()


def same(raw: bytes) -> tuple[int, Any]:
    """Decode ``raw`` both ways and check they agree; the reader's result."""
    ours, theirs = inbound.decode_frame(raw), frame.decode_frame(raw)
    assert ours[0] == theirs[0]
    assert type(ours[1]) is type(theirs[1])
    if isinstance(theirs[1], frame.Header):
        assert isinstance(ours[1], frame.Header)
        assert (ours[1].channel_number, ours[1].body_size) == (
            theirs[1].channel_number, theirs[1].body_size)
        assert vars(ours[1].properties) == vars(theirs[1].properties)
        assert type(ours[1].properties) is BasicProperties
    return ours


@pytest.mark.parametrize("headers", HEADERS)
@pytest.mark.parametrize("props", PROPS)
def test_header_frames_decode_as_pika_decodes_them(headers: dict[str, Any] | None,
                                                   props: dict[str, Any]) -> None:
    for size in (0, 3, 2**33):
        raw = frame.Header(5, size, BasicProperties(headers=headers, **props)).marshal()
        used, _ = same(raw + NEXT)
        assert used == len(raw)


def _header_with_table(entries: bytes) -> bytes:
    """A content header frame whose only property is a table of raw ``entries``."""
    payload = (struct.pack(">HHQH", spec.BasicProperties.INDEX, 0, 1,
                           BasicProperties.FLAG_HEADERS)
               + struct.pack(">I", len(entries)) + entries)
    return struct.pack(">BHI", spec.FRAME_HEADER, 1, len(payload)) + payload + b"\xce"


def _entry(key: bytes, kind: bytes, value: bytes) -> bytes:
    return bytes([len(key)]) + key + kind + value


@pytest.mark.parametrize("entries", [
    # Text that is not UTF-8 stays bytes (a key, a value, one in a nested table).
    _entry(b"\xffkey", b"S", struct.pack(">I", 2) + b"ok"),
    _entry(b"k", b"S", struct.pack(">I", 2) + b"\xfe\xff"),
    _entry(b"t", b"F", struct.pack(">I", 8) + _entry(b"n", b"S", struct.pack(">I", 1)
                                                   + b"\xff")),
    _entry(b"a", b"A", struct.pack(">I", 6) + b"S" + struct.pack(">I", 1) + b"\x80"),
    # Kinds pika decodes its own way: a double, a float, 8 and 16 bits, unsigned.
    _entry(b"d", b"d", struct.pack(">d", 1.5)) + _entry(b"f", b"f", struct.pack(">f", 2.5)),
    _entry(b"b", b"b", b"\xff") + _entry(b"B", b"B", b"\xff")
    + _entry(b"s", b"s", b"\xff\xfe") + _entry(b"u", b"u", b"\xff\xfe")
    + _entry(b"U", b"U", b"\xff\xfe") + _entry(b"i", b"i", b"\xff\xff\xff\xff")
    + _entry(b"x", b"x", struct.pack(">I", 2) + b"\x00\x01"),
])
def test_tables_pika_reads_its_own_way_decode_the_same(entries: bytes) -> None:
    same(_header_with_table(entries))


def test_a_string_running_past_its_frame_ends_there_as_in_pika() -> None:
    """A length past the frame's end reads to that end, never into the next frame."""
    raw = bytearray(_header_with_table(_entry(b"k", b"S", struct.pack(">I", 2) + b"ok")))
    raw[31] = 200  # the string's length (its last byte) now runs past the frame
    _, header = same(bytes(raw) + NEXT * 40)
    assert header.properties.headers == {"k": "ok"}


def test_celerys_content_header_decodes_as_pika_decodes_it() -> None:
    """The frame a Celery 5.7 client sent (py-amqp: a double, a 64-bit int)."""
    payload = bytes.fromhex(sample("amqp-json-raw-frames")["content_header"]["raw_payload_hex"])
    raw = struct.pack(">BHI", spec.FRAME_HEADER, 1, len(payload)) + payload + b"\xce"
    _, header = same(raw)
    assert header.properties.headers["task"] == "capapp.add"


@pytest.mark.parametrize("raw", [
    frame.Method(3, Basic.Deliver(consumer_tag="c", delivery_tag=7, exchange="",
                                  routing_key="q")).marshal(),
    frame.Method(3, Basic.Deliver(consumer_tag="ctag1.ü", delivery_tag=2**63 + 5,
                                  redelivered=True, exchange="ex",
                                  routing_key="a.b")).marshal(),
    frame.Method(3, Basic.GetOk(delivery_tag=7, redelivered=True, exchange="",
                                routing_key="q", message_count=2)).marshal(),
    frame.Body(3, b"body").marshal(),
    frame.Body(3, b"").marshal(),
    frame.Heartbeat().marshal(),
    frame.ProtocolHeader().marshal(),
])
def test_other_frames_decode_as_pika_decodes_them(raw: bytes) -> None:
    ours = same(raw + NEXT)
    if isinstance(ours[1], frame.Method):
        assert vars(ours[1].method) == vars(frame.decode_frame(raw)[1].method)
    elif isinstance(ours[1], frame.Body):
        assert ours[1].fragment == frame.decode_frame(raw)[1].fragment


def test_a_bad_frame_end_is_pikas_error() -> None:
    raw = bytearray(frame.Body(3, b"body").marshal())
    raw[-1] = 0
    with pytest.raises(InvalidFrameError):
        inbound.decode_frame(bytes(raw))


@pytest.mark.parametrize("raw", [
    frame.Header(1, 1, BasicProperties(headers={"a": "b"})).marshal(),
    frame.Method(1, Basic.Deliver(consumer_tag="c", delivery_tag=1, exchange="",
                                  routing_key="q")).marshal(),
    frame.Body(1, b"body").marshal(),
])
def test_an_incomplete_frame_waits_for_more(raw: bytes) -> None:
    for cut in {0, 1, 5, 7, 8, 21, 22, len(raw) - 1} - set(range(len(raw), 23)):
        assert inbound.decode_frame(raw[:cut]) == (0, None)
