"""The bridge: Conveyor's transport interface over kombu's Connection, Producer and Consumer.

Settlement is channel-bound (``Capabilities.settlement="channel"``): a kombu message
is acked on the channel that received it, and when that channel closes kombu gives
back what it held. kombu marks such a message ``redelivered`` but cannot count
deliveries, so the bridge counts them in a header: a message that comes back
redelivered is republished with its count raised and the returned copy acked, and
the copy is what the worker gets (``Delivery.deliveries`` = count + 1). That is what
lets the worker dead-letter a message that keeps killing it.

Dead letters live in a ``<queue>.dead`` queue of the same broker, with the reason,
time and origin in headers, so ``conveyor dead list/requeue/purge`` work on any
kombu transport. Delayed tasks are held by the worker (no kombu transport parks a
message until a given time in a way the bridge can use); priority is declared only
where kombu's transport orders by it (Redis).
"""

# kombu's public API (Connection, Producer, Consumer, Queue) has no annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.messaging import Consumer, Producer
from kombu.transport import TRANSPORT_ALIASES, resolve_transport
from kombu.exceptions import InconsistencyError
from kombu.message import Message as KombuMessage

from conveyor.exceptions import ConfigurationError
from conveyor.interfaces import (
    Binding, Capabilities, DeadLetter, Delivery, Exchange as ConveyorExchange, Message,
    Outgoing, QueueStats, Route,
)
from conveyor.utils import did_you_mean, mask_url

from . import broadcast as broadcasts
from . import features, options

log = logging.getLogger("conveyor.kombu")

if TYPE_CHECKING:
    from conveyor.app import Conveyor

PREFIX = "kombu+"
#: Header holding how many times the message was delivered before (redeliveries
#: counted by the bridge); absent on a message nobody received yet.
COUNT = "x-conveyor-deliveries"
#: Header of a dead letter: ``{"id", "queue", "reason", "time"}``.
DEAD = "x-conveyor-dead"
DEAD_SUFFIX = ".dead"
#: Every ``<queue>.dead`` queue is bound to this exchange, so a new connection finds
#: them all in kombu's binding table (what ``conveyor dead list`` without -Q reads).
DEAD_EXCHANGE = Exchange("conveyor.dead", type="direct")
#: AMQP-style properties carried across, besides content type and encoding.
PROPERTIES = ("correlation_id", "reply_to", "delivery_mode", "priority")
#: kombu's priority scale on Redis: 0 is served first, 9 last (Celery's meaning there).
KOMBU_MAX_PRIORITY = 9


def kombu_url(url: str) -> str:
    """``kombu+redis://h/0`` → ``redis://h/0``; anything else is a clear error."""
    if not url.startswith(PREFIX) or "://" not in url:
        raise ConfigurationError(
            f"The kombu bridge takes URLs like 'kombu+redis://127.0.0.1:6379/0' or "
            f"'kombu+memory://', not {mask_url(url)!r}.")
    return url[len(PREFIX):]


def kombu_transport(url: str) -> tuple[str, type]:
    """The name kombu knows the URL's transport by (``redis``, ``filesystem``,
    ``sqs``) and its class; an unknown name is an error naming the closest."""
    name = url.split("://", 1)[0]
    try:
        name = str(Connection(url).transport_cls)
        cls = resolve_transport(name)
    except KeyError:
        cls = None
    if cls is None:
        raise ConfigurationError(
            f"kombu has no transport {name!r} (broker URL {mask_url(PREFIX + url)!r})."
            f"{did_you_mean(name, TRANSPORT_ALIASES)} kombu's transports: "
            f"{', '.join(sorted(TRANSPORT_ALIASES))}.")
    return name, cls


def orders_by_priority(transport_cls: type) -> bool:
    """Whether kombu's transport serves messages by priority (its Redis does)."""
    return transport_cls.__module__ == "kombu.transport.redis"


class KombuTransport:
    """A Conveyor :class:`~conveyor.interfaces.Transport` over one kombu connection.

    Declares dead letters, purge and depth (every kombu transport can hold a
    ``<queue>.dead`` queue, purge a queue and count it) and broadcasts where kombu's
    transport has fanout exchanges (:mod:`.broadcast`); not delays nor leases.
    """

    scheme: ClassVar[str] = "kombu"
    capabilities: ClassVar[Capabilities] = Capabilities(dead_letters=True, purge=True,
                                                        inspect=True, broadcast=True)

    def __new__(cls, url: str, app: Conveyor | None = None) -> KombuTransport:
        """The bridge class whose capabilities fit the kombu transport the URL names
        (capabilities are per class: the core reads them before connecting)."""
        if cls is KombuTransport:
            _name, transport_cls = kombu_transport(kombu_url(url))
            if orders_by_priority(transport_cls):
                cls = PriorityKombuTransport
            elif not broadcasts.supports_broadcast(transport_cls):
                cls = UnicastKombuTransport
        return super().__new__(cls)

    @staticmethod
    def plugin_notes() -> list[str]:
        """What ``conveyor plugins`` prints under the plugin: the tested features."""
        return features.notes()

    def __init__(self, url: str, app: Conveyor | None = None) -> None:
        self.url = url
        self.app = app
        given = dict(app.conf.broker_transport_options) if app is not None else {}
        self.kombu_url = kombu_url(url)
        self.kombu_name, transport_cls = kombu_transport(self.kombu_url)
        self.options = options.check(given, transport_cls, self.kombu_name)
        timeout = app.conf.broker_connection_timeout if app is not None else None
        self._connection = Connection(self.kombu_url, transport_options=self.options,
                                      connect_timeout=timeout)
        self.connection_errors: tuple[type[BaseException], ...] = (
            *self._connection.connection_errors, *self._connection.channel_errors)
        self._producer: Producer | None = None
        self._consumers: list[Consumer] = []
        self._consuming: tuple[str, ...] = ()
        #: What kombu delivered and fetch has not handed out yet: (queue, message).
        self._buffer: list[tuple[str, KombuMessage]] = []
        #: Deliveries handed out and not settled yet, by their kombu delivery tag.
        self._held: dict[Any, KombuMessage] = {}
        #: (queue, exchange, routing key) declared on this connection.
        self._declared: set[tuple[str, str, str]] = set()
        self._connect_timeout = timeout

    # ------------------------------------------------------------------ connection
    def connect(self) -> None:
        self._connection.ensure_connection(max_retries=1)

    def close(self) -> None:
        """Close the channel: kombu gives back every unsettled message, redelivered.

        kombu's in-memory channel drops what it holds when closed (``do_restore`` is
        off there), so the bridge rejects those messages back to their queue first."""
        unsettled = [*self._held.values(), *(raw for _q, raw in self._buffer)]
        if unsettled and not getattr(self._channel, "do_restore", True):
            for raw in unsettled:
                raw.reject(requeue=True)
        self._consumers = []
        self._producer = None
        self._consuming = ()
        self._buffer.clear()
        self._held.clear()
        self._connection.release()

    @property
    def _channel(self) -> Any:
        return self._connection.default_channel

    # ------------------------------------------------------------------ publishing
    def declare(self, route: Route) -> None:
        """The queue, bound to its own direct exchange (named like the queue) as
        Celery's automatic queues are (``Route.own_binding``)."""
        own = route.own_binding()
        self._declare(Queue(route.queue, Exchange(route.queue, type="direct"),
                            routing_key=own.routing_key))

    def _declare(self, queue: Queue) -> None:
        key = (queue.name, queue.exchange.name, queue.routing_key)
        if key not in self._declared:
            queue(self._channel).declare()
            self._declared.add(key)

    def publish_many(self, batch: Sequence[Outgoing]) -> None:
        """One kombu publish per message (kombu has no batch publish); ``due`` is
        always None (no ``delays`` capability).

        A message on a named exchange goes to the queues its bindings name
        (``Route.destinations``, read from kombu's binding table), or to its route's
        queue when none matches, never dropped; a kombu transport without a table
        the bridge can read (AMQP) routes it broker-side."""
        for message, route, _due in batch:
            if not route.routed:
                self._send(message, "", route.queue, message.headers)
                continue
            bindings = self._bindings(route.exchange)
            if bindings is None:
                self._send(message, route.exchange, route.key, message.headers)
                continue
            for queue in route.destinations(bindings):
                self._send(message, "", queue, message.headers)

    def _bindings(self, exchange: str) -> list[Binding] | None:
        """The binding table of ``exchange`` on kombu's virtual transports (memory,
        filesystem, Redis, SQS, …), [] when it has none; None elsewhere."""
        get_table = getattr(self._channel, "get_table", None)
        if get_table is None:
            return None
        try:
            return [Binding(str(key), str(pattern or ""), str(queue))
                    for key, pattern, queue in get_table(exchange)]
        except (KeyError, OSError, InconsistencyError):  # nothing bound yet
            return []

    def _send(self, message: Message, exchange: str, routing_key: str,
              headers: dict[str, Any]) -> None:
        props = {k: v for k, v in message.properties.items()
                 if k in PROPERTIES and v is not None}
        if "priority" in props or self.capabilities.priorities:
            props["priority"] = self.to_kombu_priority(message.priority)
        expiration = message.properties.get("expiration")
        if self._producer is None:
            self._producer = Producer(self._channel)
        self._producer.publish(
            message.body, exchange=exchange, routing_key=routing_key,
            headers=headers, content_type=message.content_type,
            content_encoding=message.content_encoding,
            expiration=float(expiration) / 1000 if expiration is not None else None,
            retry=False, **props)

    def to_kombu_priority(self, priority: int | None) -> int | None:
        """Conveyor's priority as the kombu transport wants it (passed through where
        the transport does not order by it)."""
        return priority

    def from_kombu_priority(self, priority: Any) -> int | None:
        return priority if isinstance(priority, int) else None

    # ------------------------------------------------------------------ consuming
    def fetch(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` deliveries; the consumer's prefetch is what the worker
        holds plus ``limit``, so kombu never hands over more than was asked for."""
        deadline = time.monotonic() + timeout
        prefetch = len(self._held) + len(self._buffer) + limit
        for consumer in self._consume(tuple(queues)):
            consumer.qos(prefetch_count=prefetch)
        out: list[Delivery] = []
        while len(out) < limit:
            if not self._buffer:
                remaining = deadline - time.monotonic() if not out else 0.0
                if not self._drain(max(remaining, 0.0)):
                    break
                continue
            delivery = self._receive(*self._buffer.pop(0))
            if delivery is not None:
                out.append(delivery)
        if not out:
            self._restore_lapsed()
        return out

    def _restore_lapsed(self) -> None:
        """Let kombu give back deliveries of dead consumers whose visibility timeout
        passed (Redis). kombu does it from its event loop's timer, which a blocking
        consumer has not; an idle fetch is the bridge's timer (throttled by kombu's
        ``unacked_restore_throttle``)."""
        cycle = getattr(self._connection.transport, "cycle", None)
        restore = getattr(cycle, "maybe_restore_messages", None)
        if restore is not None:
            restore()

    def _drain(self, timeout: float) -> bool:
        """Let kombu deliver into the buffer; False when nothing came in time."""
        try:
            self._connection.drain_events(timeout=max(timeout, 0.001))
        except (socket.timeout, TimeoutError):
            return bool(self._buffer)
        return True

    def _consume(self, queues: tuple[str, ...]) -> list[Consumer]:
        """One kombu consumer per queue (so each delivery knows its queue), made
        again when the worker asks for other queues."""
        if queues != self._consuming:
            if not self._consuming:
                self._warn_acks_late_not_kept()
            for old in self._consumers:
                old.cancel()
            self._consumers = [self._consumer_of(q) for q in queues]
            self._consuming = queues
        return self._consumers

    def _warn_acks_late_not_kept(self) -> None:
        """Say once, when a worker starts consuming, that ``acks_late`` cannot survive
        a crash here: on kombu transports that keep no unacked copy (the feature table
        says which), a killed worker's task is lost whatever ``acks_late`` says. The
        setting still acks after the task (an exception is not lost), so it is not
        refused; but it must not look as if it protected against crashes."""
        if self.app is None or not features.TESTED.get(
                self.kombu_name, {}).get("acks_late", "").startswith("not supported"):
            return
        conf_default = bool(self.app.conf.task_acks_late)
        late = sorted(name for name, task in self.app.tasks.items()
                      if (conf_default if task.acks_late is None else task.acks_late)
                      and not name.startswith("celery."))
        if late:
            shown = ", ".join(late[:5]) + (f" and {len(late) - 5} more" if len(late) > 5
                                            else "")
            log.warning(
                "kombu+%s:// keeps no copy of an unacked message: acks_late on %s acks "
                "after the task, but a task whose worker is killed is lost, not "
                "redelivered. Use a broker that redelivers (kombu+redis://, redis://, "
                "amqp://, sqlite://) where that matters.", self.kombu_name, shown)

    def _consumer_of(self, queue: str) -> Consumer:
        def arrived(raw: KombuMessage, _error: Exception | None = None) -> None:
            self._buffer.append((queue, raw))
        self.declare(Route(queue))
        # A body kombu cannot decompress (a compression only Conveyor knows, such as
        # lz4) is handed over as it came, like any other: the worker decompresses it
        # or dead-letters it with the reason (kombu would raise out of the drain).
        consumer = Consumer(self._channel, [Queue(queue, no_declare=True)],
                            on_message=arrived, on_decode_error=arrived, no_ack=False)
        consumer.consume()
        return consumer

    def _receive(self, queue: str, raw: KombuMessage) -> Delivery | None:
        """A Delivery, or None when ``raw`` came back redelivered: then a copy with
        its delivery count raised goes back to the queue and ``raw`` is acked."""
        headers = dict(raw.headers or {})
        count = int(headers.pop(COUNT, 0) or 0)
        headers.pop("redelivered", None)  # kombu's Redis marker, not the task's
        message = self._message(raw, headers)
        if _redelivered(raw):
            self._send(message, "", queue, {**headers, COUNT: count + 1})
            raw.ack()
            return None
        self._held[raw.delivery_tag] = raw
        return Delivery(message, queue, raw, redelivered=count > 0, deliveries=count + 1,
                        exchange=raw.delivery_info.get("exchange") or "",
                        routing_key=raw.delivery_info.get("routing_key") or queue)

    def _message(self, raw: KombuMessage, headers: dict[str, Any]) -> Message:
        """The Conveyor message of a kombu one. kombu decompresses a body on receipt
        and leaves its ``compression`` header (and drops it when it restores the
        message), so the header is dropped here unless kombu could not decompress:
        the body handed over and the header always agree."""
        if "compression" in headers and not raw.errors:
            headers.pop("compression")
        props = {k: raw.properties.get(k) for k in PROPERTIES if k in raw.properties}
        if "priority" in props:
            props["priority"] = self.from_kombu_priority(props["priority"])
        body = raw.body if isinstance(raw.body, bytes) else str(raw.body).encode()
        return Message(headers, body, raw.content_type or "application/json",
                       raw.content_encoding or "utf-8", props)

    # ------------------------------------------------------------------ settlement
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            self._settle(d).ack()

    def requeue(self, delivery: Delivery) -> None:
        """Back to its queue uncounted: republished as it came (kombu's own requeue
        would mark it redelivered, and the bridge would count that)."""
        self._republish(delivery, delivery.queue, {})

    def _settle(self, delivery: Delivery) -> KombuMessage:
        raw: KombuMessage = delivery.tag
        self._held.pop(raw.delivery_tag, None)
        return raw

    def _republish(self, delivery: Delivery, queue: str, extra: dict[str, Any]) -> None:
        headers = dict(delivery.message.headers)
        if delivery.deliveries > 1:
            headers[COUNT] = delivery.deliveries - 1
        self._send(delivery.message, "", queue, {**headers, **extra})
        self._settle(delivery).ack()

    # ------------------------------------------------------------------ dead letters
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Into ``<queue>.dead`` with why, then acked (publish first: never lost)."""
        dead = f"{delivery.queue}{DEAD_SUFFIX}"
        self._declare_dead(dead)
        self._republish(delivery, dead, {DEAD: {"id": uuid.uuid4().hex, "queue": delivery.queue,
                                                "reason": reason, "time": time.time()}})

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        return self._sweep(queue, lambda dl: False)[0]

    def requeue_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        wanted = set(ids) if ids is not None else None
        taken = self._sweep(queue, lambda dl: wanted is None or dl.id in wanted)[1]
        for dl in taken:
            headers = {k: v for k, v in dl.message.headers.items() if k != DEAD}
            self.declare(Route(dl.queue))
            self._send(dl.message, "", dl.queue, headers)
        return len(taken)

    def purge_dead(self, queue: str | None = None) -> int:
        return len(self._sweep(queue, lambda dl: True)[1])

    def _sweep(self, queue: str | None, take: Callable[[DeadLetter], bool]
               ) -> tuple[list[DeadLetter], list[DeadLetter]]:
        """Read every dead letter of ``queue`` (of every queue this connection knows
        when None) and put back, in order, those ``take`` does not take: kombu has
        no way to browse a queue. Returns (all read, taken)."""
        read: list[DeadLetter] = []
        taken: list[DeadLetter] = []
        for name in self._dead_queues(queue):
            self._declare_dead(name)
            drained: list[KombuMessage] = []
            while (raw := self._channel.basic_get(name, no_ack=False)) is not None:
                drained.append(raw)
            for raw in drained:
                dl = self._dead_letter_of(raw, name)
                read.append(dl)
                if take(dl):
                    taken.append(dl)
                else:
                    self._send(dl.message, "", name, dict(dl.message.headers))
                raw.ack()
        return read, taken

    def _dead_queues(self, queue: str | None) -> list[str]:
        """``<queue>.dead`` (every dead-letter queue kombu's binding table names for
        :data:`DEAD_EXCHANGE` when None, on transports that keep one)."""
        if queue is not None:
            return [queue + DEAD_SUFFIX]
        names = {q for q, exchange, _key in self._declared if exchange == DEAD_EXCHANGE.name}
        names.update(b.queue for b in self._bindings(DEAD_EXCHANGE.name) or ())
        return sorted(names)

    def _declare_dead(self, name: str) -> None:
        self._declare(Queue(name, DEAD_EXCHANGE, routing_key=name))

    def _dead_letter_of(self, raw: KombuMessage, dead_queue: str) -> DeadLetter:
        headers = dict(raw.headers or {})
        info = headers.pop(DEAD, None) or {}
        headers.pop(COUNT, None)
        headers.pop("redelivered", None)
        return DeadLetter(str(info.get("id") or raw.delivery_tag),
                          str(info.get("queue") or dead_queue[:-len(DEAD_SUFFIX)]),
                          str(info.get("reason") or "unknown"),
                          float(info.get("time") or 0.0),
                          self._message(raw, {**headers, DEAD: info}))

    # ------------------------------------------------------------------ broadcasts
    def broadcast(self, exchange: ConveyorExchange, routing_key: str,
                  message: Message) -> None:
        if self._producer is None:
            self._producer = Producer(self._channel)
        broadcasts.publish(self._producer, broadcasts.kombu_exchange(exchange, self.kombu_name),
                           routing_key, message)

    def subscribe(self, exchange: ConveyorExchange, binding_key: str = "", *,
                  queue: str | None = None,
                  expires: float | None = None) -> broadcasts.KombuSubscription:
        return broadcasts.subscribe(
            self.kombu_url, self.options, self._connect_timeout,
            broadcasts.kombu_exchange(exchange, self.kombu_name), binding_key, queue,
            expires, lambda raw: self._message(raw, dict(raw.headers or {})))

    # ------------------------------------------------------------------ purge, depth
    def purge(self, queue: str) -> int:
        self.declare(Route(queue))
        return int(self._channel.queue_purge(queue) or 0)

    def depth(self, queue: str) -> int:
        self.declare(Route(queue))
        return int(self._channel.queue_declare(queue).message_count)

    def stats(self, queue: str) -> QueueStats:
        """kombu counts a queue only as a whole: every waiting message is counted
        under priority 0, and what a consumer holds unacked is not visible (``None``)."""
        waiting = self.depth(queue)
        dead = self._dead_queues(queue)[0]
        self._declare_dead(dead)
        dead_count = int(self._channel.queue_declare(dead).message_count)
        return QueueStats(queue, {0: waiting} if waiting else {}, 0, None, None,
                          dead_count, None)


class UnicastKombuTransport(KombuTransport):
    """A kombu transport without fanout exchanges: no broadcasts (remote control
    and events say so, naming the capability)."""

    capabilities: ClassVar[Capabilities] = Capabilities(dead_letters=True, purge=True,
                                                        inspect=True)


class PriorityKombuTransport(KombuTransport):
    """A kombu transport that serves by priority (Redis): kombu's scale there is
    0 (first) to 9 (last), so Conveyor's 0–255 (higher first, None lowest) is mapped
    onto it and back."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        dead_letters=True, purge=True, inspect=True, priorities=True, broadcast=True)

    def to_kombu_priority(self, priority: int | None) -> int | None:
        if priority is None:
            return KOMBU_MAX_PRIORITY
        return KOMBU_MAX_PRIORITY - min(max(priority, 0), KOMBU_MAX_PRIORITY)

    def from_kombu_priority(self, priority: Any) -> int | None:
        if not isinstance(priority, int):
            return None
        return KOMBU_MAX_PRIORITY - min(max(priority, 0), KOMBU_MAX_PRIORITY)


def _redelivered(raw: KombuMessage) -> bool:
    """kombu's redelivery marks: Redis sets it in headers and delivery info, the
    virtual transports' restore in the raw payload."""
    raw_payload = getattr(raw, "_raw", None)
    return bool(raw.delivery_info.get("redelivered")
                or (raw.headers or {}).get("redelivered")
                or (isinstance(raw_payload, dict) and raw_payload.get("redelivered")))
