"""Dead letters on RabbitMQ: a durable queue per source queue, ``<queue>.conveyor.dead``.

Each dead letter is the original message — body, properties and headers as they
arrived — with four headers added: ``x-conveyor-dead-id`` (its own id),
``x-conveyor-dead-queue``, ``x-conveyor-dead-reason`` and ``x-conveyor-dead-time``
(unix milliseconds). Moving a delivery here is a confirmed publish followed by the ack
of the delivery, so a crash in between leaves a duplicate, never a loss.

AMQP cannot list queues, so the names of queues that have dead letters are kept
as messages in one more durable queue, ``conveyor.dead.index`` (one per name,
written the first time a process dead-letters from that queue; duplicates are
folded when read).

Reading a dead-letter queue takes every message unacked and gives back (nack with
requeue) those that stay, so the queue keeps its order and a reader that dies
loses nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

from conveyor.interfaces import DeadLetter
from pika.spec import BasicProperties

from . import envelope
from .channel import Channel
from .layout import dead_queue

INDEX = "conveyor.dead.index"
ID, QUEUE, REASON, TIME = ("x-conveyor-dead-id", "x-conveyor-dead-queue",
                           "x-conveyor-dead-reason", "x-conveyor-dead-time")
_OWN = (ID, QUEUE, REASON, TIME)


def bury(line: Channel, queue: str, props: BasicProperties, body: bytes,
         reason: str) -> str:
    """Publish the message to ``queue``'s dead letters (confirmed); its dead id."""
    dead = dead_queue(queue)
    line.declare_plain(dead)
    if line.once(("indexed", queue)):
        line.declare_plain(INDEX)
        line.publish("", INDEX, BasicProperties(delivery_mode=2), queue.encode(),
                     confirm=True)
    dead_id = uuid.uuid4().hex
    headers = dict(props.headers or {})
    headers.update({ID: dead_id, QUEUE: queue, REASON: reason, TIME: int(time.time() * 1000)})
    line.publish("", dead, _with_headers(props, headers), body, confirm=True)
    return dead_id


def _with_headers(props: BasicProperties, headers: dict[str, Any]) -> BasicProperties:
    return BasicProperties(
        content_type=props.content_type, content_encoding=props.content_encoding,
        headers=headers, delivery_mode=2, priority=props.priority,
        correlation_id=props.correlation_id, reply_to=props.reply_to,
        expiration=None, message_id=props.message_id, timestamp=props.timestamp,
        type=props.type, user_id=props.user_id, app_id=props.app_id)


def queues(line: Channel, queue: str | None) -> list[str]:
    """The source queues that have (or had) dead letters; ``[queue]`` if given."""
    if queue is not None:
        return [queue]
    seen: dict[str, None] = {}
    held = []
    for tag, _props, body in _drain(line, INDEX):
        name = body.decode()
        if name in seen:
            line.settle_got(tag, ack=True)  # keep one record per name
        else:
            held.append(tag)
            seen[name] = None
    _give_back(line, held)
    return list(seen)


def _drain(line: Channel, queue: str) -> list[tuple[int, BasicProperties, bytes]]:
    """Every message of ``queue``, taken unacked: the caller acks or gives back each
    (given back only after all were taken, or the same ones would come again)."""
    out = []
    for _ in range(line.count(queue)):
        got = line.get(queue)
        if got is None:
            break
        method, props, body = got
        out.append((cast(int, method.delivery_tag), props, body))
    return out


def _give_back(line: Channel, tags: list[int]) -> None:
    for tag in tags:
        line.settle_got(tag, ack=False)


def _letter(props: BasicProperties, body: bytes) -> DeadLetter:
    headers: dict[str, Any] = cast("dict[str, Any]", props.headers or {})
    message = envelope.message(props, body)
    message.headers = {k: v for k, v in message.headers.items() if k not in _OWN}
    return DeadLetter(str(headers.get(ID, "")), str(headers.get(QUEUE, "")),
                      str(headers.get(REASON, "")), int(headers.get(TIME) or 0) / 1000,
                      message)


def load(line: Channel, queue: str | None) -> list[DeadLetter]:
    """Every dead letter (of ``queue``), oldest first; all stay where they are."""
    out: list[DeadLetter] = []
    for name in queues(line, queue):
        taken = _drain(line, dead_queue(name))
        out.extend(_letter(props, body) for _tag, props, body in taken)
        _give_back(line, [tag for tag, _props, _body in taken])
    out.sort(key=lambda d: d.time)
    return out


def requeue(line: Channel, ids: Sequence[str] | None, queue: str | None) -> int:
    """Put dead letters (``ids``, or all of ``queue``/every queue) back on their
    queue: confirmed publish, then ack. Returns how many moved."""
    wanted = set(ids) if ids is not None else None
    moved = 0
    for name in queues(line, queue):
        held = []
        for tag, props, body in _drain(line, dead_queue(name)):
            letter = _letter(props, body)
            if wanted is not None and not (wanted & {letter.id, letter.message.task_id}):
                held.append(tag)
                continue
            headers = {k: v for k, v in (props.headers or {}).items()
                       if k not in _OWN and k not in envelope.TRANSIT}
            line.publish("", letter.queue or name, _with_headers(props, headers), body,
                         confirm=True)
            line.settle_got(tag, ack=True)
            moved += 1
        _give_back(line, held)
    return moved


def purge(line: Channel, queue: str | None) -> int:
    """Delete dead letters (of ``queue``); how many."""
    return sum(line.purge(dead_queue(name)) for name in queues(line, queue))
