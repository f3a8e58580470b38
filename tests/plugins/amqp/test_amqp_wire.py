"""Frames the AMQP plugin writes itself are pika's, byte for byte; a delivery's
message (``envelope.message``) reads properties and headers as before."""

from __future__ import annotations

from decimal import Decimal

import pytest
from conveyor_amqp import envelope
from conveyor_amqp import frames as marshal
from pika import frame
from pika.spec import Basic, BasicProperties


@pytest.mark.parametrize("channel", [1, 2, 65535])
@pytest.mark.parametrize("tag", [1, 255, 2**32 + 7, 2**64 - 1])
@pytest.mark.parametrize("multiple", [False, True])
def test_ack_frames_are_pikas(channel: int, tag: int, multiple: bool) -> None:
    assert marshal.ack(channel, tag, multiple) == frame.Method(
        channel, Basic.Ack(tag, multiple)).marshal()


def test_a_message_keeps_its_properties_and_drops_transit_headers() -> None:
    props = BasicProperties(
        content_type="application/json", content_encoding="utf-8", delivery_mode=2,
        priority=4, correlation_id="c", reply_to="r", expiration="10", message_id="m",
        type="t", app_id="a", user_id="u", timestamp=17,
        headers={"id": "c", "x-delivery-count": 2, "x-death": [{"count": 1}],
                 "nested": {"t": [1, Decimal("1.5")]}, "limit": Decimal("2.25")})
    msg = envelope.message(props, b"{}")
    assert msg.headers == {"id": "c", "nested": {"t": [1, 1.5]}, "limit": 2.25}
    assert list(msg.properties.items()) == [
        ("correlation_id", "c"), ("reply_to", "r"), ("expiration", "10"),
        ("message_id", "m"), ("type", "t"), ("app_id", "a"), ("user_id", "u"),
        ("timestamp", 17), ("delivery_mode", 2), ("priority", 4)]
    assert (msg.content_type, msg.content_encoding, msg.body) == (
        "application/json", "utf-8", b"{}")
    bare = envelope.message(BasicProperties(), b"")
    assert bare.headers == {} and bare.properties == {"delivery_mode": None,
                                                       "priority": None}
    assert (bare.content_type, bare.content_encoding) == ("", "")


def test_floats_and_decimals_are_found_at_any_depth() -> None:
    for kind, found in ((float, 1.5), (Decimal, Decimal("1.5"))):
        assert envelope._has(kind, {"a": found})
        assert envelope._has(kind, {"a": [1, ("x", {"b": [found]})]})
        assert not envelope._has(kind, {"a": [1, ("x", {"b": ["1.5"]})], "c": None})
        assert not envelope._has(kind, {})
