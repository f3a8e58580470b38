"""Broadcasts (``Capabilities.broadcast``) on RabbitMQ's own exchanges.

A broadcast is a ``basic.publish`` to the exchange (declared first, with the flags
the :class:`~conveyor.interfaces.Exchange` gives, which must be Celery's: RabbitMQ
refuses a redeclaration that differs), never ``mandatory``: with no queue bound it is
dropped, as kombu's pidbox and events expect. A subscription is its own connection
with an exclusive, auto-deleted queue bound with the binding key, consumed without
acks; so ``celery inspect`` reaches a Conveyor worker's ``<host>.celery.pidbox``
queue, and Flower's ``celeryev`` queue gets Conveyor's events.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from typing import Any

import pika
import pika.exceptions as pe
from conveyor.interfaces import Delivery, Exchange, Message
from conveyor.utils import mask_url
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from . import envelope
from .channel import Channel
from .connection import open_connection
from .errors import AmqpConnectionError, UnroutableError, translate


def declare_exchange(ch: BlockingChannel, exchange: Exchange) -> None:
    ch.exchange_declare(exchange.name, exchange.kind, durable=exchange.durable,
                        auto_delete=exchange.auto_delete)


class AmqpSubscription:
    """An exclusive queue bound to one exchange, on a connection of its own."""

    def __init__(self, url: str, params: pika.URLParameters, exchange: Exchange,
                 binding_key: str, queue: str, expires: float | None) -> None:
        self.url, self.exchange, self.queue = url, exchange, queue
        self._buffer: deque[Delivery] = deque()
        #: Set when RabbitMQ cancels the consumer (the queue was deleted).
        self._cancelled = False
        self._conn: pika.BlockingConnection | None = open_connection(
            url, params, f"subscribing to exchange {exchange.name!r}")
        try:
            with translate(url, f"subscribing to exchange {exchange.name!r}"):
                ch = self._conn.channel()
                declare_exchange(ch, exchange)
                arguments = {"x-expires": int(expires * 1000)} if expires else None
                ch.queue_declare(queue, exclusive=True, auto_delete=True,
                                 arguments=arguments)
                ch.queue_bind(queue, exchange.name, routing_key=binding_key)
                ch.add_on_cancel_callback(self._on_cancel)
                ch.basic_consume(queue, self._on_message, auto_ack=True)
        except BaseException:
            self.close()
            raise

    def _on_message(self, _ch: Any, method: Basic.Deliver, props: BasicProperties,
                    body: bytes) -> None:
        self._buffer.append(Delivery(
            envelope.message(props, body), self.queue, None,
            exchange=method.exchange or "", routing_key=method.routing_key or ""))

    def _on_cancel(self, _frame: Any) -> None:
        self._cancelled = True

    def get(self, timeout: float) -> list[Delivery]:
        """What arrived, waiting up to ``timeout`` for something. Raises
        :class:`.AmqpConnectionError` once RabbitMQ cancelled the subscription (its
        queue was deleted): nothing would ever come again, so the subscriber (a
        worker's remote control, a monitor) subscribes anew, as after a lost
        connection."""
        conn = self._conn
        if conn is None:
            return []
        deadline = time.monotonic() + max(0.0, timeout)
        with translate(self.url, f"receiving from exchange {self.exchange.name!r}"):
            conn.process_data_events(time_limit=0)
            while not self._buffer and not self._cancelled:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                conn.process_data_events(time_limit=min(left, 1.0))
        if self._cancelled and not self._buffer:
            raise AmqpConnectionError(
                f"RabbitMQ at {mask_url(self.url)} cancelled the subscription to exchange "
                f"{self.exchange.name!r}: its queue {self.queue!r} was deleted. "
                "Subscribe again.")
        out = list(self._buffer)
        self._buffer.clear()
        return out

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except (pe.AMQPError, OSError):
                pass  # the exclusive queue goes with the connection anyway


class BroadcastMixin:
    """``broadcast`` and ``subscribe`` for the AMQP transport."""

    url: str
    params: pika.URLParameters
    line: Channel

    def broadcast(self, exchange: Exchange, routing_key: str, message: Message) -> None:
        line = self.line
        if line.once(("broadcast", exchange)):
            with translate(self.url, f"declaring exchange {exchange.name!r}"):
                declare_exchange(line.channel, exchange)
        try:
            line.publish(exchange.name, routing_key, envelope.properties(message),
                         message.body)
        except UnroutableError as exc:  # confirm_publish on: nobody listens, fine
            if exc.nacked:
                raise

    def subscribe(self, exchange: Exchange, binding_key: str = "", *,
                  queue: str | None = None,
                  expires: float | None = None) -> AmqpSubscription:
        name = queue or f"{uuid.uuid4()}.{exchange.name}"
        return AmqpSubscription(self.url, self.params, exchange, binding_key, name,
                                expires)
