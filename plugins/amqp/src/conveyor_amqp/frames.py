"""The content header frame of a published message, its field table's repeated
entries encoded once.

perf: pika's ``BasicProperties.encode`` spends most of an unconfirmed publish's CPU
on the ``headers`` field table: a Celery message has ~20 entries and most of them
(``lang``, ``task``, ``shadow``, ``retries``, ``origin``...) are the same in every
message a process sends. Each entry is still encoded by pika's own
:func:`pika.data.encode_short_string` and :func:`pika.data.encode_value`; an entry
holding a string, an int, a bool or None is kept (at most :data:`KEPT` of them,
forgotten all at once when full) and reused when the same key and value come again.
Everything but the table is encoded by pika's ``BasicProperties.encode``, so the
bytes are pika's, byte for byte (``tests/unit`` compares them).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from pika import data, frame, spec

#: Encoded table entries kept: enough for every constant entry of a few hundred
#: task signatures; per-message values (ids) only ever cost a cleared memo.
KEPT = 4096

#: Encoded table entries by (key, type, value).
entries: dict[tuple[str, type, Any], bytes] = {}
_KEPT_TYPES = (str, int, bool, type(None))
_SIZE = struct.Struct(">I")
_FLAGS = struct.Struct(">H")
_PREFIX = struct.Struct(">HxxQ")
_FRAME = struct.Struct(">BHI")
_END = bytes((spec.FRAME_END,))


def _entry(key: str, value: Any) -> bytes:
    pieces: list[bytes] = []
    data.encode_short_string(pieces, key)
    data.encode_value(pieces, value)
    return b"".join(pieces)


def table(headers: Mapping[str, Any]) -> bytes:
    """``headers`` as pika's :func:`pika.data.encode_table` writes them."""
    kept = entries
    pieces = []
    for key, value in headers.items():
        kind = type(value)
        if kind in _KEPT_TYPES:
            memo = (key, kind, value)  # the type: True == 1, but not on the wire
            entry = kept.get(memo)
            if entry is None:
                entry = _entry(key, value)
                if len(kept) >= KEPT:
                    kept.clear()
                kept[memo] = entry
        else:
            entry = _entry(key, value)
        pieces.append(entry)
    body = b"".join(pieces)
    return _SIZE.pack(len(body)) + body


def header(channel: int, size: int, props: spec.BasicProperties) -> bytes:
    """The marshalled content header frame of a ``size``-byte body on ``channel``:
    what ``pika.frame.Header(channel, size, props).marshal()`` returns."""
    headers = props.headers
    if headers is None:
        pieces = props.encode()
    else:
        props.headers = None  # encoded here, spliced in where pika puts it
        try:
            pieces = props.encode()
        finally:
            props.headers = headers
        # One flag word (the basic class has 14 properties), then content type and
        # encoding (two pieces each when set), then the table.
        at = 1 + 2 * (props.content_type is not None) + 2 * (props.content_encoding is not None)
        pieces[0] = _FLAGS.pack(_FLAGS.unpack(pieces[0])[0] | spec.BasicProperties.FLAG_HEADERS)
        pieces.insert(at, table(headers))
    payload = _PREFIX.pack(spec.BasicProperties.INDEX, size) + b"".join(pieces)
    return _FRAME.pack(spec.FRAME_HEADER, channel, len(payload)) + payload + _END


_publishes: dict[tuple[int, str, str], bytes] = {}


def publish(channel: int, exchange: str, routing_key: str) -> bytes:
    """The marshalled ``basic.publish`` method frame (not mandatory): what
    ``pika.frame.Method(channel, Basic.Publish(...)).marshal()`` returns, kept per
    channel, exchange and routing key (a process publishes to a few queues)."""
    memo = (channel, exchange, routing_key)
    out = _publishes.get(memo)
    if out is None:
        out = frame.Method(channel, spec.Basic.Publish(
            exchange=exchange, routing_key=routing_key)).marshal()
        if len(_publishes) >= KEPT:
            _publishes.clear()
        _publishes[memo] = out
    return out
