"""The AMQP plugin's publish frames are pika's, byte for byte, whatever the
properties and headers (its kept table entries change nothing on the wire)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from conveyor_amqp import frames
from pika import frame
from pika.spec import Basic, BasicProperties

HEADERS: list[dict[str, Any] | None] = [
    None,
    {},
    {"lang": "py", "task": "t.add", "id": "6f1c0c1e-0000-4000-8000-000000000001",
     "shadow": None, "eta": None, "retries": 0, "timelimit": [None, 30],
     "ignore_result": False, "stamps": {}, "argsrepr": "(2, 2)"},
    {"flag": True, "one": 1, "zero": 0, "no": False},  # True == 1, not on the wire
    {"big": 2**40, "neg": -(2**31) - 1, "small": -5},
    {"nested": {"a": [1, "x", None, {"b": Decimal("1.25")}]}, "d": Decimal("-3")},
    {"unicode": "grüße ✓", "bytes": b"\x00\xff", "empty": ""},
]


@pytest.mark.parametrize("headers", HEADERS)
@pytest.mark.parametrize("props", [
    {},
    {"content_type": "application/json", "content_encoding": "utf-8",
     "delivery_mode": 2, "priority": 0},
    {"content_encoding": "binary", "priority": 255, "correlation_id": "c",
     "reply_to": "r", "expiration": "1000"},
    {"content_type": "application/x-msgpack", "message_id": "m", "timestamp": 17,
     "type": "t", "app_id": "a"},
])
def test_header_frames_are_pikas(headers: dict[str, Any] | None,
                                 props: dict[str, Any]) -> None:
    for _ in range(2):  # the second time from kept entries
        p = BasicProperties(headers=headers, **props)
        for size in (0, 1, 2**33):
            assert frames.header(5, size, p) == frame.Header(5, size, p).marshal()
        assert p.headers is headers  # left as it was given


def test_kept_entries_are_forgotten_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frames, "KEPT", 3)
    for n in range(10):
        p = BasicProperties(headers={"id": str(n), "n": n, "lang": "py"})
        assert frames.header(1, 3, p) == frame.Header(1, 3, p).marshal()
    assert len(frames.entries) <= 3


@pytest.mark.parametrize("exchange,key", [("", "celery"), ("ex", "a.b.c"), ("", "")])
def test_publish_frames_are_pikas(exchange: str, key: str) -> None:
    for _ in range(2):
        assert frames.publish(7, exchange, key) == frame.Method(
            7, Basic.Publish(exchange=exchange, routing_key=key)).marshal()
