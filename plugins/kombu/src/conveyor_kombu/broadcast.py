"""Broadcasts over kombu (``Capabilities.broadcast``): remote control and events.

kombu makes the wire, as it does for Celery's own pidbox and events: a broadcast is a
kombu publish to an exchange declared as Celery declares it, and a subscription is a
kombu queue bound to that exchange, consumed on a connection of its own (the worker's
control thread reads it beside the consumer). So on ``kombu+redis://`` a Celery
``celery inspect ping`` reaches a Conveyor worker and ``conveyor inspect ping``
reaches Celery workers, and the bridge's workers answer ``conveyor status``,
``control`` and ``result.revoke()`` like the native transports' do.

* Fanout (commands) and topic (events) exchanges keep nothing for a later subscriber.
  On kombu's Redis the events' topic exchange is declared fanout, as Celery's event
  dispatcher does there: kombu's Redis makes fanout exchanges pub/sub, with the
  routing key in the channel name and the binding key as a pattern, so a topic
  binding such as ``task.*`` or ``#`` still selects by key.
* A direct exchange (replies) routes to the queue bound with the key. A subscription's
  queue is deleted when it closes, so a reply to a client that stopped listening is
  dropped (kombu's Redis raises for a table with no binding left: dropped too).
"""

# kombu's public API (Connection, Producer, Consumer, Queue) has no annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange as KombuExchange
from kombu.entity import Queue
from kombu.exceptions import InconsistencyError
from kombu.message import Message as KombuMessage
from kombu.messaging import Consumer, Producer

from conveyor.interfaces import FANOUT, TOPIC, Delivery, Exchange, Message

#: How long a new subscription lets kombu run its connection once, so that a
#: subscription kombu makes on its first poll (Redis ``PSUBSCRIBE`` for a fanout
#: queue) is made before :meth:`Broadcasts.subscribe` returns.
SETTLE = 0.05


def supports_broadcast(transport_cls: type) -> bool:
    """Whether kombu's transport has the fanout, topic and direct exchanges the
    pidbox and events need (its virtual transports say so per channel class)."""
    kinds = getattr(getattr(transport_cls, "implements", None), "exchange_type", ())
    channel = getattr(transport_cls, "Channel", None)
    return {"fanout", "topic", "direct"} <= set(kinds) and bool(
        getattr(channel, "supports_fanout", True))


def kombu_exchange(exchange: Exchange, kombu_name: str) -> KombuExchange:
    """``exchange`` as kombu declares it on transport ``kombu_name``."""
    kind = FANOUT if exchange.kind == TOPIC and kombu_name == "redis" else exchange.kind
    return KombuExchange(exchange.name, type=kind, durable=exchange.durable,
                         auto_delete=exchange.auto_delete)


def publish(producer: Producer, exchange: KombuExchange, routing_key: str,
            message: Message) -> None:
    """Publish ``message`` to ``exchange``; dropped when nobody is bound."""
    mode = message.properties.get("delivery_mode")
    try:
        producer.publish(message.body, exchange=exchange, routing_key=routing_key,
                         headers=dict(message.headers), content_type=message.content_type,
                         content_encoding=message.content_encoding, declare=[exchange],
                         retry=False, **({"delivery_mode": mode} if mode else {}))
    except InconsistencyError:
        pass  # kombu's Redis: no binding left for the key's exchange (see module)


class KombuSubscription:
    """One kombu queue bound to a broadcast exchange, on its own connection.

    ``to_message`` turns a kombu message into Conveyor's (the bridge's own mapping of
    headers and properties).
    """

    def __init__(self, connection: Connection, exchange: KombuExchange, binding_key: str,
                 queue: str | None, expires: float | None,
                 to_message: Callable[[KombuMessage], Message]) -> None:
        self._connection = connection
        self._to_message = to_message
        self._got: list[Delivery] = []
        self._closed = False
        name = queue or f"{exchange.name}.{uuid.uuid4().hex}"
        self._queue = Queue(name, exchange, routing_key=binding_key, durable=False,
                            auto_delete=True, expires=expires)
        channel = connection.channel()
        self._channel = channel
        self._consumer = Consumer(channel, [self._queue], on_message=self._arrived,
                                  no_ack=True)
        self._consumer.consume()
        self._poll(SETTLE)

    def _arrived(self, raw: KombuMessage) -> None:
        info = raw.delivery_info
        self._got.append(Delivery(self._to_message(raw), self._queue.name, None,
                                  exchange=str(info.get("exchange") or self._queue.exchange.name),
                                  routing_key=str(info.get("routing_key") or "")))

    def _poll(self, timeout: float) -> None:
        try:
            self._connection.drain_events(timeout=max(timeout, 0.001))
        except (socket.timeout, TimeoutError):
            pass

    def get(self, timeout: float) -> list[Delivery]:
        if not self._got:
            self._poll(timeout)
        while True:  # take what else came already, without waiting
            before = len(self._got)
            self._poll(0)
            if len(self._got) == before:
                break
        out, self._got = self._got, []
        return out

    def close(self) -> None:
        """Cancel, unbind and delete the queue (a direct binding left behind would
        keep collecting replies nobody reads), release the connection; once."""
        if self._closed:
            return
        self._closed = True
        queue = self._queue(self._channel)
        try:
            self._consumer.cancel()
            queue.delete()  # drops the binding where kombu keeps it in the broker
            try:  # and where it keeps it in the process (memory)
                queue.unbind_from(queue.exchange, queue.routing_key)
            except (KeyError, InconsistencyError):
                pass  # kombu's Redis: the table went with its last binding
        finally:
            self._connection.release()


def subscribe(url: str, options: dict[str, Any], connect_timeout: float | None,
              exchange: KombuExchange, binding_key: str, queue: str | None,
              expires: float | None, to_message: Callable[[KombuMessage], Message]
              ) -> KombuSubscription:
    """A subscription on a new connection to kombu URL ``url``."""
    connection = Connection(url, transport_options=options, connect_timeout=connect_timeout)
    try:
        connection.ensure_connection(max_retries=1)
        return KombuSubscription(connection, exchange, binding_key, queue, expires,
                                 to_message)
    except BaseException:
        connection.release()
        raise
