"""A delivery's frames decoded as pika decodes them, with less Python.

A delivery is three frames: ``basic.deliver``, a content header and the body.
pika decodes the header's properties and their ``headers`` field table in pure
Python, a function call per entry and per value (a Celery message has ~20
entries), and every frame through :func:`pika.frame.decode_frame`'s checks. That
is the largest part of the consumer thread's work on a message, and that thread
also acks and hands tasks to the pool. Here the three frames are read with
one look at their frame header each, and the table's common kinds (long strings,
void, booleans, 32- and 64-bit integers, arrays, nested tables) inline; every
other kind is decoded by pika's own :func:`pika.data.decode_value`, and a table
holding text that is not UTF-8 by :func:`pika.data.decode_table`, so the values
are pika's whatever comes (a double truncated to an int, a decimal, a timestamp,
bytes). Any other frame is pika's.

perf: frames of 16 deliveries at a time fed to a live connection and dispatched to
a consumer callback: 352.7k -> 220.4k instructions a delivery (callgrind, diff of 4
and 1 passes over 1,600 deliveries; a Celery message's ~20 headers); a threads
``-c 8`` worker draining no-op tasks in-process: 1,062k -> 954k instructions a task
(callgrind, diff of 2,000 and 500 tasks).

:func:`install` puts the reader on one pika connection (its ``_read_frame``, the
one place pika's connection decodes what it received), not on pika's modules, so
nothing else in the process changes.
"""

from __future__ import annotations

import struct
from typing import Any, cast

from pika import data, frame, spec

_FRAME = struct.Struct(">BHI")
_HEADER = struct.Struct(">HHQH")  # class, weight, body size, first flag word
_U32 = struct.Struct(">I").unpack_from
_I32 = struct.Struct(">i").unpack_from
_I64 = struct.Struct(">q").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_FRAME_METHOD = spec.FRAME_METHOD
_FRAME_HEADER = spec.FRAME_HEADER
_FRAME_BODY = spec.FRAME_BODY
_DELIVER = spec.Basic.Deliver.INDEX
_FRAME_END = spec.FRAME_END
_BASIC = spec.BasicProperties.INDEX
_P = spec.BasicProperties

#: The basic properties in wire order: flag, attribute, how it is written
#: (``s`` short string, ``F`` field table, ``o`` octet, ``Q`` 64-bit timestamp).
FIELDS = (
    (_P.FLAG_CONTENT_TYPE, "content_type", "s"),
    (_P.FLAG_CONTENT_ENCODING, "content_encoding", "s"),
    (_P.FLAG_HEADERS, "headers", "F"),
    (_P.FLAG_DELIVERY_MODE, "delivery_mode", "o"),
    (_P.FLAG_PRIORITY, "priority", "o"),
    (_P.FLAG_CORRELATION_ID, "correlation_id", "s"),
    (_P.FLAG_REPLY_TO, "reply_to", "s"),
    (_P.FLAG_EXPIRATION, "expiration", "s"),
    (_P.FLAG_MESSAGE_ID, "message_id", "s"),
    (_P.FLAG_TIMESTAMP, "timestamp", "Q"),
    (_P.FLAG_TYPE, "type", "s"),
    (_P.FLAG_USER_ID, "user_id", "s"),
    (_P.FLAG_APP_ID, "app_id", "s"),
    (_P.FLAG_CLUSTER_ID, "cluster_id", "s"),
)


def _value(buf: bytes, at: int) -> tuple[Any, int]:
    """The field value whose kind byte is at ``at``, and the offset after it."""
    kind = buf[at]
    at += 1
    if kind == 83:  # S: long string
        end = at + 4 + _U32(buf, at)[0]
        return buf[at + 4:end].decode(), end
    if kind == 86:  # V: void
        return None, at
    if kind == 73:  # I: signed 32 bits
        return _I32(buf, at)[0], at + 4
    if kind == 116:  # t: boolean
        return bool(buf[at]), at + 1
    if kind == 108 or kind == 76:  # l, L: signed 64 bits
        return _I64(buf, at)[0], at + 8
    if kind == 70:  # F: field table
        return _table(buf, at)
    if kind == 65:  # A: field array
        end = at + 4 + _U32(buf, at)[0]
        at += 4
        items = []
        while at < end:
            item, at = _value(buf, at)
            items.append(item)
        return items, at
    return data.decode_value(buf, at - 1)


def _table(buf: bytes, at: int) -> tuple[dict[str | bytes, Any], int]:
    end = at + 4 + _U32(buf, at)[0]
    at += 4
    out: dict[str | bytes, Any] = {}
    while at < end:
        size = buf[at]
        key = buf[at + 1:at + 1 + size].decode()
        at += 1 + size
        kind = buf[at]
        if kind == 83:  # the common entries inline: a string, None
            stop = at + 5 + _U32(buf, at + 1)[0]
            out[key] = buf[at + 5:stop].decode()
            at = stop
        elif kind == 86:
            out[key] = None
            at += 1
        else:
            out[key], at = _value(buf, at)
    return out, at


def table(buf: bytes, at: int) -> tuple[dict[str | bytes, Any], int]:
    """The field table at ``at`` (its size first), and the offset after it: what
    :func:`pika.data.decode_table` returns. Text is read as UTF-8; a table holding
    other bytes (pika keeps them as bytes) is decoded by pika."""
    try:
        return _table(buf, at)
    except UnicodeDecodeError:
        return data.decode_table(buf, at)


def _text(raw: bytes) -> str | bytes:
    """UTF-8 text, else the bytes as they came (as pika reads a short string)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def properties(buf: bytes, at: int, flags: int) -> spec.BasicProperties:
    """The basic properties written from ``at`` (after their one flag word)."""
    props = spec.BasicProperties()
    for flag, name, kind in FIELDS:
        if not flags & flag:
            continue
        if kind == "s":
            size = buf[at]
            value: Any = _text(buf[at + 1:at + 1 + size])
            at += 1 + size
        elif kind == "F":
            value, at = table(buf, at)
        elif kind == "o":
            value = buf[at]
            at += 1
        else:
            value = _U64(buf, at)[0]
            at += 8
        setattr(props, name, value)
    return props


def deliver(buf: bytes, at: int) -> spec.Basic.Deliver:
    """The ``basic.deliver`` method written from ``at`` (after its method id)."""
    size = buf[at]
    consumer_tag = _text(buf[at + 1:at + 1 + size])
    at += 1 + size
    tag, = _U64(buf, at)
    redelivered = buf[at + 8] & 1 != 0
    at += 9
    size = buf[at]
    exchange = _text(buf[at + 1:at + 1 + size])
    at += 1 + size
    size = buf[at]
    method: Any = spec.Basic.Deliver  # its stubs say str; pika keeps bytes not UTF-8
    return cast(spec.Basic.Deliver, method(consumer_tag, tag, redelivered, exchange,
                                           _text(buf[at + 1:at + 1 + size])))


def decode_frame(buf: bytes) -> tuple[int, Any]:
    """``(bytes used, frame)`` for the frame starting ``buf``, or ``(0, None)`` until
    it has all come: what :func:`pika.frame.decode_frame` returns. A delivery's
    three frames (``basic.deliver``, a basic content header with one flag word,
    a body) are decoded here, any other frame by pika."""
    if len(buf) < 8 or not 0 < buf[0] < 4:  # not a method, header or body frame
        return frame.decode_frame(buf)
    kind, channel, size = _FRAME.unpack_from(buf)
    end = 8 + size
    if end > len(buf) or buf[end - 1] != _FRAME_END:
        return frame.decode_frame(buf)  # incomplete, or pika's error
    if kind == _FRAME_BODY:
        return end, frame.Body(channel, buf[7:end - 1])
    # The frame alone (as pika reads it): a field claiming more than the frame
    # holds ends there, never reads the next frame.
    if kind == _FRAME_HEADER and size >= 14:
        class_id, _weight, body_size, flags = _HEADER.unpack_from(buf, 7)
        if class_id == _BASIC and not flags & 1:  # one flag word: all 14 fit
            return end, frame.Header(channel, body_size,
                                     properties(buf[:end - 1], 21, flags))
    elif kind == _FRAME_METHOD and size >= 4 and _U32(buf, 7)[0] == _DELIVER:
        return end, frame.Method(channel, deliver(buf[:end - 1], 11))
    return frame.decode_frame(buf)


def install(connection: Any) -> None:
    """Read ``connection``'s frames (a :class:`pika.BlockingConnection`) with
    :func:`decode_frame`."""
    impl = connection._impl

    def read_frame() -> tuple[int, Any]:
        return decode_frame(impl._frame_buffer)
    impl._read_frame = read_frame
