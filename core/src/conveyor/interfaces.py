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
=====================  =======================================  ==========================

``app`` may be ``None`` when a codec is used outside an app (benchmarks, tools).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, runtime_checkable

from .utils import did_you_mean
from .exceptions import ConfigurationError, UnknownOptionError

if TYPE_CHECKING:
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

    With the default exchange ``""`` the routing key is the queue name.
    """

    queue: str
    exchange: str = ""
    routing_key: str | None = None

    @property
    def key(self) -> str:
        return self.routing_key if self.routing_key is not None else self.queue


@dataclass(slots=True)
class Delivery:
    """A message handed to a consumer, with what the transport needs to settle it.

    ``deliveries`` counts how many times this message has been delivered, this time
    included; the worker dead-letters it past ``worker_max_deliveries``.
    """

    message: Message
    queue: str
    tag: Any
    redelivered: bool = False
    deliveries: int = 1
    exchange: str = ""
    routing_key: str = ""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport can do natively."""

    native_delay: bool = False
    priorities: bool = False
    confirms: bool = False
    dead_letters: bool = True
    leases: bool = True


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the worker could not handle, kept durably with why and when."""

    id: str
    queue: str
    reason: str
    time: float
    message: Message


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


# --------------------------------------------------------------------------- transport
@runtime_checkable
class Transport(Protocol):
    """A connection to one broker, used by one thread at a time.

    Blocking calls live here only; the asyncio API runs them off the event loop.
    Driver errors must surface as one of ``connection_errors`` (for retry and
    reconnect) or be wrapped in :class:`~conveyor.exceptions.OperationalError`.
    """

    scheme: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    connection_errors: tuple[type[BaseException], ...]
    #: Seconds an unacked delivery stays leased; None where the broker tracks it.
    visibility_timeout: float | None

    def connect(self) -> None:
        """Open the connection; check ``broker_transport_options`` keys."""

    def close(self) -> None:
        """Release the connection; return unsettled deliveries to their queues."""

    def declare(self, route: Route) -> None:
        """Make sure the queue (and its exchange/binding) exists."""

    def publish(self, message: Message, route: Route, *, due: float | None = None) -> None:
        """Send one message; with ``due`` (unix time) park it broker-side until then."""

    def publish_many(self, batch: Sequence[tuple[Message, Route, float | None]]) -> None:
        """Send several messages in as few round trips as possible, all or error."""

    def fetch(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` deliveries, highest priority first, waiting at most
        ``timeout`` seconds for the first. Moves due parked messages first."""

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Settle deliveries for good."""

    def requeue(self, delivery: Delivery) -> None:
        """Give a delivery back to its queue (warm shutdown, reject with requeue)."""

    def defer(self, delivery: Delivery, due: float) -> None:
        """Park a delivered message broker-side until ``due``, atomically with its ack."""

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Renew the lease of deliveries a live worker still holds."""

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a delivery to the dead letters with ``reason``, atomically with its ack."""

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """Every dead letter (of ``queue``), oldest first."""

    def requeue_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        """Put dead letters back on their queue (all of ``queue`` when ids is None)."""

    def purge_dead(self, queue: str | None = None) -> int:
        """Delete dead letters (of ``queue``); return how many."""

    def purge(self, queue: str) -> int:
        """Delete every waiting message of ``queue``; return how many."""

    def depth(self, queue: str) -> int:
        """How many messages wait in ``queue`` (parked delayed ones excluded)."""


#: ``broker_transport_options`` keys the core reads, valid for every transport.
#: ``delayed_delivery``: "worker" (default) sends delayed tasks to their queue with
#: Celery's ``eta`` header, so Celery workers run them; "broker" parks them
#: broker-side at publish (one hop fewer; every consumer must be a Conveyor worker).
COMMON_OPTIONS: Mapping[str, Any] = {"delayed_delivery": "worker"}


class BaseTransport:
    """Optional base: option checking, ``publish_many`` and connection-error defaults."""

    scheme: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    connection_errors: tuple[type[BaseException], ...] = (ConnectionError, OSError)
    #: Known ``broker_transport_options`` keys and their defaults.
    default_options: ClassVar[Mapping[str, Any]] = {}
    visibility_timeout: float | None = None

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
        return {**known, **given}

    def publish_many(self, batch: Sequence[tuple[Message, Route, float | None]]) -> None:
        for message, route, due in batch:
            self.publish(message, route, due=due)  # type: ignore[attr-defined]

    def abandon(self) -> None:
        """Drop the connection after a connection error, settling nothing.

        Deliveries whose tasks still run stay leased: the worker acks them through a
        new connection when they finish, or they come back by the visibility
        timeout. The default closes; override where ``close()`` gives deliveries back.
        """
        self.close()

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
    """

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


# --------------------------------------------------------------------------- router
@runtime_checkable
class Router(Protocol):
    """Chooses execution options (usually ``queue``) for a task by name."""

    def route(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              options: Mapping[str, Any], task: Any) -> dict[str, Any] | None: ...


__all__ = [
    "COMMON_OPTIONS", "Message", "Route", "Delivery", "Capabilities", "DeadLetter", "Serializer",
    "Compressor", "Transport", "BaseTransport", "Backend", "Router",
]
