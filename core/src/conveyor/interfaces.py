"""What a plugin of each kind provides: small Protocols and the data they pass.

A plugin satisfies a Protocol; inheriting the base classes here is optional and only
buys defaults. Every entry point targets a *factory* (usually the class) that Conveyor
calls once per app:

=====================  =======================================  ==========================
group                  called as                                returns
=====================  =======================================  ==========================
conveyor.serializers   ``factory(app)``                         :class:`Serializer`
conveyor.compressors   ``factory(app)``                         :class:`Compressor`
conveyor.transports    ``factory(url, app)``                    :class:`Transport`
conveyor.backends      ``factory(url, app)``                    :class:`Backend`
conveyor.routers       ``factory(app)``                         :class:`Router`
conveyor.hooks         registered with pluggy as it is          ``@hookimpl`` functions
conveyor.commands      used as it is                            :class:`Command`
=====================  =======================================  ==========================

``app`` may be ``None`` when a codec is used outside an app (benchmarks, tools).
``conveyor.async_transports`` and ``conveyor.async_backends`` hold the asyncio twins
the asyncio client awaits (:class:`AsyncTransport`, which publishes, and
:class:`AsyncBackend`) under the same names.

A transport or backend implements a small required protocol (:class:`Transport`,
:class:`Backend`) and, for each flag it sets in its ``capabilities``, the optional
protocol that flag names (:class:`Capabilities`, :class:`BackendCapabilities`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, runtime_checkable

from .exceptions import CapabilityError, ConfigurationError, UnknownOptionError
from .utils import did_you_mean, mask_url

if TYPE_CHECKING:
    import argparse

    from .app import Conveyor


# --------------------------------------------------------------------------- data
@dataclass(slots=True)
class Message:
    """One task message as every transport carries it (docs/architecture.md, "The message").

    ``properties`` holds the AMQP-style basic properties other than the content type
    and encoding: ``correlation_id``, ``reply_to``, ``delivery_mode``, ``priority``
    and, with ``expires``, ``expiration`` (milliseconds as text). ``priority`` always
    has Conveyor's meaning (0–255, higher first, ``None`` = lowest); a transport maps
    it to its wire form at its edge and back when it reads.
    """

    headers: dict[str, Any]
    body: bytes
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    properties: dict[str, Any] = field(default_factory=dict)
    #: What the core built the headers from (a :class:`conveyor.envelope.Template`),
    #: or None: not part of the message. A transport that writes headers as JSON
    #: passes the message to :func:`conveyor.envelope.headers_json`, which lays them
    #: out from text made once per template when they are still as built.
    template: Any = field(default=None, compare=False, repr=False)

    @property
    def task_id(self) -> str | None:
        return self.headers.get("id")

    @property
    def task_name(self) -> str | None:
        return self.headers.get("task")

    @property
    def priority(self) -> int | None:
        return self.properties.get("priority")


class Route(NamedTuple):
    """Where a message goes: a queue, and the exchange/routing key that reach it.

    With the default exchange ``""`` (or the queue's own, named like the queue) the
    message goes to ``queue``. With another exchange it goes through that exchange's
    bindings (:meth:`destinations`), as on an AMQP broker: to every queue bound with
    a matching routing key.
    """

    queue: str
    exchange: str = ""
    routing_key: str | None = None

    @property
    def key(self) -> str:
        return self.routing_key if self.routing_key is not None else self.queue

    @property
    def routed(self) -> bool:
        """True when the message goes through ``exchange``'s bindings."""
        return bool(self.exchange) and self.exchange != self.queue

    def own_binding(self) -> Binding:
        """What declaring this route binds: ``queue`` on its own direct exchange
        (named like the queue), with the routing key it is published with there.

        That is Celery's automatic queue, so ``apply_async(exchange="high",
        routing_key="high")`` reaches a worker consuming queue ``high`` on every
        transport, Celery's workers and Conveyor's alike.
        """
        key = self.queue if self.routed else self.key
        return Binding(key, "", self.queue)

    def destinations(self, bindings: Iterable[Binding]) -> list[str]:
        """The queues a message on this route goes to, given the bindings of its
        exchange: each queue bound with a matching key once, in order; ``queue``
        itself when the exchange is its own or nothing matches (never dropped)."""
        if not self.routed:
            return [self.queue]
        key = self.key
        found = list(dict.fromkeys(b.queue for b in bindings if b.matches(key)))
        return found or [self.queue]


class Binding(NamedTuple):
    """One row of an exchange's binding table, in the layout kombu's virtual
    transports share (on Redis, a member of ``_kombu.binding.<exchange>``:
    ``routing_key``, ``pattern`` and ``queue`` joined by ``\\x06\\x16``).

    A direct binding has no ``pattern`` and matches a routing key equal to its own;
    a topic binding's ``pattern`` is the regular expression kombu wrote for it.
    """

    routing_key: str
    pattern: str
    queue: str

    def matches(self, key: str) -> bool:
        if self.pattern:
            return re.match(self.pattern, key) is not None
        return key == self.routing_key


@dataclass(slots=True)
class Delivery:
    """A message handed to a consumer, with what the transport needs to settle it.

    ``deliveries`` counts how many times this message has been delivered, this time
    included; the worker dead-letters it past ``worker_max_deliveries``.

    ``error`` is set by a transport that took a stored message it cannot make into a
    :class:`Message` (a corrupt row, garbage on a list): it says why, and the worker
    dead-letters the delivery with that reason. Decoding one message at a time this
    way means one bad message never holds up the rest of its batch.
    """

    message: Message
    queue: str
    tag: Any
    redelivered: bool = False
    deliveries: int = 1
    exchange: str = ""
    routing_key: str = ""
    error: str | None = None


#: Settlement models (``Capabilities.settlement``); see :class:`Transport`.
LEASE = "lease"
CHANNEL = "channel"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport does beyond the required :class:`Transport` protocol.

    Each flag announces an optional protocol (or, for ``priorities``, a promise about
    ``fetch``). The core reads these flags, never ``hasattr``: it skips what a
    transport lacks, and an option that needs a missing capability fails with
    :class:`~conveyor.exceptions.CapabilityError` naming the option and the
    transport. Every flag defaults to off, so the smallest transport declares
    ``Capabilities()``.

    ``settlement`` says which connection may settle a delivery:

    * ``"lease"`` — a delivery is a lease recorded broker-side (SQLite rows, Redis
      ``unacked``). Any connection of any process may ack, requeue or extend it, so
      after a reconnect the worker acks deliveries it fetched on the old connection
      through the new one, and renews leases from a connection of its own.
    * ``"channel"`` (default) — a delivery is bound to the channel that received it
      (AMQP delivery tags). When that channel is lost the broker redelivers every
      unsettled delivery by itself; the worker must never settle an old delivery on
      a new channel (AMQP would close the channel for an unknown tag). Tasks still
      running on such deliveries finish, and their deliveries are forgotten.
    """

    #: :class:`DelayTransport`: ``publish_many`` honours ``due`` (parks the message
    #: broker-side until then) and ``defer`` parks a delivered one. Without it the
    #: core never passes a ``due`` and the worker holds ETAs in memory.
    delays: bool = False
    #: :class:`LeaseTransport`: deliveries expire after ``visibility_timeout`` unless
    #: ``extend``\ ed; the worker keeps the leases of what it holds.
    leases: bool = False
    #: :class:`DeadLetterTransport`: ``dead_letter`` and the dead-letter listing.
    dead_letters: bool = False
    #: ``fetch`` returns higher ``Message.priority`` first; ``priority=`` needs it.
    priorities: bool = False
    #: :class:`PurgeTransport`: ``purge(queue)`` (``conveyor purge``).
    purge: bool = False
    #: :class:`InspectTransport`: ``depth(queue)`` and ``stats(queue)``.
    inspect: bool = False
    #: :class:`AbandonTransport`: ``abandon()`` drops a broken connection without
    #: giving running deliveries back (the worker calls it when it reconnects;
    #: otherwise it calls ``close()``).
    abandon: bool = False
    #: :class:`HeartbeatTransport`: the broker closes a connection that is not read
    #: for a while (AMQP heartbeats); the worker calls ``heartbeat()`` every second,
    #: also while its pool is full and it fetches nothing.
    heartbeats: bool = False
    #: :class:`BroadcastTransport`: ``broadcast`` to an :class:`Exchange` and
    #: ``subscribe`` to one (remote control and events). Without it ``conveyor
    #: inspect``/``control`` fail with a :class:`CapabilityError` and workers run no
    #: control consumer.
    broadcast: bool = False
    #: :class:`PrefetchTransport`: the broker pushes deliveries up to a prefetch set
    #: when the transport subscribes (AMQP ``basic.qos``), so ``fetch``'s ``limit``
    #: alone cannot raise it; the worker calls ``set_prefetch`` when its own changes.
    prefetch: bool = False
    #: :class:`FetchAheadTransport`: ``ack_and_fetch_ahead`` writes an ack and the
    #: next fetch at once, the fetch's reply read by the next ``fetch``; the worker
    #: uses it where its pool runs tasks inline (solo), as it starts the last task it
    #: holds, so the broker takes the next batch while that task runs.
    fetch_ahead: bool = False
    #: ``"lease"`` or ``"channel"``: who may settle a delivery (see above).
    settlement: str = CHANNEL

    def __post_init__(self) -> None:
        if self.settlement not in (LEASE, CHANNEL):
            raise ConfigurationError(
                f"Capabilities.settlement must be {LEASE!r} or {CHANNEL!r}, "
                f"not {self.settlement!r}.")
        if self.leases and self.settlement != LEASE:
            raise ConfigurationError(
                "Capabilities(leases=True) needs settlement='lease': the worker renews "
                "leases from a connection of its own.")


@dataclass(frozen=True, slots=True)
class BackendCapabilities:
    """What a result backend does beyond the required :class:`Backend` protocol."""

    #: :class:`JoinBackend`: group/chord join counters (``join_*``).
    joins: bool = False
    #: :class:`GroupBackend`: saved groups (``GroupResult.save``/``restore``).
    groups: bool = False
    #: :class:`ReplyBackend`: results go back to the caller's own queue (``rpc://``),
    #: not to a store others can read. The core names :attr:`ReplyBackend.reply_to`
    #: in every task message it publishes, and a worker's ``store`` passes the
    #: request's ``reply_to`` on.
    replies: bool = False
    #: :class:`PreparingBackend`: a wait can start before the task is sent
    #: (``prepare_wait``), so a fast worker's notification is not missed and read
    #: back a round trip later. The core calls it before each single publish whose
    #: result is kept.
    prepared_waits: bool = False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the worker could not handle, kept durably with why and when."""

    id: str
    queue: str
    reason: str
    time: float
    message: Message


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What one queue holds, by state (``conveyor inspect queues``).

    Operators watch these to see congestion before countdown and ETA tasks run late:
    a growing ``ready`` count or ``oldest_age`` means the workers do not keep up.
    """

    queue: str
    #: Messages deliverable now, by priority (Conveyor's meaning, ``None`` counted
    #: as 0). A broker that groups priorities in steps keys each step by the lowest
    #: priority it holds; one that does not count by priority at all keys every
    #: message under 0 and sets ``by_priority`` to False.
    waiting: Mapping[int, int]
    #: Messages parked broker-side until they are due (countdown/ETA), and the
    #: earliest due time (unix time) among them. ``None`` when the broker parks the
    #: messages of every queue together and cannot tell one queue's apart without
    #: reading them (RabbitMQ's delay layout): ``delayed_shared`` counts them all.
    delayed: int | None
    next_due: float | None
    #: Messages delivered to a consumer and not yet settled; ``None`` when the
    #: broker does not say (a channel-bound delivery seen only by its channel).
    leased: int | None
    #: Dead letters kept for this queue.
    dead: int
    #: Seconds the longest-waiting deliverable message has waited; ``None`` when
    #: nothing waits or the broker keeps no arrival time.
    oldest_age: float | None
    #: With ``delayed`` None: the messages parked in the store every queue shares
    #: (all queues together, so the same number in each queue's row).
    delayed_shared: int | None = None
    #: False when the broker counts ready messages but not by priority.
    by_priority: bool = True

    @property
    def ready(self) -> int:
        """Every message deliverable now, whatever its priority."""
        return sum(self.waiting.values())


# --------------------------------------------------------------------------- codecs
@runtime_checkable
class Serializer(Protocol):
    """Turns ``[args, kwargs, embed]`` (or a result) into bytes and back.

    Encoding is chosen by the plugin's *name*; decoding by ``content_type`` (only for
    serializers listed in ``accept_content``).
    """

    content_type: str
    content_encoding: str

    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


@runtime_checkable
class Compressor(Protocol):
    """Compresses a serialized body. ``content_type`` is the ``compression`` header."""

    content_type: str

    def compress(self, data: bytes) -> bytes: ...

    def decompress(self, data: bytes) -> bytes: ...


def check_option_type(transport: str, key: str, value: Any, default: Any) -> None:
    """A ``broker_transport_options`` value must have its default's kind (a number
    where the default is a number — numeric text allowed —, a bool for a bool, text
    for text, a list for a list), so a typo fails at connect, naming the key, instead
    of deep in a driver. Options whose default is None take whatever their driver
    does."""
    if default is None or value is None:
        return
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "True or False"
    elif isinstance(default, (int, float)):
        ok, kind = _is_number(value), "a number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "text"
    elif isinstance(default, (list, tuple)):
        ok, kind = isinstance(value, (list, tuple)), "a list"
    else:
        return
    if not ok:
        raise ConfigurationError(
            f"broker_transport_options[{key!r}] for the {transport} transport must be "
            f"{kind} (default {default!r}), not {value!r}.")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, str)


# --------------------------------------------------------------------------- transport
#: One message to publish: the message, its route, and when it is due (unix time;
#: always None for a transport without ``Capabilities.delays``).
Outgoing = tuple[Message, Route, "float | None"]


@runtime_checkable
class Transport(Protocol):
    """A connection to one broker, used by one thread at a time: the required part.

    This is all a transport must do; each optional protocol below adds methods for
    what only some brokers do, announced by a flag in :attr:`capabilities`.
    Blocking calls live here; :class:`AsyncTransport` is the asyncio twin of its
    publishing half, with the same semantics. Driver errors must surface as one of ``connection_errors`` (the
    core retries those by the publish retry policy and the worker reconnects on
    them) or as :class:`~conveyor.exceptions.OperationalError`; the core turns any
    other error of a publish into ``OperationalError`` naming the broker.

    Settlement (``ack``/``requeue`` and the optional ``defer``/``dead_letter``)
    follows one of two models, named by ``capabilities.settlement`` (see
    :class:`Capabilities`): a *lease* any connection may settle, or a delivery
    bound to the *channel* that received it. Either way a delivery that is never
    settled comes back: after its lease lapses, or when its channel closes.
    """

    scheme: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    connection_errors: tuple[type[BaseException], ...]

    def connect(self) -> None:
        """Open the connection (or check it can be opened); idempotent."""

    def close(self) -> None:
        """Release the connection; unsettled deliveries go back to their queues
        (at once or by their lease), counted as delivered."""

    def declare(self, route: Route) -> None:
        """Make sure ``route.queue`` exists, bound to its own exchange
        (:meth:`Route.own_binding`, in the binding table of the exchange named
        ``route.queue``).

        The core calls it once per route a connection publishes to and once per
        queue a worker consumes (``Route(queue)``), before using it; it must be
        idempotent and cheap to repeat."""

    def publish_many(self, batch: Sequence[Outgoing]) -> None:
        """Send messages in as few round trips as possible: all, or none and an error.

        A message goes to ``route.queue``, or, when ``route.routed``, to each of
        ``route.destinations(bindings of route.exchange)``. The core sends a single
        message as a batch of one. ``due`` is None unless the transport declares
        ``delays``."""

    def fetch(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` deliveries from ``queues``, waiting at most ``timeout``
        seconds for the first (an empty list then; never longer).

        Also returns messages that came back: deliveries whose lease lapsed or
        whose channel closed, with ``deliveries`` counting every delivery (so the
        worker can dead-letter a message that keeps killing it), and, with
        ``delays``, parked messages now due. With ``priorities``, higher
        ``Message.priority`` first, FIFO within a priority. ``queues`` may change
        between calls (remote control's ``add_consumer``/``cancel_consumer``): a
        transport that subscribes unsubscribes from a queue no longer listed."""

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Settle deliveries for good. Acking a delivery whose lease lapsed and
        that nobody else holds yet still removes it (it ran)."""

    def requeue(self, delivery: Delivery) -> None:
        """Give an unstarted delivery back to its queue (warm shutdown), not
        counted as a delivery."""


@runtime_checkable
class DelayTransport(Transport, Protocol):
    """``Capabilities.delays``: messages parked broker-side until they are due."""

    def defer(self, delivery: Delivery, due: float) -> None:
        """Park a delivered message until ``due`` (unix time), atomically with its
        settlement; not counted as a delivery. The worker defers ETAs beyond its
        horizon, so a task due next month costs broker storage, not worker memory."""


@runtime_checkable
class LeaseTransport(Transport, Protocol):
    """``Capabilities.leases``: a delivery is a lease of ``visibility_timeout``."""

    #: Seconds an unsettled delivery stays leased before it comes back.
    visibility_timeout: float | None

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Renew the leases of deliveries a live worker still holds. Called from
        another connection than the one that fetched them (lease settlement)."""

    def started(self, deliveries: Sequence[Delivery]) -> None:
        """The worker is about to run these unacked deliveries (``acks_late``). A
        transport that charges deliveries when a task starts rather than when it is
        taken counts them here, so a message that only waited in a dead worker's
        prefetch is not charged a delivery it never ran (``BaseTransport``: no-op)."""

    def ack_and_start(self, acks: Sequence[Delivery], starts: Sequence[Delivery]) -> None:
        """:meth:`~Transport.ack` ``acks``, then count ``starts`` as :meth:`started`.

        The processes pool acks the jobs its children began in the same turn as it
        charges the ones it hands them; a transport that sends settlement ahead can
        do both in one round trip (``BaseTransport``: the two calls, in that order).
        Raises what ``ack`` raises: the acks must not be lost."""


@runtime_checkable
class DeadLetterTransport(Transport, Protocol):
    """``Capabilities.dead_letters``: messages the worker cannot handle, kept with why."""

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a delivery to the dead letters with ``reason``, atomically with its
        settlement."""

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """Every dead letter (of ``queue``), oldest first."""

    def requeue_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        """Put dead letters back on their queue (all of ``queue`` when ids is None);
        return how many."""

    def purge_dead(self, queue: str | None = None) -> int:
        """Delete dead letters (of ``queue``); return how many."""


@runtime_checkable
class PurgeTransport(Transport, Protocol):
    """``Capabilities.purge``."""

    def purge(self, queue: str) -> int:
        """Delete every message of ``queue`` that could be delivered now; return
        how many (what :meth:`InspectTransport.depth` counts)."""


@runtime_checkable
class InspectTransport(Transport, Protocol):
    """``Capabilities.inspect``: how much waits where."""

    def depth(self, queue: str) -> int:
        """How many messages of ``queue`` could be delivered now (parked delayed
        ones and leased ones excluded)."""

    def stats(self, queue: str) -> QueueStats:
        """What ``queue`` holds, by state; ``stats(q).ready == depth(q)``."""


@runtime_checkable
class AbandonTransport(Transport, Protocol):
    """``Capabilities.abandon``: a way to drop a broken connection without settling."""

    def abandon(self) -> None:
        """Drop the connection after a connection error, giving nothing back.

        With lease settlement, deliveries whose tasks still run stay leased and the
        worker acks them through a new connection when they finish (``close()``
        would give them back and run them twice)."""


@runtime_checkable
class PrefetchTransport(Transport, Protocol):
    """``Capabilities.prefetch``: a broker that pushes up to a prefetch held per
    subscription."""

    def set_prefetch(self, count: int) -> None:
        """Hold up to ``count`` unsettled deliveries from now on: the worker calls it
        when it connects and whenever its prefetch changes (``pool_grow``,
        ``pool_shrink``, ``autoscale``). Without it a pushing broker would keep the
        prefetch of the first subscription: a grown pool would wait for messages
        its broker does not send, and a connection made again while jobs were held
        would subscribe with only the room left then."""


@runtime_checkable
class FetchAheadTransport(Transport, Protocol):
    """``Capabilities.fetch_ahead``: an ack and the next fetch in one write."""

    def ack_and_fetch_ahead(self, acks: Sequence[Delivery], queues: Sequence[str],
                            limit: int) -> None:
        """:meth:`~Transport.ack` ``acks`` and, in the same write, start taking up
        to ``limit`` deliveries from ``queues`` without waiting for them: the next
        :meth:`~Transport.fetch` returns them (whatever its own ``queues`` and
        ``limit``; if none came, it fetches as usual). Until then they are held
        like fetched ones: ``close()`` gives them back, and where the reply is lost
        with the connection they are given back as well, never left to a lease
        nobody knows of. Raises what ``ack`` raises: the acks must not be lost.

        perf: a worker that runs one task at a time (solo) otherwise waits a round
        trip for its next batch after the last task it holds, the broker idle
        meanwhile; sent with that task's early ack, the fetch runs on the broker
        while the task runs, in a write the ack costs anyway."""


@runtime_checkable
class HeartbeatTransport(Transport, Protocol):
    """``Capabilities.heartbeats``: a connection that must be read now and then to
    stay open."""

    def heartbeat(self) -> None:
        """Answer the broker's heartbeats without waiting: read and write what the
        connection needs to stay open, keeping deliveries that arrive for the next
        ``fetch``. The worker calls it from its consuming thread about every second,
        whatever else it does: a worker whose pool is full with a backlog fetches
        nothing while long tasks run, and a broker that closed its connection
        meanwhile would give its ``acks_late`` deliveries to another run. While a
        ``solo`` pool runs a task in the consuming thread, a thread of the worker's
        calls it instead (never both at once).

        Optional, not part of the protocol: ``expect_heartbeats()``, called before
        ``connect()`` by a user that will call ``heartbeat()`` (the worker's consumer
        and control threads). A transport that has it asks the broker for heartbeats
        only then: a producer's connection is not read between publishes, and the
        broker would close it after two heartbeats."""


#: Exchange kinds (:attr:`Exchange.kind`).
FANOUT, TOPIC, DIRECT = "fanout", "topic", "direct"


@dataclass(frozen=True, slots=True)
class Exchange:
    """An exchange broadcasts go through, declared as Celery declares it.

    On AMQP the flags must equal the ones every other client declares the exchange
    with (RabbitMQ refuses a redeclaration that differs); on Redis only ``name``
    and ``kind`` matter. Celery's (``conveyor.control.exchanges`` has them):

    * ``Exchange("celery.pidbox", "fanout")`` — remote control commands, published
      with routing key ``""``; each worker subscribes with binding key ``""`` and
      queue ``<hostname>.celery.pidbox``;
    * ``Exchange("reply.celery.pidbox", "direct")`` — the replies: a client
      subscribes with binding key = its own id and queue ``<id>.reply.celery.pidbox``;
      a worker broadcasts its reply with that id as routing key;
    * ``Exchange("celeryev", "topic", durable=True)`` — events, published with the
      event type as routing key (``task-succeeded`` → ``task.succeeded``,
      ``worker-heartbeat`` → ``worker.heartbeat``); a monitor (Flower) subscribes
      with binding key ``"#"``, Celery's (``task.#`` works too).
    """

    name: str
    kind: str = FANOUT
    durable: bool = False
    auto_delete: bool = False

    def __post_init__(self) -> None:
        if self.kind not in (FANOUT, TOPIC, DIRECT):
            raise ConfigurationError(
                f"Exchange.kind must be {FANOUT!r}, {TOPIC!r} or {DIRECT!r}, "
                f"not {self.kind!r}.")
        if not self.name:
            raise ConfigurationError("A broadcast needs a named exchange, not ''.")

    def matches(self, binding_key: str, routing_key: str) -> bool:
        """AMQP's rule for whether a subscription bound with ``binding_key`` gets a
        message published with ``routing_key``: every one on a fanout exchange; on a
        topic exchange ``*`` stands for one dot-separated word and ``#`` for any
        number; on a direct exchange the keys are equal. (Redis follows kombu's
        channel patterns instead; see the Redis plugin.)"""
        if self.kind == FANOUT:
            return True
        if self.kind == DIRECT:
            return binding_key == routing_key
        return _topic_matches(binding_key.split("."), routing_key.split("."))


def _topic_matches(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_topic_matches(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _topic_matches(rest, words[1:])


@runtime_checkable
class Subscription(Protocol):
    """Messages broadcast to one exchange while the subscription is open.

    It owns its connection (it may be used from another thread than the transport
    that made it, one thread at a time). Messages are transient and settle
    themselves: there is nothing to ack, and what arrives while nobody reads waits
    only as long as the broker keeps it (Redis pub/sub: not at all once the
    subscription is closed).
    """

    def get(self, timeout: float) -> list[Delivery]:
        """The messages received so far, waiting at most ``timeout`` seconds for the
        first (an empty list then). Each :class:`Delivery` has ``exchange`` and
        ``routing_key`` as published, ``tag`` None and ``deliveries`` 1."""

    def close(self) -> None:
        """Stop receiving and release the connection (and the queue, if any)."""


@runtime_checkable
class BroadcastTransport(Transport, Protocol):
    """``Capabilities.broadcast``: publish to a fanout/topic/direct exchange and
    subscribe to one — what kombu's pidbox (remote control) and Celery's events use.

    A broadcast reaches every subscription open *now* whose binding key matches
    (:meth:`Exchange.matches` on AMQP and in memory; kombu's rules on Redis) and is
    dropped when none does: it is never parked for a later subscriber and never
    falls back to a queue. On the wire it is what kombu sends, so Celery's workers,
    its CLI and Flower take part:

    * Redis: a fanout or topic exchange is ``PUBLISH``/``PSUBSCRIBE`` on channel
      ``/{db}.{exchange}`` (routing key ``""``) or ``/{db}.{exchange}/{routing_key}``
      (``fanout_prefix`` and ``fanout_patterns`` on, Celery's defaults; a binding key's
      ``#`` becomes the glob ``*``), carrying kombu's JSON envelope; a direct
      exchange goes through ``_kombu.binding.<exchange>`` to plain lists.
    * AMQP: real exchanges; a subscription is an exclusive auto-delete queue bound
      with the binding key.

    For events, the sender calls ``broadcast(EVENTS, "task.succeeded", message)``
    with the event dict as a JSON body and ``{"hostname": ...}`` as headers (see
    ``conveyor.control.exchanges``); a monitor calls ``subscribe(EVENTS, "#")``.
    On a fanout exchange publish with routing key ``""``: on Redis a fanout message
    with a routing key only reaches subscribers bound with a pattern matching it.
    """

    def broadcast(self, exchange: Exchange, routing_key: str, message: Message) -> None:
        """Send ``message`` to the subscribers of ``exchange`` that ``routing_key``
        matches (declaring the exchange where the broker needs it)."""

    def subscribe(self, exchange: Exchange, binding_key: str = "", *,
                  queue: str | None = None,
                  expires: float | None = None) -> Subscription:
        """Start receiving what is broadcast to ``exchange`` with a routing key
        ``binding_key`` matches; ready when it returns (a broadcast made after
        that reaches it). ``queue`` names the subscription's queue where the
        broker has one (AMQP; Redis for a direct exchange), else a unique name is
        made; ``expires``: seconds an unused queue outlives a crashed subscriber
        (AMQP ``x-expires``)."""


#: The optional protocol behind each method-bearing capability flag.
CAPABILITY_PROTOCOLS: Mapping[str, type] = {
    "delays": DelayTransport, "leases": LeaseTransport,
    "dead_letters": DeadLetterTransport, "purge": PurgeTransport,
    "inspect": InspectTransport, "abandon": AbandonTransport,
    "heartbeats": HeartbeatTransport, "broadcast": BroadcastTransport,
    "prefetch": PrefetchTransport, "fetch_ahead": FetchAheadTransport,
}


def require(transport: Transport, capability: str, wanted: str) -> None:
    """Raise :class:`CapabilityError` unless ``transport`` declares ``capability``.

    ``wanted`` names what asked for it (an option, a command), so the message says
    both what cannot be done and on which transport.
    """
    if not getattr(transport.capabilities, capability):
        raise CapabilityError(unsupported(transport, capability, wanted))


def unsupported(transport: Any, capability: str, wanted: str) -> str:
    """The sentence of a :class:`CapabilityError`: what, which transport, what to do."""
    url = getattr(transport, "url", None)
    where = f" at {mask_url(url)}" if isinstance(url, str) else ""
    name = transport.scheme or type(transport).__name__
    return (f"{wanted} needs a transport with {capability!r} "
            f"(Capabilities.{capability}); the {name!r} transport{where} does not "
            f"support it. Use a transport that does, or leave the option out.")


#: ``broker_transport_options`` keys the core reads, valid for every transport.
#: ``delayed_delivery``: "worker" (default) sends delayed tasks to their queue with
#: Celery's ``eta`` header, so Celery workers run them; "broker" parks them
#: broker-side at publish (one hop fewer; every consumer must be a Conveyor worker).
COMMON_OPTIONS: Mapping[str, Any] = {"delayed_delivery": "worker"}


class BaseTransport:
    """Optional base: option checking, ``publish`` of one message, defaults.

    Subclasses implement the required :class:`Transport` methods and, for each flag
    they set in ``capabilities``, that optional protocol's methods.
    """

    scheme: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    connection_errors: tuple[type[BaseException], ...] = (ConnectionError, OSError)
    #: Known ``broker_transport_options`` keys and their defaults.
    default_options: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, url: str, app: Conveyor | None = None) -> None:
        self.url = url
        self.app = app
        given = dict(app.conf.broker_transport_options) if app is not None else {}
        self.connect_timeout: float | None = (
            app.conf.broker_connection_timeout if app is not None else None
        )
        self.options = self.check_options(given)

    @classmethod
    def check_options(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``given``; an unknown key is an error naming it.

        Keys in :data:`COMMON_OPTIONS` (read by the core) are accepted by every
        transport and need not appear in ``default_options``.
        """
        known = {**COMMON_OPTIONS, **cls.default_options}
        mode = given.get("delayed_delivery", "worker")
        if mode not in ("worker", "broker"):
            raise ConfigurationError(
                f"broker_transport_options delayed_delivery must be 'worker' or "
                f"'broker', not {mode!r}.")
        for key in given:
            if key not in known:
                raise UnknownOptionError(
                    f"Unknown broker_transport_options key {key!r} for the "
                    f"{cls.scheme or cls.__name__} transport."
                    f"{did_you_mean(key, cls.default_options)} "
                    f"Known keys: {', '.join(sorted(known))}."
                )
        for key, value in given.items():
            check_option_type(cls.scheme or cls.__name__, key, value, known[key])
        return {**known, **given}

    def publish(self, message: Message, route: Route, *, due: float | None = None) -> None:
        """Send one message: a batch of one (a subclass may have a faster way)."""
        self.publish_many([(message, route, due)])  # type: ignore[attr-defined]

    def started(self, deliveries: Sequence[Delivery]) -> None:
        """The worker is about to run these (``acks_late``) deliveries (see
        :meth:`LeaseTransport.started`). The default does nothing: the transport
        counts deliveries when they are taken."""

    def ack_and_start(self, acks: Sequence[Delivery], starts: Sequence[Delivery]) -> None:
        """:meth:`LeaseTransport.ack_and_start`: the two calls, acks first."""
        if acks:
            self.ack(acks)  # type: ignore[attr-defined]
        if starts:
            self.started(starts)

    def __enter__(self) -> BaseTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        pass


# --------------------------------------------------------------------------- backend
@runtime_checkable
class Backend(Protocol):
    """Stores task state as opaque bytes and tells waiters when it changes.

    The core serializes the state dict (``status``, ``result``, ``traceback``,
    ``children``, ``date_done``, ``task_id``, …) with ``result_serializer`` and hands
    over the bytes with the state name, so a backend never needs a serializer.
    Used from many threads at once: it must be thread-safe.
    """

    capabilities: ClassVar[BackendCapabilities]

    def get(self, task_id: str) -> bytes | None:
        """The stored payload, or None (PENDING)."""

    def store(self, task_id: str, state: str, payload: bytes, *,
              expires: float | None) -> None:
        """Write a state. Must not overwrite a stored ``SUCCESS``; notify waiters."""

    def wait(self, task_id: str, *, timeout: float | None,
             previous: bytes | None) -> bytes | None:
        """Block until the payload differs from ``previous``; None on timeout.

        Must not busy-spin: wait on a notification, or poll with a sleep."""

    def forget(self, task_id: str) -> None:
        """Delete the stored state."""

    def close(self) -> None:
        """Release connections."""


class Join(NamedTuple):
    """Where a group's join stands after :meth:`JoinBackend.join_add`.

    ``claim`` is set for exactly one caller: the one whose member completed the join
    (``done == size``) and who therefore runs what follows (a chord's callback), then
    calls :meth:`JoinBackend.join_finish` with it. The claim lapses after
    ``claim_for`` seconds, so a worker that dies holding it does not lose the join
    for good: a redelivered member claims it again.
    """

    done: int
    size: int | None
    claim: str | None


@runtime_checkable
class JoinBackend(Backend, Protocol):
    """``BackendCapabilities.joins``: counters for a group's join (a chord's header).

    Each member's result is added once (a redelivered member is not counted twice:
    members are told apart by task id and index), and adding it says how many are in,
    atomically, across processes. Every key expires ``expires`` seconds after the
    last write. On Redis the keys are Celery's (``<group key>.j``, ``.s``, ``.t``,
    ``.d``, ``.c``), so a Celery worker and a Conveyor worker share one join.
    """

    def join_size(self, group_id: str, size: int, *, expires: float | None) -> None:
        """Set how many members the join waits for; a join of this id that already
        finished may run again (a chord applied twice)."""

    def join_add(self, group_id: str, task_id: str, index: int | None, payload: bytes, *,
                 expires: float | None, claim_for: float) -> Join:
        """Record one member's encoded result (Celery's ``[1, task_id, state,
        result]`` with the result serializer) once, at ``index`` (None: after the
        indexed ones), and say where the join stands. After :meth:`join_finish` a
        late duplicate returns ``Join(-1, None, None)`` and changes nothing."""

    def join_results(self, group_id: str) -> list[bytes]:
        """The recorded payloads, by index."""

    def join_finish(self, group_id: str, claim: str, *, expires: float | None) -> bool:
        """Delete the join's data if ``claim`` still holds it and remember, for
        ``expires`` seconds, that it is done; False when the claim was lost."""


@runtime_checkable
class GroupBackend(Backend, Protocol):
    """``BackendCapabilities.groups``: what ``GroupResult.save()`` stores, by group id
    (the core's encoded ``{"result": [[group_id, null], [member tuples]]}``; on
    Redis in Celery's ``celery-taskset-meta-<group id>``, so either side restores
    it). Expires ``expires`` seconds after it is saved (None: never)."""

    def save_group(self, group_id: str, payload: bytes, *, expires: float | None) -> None:
        """Store (or replace) the group's payload."""

    def get_group(self, group_id: str) -> bytes | None:
        """The saved payload, or None."""

    def forget_group(self, group_id: str) -> None:
        """Delete what :meth:`save_group` stored."""


@runtime_checkable
class ReplyBackend(Backend, Protocol):
    """``BackendCapabilities.replies``: each result is sent to the caller's queue."""

    @property
    def reply_to(self) -> str:
        """This process's reply queue, ready to receive before it is named."""

    def store(self, task_id: str, state: str, payload: bytes, *,
              expires: float | None, reply_to: str | None = None) -> None:
        """Send a state to ``reply_to`` (the request's); without one, to this
        process's own queue."""


@runtime_checkable
class PreparingBackend(Backend, Protocol):
    """``BackendCapabilities.prepared_waits``: told of a task id before its message
    goes to the broker, so a later :meth:`Backend.wait` on it can already be
    listening when the worker stores the result (Celery's ``on_task_call``)."""

    def prepare_wait(self, task_id: str) -> None:
        """Get ready to wait on ``task_id`` from this thread, without blocking; may
        do nothing (e.g. when this thread's results are seldom waited on). Must never
        make a wait miss a result, and must not raise for a broken connection (the
        publish goes on; the wait finds the result its usual way)."""


# --------------------------------------------------------------------------- router
@runtime_checkable
class Router(Protocol):
    """Chooses execution options (usually ``queue``) for a task by name.

    ``enabled`` is read again whenever a setting changes: a router with nothing to
    route (no ``task_routes``) says False, and the core skips routing altogether.
    """

    @property
    def enabled(self) -> bool: ...

    def route(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              options: Mapping[str, Any], task: Any) -> dict[str, Any] | None: ...


# --------------------------------------------------------------------------- asyncio
# The asyncio twins: what the asyncio client (``adelay``, ``aapply_async``, ``aget``)
# awaits. The envelope, option resolution, routing and hooks are shared with the
# blocking path; only the broker and backend I/O differ. A plugin offers them through
# the entry point groups ``conveyor.async_transports`` and ``conveyor.async_backends``
# (same names as the blocking ones, same ``factory(url, app)``). Consuming is the
# worker's, through the blocking :class:`Transport`, so a transport twin publishes
# only: what it publishes, its blocking twin fetches unchanged.
@runtime_checkable
class AsyncTransport(Protocol):
    """The publishing twin of :class:`Transport`: the same ``declare`` and
    ``publish_many`` semantics (routing through bindings; ``due`` parks the message
    when ``capabilities.delays``), as coroutines. Its ``capabilities`` are its
    blocking twin's. One task uses it at a time, unless its class sets
    ``multiplexed = True`` (optional): then the core shares one instance between
    every coroutine of the loop instead of keeping a pool of them."""

    scheme: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    connection_errors: tuple[type[BaseException], ...]

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def declare(self, route: Route) -> None: ...

    async def publish_many(self, batch: Sequence[Outgoing]) -> None: ...


@runtime_checkable
class AsyncBackend(Protocol):
    """Twin of :class:`Backend`; ``wait`` awaits a notification, never blocks the loop.
    It reads what the blocking twin (a worker) stores, and the reverse. Its
    ``capabilities`` are a subset of its blocking twin's: what it declares, it
    implements (:class:`AsyncJoinBackend`, :class:`AsyncReplyBackend`); a canvas that
    needs what it lacks raises ``AsyncUnsupportedError`` before anything is sent."""

    capabilities: ClassVar[BackendCapabilities]

    async def get(self, task_id: str) -> bytes | None: ...

    async def store(self, task_id: str, state: str, payload: bytes, *,
                    expires: float | None) -> None: ...

    async def wait(self, task_id: str, *, timeout: float | None,
                   previous: bytes | None) -> bytes | None: ...

    async def forget(self, task_id: str) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class AsyncJoinBackend(AsyncBackend, Protocol):
    """Twin of :class:`JoinBackend` (``capabilities.joins``)."""

    async def join_size(self, group_id: str, size: int, *, expires: float | None) -> None: ...

    async def join_add(self, group_id: str, task_id: str, index: int | None,
                       payload: bytes, *, expires: float | None,
                       claim_for: float) -> Join: ...

    async def join_results(self, group_id: str) -> list[bytes]: ...

    async def join_finish(self, group_id: str, claim: str, *,
                          expires: float | None) -> bool: ...


@runtime_checkable
class AsyncReplyBackend(AsyncBackend, Protocol):
    """Twin of :class:`ReplyBackend` (``capabilities.replies``): a reply queue of
    this loop's own. ``reply_to`` is named when a message is built; the core awaits
    :meth:`ready_replies` (while ``replies_ready`` is False) before it sends that
    message, so the queue is consumed before any worker answers to it."""

    reply_to: str
    replies_ready: bool

    async def ready_replies(self) -> None: ...


#: Backend capability flag → the asyncio twin's protocol for it.
ASYNC_BACKEND_PROTOCOLS: Mapping[str, type] = {
    "joins": AsyncJoinBackend, "replies": AsyncReplyBackend,
}


# --------------------------------------------------------------------------- commands
@runtime_checkable
class Command(Protocol):
    """A ``conveyor`` subcommand a plugin adds: an object named by an entry point of
    group ``conveyor.commands`` (the entry point's name is the subcommand's). Its
    module is imported whenever ``conveyor`` parses its arguments, so keep heavy
    imports inside :meth:`run`."""

    #: One line for ``conveyor --help``.
    help: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the subcommand's options on its own ``parser``."""

    def run(self, app: Conveyor, ns: argparse.Namespace) -> int:
        """Do the work for the app given with ``-A``; return the exit status."""


__all__ = [
    "COMMON_OPTIONS", "LEASE", "CHANNEL", "CAPABILITY_PROTOCOLS", "Message", "Route", "Binding",
    "FANOUT", "TOPIC", "DIRECT", "Exchange", "Subscription", "BroadcastTransport",
    "Delivery", "Outgoing", "Capabilities", "BackendCapabilities", "DeadLetter", "QueueStats",
    "Join", "Serializer", "Compressor", "Transport", "DelayTransport", "LeaseTransport",
    "DeadLetterTransport", "PurgeTransport", "InspectTransport", "AbandonTransport",
    "FetchAheadTransport", "HeartbeatTransport", "PrefetchTransport",
    "BaseTransport", "Backend", "JoinBackend", "GroupBackend", "ReplyBackend", "Router",
    "AsyncTransport", "AsyncBackend", "AsyncJoinBackend", "AsyncReplyBackend",
    "ASYNC_BACKEND_PROTOCOLS", "PreparingBackend", "require", "unsupported", "check_option_type",
    "Command",
]
