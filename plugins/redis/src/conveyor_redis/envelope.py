"""kombu's JSON envelope for one message on a Redis list
(docs/architecture.md, "Redis broker").

Field order is kombu's: ``body``, ``content-encoding``, ``content-type``, ``headers``,
``properties``; in ``properties`` the message's own properties come first in the order
the core built them (``correlation_id``, ``reply_to``, ``delivery_mode``,
``expiration``, …), then ``delivery_info``, ``priority`` (the *wire* value),
``body_encoding`` and ``delivery_tag``, as ``Channel.basic_publish`` adds them. The
text is ``json.dumps`` with its default separators, as kombu writes it.

perf: this runs once per message on both sides: publishing puts the text together
from pieces, reading is the C JSON decoder and base64.
"""

from __future__ import annotations

import json
from binascii import a2b_base64, b2a_base64
from typing import Any, cast

from orjson import loads as _orjson_loads

from conveyor.envelope import (KOMBU_JSON, BuiltMessage, headers_json, headers_layout,
                               properties_json, properties_layout)
from conveyor.publish import new_id, new_ids
from conveyor.interfaces import Message

from .layout import MAX_WIRE, from_wire

#: Properties the transport owns on the wire; never copied from a Message.
TRANSPORT_PROPERTIES = frozenset({"delivery_info", "priority", "body_encoding",
                                  "delivery_tag"})
_string = KOMBU_JSON.string
_dumps = KOMBU_JSON.encode


#: A unique delivery tag (kombu uses them as keys in ``unacked``): a uuid4's text, as
#: kombu's; plain hex and dashes, so its JSON text is itself in quotes.
new_tag = new_id
#: ``n`` delivery tags at once (for a batch).
new_tags = new_ids

#: ``delivery_info`` text by (exchange, routing key); a route has one.
_infos: dict[tuple[str, str], str] = {}
#: Wire priorities (0–9) as text.
_WIRES = tuple(str(wire) for wire in range(MAX_WIRE + 1))
#: Texts of values most envelopes share (content types, encodings), as JSON.
_texts: dict[str, str] = {}


def _value(value: Any) -> str:
    """``value`` as JSON; a string from :data:`_texts` when it has been seen."""
    if type(value) is not str:
        return _dumps(value)
    text = _texts.get(value)
    if text is None:
        text = _string(value)
        if len(_texts) < 64:
            _texts[value] = text
    return text


def _info(exchange: str, routing_key: str) -> str:
    key = (exchange, routing_key)
    text = _infos.get(key)
    if text is None:
        if len(_infos) >= 1024:  # per-message routing keys: do not grow for ever
            _infos.clear()
        text = _infos[key] = _dumps({"exchange": exchange, "routing_key": routing_key})
    return text


#: The envelope text around a core-built message's own values, by ``(template,
#: exchange, routing key, wire priority, content type, content encoding)``: from the
#: body to the headers, from the headers to ``correlation_id``'s value, and from
#: there to the delivery tag's (see :func:`encode`).
_frames: dict[tuple[Any, ...], tuple[str, str, str]] = {}


def _frame(key: tuple[Any, ...]) -> tuple[str, str, str]:
    template, exchange, routing_key, wire, ctype, encoding = key
    head, tail = properties_layout(template, KOMBU_JSON, TRANSPORT_PROPERTIES)
    if len(_frames) >= 1024:  # per-message routing keys: do not grow for ever
        _frames.clear()
    frame = _frames[key] = (
        f'", "content-encoding": {_value(encoding)}, "content-type": {_value(ctype)}, '
        f'"headers": ',
        f', "properties": {head}',
        f'{tail}, {_transport(exchange, routing_key, wire)}"')
    return frame


def _transport(exchange: str, routing_key: str, wire: int) -> str:
    """The properties the transport adds, up to the delivery tag's value."""
    info = _infos.get((exchange, routing_key)) or _info(exchange, routing_key)
    return (f'"delivery_info": {info}, "priority": {_WIRES[wire]}, '
            f'"body_encoding": "base64", "delivery_tag": ')


def frame_of(message: Message, exchange: str, routing_key: str,
             wire_priority: int) -> tuple[str, str, str] | None:
    """The envelope text around ``message``'s own values for this delivery (see
    :func:`framed`), when the core built it and nobody has read its properties (they
    are its template's); None for any other message (:func:`encode` writes it whole).

    A frame is the same for every message of one template, content type and
    encoding on one delivery, so a batch looks it up once per run of them."""
    if type(message) is not BuiltMessage or message.props is not None:
        return None
    key = (message.template, exchange, routing_key, wire_priority,
           message.content_type, message.content_encoding)
    return _frames.get(key) or _frame(key)


def framed(message: BuiltMessage, frame: tuple[str, str, str], tag: str) -> str:
    """The envelope text of a message :func:`frame_of` gave ``frame`` for, with
    delivery tag ``tag``: its body, headers, task id (written once for the headers
    and ``correlation_id``) and tag put into the frame."""
    text = b2a_base64(message.body, newline=False).decode("ascii")
    cid = message.values[0]
    ident = _string(cid) if type(cid) is str else _dumps(cid)
    return (f'{{"body": "{text}{frame[0]}{headers_json(message, KOMBU_JSON, ident)}'
            f'{frame[1]}{ident}{frame[2]}{tag}"}}}}')


def usual_frame(message: BuiltMessage, frame: tuple[str, str, str],
                origin: str) -> tuple[str, ...]:
    """The envelope text around a usual message's own values
    (:func:`conveyor.envelope.usual`: id, argsrepr, kwargsrepr) for ``frame`` (from
    :func:`frame_of`) and ``origin``: ``(a, b, c, d, e, f, no_args, no_kwargs)``,
    where ``'{"body": "' + body + a + ident + b + ident + c + args + d + kwargs + e +
    ident + f + tag + '"}}'`` is what :func:`framed` writes (``args``/``kwargs``:
    the reprs' JSON texts, ``no_args``/``no_kwargs`` for the empty ones)."""
    head, between, before_args, between_reprs, tail, no_args, no_kwargs = headers_layout(
        message.template, KOMBU_JSON, origin)
    return (f"{frame[0]}{head}", between, before_args, between_reprs,
            f"{tail}{frame[1]}", frame[2], no_args, no_kwargs)


def encode(message: Message, exchange: str, routing_key: str, wire_priority: int,
           tag: str) -> str:
    """The envelope text to LPUSH for ``message``, with delivery tag ``tag`` (from
    :func:`new_tag`: text JSON needs no escapes in).

    perf: the text is put together from pieces (the headers' from text laid out once
    per template: :func:`conveyor.envelope.headers_json`) rather than by building
    the envelope's dicts and encoding them; the result is the same text. A message
    the core built whose properties nobody has read is written into a frame laid
    out once per template and delivery (:func:`frame_of`, :func:`framed`).
    """
    frame = frame_of(message, exchange, routing_key, wire_priority)
    if frame is not None:
        return framed(cast(BuiltMessage, message), frame, tag)
    encoding, ctype = message.content_encoding, message.content_type
    own = properties_json(message, KOMBU_JSON, omit=TRANSPORT_PROPERTIES,
                          more=f'{_transport(exchange, routing_key, wire_priority)}"{tag}"')
    return (f'{{"body": "{b2a_base64(message.body, newline=False).decode("ascii")}", '
            f'"content-encoding": {_texts.get(encoding) or _value(encoding)}, '
            f'"content-type": {_texts.get(ctype) or _value(ctype)}, '
            f'"headers": {headers_json(message, KOMBU_JSON)}, "properties": {own}}}')


class Decoded:
    """A parsed envelope: the Message plus what the transport keeps aside.

    ``error`` says why the entry is not a usable envelope (``None`` when it is).
    """

    __slots__ = ("message", "exchange", "routing_key", "redelivered", "error", "tag")

    def __init__(self, message: Message, exchange: str, routing_key: str,
                 redelivered: bool, error: str | None, tag: str | None) -> None:
        self.message, self.exchange, self.routing_key = message, exchange, routing_key
        self.redelivered, self.error, self.tag = redelivered, error, tag

    @property
    def valid(self) -> bool:
        return self.error is None


def _undeliverable(raw: bytes | str, why: str, headers: dict[str, Any]) -> Decoded:
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "replace")
    return Decoded(Message(headers, data, "application/octet-stream", "binary", {}),
                   "", "", False, f"Not a kombu message envelope: {why}", None)


_raw_decode = json.JSONDecoder().raw_decode
#: Every digit as ``9``, anything else as ``.``: a run of 19 digits in the text may
#: be an integer past 64 bits, which orjson would read as a float.
_DIGITS = bytes(0x39 if 0x30 <= i <= 0x39 else 0x2E for i in range(256))
_LONG_INT = b"9" * 19


def _parse(raw: bytes | str) -> Any:
    """``json.loads(raw)``: orjson's parser first, the standard library's where
    orjson refuses what ``json.loads`` takes (``NaN``, a lone surrogate, UTF-16
    text), so what parses and the error text for what does not are ``json.loads``'
    own. Text with 19 digits in a row goes to the standard library straight: orjson
    reads an integer past 64 bits as a float, ``json.loads`` as the integer.

    perf: every message a worker takes is parsed here, in its consumer thread.
    An envelope of a call without arguments: ``json.loads`` 5.9 µs, the C decoder
    called straight 4.4 µs, orjson 1.6 µs and the digit check 0.9 µs (timeit, best
    of 5).
    """
    if type(raw) is bytes and _LONG_INT not in raw.translate(_DIGITS):
        try:
            return _orjson_loads(raw)
        except ValueError:  # refused: json.loads below gives its value or its error
            pass
    if type(raw) is bytes and raw[:1] == b"{":
        # an envelope as kombu writes it (UTF-8, an object) straight to the decoder:
        # ``json.loads`` of bytes detects the encoding in Python first
        text = raw.decode("utf-8", "surrogatepass")
        env, end = _raw_decode(text)
        if end == len(text):
            return env
    return json.loads(raw)


def decode(raw: bytes | str) -> Decoded:
    """Parse an envelope; never raises.

    Something that is not a kombu envelope comes back as a Message with the raw bytes
    as body and ``error`` saying what is wrong, so the worker dead-letters it with
    that reason instead of the consumer crashing or silently dropping it. Its headers
    are kept when they are an object, so the task id is known and its FAILURE
    recorded (a client waiting on it is answered).
    """
    try:
        env = _parse(raw)
    except ValueError as exc:
        return _undeliverable(raw, f"not JSON ({exc})", {})
    if not isinstance(env, dict):
        return _undeliverable(raw, f"JSON {type(env).__name__}, not an object", {})
    headers = env.get("headers")
    if headers is None:
        headers = {}
    if not isinstance(headers, dict):
        return _undeliverable(raw, f"'headers' is {type(headers).__name__}, not an "
                              "object", {})
    props = env.get("properties")
    if not isinstance(props, dict):
        return _undeliverable(raw, "no 'properties' object", headers)
    body = env.get("body")
    if not isinstance(body, str):
        return _undeliverable(raw, f"unreadable 'body' ({type(body).__name__}, not "
                              "text)", headers)
    if props.get("body_encoding") == "base64":
        try:
            data = a2b_base64(body)  # what b64decode runs, less two Python frames
        except ValueError as exc:
            return _undeliverable(raw, f"unreadable 'body' ({exc})", headers)
    else:
        try:
            data = body.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate ("\\ud800") in the JSON text
            return _undeliverable(raw, f"unreadable 'body' ({exc})", headers)
    info = props.get("delivery_info")
    if not isinstance(info, dict):
        info = {}
    own = {k: v for k, v in props.items() if k not in TRANSPORT_PROPERTIES}
    own["priority"] = from_wire(props.get("priority"))
    message = Message(headers, data, env.get("content-type") or "application/json",
                      env.get("content-encoding") or "utf-8", own)
    redelivered = bool(info.get("redelivered") or headers.get("redelivered"))
    tag = props.get("delivery_tag")
    return Decoded(message, info.get("exchange") or "", info.get("routing_key") or "",
                   redelivered, None, tag if isinstance(tag, str) else None)
