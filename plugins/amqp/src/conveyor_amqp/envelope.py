"""A Conveyor :class:`~conveyor.interfaces.Message` as AMQP basic properties, and back.

Celery 5.7 sends a task as: body = the serialized ``[args, kwargs, embed]``;
properties ``content_type``, ``content_encoding``, ``headers`` (the protocol v2
headers), ``delivery_mode`` 2, ``priority`` (0 when none was given),
``correlation_id`` (the task id), ``reply_to`` and, with ``expires``, ``expiration``
(milliseconds as text). The mapping here produces exactly that, so a message a
Conveyor client sends is byte for byte what a Celery worker expects.

Headers RabbitMQ or Conveyor add in transit are not task headers: they are read
(delivery counts) and dropped before a message is published again.

pika cannot write a float into a header table (py-amqp writes a double), so a float
header value (a ``time_limit`` of 1.5) travels as an AMQP decimal and is read back as
a float; the decimal keeps the digits its 32-bit integer holds (a unix time, such as
a remote control command's ``expires``, keeps whole seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, cast

from conveyor.interfaces import Message
from pika.spec import BasicProperties

#: Deliveries a message had before it was last published (Conveyor's own count;
#: quorum queues add theirs, ``x-delivery-count``, for deliveries since).
COUNT = "x-conveyor-deliveries"
#: What RabbitMQ adds: a quorum queue's count, and dead-lettering's history.
TRANSIT = ("x-delivery-count", "x-death", "x-first-death-exchange",
           "x-first-death-queue", "x-first-death-reason", "x-last-death-exchange",
           "x-last-death-queue", "x-last-death-reason", COUNT)

#: Message properties copied to AMQP as they are.
_PLAIN = ("correlation_id", "reply_to", "expiration", "message_id", "type", "app_id",
          "user_id", "timestamp")


#: An AMQP decimal is a 32-bit integer scaled by a number of decimals.
_INT32 = 2**31 - 1


def _decimal(value: float) -> Decimal | int:
    """The closest AMQP decimal: as many decimals as fit in its 32-bit integer (a unix
    time such as a pidbox ``expires`` keeps whole seconds); an integer beyond it."""
    number = Decimal(repr(value))
    if not number.is_finite():
        return 0  # no AMQP form; nothing Conveyor or Celery sends
    if abs(number) > _INT32:
        return int(value)
    exponent = number.as_tuple().exponent
    decimals = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    while decimals and abs(number.scaleb(decimals)) > _INT32:
        decimals -= 1
    return number.quantize(Decimal(1).scaleb(-decimals))


def _to_wire(value: Any) -> Any:
    if isinstance(value, float):
        return _decimal(value)
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_wire(v) for v in value]
    return value


def _from_wire(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_wire(v) for v in value]
    return value


def _has(kind: type, value: Any) -> bool:
    """Whether ``value`` holds a ``kind`` anywhere.

    perf: runs on every message both ways; task headers are a flat dict of strings,
    ints and None with one short list (``timelimit``), so only containers recurse.
    """
    items = value.values() if type(value) is dict else value
    for item in items:
        t = type(item)
        if t is kind or ((t is dict or t is list or t is tuple) and _has(kind, item)):
            return True
    return False


def properties(message: Message) -> BasicProperties:
    """The basic properties for ``message`` (``priority`` 0 when it has none, as
    Celery sends it; RabbitMQ's meaning is Conveyor's: larger first)."""
    props = message.properties
    headers = message.headers
    if _has(float, headers):
        headers = _to_wire(headers)
    return BasicProperties(
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        headers=headers,
        delivery_mode=props.get("delivery_mode", 2),
        priority=props.get("priority") or 0,
        correlation_id=props.get("correlation_id"),
        reply_to=props.get("reply_to"),
        expiration=props.get("expiration"),
    )


def message(props: BasicProperties, body: bytes) -> Message:
    """The Conveyor message of a delivery (headers as the sender wrote them)."""
    headers = cast("dict[str, Any] | None", props.headers)
    if headers is None:
        headers = {}
    elif any(key in headers for key in TRANSIT):
        headers = {k: v for k, v in headers.items() if k not in TRANSIT}
    if _has(Decimal, headers):
        headers = _from_wire(headers)
    extra: dict[str, Any] = {}
    for name in _PLAIN:
        value = getattr(props, name)
        if value is not None:
            extra[name] = value
    extra["delivery_mode"] = props.delivery_mode
    extra["priority"] = props.priority
    return Message(headers, body, props.content_type or "", props.content_encoding or "",
                   extra)


def counted(props: BasicProperties) -> bool:
    """Whether RabbitMQ counts this message's deliveries (a quorum queue's)."""
    headers = props.headers
    return headers is not None and "x-delivery-count" in headers


def deliveries(props: BasicProperties) -> int:
    """How many times this message has been delivered, counting this time: the
    deliveries before it was last published (:data:`COUNT`), plus those since —
    counted by a quorum queue in ``x-delivery-count``; on a classic queue this one."""
    headers: dict[str, Any] = cast("dict[str, Any]", props.headers or {})
    return int(headers.get(COUNT) or 0) + int(headers.get("x-delivery-count") or 0) + 1


def recount(headers: Mapping[str, Any] | None, before: int) -> dict[str, Any]:
    """Headers for publishing a delivered message again: RabbitMQ's transit headers
    dropped, :data:`COUNT` set to ``before`` (left out when 0)."""
    out = {k: v for k, v in (headers or {}).items() if k not in TRANSIT}
    if before:
        out[COUNT] = before
    return out
