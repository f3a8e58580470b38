"""Broadcasts (``Capabilities.broadcast``) as kombu's Redis transport makes them.

* A fanout or topic exchange is Redis pub/sub: a message is ``PUBLISH``\\ ed, as
  kombu's JSON envelope (:mod:`.envelope`), on channel ``/{db}.{exchange}`` when its
  routing key is empty and ``/{db}.{exchange}/{routing_key}`` otherwise; a
  subscriber ``PSUBSCRIBE``\\ s the channel of its binding key with ``#`` turned
  into the glob ``*`` (kombu's ``fanout_prefix`` and ``fanout_patterns``, both on
  by default in Celery; ``global_keyprefix`` goes in front, as kombu's prefixed
  client writes it). So ``celery inspect`` reaches a Conveyor worker subscribed to
  ``/0.celery.pidbox``, and Flower, subscribed to ``/0.celeryev/*``, sees events
  published on ``/0.celeryev/task.succeeded``.
* A direct exchange (pidbox replies) goes through ``_kombu.binding.<exchange>`` to
  plain lists: a subscription adds its binding and pops its queue's list, a
  broadcast pushes onto the list of every bound queue whose key is equal and is
  dropped when there is none (kombu drops an unroutable reply too).

Each subscription has its own connection from the transport's pool settings, so a
worker's control thread reads without touching the transport's hot connection.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import redis
from conveyor.interfaces import DIRECT, Delivery, Exchange, Message

from .envelope import decode, encode, new_tag
from .errors import translate
from .layout import Layout, to_wire

if TYPE_CHECKING:
    from redis.client import PubSub


def channel_for(prefix: str, exchange: str, key: str) -> str:
    """The pub/sub channel (or pattern) for ``exchange`` and a routing/binding key."""
    return f"{prefix}{exchange}/{key}" if key else f"{prefix}{exchange}"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _delivery(raw: bytes | str, queue: str, exchange: str, routing_key: str) -> Delivery | None:
    """A received envelope as a Delivery (None when it is not one: kombu skips it too)."""
    decoded = decode(raw)
    if not decoded.valid:
        return None
    return Delivery(decoded.message, queue, None, exchange=decoded.exchange or exchange,
                    routing_key=decoded.routing_key or routing_key)


class PubSubSubscription:
    """A fanout/topic subscription: one ``PSUBSCRIBE`` on its own connection."""

    def __init__(self, client: redis.Redis, url: str, exchange: Exchange, pattern: str,
                 queue: str) -> None:
        self.url, self.exchange, self.pattern, self.queue = url, exchange, pattern, queue
        self._pubsub: PubSub | None = client.pubsub(  # type: ignore[no-untyped-call]
            ignore_subscribe_messages=False)
        with translate(url, f"subscribing to exchange {exchange.name!r}"):
            self._pubsub.psubscribe(pattern)
            # Ready only once the server confirmed it: a broadcast made after this
            # returns reaches the subscription.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                reply = self._pubsub.get_message(timeout=0.5)
                if reply is not None and reply["type"] == "psubscribe":
                    break

    def get(self, timeout: float) -> list[Delivery]:
        pubsub = self._pubsub
        if pubsub is None:
            return []
        out: list[Delivery] = []
        deadline = time.monotonic() + max(0.0, timeout)
        with translate(self.url, f"receiving from exchange {self.exchange.name!r}"):
            while True:
                wait = 0.0 if out else max(0.0, deadline - time.monotonic())
                reply = pubsub.get_message(timeout=wait)
                if reply is None:
                    if out or time.monotonic() >= deadline:
                        return out
                    continue
                if reply["type"] != "pmessage":
                    continue
                channel = _text(reply["channel"])
                key = channel.split("/", 2)[2] if channel.count("/") >= 2 else ""
                d = _delivery(reply["data"], self.queue, self.exchange.name, key)
                if d is not None:
                    out.append(d)

    def close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.punsubscribe()  # type: ignore[no-untyped-call]
                pubsub.close()
            except redis.RedisError:
                pass  # the server forgets a closed connection's subscriptions


class ListSubscription:
    """A direct-exchange subscription: a binding in ``_kombu.binding.<exchange>`` and
    the lists of its queue, removed again on close."""

    def __init__(self, client: redis.Redis, url: str, layout: Layout, exchange: Exchange,
                 binding_key: str, queue: str) -> None:
        self.client, self.url, self.layout = client, url, layout
        self.exchange, self.queue = exchange, queue
        self.member = layout.binding_member(binding_key, queue)
        self.lists = layout.lists(queue)
        with translate(url, f"binding queue {queue!r} to exchange {exchange.name!r}"):
            client.sadd(layout.binding(exchange.name), self.member)
        self._open = True

    def get(self, timeout: float) -> list[Delivery]:
        if not self._open:
            return []
        deadline = time.monotonic() + max(0.0, timeout)
        with translate(self.url, f"receiving from queue {self.queue!r}"):
            while True:  # short BRPOPs: each well inside the socket timeout
                wait = min(1.0, deadline - time.monotonic())
                first = self.client.brpop(self.lists, timeout=max(0.01, wait))
                if first is not None:
                    break
                if time.monotonic() >= deadline:
                    return []
            raws: list[Any] = [first[1]]
            for key in self.lists:
                more = cast("list[Any] | None", self.client.rpop(key, 1000))
                raws += more or []
        out = []
        for raw in raws:
            d = _delivery(raw, self.queue, self.exchange.name, "")
            if d is not None:
                out.append(d)
        return out

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            with self.client.pipeline() as pipe:
                pipe.srem(self.layout.binding(self.exchange.name), self.member)
                pipe.delete(*self.lists)
                pipe.execute()
        except redis.RedisError:
            pass  # the binding stays; a broadcast to it fills a list nobody reads


class BroadcastMixin:
    """``broadcast`` and ``subscribe`` for the Redis transport."""

    url: str
    layout: Layout
    options: dict[str, Any]

    if TYPE_CHECKING:
        @property
        def client(self) -> redis.Redis: ...

    @property
    def fanout_prefix(self) -> str:
        """``global_keyprefix`` + ``/{db}.`` (kombu's ``fanout_prefix``), or only the
        key prefix when the option is off."""
        prefix = self.layout.prefix
        if not self.options["fanout_prefix"]:
            return prefix
        db = self.client.connection_pool.connection_kwargs.get("db", 0)
        return f"{prefix}/{db}."

    def _key(self, key: str) -> str:
        """A routing or binding key as it appears in a channel name."""
        if not self.options["fanout_patterns"]:
            return ""
        return key.replace("#", "*")

    def broadcast(self, exchange: Exchange, routing_key: str, message: Message) -> None:
        raw = encode(message, exchange.name, routing_key,
                     to_wire(message.properties.get("priority")), new_tag())
        with translate(self.url, f"broadcasting to exchange {exchange.name!r}"):
            if exchange.kind != DIRECT:
                channel = channel_for(self.fanout_prefix, exchange.name,
                                      self._key(routing_key))
                self.client.publish(channel, raw)
                return
            queues = self._bound(exchange.name, routing_key)
            if queues:
                with self.client.pipeline(transaction=False) as pipe:
                    for queue in queues:
                        pipe.lpush(self.layout.list_for(queue, None), raw)
                    pipe.execute()

    def _bound(self, exchange: str, routing_key: str) -> Sequence[str]:
        sep = self.layout.sep
        rows = (_text(m).split(sep) for m in self.client.smembers(self.layout.binding(exchange)))
        return sorted({row[2] for row in rows if len(row) == 3 and row[0] == routing_key})

    def subscribe(self, exchange: Exchange, binding_key: str = "", *,
                  queue: str | None = None,
                  expires: float | None = None) -> PubSubSubscription | ListSubscription:
        name = queue or f"{uuid.uuid4()}.{exchange.name}"
        if exchange.kind == DIRECT:
            return ListSubscription(self.client, self.url, self.layout, exchange,
                                    binding_key, name)
        pattern = channel_for(self.fanout_prefix, exchange.name, self._key(binding_key))
        return PubSubSubscription(self.client, self.url, exchange, pattern, name)
