"""The asyncio twins (``redis.asyncio``): a producer transport and the result backend.

The same bytes as the blocking classes: messages are shaped by the blocking
transport's own code (:meth:`.PublisherMixin.commands`) and stored in one MULTI/EXEC;
results are the same keys, written by the same Lua script. Only the I/O is awaited.

Waiting for results shares one subscription connection per backend: a reader task
wakes the waiters of a channel when its key is published, so ten thousand
concurrent ``aget()`` calls cost one connection, not ten thousand. Each wait
subscribes, waits for the subscription to be confirmed, then reads the key (so a
result stored before the subscription is not missed), as the blocking backend does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar, cast

import redis
import redis.asyncio as aioredis
from conveyor.interfaces import BackendCapabilities, Capabilities, Outgoing, Route

from .backend import KEY_PREFIX, STORE, _REREAD_EVERY
from .channel import PublisherMixin
from .connection import CONNECTION_ERRORS, driver_url
from .errors import wrap
from .layout import Layout
from .transport import RedisTransport

log = logging.getLogger("conveyor.redis")


class _Shaper(PublisherMixin):
    """The blocking transport's message shaping, without its connection."""

    def __init__(self, url: str, layout: Layout) -> None:
        self.url, self.layout = url, layout
        self._declared: set[Route] = set()
        self._lists: dict[tuple[str, int], str] = {}
        self._next_move = float("inf")  # producers here leave moving to consumers


class AsyncRedisTransport:
    """Publishes for the asyncio client; workers consume with :class:`RedisTransport`.

    Takes the same ``broker_transport_options`` (checked the same way), so a message
    sent here is byte-for-byte what ``apply_async`` sends.
    """

    scheme: ClassVar[str] = "redis"
    capabilities: ClassVar[Capabilities] = RedisTransport.capabilities
    connection_errors = CONNECTION_ERRORS

    def __init__(self, url: str = "redis://", app: Any = None) -> None:
        self.url = url
        given = dict(app.conf.broker_transport_options) if app is not None else {}
        self.options = o = RedisTransport.check_options(given)
        self.connect_timeout = app.conf.broker_connection_timeout if app is not None else None
        self._shaper = _Shaper(url, Layout(o["global_keyprefix"], o["sep"],
                                           o["priority_steps"]))
        self._client: aioredis.Redis | None = None

    async def connect(self) -> None:
        if self._client is None:
            o = self.options
            connect = o["socket_connect_timeout"]
            self._client = aioredis.Redis.from_url(
                driver_url(self.url), socket_timeout=o["socket_timeout"],
                socket_connect_timeout=connect if connect is not None
                else self.connect_timeout, socket_keepalive=bool(o["socket_keepalive"]),
                max_connections=o["max_connections"], protocol=2, **(o["ssl"] or {}))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def declare(self, route: Route) -> None:
        await self.publish_many([])  # bindings are written with the first message

    async def publish_many(self, batch: Sequence[Outgoing]) -> None:
        """One MULTI/EXEC: every message is stored, or none and an error."""
        if not batch:
            return
        await self.connect()
        assert self._client is not None
        commands, routes = self._shaper.commands(batch)
        if len(commands) == 1:  # perf: one command is atomic as it is
            await self._client.execute_command(*commands[0])  # type: ignore[no-untyped-call]
            return
        async with self._client.pipeline(transaction=True) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            await pipe.execute()
        self._shaper._declared |= routes


class AsyncRedisBackend:
    """Celery-compatible Redis result backend for the asyncio client."""

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities()

    def __init__(self, url: str = "redis://", app: Any = None) -> None:
        self.url = url
        timeout = app.conf.broker_connection_timeout if app is not None else 4.0
        self.client = aioredis.Redis.from_url(driver_url(url), socket_timeout=10.0,
                                              socket_connect_timeout=timeout, protocol=2)
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        #: channel → (waiter count, set when a message or confirmation arrives)
        self._waiters: dict[bytes, list[asyncio.Event]] = {}
        self._confirmed: dict[bytes, asyncio.Event] = {}
        self._connecting = asyncio.Lock()
        #: Channels to (un)subscribe at the next flush, and the task that sends them.
        self._subscribing: set[bytes] = set()
        self._unsubscribing: set[bytes] = set()
        self._flusher: asyncio.Task[None] | None = None

    @staticmethod
    def key(task_id: str) -> str:
        return KEY_PREFIX + task_id

    async def get(self, task_id: str) -> bytes | None:
        try:
            return cast("bytes | None", await self.client.get(self.key(task_id)))
        except redis.RedisError as exc:
            raise wrap(exc, self.url, f"reading the result of task {task_id}") from exc

    async def store(self, task_id: str, state: str, payload: bytes, *,
                    expires: float | None) -> None:
        ttl, unit = (int(expires * 1000), "ms") if expires else (0, "s")
        try:
            await self.client.eval(STORE.source, 1, self.key(task_id), payload, ttl, unit)
        except redis.RedisError as exc:
            raise wrap(exc, self.url, f"storing the {state} result of {task_id}") from exc

    async def forget(self, task_id: str) -> None:
        try:
            await self.client.delete(self.key(task_id))
        except redis.RedisError as exc:
            raise wrap(exc, self.url, f"forgetting the result of {task_id}") from exc

    # ------------------------------------------------------------- waiting
    def _join(self, channel: bytes) -> asyncio.Event:
        """One more waiter on ``channel``: the event it sleeps on."""
        event = asyncio.Event()
        self._waiters.setdefault(channel, []).append(event)
        return event

    async def _subscribed(self, channel: bytes) -> None:
        """Subscribe on the first waiter; return once the server confirmed it."""
        confirmed = self._confirmed.get(channel)
        if confirmed is None:
            confirmed = self._confirmed[channel] = asyncio.Event()
            self._unsubscribing.discard(channel)
            self._subscribing.add(channel)
            self._schedule()
        await confirmed.wait()

    def _unsubscribe(self, channel: bytes, event: asyncio.Event) -> None:
        waiters = self._waiters.get(channel, [])
        if event in waiters:
            waiters.remove(event)
        if not waiters:
            self._waiters.pop(channel, None)
            self._confirmed.pop(channel, None)
            if channel in self._subscribing:
                self._subscribing.discard(channel)
            else:
                self._unsubscribing.add(channel)
                self._schedule()

    def _schedule(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Send the (un)subscriptions asked for since the last flush, one command
        each way: waiters that arrive together share one round trip."""
        while self._subscribing or self._unsubscribing:
            try:
                async with self._connecting:
                    if self._pubsub is None:
                        pubsub = self.client.pubsub()
                        await pubsub.connect()  # type: ignore[no-untyped-call]
                        self._pubsub = pubsub
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.get_running_loop().create_task(self._read())
                gone, self._unsubscribing = self._unsubscribing, set()
                if gone:
                    await self._pubsub.unsubscribe(*gone)
                new, self._subscribing = self._subscribing, set()
                if new:
                    await self._pubsub.subscribe(*new)
            except CONNECTION_ERRORS as exc:
                log.warning("Subscribing to results at %s failed (%s); retrying",
                            self.url, exc)
                await self._resubscribe()

    async def _read(self) -> None:
        """Wake the waiters of each channel a message or confirmation arrives on."""
        while True:
            try:
                # Blocks until something arrives: a read timeout would make redis-py
                # reconnect, losing what was in flight (a subscription confirmed then).
                msg = await self._pubsub.get_message(timeout=None)
            except CONNECTION_ERRORS as exc:  # wake everyone: they re-read the key
                log.warning("Result subscription to %s broke (%s); resubscribing",
                            self.url, exc)
                await self._resubscribe()
                continue
            if msg is None:
                continue
            channel = msg.get("channel")
            if msg["type"] == "subscribe":
                confirmed = self._confirmed.get(channel)
                if confirmed is not None:
                    confirmed.set()
            elif msg["type"] == "message":
                for event in self._waiters.get(channel, ()):
                    event.set()

    async def _resubscribe(self) -> None:
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()
        await asyncio.sleep(0.2)
        with contextlib.suppress(redis.RedisError):
            pubsub = self.client.pubsub()
            await pubsub.connect()  # type: ignore[no-untyped-call]
            self._pubsub = pubsub
            if self._waiters:
                await pubsub.subscribe(*self._waiters)
        for confirmed in self._confirmed.values():
            confirmed.set()

    async def wait(self, task_id: str, *, timeout: float | None,
                   previous: bytes | None) -> bytes | None:
        key = self.key(task_id)
        channel = key.encode("utf-8")
        deadline = None if timeout is None else time.monotonic() + timeout
        event = self._join(channel)
        try:
            try:
                await asyncio.wait_for(self._subscribed(channel), timeout)
            except asyncio.TimeoutError:
                return await self._changed(task_id, previous)
            while True:
                found = await self._changed(task_id, previous)
                if found is not None:
                    return found
                pause = _REREAD_EVERY
                if deadline is not None:
                    pause = min(pause, deadline - time.monotonic())
                    if pause <= 0:
                        return None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), pause)
                event.clear()
        except redis.RedisError as exc:
            raise wrap(exc, self.url, f"waiting for task {task_id}") from exc
        finally:
            self._unsubscribe(channel, event)

    async def _changed(self, task_id: str, previous: bytes | None) -> bytes | None:
        current = await self.get(task_id)
        return current if current is not None and current != previous else None

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        await self.client.aclose()


class SecureAsyncRedisTransport(AsyncRedisTransport):
    """``rediss://``: the same over TLS."""

    scheme = "rediss"
