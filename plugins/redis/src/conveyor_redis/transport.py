"""The ``redis://`` transport: kombu's Redis layout, so Celery peers interoperate.

What goes where (PROTOCOL.md §5; key names in :mod:`.layout`):

* a message is kombu's JSON envelope (:mod:`.envelope`), ``LPUSH``\\ ed onto the list
  of its priority step; consumers take from the other end, steps in kombu's order;
* a taken message is leased in ``unacked`` / ``unacked_index`` exactly as kombu
  writes them (:mod:`.lease`), so Celery and Conveyor workers restore each other's
  in-flight messages after the visibility timeout;
* delayed messages wait in a sorted set (:mod:`.delay`), dead letters in a hash per
  queue (:mod:`.deadletter`).

Round trips: ``publish`` is one, ``publish_many`` one for the whole batch, ``fetch``
one per batch of up to ``limit`` messages while messages wait (a blocking ``BRPOP``
only when the queues are empty), ``ack`` one per batch. The hot calls go through one
connection the transport holds (:class:`~.connection.Line`), taken from a pool shared
per URL, so no call sets a connection up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

import redis
from conveyor._suggest import mask_url
from conveyor.exceptions import ConfigurationError
from conveyor.interfaces import (
    BaseTransport, Capabilities, DeadLetter, Delivery, Message, Route,
)

from . import deadletter, delay, lease
from .connection import Backoff, Line, client_for
from .envelope import decode, encode, new_tag
from .errors import CONNECTION_ERRORS, translate, wrap
from .layout import Layout, to_wire

T = TypeVar("T")
log = logging.getLogger("conveyor.redis")

#: Parked messages moved back per script call.
_MOVE_BATCH = 100
#: How long ack/requeue/defer/extend keep retrying through a broken connection.
_SETTLE_PATIENCE = 15.0
#: How often a producer moves due parked messages back, at most.
_PRODUCER_MOVE_EVERY = 1.0
#: Envelopes per LPUSH command inside one publish_many pipeline.
_PUSH_CHUNK = 1000


class _Poll(NamedTuple):
    """What fetching from one list of queues needs, computed once."""

    keys: list[str]
    names: list[str]
    index: dict[bytes, int]
    claim: tuple[bytes, bytes]


class Lease(NamedTuple):
    """``Delivery.tag``: the delivery tag plus what settling needs, self-contained."""

    tag: str
    raw: bytes
    list: str


class RedisTransport(BaseTransport):
    """kombu-compatible Redis transport (see the module docstring)."""

    scheme = "redis"
    capabilities: ClassVar[Capabilities] = Capabilities(
        native_delay=True, priorities=True, confirms=False, dead_letters=True, leases=True)
    connection_errors = CONNECTION_ERRORS
    default_options: ClassVar[dict[str, Any]] = {
        "visibility_timeout": 3600,
        "priority_steps": [0, 3, 6, 9],
        "sep": "\x06\x16",
        "global_keyprefix": "",
        "polling_interval": 1.0,
        "socket_timeout": 10.0,
        "socket_connect_timeout": None,
        "socket_keepalive": True,
        "health_check_interval": 25,
        "max_connections": None,
        "client_name": None,
        "ssl": None,
    }

    def __init__(self, url: str = "redis://", app: Any = None) -> None:
        super().__init__(url, app)
        o = self.options
        self.visibility_timeout = float(o["visibility_timeout"])
        self.polling_interval = float(o["polling_interval"])
        if self.visibility_timeout <= 0 or self.polling_interval <= 0:
            raise ConfigurationError(
                "broker_transport_options 'visibility_timeout' and 'polling_interval' "
                f"must be positive seconds; got {o['visibility_timeout']!r} and "
                f"{o['polling_interval']!r}.")
        timeout = o["socket_timeout"]
        if timeout is not None and float(timeout) <= self.polling_interval:
            raise ConfigurationError(
                f"broker_transport_options['socket_timeout'] ({timeout!r}) must exceed "
                f"'polling_interval' ({self.polling_interval!r}), or a blocking read "
                "would time out; raise it or set it to None.")
        self.layout = Layout(o["global_keyprefix"], o["sep"], o["priority_steps"])
        lay = self.layout
        self._lease_keys = [lay.unacked, lay.unacked_index, lay.deliveries]
        self._claim_keys = [*self._lease_keys, lay.delayed]
        self.sweep_interval = min(10.0, max(0.25, self.visibility_timeout / 4))
        self._client: redis.Redis | None = None
        self._line: Line | None = None
        self._broken = False
        self._declared: set[Route] = set()
        self._lists: dict[tuple[str, int], str] = {}
        self._held: dict[str, Lease] = {}
        self._orphans: list[tuple[str, bytes]] = []
        self._backoff = Backoff()
        self._next_sweep = 0.0
        self._next_move = 0.0
        self._next_due: float | None = None
        self._rr = 0
        self._polls: dict[tuple[str, ...], _Poll] = {}

    # ------------------------------------------------------------- connection
    @property
    def client(self) -> redis.Redis:
        """A redis-py client on the shared pool (for the rarely used calls)."""
        if self._client is None:
            o = self.options
            connect = o["socket_connect_timeout"]
            self._client = client_for(
                self.url, socket_timeout=o["socket_timeout"],
                connect_timeout=connect if connect is not None else self.connect_timeout,
                keepalive=bool(o["socket_keepalive"]),
                health_check_interval=o["health_check_interval"] or 0,
                max_connections=o["max_connections"], ssl=o["ssl"],
                client_name=o["client_name"])
        return self._client

    @property
    def line(self) -> Line:
        """The connection this transport holds for its hot calls."""
        if self._line is None:
            self._line = Line(self.client.connection_pool)
        return self._line

    def connect(self) -> None:
        with translate(self.url, "connecting", retryable_raw=True):
            self.line.call("PING")
        self._broken = False

    def close(self) -> None:
        """Give back deliveries still held (next out, as kombu does at shutdown).

        Not after a lost connection: a worker that reconnects closes the broken
        transport while its tasks still run, and giving those back would run them
        twice; their leases expire instead (the visibility timeout).
        """
        held, self._held = list(self._held.values()), {}
        line, self._line = self._line, None
        if line is None:
            return
        if not self._broken:
            try:
                for token in held:
                    lease.GIVE_BACK(line, [*self._lease_keys, token.list],
                                    [token.tag, token.raw, "R", "0"])
                self._flush_orphans(line)
            except redis.RedisError:
                pass  # unreachable: the visibility timeout brings them back
        line.close()

    def _settle(self, doing: str, call: Callable[[Line], T]) -> T:
        """Run an idempotent settle call, retrying through a broken connection."""
        deadline = time.monotonic() + _SETTLE_PATIENCE
        backoff = Backoff()
        while True:
            try:
                return call(self.line)
            except CONNECTION_ERRORS as exc:
                pause = backoff.next()
                if time.monotonic() + pause > deadline:
                    self._broken = True
                    raise wrap(exc, self.url, doing) from exc
                log.warning("Redis at %s unreachable while %s (%s); retrying in %.2fs",
                            mask_url(self.url), doing, exc, pause)
                time.sleep(pause)
            except redis.RedisError as exc:
                raise wrap(exc, self.url, doing) from exc

    # ------------------------------------------------------------- publishing
    def _binding(self, route: Route) -> list[tuple[Any, ...]]:
        """Celery's binding for a queue on its own exchange (written on first use).

        Only the queue's own exchange (or the anonymous one) is bound: the type of a
        named exchange is not stored in Redis, and a direct-style binding on a topic
        exchange would match every routing key for kombu publishers.
        """
        if route.exchange not in ("", route.queue):
            return []
        member = self.layout.binding_member(route.key, route.queue)
        return [("SADD", self.layout.binding(route.queue), member),
                ("SADD", self.layout.binding_permanent(route.queue), member)]

    def declare(self, route: Route) -> None:
        if route in self._declared:
            return
        with translate(self.url, f"declaring queue {route.queue!r}"):
            _check(self.line.pipeline(self._binding(route) or [("PING",)]))
        self._declared.add(route)

    def _envelope(self, message: Message, route: Route) -> tuple[str, str]:
        wire = to_wire(message.properties.get("priority"))
        raw = encode(message, route.exchange, route.key, wire, new_tag())
        key = (route.queue, wire)
        list_key = self._lists.get(key)
        if list_key is None:
            list_key = self._lists[key] = self.layout.list_for(route.queue, wire)
        return raw, list_key

    def _push(self, list_key: str, raw: str, due: float | None) -> tuple[Any, ...]:
        if due is not None and due > time.time():
            return ("ZADD", self.layout.delayed, due, delay.member(list_key, raw))
        return ("LPUSH", list_key, raw)

    def publish(self, message: Message, route: Route, *, due: float | None = None) -> None:
        raw, list_key = self._envelope(message, route)
        command = self._push(list_key, raw, due)
        with translate(self.url, f"publishing to queue {route.queue!r}",
                       retryable_raw=True):
            if route in self._declared:
                self.line.call(*command)
            else:
                _check(self.line.pipeline(
                    [("MULTI",), *self._binding(route), command, ("EXEC",)]))
                self._declared.add(route)
            self._producer_move()

    def publish_many(self, batch: Sequence[tuple[Message, Route, float | None]]) -> None:
        """One MULTI/EXEC round trip: every message is stored, or none and an error."""
        if not batch:
            return
        now = time.time()
        pushes: dict[str, list[str]] = {}
        parks: list[Any] = []
        routes: set[Route] = set()
        for message, route, due in batch:
            raw, list_key = self._envelope(message, route)
            if due is not None and due > now:
                parks += (due, delay.member(list_key, raw))
            else:
                pushes.setdefault(list_key, []).append(raw)
            if route not in self._declared:
                routes.add(route)
        commands: list[tuple[Any, ...]] = [("MULTI",)]
        for route in routes:
            commands += self._binding(route)
        for list_key, raws in pushes.items():
            for i in range(0, len(raws), _PUSH_CHUNK):
                commands.append(("LPUSH", list_key, *raws[i:i + _PUSH_CHUNK]))
        if parks:
            commands.append(("ZADD", self.layout.delayed, *parks))
        commands.append(("EXEC",))
        with translate(self.url, f"publishing {len(batch)} messages", retryable_raw=True):
            _check(self.line.pipeline(commands))
            self._declared |= routes
            self._producer_move()

    def _producer_move(self) -> None:
        now = time.time()
        if now >= self._next_move:
            self._next_move = now + _PRODUCER_MOVE_EVERY
            delay.MOVE_DUE(self.line, [self.layout.delayed], [now, _MOVE_BATCH])

    # ------------------------------------------------------------- consuming
    def _poll(self, queues: Sequence[str]) -> _Poll:
        """Keys in poll order (round robin over queues within a step) and helpers."""
        if len(queues) > 1:
            k = self._rr % len(queues)
            queues = [*queues[k:], *queues[:k]]
        key = tuple(queues)
        found = self._polls.get(key)
        if found is None:
            keys, names = self.layout.poll_order(queues)
            found = _Poll(keys, names, {k.encode("utf-8"): i + 1 for i, k in enumerate(keys)},
                          lease.CLAIM.prepared([*self._claim_keys, *keys], 5,
                                               [json.dumps(n) for n in names]))
            self._polls[key] = found
        return found

    def fetch(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[Delivery]:
        if not queues or limit <= 0:
            return []
        deadline = time.monotonic() + max(0.0, timeout)
        poll = self._poll(queues)
        while True:
            try:
                if self._orphans:
                    self._flush_orphans(self.line)
                if time.time() >= self._next_sweep:
                    lease.sweep(self.client, self.layout, self.visibility_timeout)
                    self._next_sweep = time.time() + self.sweep_interval
                got = self._claim(poll, limit, None)
                self._backoff.reset()
                if got:
                    return got
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                block = min(remaining, self.polling_interval)
                if self._next_due is not None:
                    block = min(block, max(0.0, self._next_due - time.time()))
                if block < 0.01:
                    time.sleep(block)
                    continue
                popped = self.line.call("BRPOP", *poll.keys, round(block, 3))
                if popped is None:
                    continue
                try:
                    return self._claim(poll, limit, (poll.index[popped[0]], popped[1]))
                except BaseException:
                    self._orphans.append((popped[0].decode("utf-8"), popped[1]))
                    raise
            except CONNECTION_ERRORS as exc:
                pause = self._backoff.next()
                if time.monotonic() + pause > deadline:
                    self._broken = True
                    raise wrap(exc, self.url, "fetching messages") from exc
                log.warning("Redis at %s unreachable while fetching (%s); retrying in "
                            "%.2fs", mask_url(self.url), exc, pause)
                time.sleep(pause)
            except redis.RedisError as exc:
                raise wrap(exc, self.url, "fetching messages") from exc

    def _claim(self, poll: _Poll, limit: int,
               pre: tuple[int, bytes] | None) -> list[Delivery]:
        reply = lease.CLAIM.run_prepared(
            self.line, poll.claim,
            [time.time(), limit, _MOVE_BATCH, pre[0] if pre else 0, pre[1] if pre else b""])
        out, self._next_due = lease.parse_claimed(reply)
        keys, names = poll.keys, poll.names
        deliveries: list[Delivery] = []
        held = self._held
        for j in range(0, len(out), 4):
            i, raw, count, tag = out[j], out[j + 1], out[j + 2], out[j + 3].decode()
            d = decode(raw)
            queue = names[i - 1]
            token = held[tag] = Lease(tag, raw, keys[i - 1])
            deliveries.append(Delivery(
                d.message, queue, token, redelivered=d.redelivered or count > 1,
                deliveries=count, exchange=d.exchange, routing_key=d.routing_key or queue))
        if deliveries and len(names) > len(self.layout.steps):
            self._rr += 1
        return deliveries

    def _flush_orphans(self, line: Line) -> None:
        """Push back messages a BRPOP took whose claim failed (connection broke).

        If the claim did run before the reply was lost, the message is leased: the
        lease is dropped in the same step, so exactly one copy ends up in the list.
        """
        while self._orphans:
            list_key, raw = self._orphans[0]
            tag = decode(raw).tag or "conveyor-" + hashlib.sha1(raw).hexdigest()
            lease.RETURN_ORPHAN(line, [self.layout.unacked, self.layout.unacked_index,
                                       list_key], [tag, raw])
            self._orphans.pop(0)

    # ------------------------------------------------------------- settling
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        tags = [d.tag.tag for d in deliveries]
        self._settle("acknowledging messages",
                     lambda line: lease.ACK(line, self._lease_keys, tags))
        for tag in tags:
            self._held.pop(tag, None)

    def requeue(self, delivery: Delivery) -> None:
        token: Lease = delivery.tag
        self._settle("requeueing a message", lambda line: lease.GIVE_BACK(
            line, [*self._lease_keys, token.list], [token.tag, token.raw, "L", "1"]))
        self._held.pop(token.tag, None)

    def defer(self, delivery: Delivery, due: float) -> None:
        token: Lease = delivery.tag
        self._settle("parking a delayed message", lambda line: delay.DEFER(
            line, self._claim_keys, [token.tag, delay.member(token.list, token.raw), due]))
        self._held.pop(token.tag, None)

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        now = time.time()
        pairs: list[Any] = []
        for d in deliveries:
            pairs += (now, d.tag.tag)
        self._settle("extending leases", lambda line: line.call(
            "ZADD", self.layout.unacked_index, "XX", *pairs))

    # ------------------------------------------------------------- dead letters
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        token: Lease = delivery.tag
        lay = self.layout
        rec = deadletter.record(token.tag, delivery.queue, reason, time.time(), token.raw)
        self._settle("dead-lettering a message", lambda line: deadletter.DEAD(
            line, [*self._lease_keys, lay.dead(delivery.queue), lay.dead_queues],
            [token.tag, token.tag, rec, delivery.queue]))
        self._held.pop(token.tag, None)

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        with translate(self.url, "listing dead letters"):
            return [d for d, _ in deadletter.load(self.client, self.layout, queue)]

    def requeue_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        with translate(self.url, "requeueing dead letters"):
            return deadletter.requeue(self.client, self.layout, ids, queue)

    def purge_dead(self, queue: str | None = None) -> int:
        with translate(self.url, "purging dead letters"):
            return deadletter.purge(self.client, self.layout, queue)

    # ------------------------------------------------------------- inspection
    def purge(self, queue: str) -> int:
        lists = self.layout.lists(queue)
        with translate(self.url, f"purging queue {queue!r}"):
            replies = _check(self.line.pipeline(
                [("MULTI",), *(("LLEN", k) for k in lists), ("DEL", *lists), ("EXEC",)]))
            return sum(replies[-1][:-1])

    def depth(self, queue: str) -> int:
        with translate(self.url, f"measuring queue {queue!r}"):
            return sum(_check(self.line.pipeline([("LLEN", k)
                                                  for k in self.layout.lists(queue)])))


def _check(replies: list[Any]) -> list[Any]:
    """Raise the first error reply of a pipeline (EXEC's nested ones included)."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, list):
            for item in reply:
                if isinstance(item, Exception):
                    raise item
    return replies


class SecureRedisTransport(RedisTransport):
    """``rediss://``: the same transport over TLS (``ssl`` option for certificates)."""

    scheme = "rediss"
