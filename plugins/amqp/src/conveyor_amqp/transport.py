"""The ``amqp://`` transport: RabbitMQ through pika, declared as Celery declares it.

What goes where (names in :mod:`.layout`):

* a task is published to the default exchange with its queue's name as routing key
  (as Celery publishes it), or to the ``exchange``/``routing_key`` it was given; the
  queue, its direct exchange and binding are declared once per connection;
* a worker consumes with ``basic.consume`` and a prefetch of its pool's size, and acks
  in batches (``multiple``); deliveries are bound to the channel (see :mod:`.channel`);
* a message due later than the worker's horizon is parked in kombu's native
  delayed-delivery layout (confirmed publish, then ack) and comes back to its queue
  when due, so nothing waits unacked past RabbitMQ's ``consumer_timeout``;
* dead letters wait in ``<queue>.conveyor.dead`` (:mod:`.deadletter`).

Delivery counts: quorum queues count natively (``x-delivery-count``). On a classic
queue a *redelivered* message is published again with Conveyor's count incremented
and the original acked, so only redeliveries pay a publish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from conveyor.exceptions import ConfigurationError
from conveyor.interfaces import BaseTransport, Capabilities, DeadLetter, Delivery, Message, Route

from . import deadletter, envelope
from .channel import Channel, Raw
from .connection import parameters
from .errors import CONNECTION_ERRORS, translate
from .layout import Delays, QueueShape, strip

log = logging.getLogger("conveyor.amqp")


class Tag:
    """What a delivery needs to be settled: its channel generation and tag, and the
    message as it arrived (for parking and dead-lettering)."""

    __slots__ = ("generation", "tag", "raw")

    def __init__(self, generation: int, tag: int, raw: Raw) -> None:
        self.generation = generation
        self.tag = tag
        self.raw = raw

    def __hash__(self) -> int:
        return hash((self.generation, self.tag))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tag) and (self.generation, self.tag) == (
            other.generation, other.tag)


class AmqpTransport(BaseTransport):
    """RabbitMQ transport (see the module docstring)."""

    scheme = "amqp"
    capabilities: ClassVar[Capabilities] = Capabilities(
        native_delay=True, priorities=True, confirms=True, dead_letters=True, leases=False)
    connection_errors = CONNECTION_ERRORS
    default_options: ClassVar[dict[str, Any]] = {
        "confirm_publish": False,
        "heartbeat": 60,
        "blocked_connection_timeout": None,
        "ssl": None,
        #: Celery's ``broker_native_delayed_delivery_queue_type``: both kinds of
        #: worker must declare the delay layout alike, so the default is Celery's.
        "delayed_delivery_queue_type": "quorum",
    }

    def __init__(self, url: str = "amqp://", app: Any = None) -> None:
        super().__init__(url, app)
        conf = app.conf if app is not None else None
        self.shape = QueueShape.from_conf(conf)
        self.default_queue = conf.task_default_queue if conf is not None else "celery"
        self.default_exchange = (conf.task_default_exchange if conf is not None else "") \
            or self.default_queue
        delay_type = self.options["delayed_delivery_queue_type"]
        if delay_type not in ("classic", "quorum"):
            raise ConfigurationError(
                "broker_transport_options['delayed_delivery_queue_type'] must be "
                f"'classic' or 'quorum', not {delay_type!r}.")
        self.delays = Delays(delay_type)
        if int(self.options["heartbeat"]) < 0:
            raise ConfigurationError(
                "broker_transport_options['heartbeat'] must be seconds >= 0 "
                f"(0 turns heartbeats off), not {self.options['heartbeat']!r}.")
        self.params = parameters(url, self.options, self.connect_timeout)
        self.line = Channel(url, self.params, self.shape,
                            confirm=bool(self.options["confirm_publish"]))

    # ------------------------------------------------------------- connection
    def connect(self) -> None:
        if not self.line.is_open:
            self.line.open()

    def close(self) -> None:
        """Close the connection; RabbitMQ gives every unsettled delivery back."""
        self.line.drop()

    # ------------------------------------------------------------- declaring
    def exchange_for(self, queue: str) -> str:
        """The direct exchange Celery binds ``queue`` to."""
        return self.default_exchange if queue == self.default_queue else queue

    def declare(self, route: Route) -> None:
        if route.exchange:
            with translate(self.url, f"checking exchange {route.exchange!r}"):
                if self.line.once(("exchange", route.exchange)):
                    self.line.channel.exchange_declare(route.exchange, passive=True)
            return
        self.line.declare_queue(route.queue, self.exchange_for(route.queue))

    # ------------------------------------------------------------- publishing
    def publish(self, message: Message, route: Route, *, due: float | None = None) -> None:
        self.declare(route)
        props = envelope.properties(message, self.shape.wire_priority(message.priority))
        if route.exchange:
            exchange, key = route.exchange, route.key
        else:
            exchange, key = "", route.queue
        if due is not None and due > time.time():
            self._park(route.queue, key if route.exchange else route.queue, props,
                       message.body, due, confirm=self.line.confirm)
            return
        self.line.publish(exchange, key, props, message.body)

    def publish_many(self, batch: Sequence[tuple[Message, Route, float | None]]) -> None:
        for message, route, due in batch:
            self.publish(message, route, due=due)

    def _park(self, queue: str, key: str, props: Any, body: bytes, due: float, *,
              confirm: bool) -> None:
        """Send a message into the delay layout, to come back to ``queue`` at ``due``."""
        line = self.line
        line.declare_delays(self.delays)
        line.declare_queue(queue, self.exchange_for(queue))
        line.bind_return(self.delays, queue)
        line.publish(self.delays.entry, self.delays.routing_key(due - time.time(), key),
                     props, body, confirm=confirm)

    # ------------------------------------------------------------- consuming
    def fetch(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[Delivery]:
        line = self.line
        if not line.is_open or line._consuming != tuple(queues):
            for queue in queues:
                line.declare_queue(queue, self.exchange_for(queue))
            line.consume(queues, limit)
        out = []
        for raw in line.take(limit, timeout):
            d = self._delivery(raw)
            if d is not None:
                out.append(d)
        return out

    def _delivery(self, raw: Raw) -> Delivery | None:
        queue, method, props, body = raw
        line = self.line
        tag = Tag(line.generation, method.delivery_tag, raw)
        count = envelope.deliveries(props)
        if method.redelivered and not envelope.counted(props):
            count += 1
            if count <= self._max_deliveries:
                # Count this delivery: publish again with the count, then ack.
                headers = {**(props.headers or {}), envelope.COUNT: count}
                props.headers = headers
                line.publish("", queue, props, body, confirm=True)
                line.ack([method.delivery_tag])
                return None
        message = envelope.message(props, body)
        return Delivery(message, queue, tag, redelivered=method.redelivered,
                        deliveries=count, exchange=method.exchange,
                        routing_key=strip(method.routing_key))

    @property
    def _max_deliveries(self) -> int:
        return int(self.app.conf.worker_max_deliveries) if self.app is not None else 5

    # ------------------------------------------------------------- settling
    def _live(self, deliveries: Sequence[Delivery]) -> list[int]:
        """Tags of ``deliveries`` still valid on this channel (older ones are gone:
        RabbitMQ gave them back when their channel closed)."""
        gen = self.line.generation
        return [d.tag.tag for d in deliveries if d.tag.generation == gen]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self.line.ack(self._live(deliveries))

    def requeue(self, delivery: Delivery) -> None:
        for tag in self._live([delivery]):
            self.line.reject(tag, requeue=True)

    def defer(self, delivery: Delivery, due: float) -> None:
        tags = self._live([delivery])
        if not tags:
            return
        queue, method, props, body = delivery.tag.raw
        self._park(queue, queue, props, body, due, confirm=True)
        self.line.ack(tags)

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to do: a delivery stays ours while the channel is open."""

    # ------------------------------------------------------------- dead letters
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        tags = self._live([delivery])
        if not tags:
            return
        queue, _method, props, body = delivery.tag.raw
        deadletter.bury(self.line, queue, props, body, reason)
        self.line.ack(tags)

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        return deadletter.load(self.line, queue)

    def requeue_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        return deadletter.requeue(self.line, ids, queue)

    def purge_dead(self, queue: str | None = None) -> int:
        return deadletter.purge(self.line, queue)

    # ------------------------------------------------------------- inspection
    def purge(self, queue: str) -> int:
        return self.line.purge(queue)

    def depth(self, queue: str) -> int:
        return self.line.count(queue)


class SecureAmqpTransport(AmqpTransport):
    """``amqps://``: the same transport over TLS (``ssl`` option for certificates)."""

    scheme = "amqps"
