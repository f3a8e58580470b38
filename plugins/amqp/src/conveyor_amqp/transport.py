"""The ``amqp://`` transport: RabbitMQ through pika, declared as Celery declares it.

What goes where (names in :mod:`.layout`):

* a task is published to the default exchange with its queue's name as routing key
  (as Celery publishes it), or to the ``exchange``/``routing_key`` it was given; the
  queue, its direct exchange and binding are declared once per connection;
* a worker consumes with ``basic.consume`` and a prefetch of its pool's size (which
  follows the pool when remote control or autoscale resizes it), and acks in batches
  (``multiple``); deliveries are bound to the channel (see :mod:`.channel`);
* a message due later than the worker's horizon is parked in kombu's native
  delayed-delivery layout (confirmed publish, then ack) and comes back to its queue
  when due, so nothing waits unacked past RabbitMQ's ``consumer_timeout``;
* dead letters wait in ``<queue>.conveyor.dead`` (:mod:`.deadletter`);
* ``inspect queues`` counts what AMQP lets a client count (:meth:`AmqpTransport.stats`);
* broadcasts (remote control, events) use RabbitMQ's fanout/topic/direct exchanges
  (:mod:`.broadcast`).

Settlement is bound to the channel (``Capabilities.settlement == "channel"``): when
the connection is lost RabbitMQ gives every unsettled delivery back by itself, and a
tag of a lost channel is never settled on a new one.

Delivery counts: quorum queues count natively (``x-delivery-count``). On a classic
queue a *redelivered* message is published again with Conveyor's count incremented
and the original acked, so only redeliveries pay a publish. A message given back
uncounted (``requeue`` at a warm shutdown, ``defer``, a requeued dead letter) is
published again with its count as it was, then acked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar, cast

from conveyor.exceptions import ConfigurationError
from conveyor.interfaces import (
    CHANNEL, BaseTransport, Capabilities, DeadLetter, Delivery, Outgoing, QueueStats, Route,
)

from . import deadletter, envelope
from .broadcast import BroadcastMixin
from .channel import Channel, Raw
from .connection import parameters
from .errors import CONNECTION_ERRORS, UnroutableError, translate
from .layout import DELAY_BITS, Delays, QueueShape, dead_queue, strip

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


class AmqpTransport(BroadcastMixin, BaseTransport):
    """RabbitMQ transport (see the module docstring)."""

    scheme = "amqp"
    capabilities: ClassVar[Capabilities] = Capabilities(
        delays=True, dead_letters=True, priorities=True, purge=True, inspect=True,
        heartbeats=True, broadcast=True, prefetch=True, settlement=CHANNEL)
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
        #: Heartbeats are asked for only by a user that answers them (see
        #: :meth:`expect_heartbeats`): Celery's clients ask for none either.
        self.params.heartbeat = 0
        self.line = Channel(url, self.params, self.shape,
                            confirm=bool(self.options["confirm_publish"]))

    # ------------------------------------------------------------- connection
    def connect(self) -> None:
        if not self.line.is_open:
            self.line.open()

    def close(self) -> None:
        """Close the connection; RabbitMQ gives every unsettled delivery back."""
        self.line.drop()

    def expect_heartbeats(self) -> None:
        """The user (the worker) calls :meth:`heartbeat` about every second: the
        connection asks RabbitMQ for ``heartbeat`` seconds (60 by default), so a
        broker or network gone silent is noticed. A producer's connection asks for
        none: nothing reads it between publishes, RabbitMQ would close it after two
        heartbeats, and the next publish would find it closed (logged as a lost
        connection, then sent again, on every publish after an idle spell)."""
        self.params.heartbeat = int(self.options["heartbeat"])

    def set_prefetch(self, count: int) -> None:
        """The worker's prefetch (at each connection, and when its pool is resized):
        subscriptions take it, and a live one is changed to it (see
        :meth:`Channel.prefetch`)."""
        self.line.prefetch(count)

    def heartbeat(self) -> None:
        """Read the connection without waiting: pika answers RabbitMQ's heartbeats
        only while its connection is read, and RabbitMQ closes one silent for two
        heartbeats (60 s each by default), giving its unacked deliveries to another
        run. Deliveries that arrive wait for the next :meth:`fetch`."""
        self.line.idle()

    # ------------------------------------------------------------- declaring
    def exchange_for(self, queue: str) -> str:
        """The direct exchange Celery binds ``queue`` to."""
        return self.default_exchange if queue == self.default_queue else queue

    def declare(self, route: Route) -> None:
        """The route's queue on its own direct exchange (Celery's automatic queue);
        for a routed message, also check that its exchange exists (publishing to a
        missing one would close the channel)."""
        line = self.line
        line.declare_queue(route.queue, self.exchange_for(route.queue))
        if route.routed and line.once(("exchange", route.exchange)):
            with translate(self.url, f"checking exchange {route.exchange!r}"):
                line.channel.exchange_declare(route.exchange, passive=True)

    # ------------------------------------------------------------- publishing
    def publish_many(self, batch: Sequence[Outgoing]) -> None:
        """Send each message on the held channel (one-way unless ``confirm_publish``).

        A routed message (an ``exchange`` other than its queue's) goes through
        RabbitMQ's bindings of that exchange, confirmed and ``mandatory``: one that
        no binding matches comes back and is sent to the route's queue instead, so
        it is never dropped. With ``due`` (``delayed_delivery: "broker"``) a message
        goes into the delay layout.
        """
        line = self.line
        now = time.time()
        plain: list[tuple[str, str, Any, bytes]] = []  # perf: sent in one write
        for message, route, due in batch:
            self.declare(route)
            props = envelope.properties(message)
            if due is not None and due > now:
                self._park(route.queue, props, message.body, due)
            elif route.routed:
                try:
                    line.publish(route.exchange, route.key, props, message.body,
                                 confirm=True)
                except UnroutableError as exc:
                    if exc.nacked:
                        raise
                    line.publish("", route.queue, props, message.body)
            else:
                plain.append(("", route.queue, props, message.body))
        if plain:
            line.publish_plain(plain)

    def _park(self, queue: str, props: Any, body: bytes, due: float) -> None:
        """Send a message into the delay layout (confirmed), to come back to
        ``queue`` at ``due``: keyed by the queue's name, which is bound to the
        delivery exchange, so it comes back to that queue (not through an exchange
        the route named)."""
        line = self.line
        line.declare_delays(self.delays)
        line.declare_queue(queue, self.exchange_for(queue))
        line.bind_return(self.delays, queue)
        line.publish(self.delays.entry, self.delays.routing_key(due - time.time(), queue),
                     props, body, confirm=True)

    # ------------------------------------------------------------- consuming
    def fetch(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[Delivery]:
        """Deliveries RabbitMQ pushed; the first call subscribes with a prefetch of
        ``limit`` (the worker's first ``limit`` is its whole prefetch: pool size ×
        ``worker_prefetch_multiplier``)."""
        line = self.line
        for queue in line.cancelled():
            # deleted under us: declared again (as Celery's worker does when it
            # reconnects), or nothing would ever come from it again
            log.warning("RabbitMQ cancelled the consumer of queue %r (was it deleted?); "
                        "declaring it again and consuming", queue)
            self.declare(Route(queue))
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
        tag = cast(int, method.delivery_tag)
        count = envelope.deliveries(props)
        if method.redelivered and not envelope.counted(props):
            # A classic queue does not count: this is at least the second delivery
            # of this copy. Publish it again carrying the count, then ack.
            count += 1
            if count <= self._max_deliveries:
                self._again(raw, count - 1)
                line.ack([tag])
                return None
        return Delivery(envelope.message(props, body), queue,
                        Tag(line.generation, tag, raw),
                        redelivered=bool(method.redelivered) or count > 1,
                        deliveries=count, exchange=method.exchange or "",
                        routing_key=strip(method.routing_key or ""))

    def _again(self, raw: Raw, before: int, *, due: float | None = None) -> None:
        """Publish a delivered message again (confirmed), counting ``before``
        earlier deliveries; parked until ``due`` if given."""
        queue, _method, props, body = raw
        props.headers = envelope.recount(props.headers, before)
        if due is not None:
            self._park(queue, props, body, due)
        else:
            self.line.publish("", queue, props, body, confirm=True)

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
        """Give an unstarted delivery back uncounted: published again with its count
        as it was, then acked (a reject would count as a delivery)."""
        tags = self._live([delivery])
        if tags:
            self._again(delivery.tag.raw, delivery.deliveries - 1)
            self.line.ack(tags)

    def defer(self, delivery: Delivery, due: float) -> None:
        """Park until ``due``: a confirmed publish into the delay layout, then the
        ack (a crash in between leaves a duplicate parked, never a loss)."""
        tags = self._live([delivery])
        if tags:
            self._again(delivery.tag.raw, delivery.deliveries - 1, due=due)
            self.line.ack(tags)

    # ------------------------------------------------------------- dead letters
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        tags = self._live([delivery])
        if not tags:
            return
        queue, _method, props, body = delivery.tag.raw
        props.headers = envelope.recount(props.headers, 0)
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
        """Messages ready in ``queue``, as RabbitMQ counts them: not those already
        pushed to a consumer (its prefetch holds them, unacked), nor, for a few
        milliseconds, one just published without confirms."""
        return self.line.count(queue)

    def stats(self, queue: str) -> QueueStats:
        """What AMQP 0-9-1 lets a client count, by passive ``queue.declare``:

        * ready messages, not by priority (``by_priority`` False: RabbitMQ does not
          split the count), so ``waiting`` holds them all under 0;
        * dead letters (``<queue>.conveyor.dead``);
        * ``delayed`` is None: the delay layout holds every queue's parked messages
          together and one queue's cannot be counted without taking them out;
          ``delayed_shared`` counts them all (a message moving between two levels
          at that instant may be counted twice or not at all);
        * ``leased`` is None: deliveries held unacked by consumers are only
          reported by the management plugin and ``rabbitmqctl list_queues``;
        * no ``next_due`` or ``oldest_age``: RabbitMQ keeps no arrival time a
          client can read without taking the message.
        """
        line = self.line
        ready = line.count(queue)
        return QueueStats(queue, {0: ready} if ready else {}, None, None, None,
                          line.count(dead_queue(queue)), None,
                          delayed_shared=self._parked(), by_priority=False)

    def _parked(self) -> int:
        """Messages in the delay layout's 28 queues (0 when it was never declared)."""
        total = 0
        for n in range(DELAY_BITS - 1, -1, -1):
            found = self.line.count(self.delays.level(n), missing=None)
            if found is None:  # declared all at once: one missing, none there
                break
            total += found
        return total


class SecureAmqpTransport(AmqpTransport):
    """``amqps://``: the same transport over TLS (``ssl`` option for certificates)."""

    scheme = "amqps"
