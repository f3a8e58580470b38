"""The consumer channel's deliveries read off the connection's input here, not by
pika's frame decoder; every other frame still goes to pika, as it came.

perf: a delivery is three frames (method, content header, body). pika decodes each
into a frame object (slicing its input buffer down by one frame at a time, a copy
of the rest each time), looks for a callback the frame is waiting for, hands it to
the channel's content assembler and then the consumer; its header decode walks
``pika.data.decode_value``'s chain of ~17 byte comparisons for each of a Celery
message's ~20 header entries. That was ~40 % of an AMQP worker's CPU on no-op tasks.
:class:`Reader` is put in place of ``_on_data_available`` on *one* pika connection
object (an attribute of that instance: pika's classes, and every other connection
in the process, are untouched). It walks the input by offsets, decodes the frames
of a ``basic.deliver`` to a consumer of ours itself (:func:`table`,
:func:`properties`: the values pika's decoders return, type for type), and calls
the consumer; any other frame is decoded by pika and processed by pika's connection
exactly as before (in order, with its counters kept).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, cast

from pika import data, exceptions, frame, spec
from pika.compat import long
from pika.spec import Basic, BasicProperties

#: A frame's type, channel and payload size; then its payload and 0xCE.
_FRAME = struct.Struct(">BHI")
_END = spec.FRAME_END
#: ``basic.deliver``'s class and method ids, the first four bytes of its payload.
_DELIVER = struct.pack(">I", Basic.Deliver.INDEX)
_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
_I32 = struct.Struct(">i").unpack_from
_I64 = struct.Struct(">q").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_HEADER = struct.Struct(">HHQ").unpack_from

_METHOD, _CONTENT, _BODY = spec.FRAME_METHOD, spec.FRAME_HEADER, spec.FRAME_BODY
_S, _V, _L, _T, _I, _A, _F = b"SVltIAF"

#: Decoded table keys by their bytes: a process reads the same few dozen.
_keys: dict[bytes, str | bytes] = {}
#: Keys kept at most (forgotten all at once when full).
KEPT = 1024


def _text(raw: bytes) -> str | bytes:
    """UTF-8 text, or the bytes as they are when they are not (as pika)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def _key(raw: bytes) -> str | bytes:
    key = _keys.get(raw)
    if key is None:
        if len(_keys) >= KEPT:
            _keys.clear()
        key = _keys[raw] = _text(raw)
    return key


def value(buf: bytes, offset: int) -> tuple[Any, int]:
    """The field value at ``offset`` and the offset after it: what
    :func:`pika.data.decode_value` returns (its own code for the kinds a Celery
    message does not use)."""
    kind = buf[offset]
    if kind == _S:
        end = offset + 5 + _U32(buf, offset + 1)[0]
        return _text(buf[offset + 5:end]), end
    if kind == _V:
        return None, offset + 1
    if kind == _L:
        return long(_I64(buf, offset + 1)[0]), offset + 9  # pika's int, as pika
    if kind == _T:
        return buf[offset + 1] != 0, offset + 2
    if kind == _I:
        return _I32(buf, offset + 1)[0], offset + 5
    if kind == _A:
        end = offset + 5 + _U32(buf, offset + 1)[0]
        offset += 5
        items = []
        while offset < end:
            item, offset = value(buf, offset)
            items.append(item)
        return items, offset
    if kind == _F:
        return table(buf, offset + 1)
    return data.decode_value(buf, offset)


def table(buf: bytes, offset: int) -> tuple[dict[Any, Any], int]:
    """The field table at ``offset`` and the offset after it: what
    :func:`pika.data.decode_table` returns."""
    end = offset + 4 + _U32(buf, offset)[0]
    offset += 4
    out: dict[Any, Any] = {}
    while offset < end:
        size = buf[offset]
        key = _key(buf[offset + 1:offset + 1 + size])
        out[key], offset = value(buf, offset + 1 + size)
    return out, offset


def _short(buf: bytes, offset: int) -> tuple[str | bytes, int]:
    end = offset + 1 + buf[offset]
    return _text(buf[offset + 1:end]), end


#: A string of a decoded content header: the property it is (None: a header
#: entry), the header's key, and where its text starts and ends in the payload.
Text = tuple[str | None, Any, int, int]

#: The short-string properties after ``correlation_id``, by flag, in wire order.
_RARE = ((0x0200, "reply_to"), (0x0100, "expiration"), (0x0080, "message_id"),
         (0x0040, "timestamp"), (0x0020, "type"), (0x0010, "user_id"),
         (0x0008, "app_id"), (0x0004, "cluster_id"))


def _decode(buf: bytes, offset: int) -> tuple[BasicProperties, list[Text],
                                              list[tuple[Any, int]]]:
    """The properties at ``offset``, as pika decodes them, with where each string
    value lies (its bytes after ``offset``) and where each top-level header value
    that is a table or an array starts (see :class:`Layout`)."""
    base = offset
    flags = 0
    shift = 0
    while True:
        word = _U16(buf, offset)[0]
        offset += 2
        flags |= word << shift
        if not word & 1:
            break
        shift += 16
    props = BasicProperties()
    texts: list[Text] = []
    containers: list[tuple[Any, int]] = []

    def short(name: str) -> None:
        nonlocal offset
        end = offset + 1 + buf[offset]
        texts.append((name, None, offset + 1 - base, end - base))
        setattr(props, name, _text(buf[offset + 1:end]))
        offset = end

    if flags & 0x8000:
        short("content_type")
    if flags & 0x4000:
        short("content_encoding")
    if flags & 0x2000:
        end = offset + 4 + _U32(buf, offset)[0]
        offset += 4
        headers: dict[Any, Any] = {}
        while offset < end:
            size = buf[offset]
            key = _key(buf[offset + 1:offset + 1 + size])
            offset += 1 + size
            kind = buf[offset]
            if kind == _S:
                texts.append((None, key, offset + 5 - base,
                              offset + 5 + _U32(buf, offset + 1)[0] - base))
            elif kind == _A or kind == _F:
                containers.append((key, offset - base))
            headers[key], offset = value(buf, offset)
        props.headers = headers
    if flags & 0x1000:
        props.delivery_mode = buf[offset]  # type: ignore[assignment]  # any octet
        offset += 1
    if flags & 0x0800:
        props.priority = buf[offset]
        offset += 1
    if flags & 0x0400:
        short("correlation_id")
    for flag, name in _RARE:
        if flags & flag:
            if name == "timestamp":
                props.timestamp = _U64(buf, offset)[0]
                offset += 8
            else:
                short(name)
    return props, texts, containers


class Layout:
    """A content header payload as it was decoded, to decode the next one of the
    same size that differs from it only in the text of some strings (its *holes*)
    by copying it and decoding just those.

    perf: a Celery message's properties and ~20 headers decode to ~100k
    instructions in Python, yet between two messages of one task from one process
    only the ids differ (``id``, ``root_id``, ``correlation_id``), in text of the
    same length. A layout keeps the payload's bytes, what they decoded to, and
    which strings differed between it and the last one of its size; a payload whose
    bytes match everywhere but in those strings has, byte for byte, the same
    structure (every length and kind lies outside the holes), so it decodes to the
    same values but the holes, which are decoded from it. Nothing is assumed about
    which strings change: a string found to differ becomes a hole of the next
    layout of that size; a payload that differs elsewhere (another task, an
    argument's repr of another length, an int) is decoded in full and becomes the
    layout of its size. Header values that are tables or arrays are always decoded
    afresh (never shared between messages: a task may change them).
    """

    __slots__ = ("raw", "texts", "containers", "holes", "segments", "fields", "headers")

    def __init__(self, raw: bytes, props: BasicProperties, texts: list[Text],
                 containers: list[tuple[Any, int]], previous: Layout | None) -> None:
        self.raw = raw
        self.texts = texts
        self.containers = containers
        holes: set[Text] = set()
        if previous is not None and previous.texts == texts and \
                previous.containers == containers:
            old = previous.raw
            holes.update(previous.holes)
            holes.update(t for t in texts if raw[t[2]:t[3]] != old[t[2]:t[3]])
        self.holes: list[Text] = sorted(holes, key=lambda t: t[2])
        self.segments: list[tuple[int, bytes]] = []
        at = 0
        for _, _, start, end in self.holes:
            if start > at:
                self.segments.append((at, raw[at:start]))
            at = end
        if at < len(raw):
            self.segments.append((at, raw[at:]))
        self.fields = dict(vars(props))
        self.headers: dict[Any, Any] | None = cast("dict[Any, Any] | None", props.headers)
        self.fields["headers"] = None

    def read(self, buf: bytes, offset: int) -> BasicProperties | None:
        """The properties at ``offset`` if they differ from this layout's only in
        its holes (the payload is this layout's size), else None."""
        for start, segment in self.segments:
            if not buf.startswith(segment, offset + start):
                return None
        props = BasicProperties.__new__(BasicProperties)
        fields = vars(props)
        fields.update(self.fields)
        headers = self.headers
        if headers is not None:
            headers = fields["headers"] = headers.copy()
            for key, start in self.containers:
                headers[key] = value(buf, offset + start)[0]
        for name, key, start, end in self.holes:
            raw = buf[offset + start:offset + end]
            try:
                text: str | bytes = raw.decode()
            except UnicodeDecodeError:
                text = raw
            if name is None:
                headers[key] = text  # type: ignore[index]
            else:
                fields[name] = text
        return props


#: The last layout of each payload size (see :class:`Layout`).
_layouts: dict[int, Layout] = {}
#: Layouts kept at most (forgotten all at once when full).
LAYOUTS = 256


def properties(buf: bytes, offset: int, end: int) -> BasicProperties:
    """The basic properties in ``buf[offset:end]`` (a content header's payload
    after its class, weight and body size): what
    ``BasicProperties().decode(buf[offset:end])`` returns."""
    size = end - offset
    layout = _layouts.get(size)
    if layout is not None:
        props = layout.read(buf, offset)
        if props is not None:
            return props
    props, texts, containers = _decode(buf, offset)
    if len(_layouts) >= LAYOUTS:
        _layouts.clear()
    _layouts[size] = Layout(buf[offset:end], props, texts, containers, layout)
    # the caller gets its own headers: the layout's are copied for each message
    if props.headers is not None:
        props = _copy(props)
    return props


def _copy(props: BasicProperties) -> BasicProperties:
    out = BasicProperties.__new__(BasicProperties)
    vars(out).update(vars(props))
    out.headers = dict(props.headers)  # type: ignore[arg-type]
    return out


def deliver(buf: bytes, offset: int) -> Basic.Deliver:
    """The ``basic.deliver`` arguments at ``offset`` (after its method ids)."""
    tag, offset = _short(buf, offset)
    delivery_tag = _U64(buf, offset)[0]
    redelivered = buf[offset + 8] & 1 != 0
    exchange, offset = _short(buf, offset + 9)
    routing_key, offset = _short(buf, offset)
    return Basic.Deliver(cast(str, tag), delivery_tag, redelivered, cast(str, exchange),
                         cast(str, routing_key))


#: What a consumer is called with: pika's channel, method, properties, body.
Consumer = Callable[[Any, Basic.Deliver, BasicProperties, bytes], None]


class Reader:
    """Reads one pika connection's input in place of its ``_on_data_available``
    (see the module docstring), for the deliveries of one channel.

    A delivery is decoded here when its consumer tag maps, in the channel's
    consumer table, to a callback given to :meth:`take`, and pika is not cancelling
    that consumer; otherwise (another consumer, or a cancelled one, whose deliveries
    pika rejects) pika reads all of it. Frames come out in the order they came.
    """

    def __init__(self, connection: Any, channel: Any) -> None:
        self._conn = connection  # pika's connection under the blocking facade
        self._channel = channel  # pika's channel
        self._number: int = channel.channel_number
        self._mine: set[Consumer] = set()
        #: The delivery being read: its consumer, method, properties, body size and
        #: the body fragments so far (a body larger than a frame comes in several).
        self._open: tuple[Consumer, Basic.Deliver, BasicProperties, int] | None = None
        self._parts: list[bytes] = []
        self._got = 0
        connection._on_data_available = self.feed

    def take(self, callback: Consumer) -> None:
        """Decode deliveries to ``callback`` here (it is in the consumer table)."""
        self._mine.add(callback)

    def serves(self, connection: Any, channel: Any) -> bool:
        return connection is self._conn and channel is self._channel

    def remove(self) -> None:
        """Give the connection's input back to pika (what it holds stays there)."""
        if vars(self._conn).get("_on_data_available") == self.feed:
            del self._conn._on_data_available

    def feed(self, data_in: bytes) -> None:
        """What pika's ``_on_data_available`` does with ``data_in``, a delivery to a
        consumer of ours decoded here."""
        conn = self._conn
        buf = conn._frame_buffer + data_in if conn._frame_buffer else data_in
        size = len(buf)
        pos = done = frames = 0
        number = self._number
        try:
            while size - pos >= 8:
                kind, channel, length = _FRAME.unpack_from(buf, pos)
                end = pos + 8 + length
                if end > size:
                    break
                if buf[end - 1] != _END:
                    raise exceptions.InvalidFrameError("Invalid FRAME_END marker")
                if channel == number and (
                        self._open is not None
                        or (kind == _METHOD and buf[pos + 7:pos + 11] == _DELIVER)):
                    got = self._content(kind, buf, pos + 7, end - 1)
                    if got is not None:
                        frames += 1
                        pos = end  # taken before the consumer runs, as pika does
                        if got:
                            got[0](self._channel, got[1], got[2], got[3])
                        continue
                # pika's own: decoded and processed by its connection, which sees
                # its buffer and counters as its own loop leaves them
                value = frame.decode_frame(buf[pos:end])[1]
                if value is None:
                    raise exceptions.InvalidFrameError(f"Unknown frame type {kind}")
                conn._frame_buffer = buf = buf[end:]
                conn.bytes_received += end - done
                conn.frames_received += frames
                pos = done = frames = 0
                conn._process_frame(value)
                buf = conn._frame_buffer  # emptied if that closed the connection
                size = len(buf)
        finally:
            conn._frame_buffer = buf[pos:] if pos else buf
            conn.bytes_received += pos - done
            conn.frames_received += frames

    def _content(self, kind: int, buf: bytes, start: int, stop: int
                 ) -> tuple[Any, ...] | None:
        """Read one frame of a delivery of ours (payload ``buf[start:stop]``): the
        consumer and its arguments once the delivery is whole, ``()`` before, None
        when the frame is pika's to handle (another consumer's delivery)."""
        if kind == _METHOD:
            if self._open is not None:
                raise exceptions.UnexpectedFrameError(
                    "a method frame before the body of the delivery being read")
            method = deliver(buf, start + 4)
            channel = self._channel  # its table is replaced when the channel closes
            callback = channel._consumers.get(method.consumer_tag)
            if callback not in self._mine or method.consumer_tag in channel._cancelled:
                return None
            self._open = (callback, method, _NO_PROPERTIES, 0)
            self._parts = []
            self._got = 0
            return ()
        opened = self._open
        assert opened is not None
        callback, method, props, body_size = opened
        if kind == _CONTENT:
            body_size = _HEADER(buf, start)[2]
            props = properties(buf, start + 12, stop)
            if body_size == 0:
                self._open = None
                return callback, method, props, b""
            self._open = (callback, method, props, body_size)
            return ()
        if kind != _BODY:
            raise exceptions.UnexpectedFrameError(
                f"Frame type {kind} inside a delivery's content")
        fragment = buf[start:stop]
        self._got += len(fragment)
        if self._got < body_size:
            self._parts.append(fragment)
            return ()
        if self._got > body_size:
            raise exceptions.BodyTooLongError(self._got, body_size)
        self._open = None
        if self._parts:
            self._parts.append(fragment)
            fragment = b"".join(self._parts)
            self._parts = []
        return callback, method, props, fragment


#: A placeholder until a delivery's content header is read.
_NO_PROPERTIES = BasicProperties()
