"""The asyncio twin of the ``amqp://`` producer: aio-pika, no threads.

It declares and publishes exactly as :class:`~.transport.AmqpTransport` does (the
same queue arguments, the same properties, the same delay layout, routed messages
``mandatory`` and confirmed, falling back to the route's queue), awaiting each
step on the running loop. One connection and channel serve every coroutine of the
loop (``multiplexed``); a declaration is made once per channel and concurrent
publishers to a queue wait for it, so none publishes before its queue exists.

The one difference on the wire: aio-pika's driver (aiormq) gives every message a
random ``message_id`` property; Celery and Conveyor workers ignore it.

Workers consume with the blocking transport; only the producer has a twin, and
the ``rpc://`` result backend (:class:`AsyncRpcBackend`): a reply queue per loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, ClassVar, cast

import aio_pika
import aiormq
import aiormq.exceptions as ae
from aiormq.abc import AbstractChannel
from conveyor.exceptions import OperationalError
from conveyor.interfaces import BackendCapabilities, Capabilities, Outgoing, Route
from conveyor.utils import mask_url
from pika.spec import BasicProperties

from . import envelope
from .errors import _HINTS as HINTS
from .errors import CONNECTION_ERRORS, ChannelError, unroutable
from .backend import RpcBackend
from .transport import AmqpTransport

#: Channel errors by the reply code RabbitMQ closed the channel with.
_CODES: dict[type[BaseException], int] = {
    ae.ChannelAccessRefused: 403, ae.ChannelNotFoundEntity: 404,
    ae.ChannelLockedResource: 405, ae.ChannelPreconditionFailed: 406}


@contextlib.contextmanager
def _translated(url: str, doing: str) -> Iterator[None]:
    """aiormq's channel errors as Conveyor's (reply code and text kept); connection
    errors pass as they are, for the core's publish retry to see them."""
    try:
        yield
    except OperationalError:
        raise
    except ae.PublishError as exc:
        delivery: Any = exc.message.delivery if exc.message is not None else None
        if delivery is None:
            raise unroutable(url, "", "", False) from exc
        raise unroutable(url, delivery.exchange or "", delivery.routing_key or "",
                         False) from exc
    except ae.DeliveryError as exc:  # a nack
        raise unroutable(url, "", "", True) from exc
    except ae.ChannelClosed as exc:
        code = _CODES.get(type(exc)) or (exc.args[0] if exc.args and
                                         isinstance(exc.args[0], int) else 0)
        text = str(exc.args[-1]) if exc.args else ""
        hint = HINTS.get(code, "See the RabbitMQ log for details.")
        raise ChannelError(
            f"RabbitMQ at {mask_url(url)} closed the channel while {doing}: "
            f"({code}) {text}. {hint}", code, text) from exc


def _properties(props: BasicProperties) -> aiormq.spec.Basic.Properties:
    """pika's properties (what the blocking transport sends) for aiormq."""
    stamp = props.timestamp
    return aiormq.spec.Basic.Properties(
        content_type=props.content_type, content_encoding=props.content_encoding,
        headers=cast("dict[str, Any] | None", props.headers), delivery_mode=props.delivery_mode,
        priority=props.priority, correlation_id=props.correlation_id,
        reply_to=props.reply_to, expiration=props.expiration,
        message_id=props.message_id, message_type=props.type, user_id=props.user_id,
        app_id=props.app_id,
        timestamp=None if stamp is None else dt.datetime.fromtimestamp(
            stamp, dt.timezone.utc))


class AsyncAmqpTransport:
    """Publishes for the asyncio client; workers consume with :class:`AmqpTransport`."""

    scheme: ClassVar[str] = "amqp"
    capabilities: ClassVar[Capabilities] = AmqpTransport.capabilities
    connection_errors: tuple[type[BaseException], ...] = (
        *CONNECTION_ERRORS, ae.AMQPConnectionError, ae.ChannelInvalidStateError,
        asyncio.TimeoutError)
    #: One instance serves every coroutine of its loop at once.
    multiplexed: ClassVar[bool] = True

    def __init__(self, url: str = "amqp://", app: Any = None) -> None:
        self.url = url
        #: The blocking transport, never connected: options, names and layout.
        self.rules = AmqpTransport(url, app)
        self.confirm = bool(self.rules.options["confirm_publish"])
        self._conn: Any = None
        self._main: AbstractChannel | None = None
        self._confirming: AbstractChannel | None = None
        self._declared: dict[Any, asyncio.Future[None]] = {}
        self._opening: asyncio.Lock | None = None
        self._opened: list[Any] = []  # aio-pika's channels, closed with the transport

    # ------------------------------------------------------------- connection
    async def connect(self) -> None:
        main = self._main
        if main is not None and not main.is_closed:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._main is not None and not self._main.is_closed:
                return
            old = self._conn
            # aio-pika's is_closed turns true only when we close a connection; one
            # the broker closed, or that broke, has its `connected` event cleared
            if old is None or old.is_closed or not old.connected.is_set():
                self._conn = await aio_pika.connect(**self._connect_args())
                if old is not None and not old.is_closed:
                    with contextlib.suppress(Exception):  # broken: released, not used
                        await old.close()
            self._declared.clear()
            self._confirming = None
            self._main = await self._channel(self.confirm)

    def _connect_args(self) -> dict[str, Any]:
        p = self.rules.params
        credentials: Any = p.credentials  # a pika.PlainCredentials
        ssl = p.ssl_options
        args: dict[str, Any] = {
            "host": p.host, "port": p.port, "login": credentials.username,
            "password": credentials.password, "virtualhost": p.virtual_host,
            "ssl": ssl is not None, "client_properties": p.client_properties,
            # aio-pika answers heartbeats on the event loop, between publishes too
            "heartbeat": int(self.rules.options["heartbeat"]), "timeout": p.socket_timeout}
        if ssl is not None:
            args["ssl_context"] = ssl.context
        return args

    async def _channel(self, confirms: bool) -> AbstractChannel:
        with _translated(self.url, "opening a channel"):
            channel = await self._conn.channel(publisher_confirms=confirms,
                                               on_return_raises=confirms)
            raw: AbstractChannel = await channel.get_underlay_channel()
        self._opened.append(channel)
        return raw

    async def _confirmed(self) -> AbstractChannel:
        """A channel with confirms on (the main one when it has them)."""
        await self.connect()
        if self.confirm:
            assert self._main is not None
            return self._main
        if self._confirming is None or self._confirming.is_closed:
            self._confirming = await self._channel(True)
        return self._confirming

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        self._main = self._confirming = None
        self._declared.clear()
        opened, self._opened = self._opened, []
        for channel in opened:  # first, so none is left closing after the loop
            with contextlib.suppress(Exception):  # closed by the broker already
                await channel.close()
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken one
                await conn.close()

    # ------------------------------------------------------------- declaring
    async def _once(self, key: Any, declare: Callable[[AbstractChannel], Awaitable[None]],
                    doing: str) -> None:
        """Run ``declare`` once per channel; whoever asks meanwhile waits for it."""
        found = self._declared.get(key)
        if found is not None and found.done() and not found.cancelled() \
                and found.exception() is None:
            return  # perf: declared already, the usual case
        if found is None:
            main = self._main
            assert main is not None

            async def run() -> None:
                with _translated(self.url, doing):
                    await declare(main)

            found = self._declared[key] = asyncio.ensure_future(run())
        try:
            await asyncio.shield(found)
        except BaseException:
            if self._declared.get(key) is found and found.done():
                del self._declared[key]  # failed: the next publish tries again
            raise

    async def _declare_queue(self, queue: str) -> None:
        exchange = self.rules.exchange_for(queue)

        async def declare(ch: AbstractChannel) -> None:
            await ch.exchange_declare(exchange=exchange, exchange_type="direct",
                                      durable=True)
            await ch.queue_declare(queue=queue, durable=True,
                                   arguments=self.rules.shape.arguments(queue))
            await ch.queue_bind(queue=queue, exchange=exchange, routing_key=queue)

        await self._once(("queue", queue, exchange), declare, f"declaring queue {queue!r}")

    async def declare(self, route: Route) -> None:
        """As :meth:`AmqpTransport.declare`: the queue on its own direct exchange;
        for a routed message, check that its exchange exists."""
        await self.connect()
        await self._declare_queue(route.queue)
        if route.routed:
            async def check(ch: AbstractChannel) -> None:
                await ch.exchange_declare(exchange=route.exchange, passive=True)

            await self._once(("exchange", route.exchange), check,
                             f"checking exchange {route.exchange!r}")

    async def _declare_delays(self, queue: str) -> None:
        delays = self.rules.delays

        async def layout(ch: AbstractChannel) -> None:
            for n in range(27, -1, -1):
                name = delays.level(n)
                await ch.exchange_declare(exchange=name, exchange_type="topic",
                                          durable=True)
                await ch.queue_declare(queue=name, durable=True,
                                       arguments=delays.queue_arguments(n))
                await ch.queue_bind(queue=name, exchange=name,
                                    routing_key=delays.queue_key(n))
            for destination, source, key in delays.bindings():
                if destination == delays.delivery:
                    await ch.exchange_declare(exchange=destination, exchange_type="topic",
                                              durable=True)
                await ch.exchange_bind(destination=destination, source=source,
                                       routing_key=key)

        async def bind_return(ch: AbstractChannel) -> None:
            await ch.queue_bind(queue=queue, exchange=delays.delivery,
                                routing_key=delays.return_key(queue))

        await self._once("delays", layout, "declaring the delayed-delivery layout")
        await self._declare_queue(queue)
        await self._once(("return", queue), bind_return,
                         f"binding queue {queue!r} to the delayed delivery")

    # ------------------------------------------------------------- publishing
    async def _publish(self, exchange: str, routing_key: str,
                       props: aiormq.spec.Basic.Properties, body: bytes, *,
                       confirm: bool = False) -> None:
        confirmed = confirm or self.confirm
        ch = await self._confirmed() if confirmed else self._main
        assert ch is not None
        with _translated(self.url, f"publishing to exchange {exchange!r}"):
            try:
                await ch.basic_publish(body, exchange=exchange, routing_key=routing_key,
                                       properties=props, mandatory=confirmed)
            except ae.DeliveryError as exc:
                if isinstance(exc, ae.PublishError):
                    raise
                raise unroutable(self.url, exchange, routing_key, True) from exc

    async def publish_many(self, batch: Sequence[Outgoing]) -> None:
        """As :meth:`AmqpTransport.publish_many`, awaited."""
        if not batch:
            return
        await self.connect()
        now = time.time()
        delays = self.rules.delays
        for message, route, due in batch:
            await self.declare(route)
            props = _properties(envelope.properties(message))
            body = message.body
            if due is not None and due > now:
                await self._declare_delays(route.queue)
                await self._publish(delays.entry,
                                    delays.routing_key(due - time.time(), route.queue),
                                    props, body, confirm=True)
            elif route.routed:
                try:
                    await self._publish(route.exchange, route.key, props, body,
                                        confirm=True)
                except OperationalError as exc:
                    if getattr(exc, "nacked", True):
                        raise
                    await self._publish("", route.queue, props, body)
            else:
                await self._publish("", route.queue, props, body)


class SecureAsyncAmqpTransport(AsyncAmqpTransport):
    """``amqps://``: the same over TLS."""

    scheme = "amqps"


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AsyncRpcBackend:
    """The ``rpc://`` backend for the asyncio client: a reply queue of this loop's
    own, consumed through aio-pika (a robust connection: the queue and its consumer
    are restored after a reconnect).

    Messages the asyncio client sends name this queue in ``reply_to``; the core
    awaits :meth:`ready_replies` before it sends the first, so the queue exists when
    a worker answers. States are kept as the blocking backend keeps them (the
    latest per task, a SUCCESS final, each until it expires); waiters are woken by
    the consumer, nothing polls.
    """

    capabilities: ClassVar[BackendCapabilities] = RpcBackend.capabilities

    def __init__(self, url: str = "rpc://", app: Any = None) -> None:
        #: The blocking backend, never connected: settings and the kept states.
        self.rules = RpcBackend(url, app)
        self.url = self.rules.url
        self.reply_to = str(uuid.uuid4())
        self.replies_ready = False
        self._conn: Any = None
        self._readying: asyncio.Lock | None = None
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    async def ready_replies(self) -> None:
        """Declare and consume the reply queue (once)."""
        if self.replies_ready:
            return
        if self._readying is None:
            self._readying = asyncio.Lock()
        async with self._readying:
            if self.replies_ready:
                return
            transport = AsyncAmqpTransport(self.url, self.rules.app)
            expires = self.rules.expires_ms
            with _translated(self.url, f"declaring reply queue {self.reply_to!r}"):
                self._conn = await aio_pika.connect_robust(**transport._connect_args())
                channel = await self._conn.channel()
                queue = await channel.declare_queue(
                    self.reply_to, durable=True, auto_delete=True,
                    arguments={"x-expires": expires} if expires else None)
                await queue.consume(self._on_reply, no_ack=True)
            self.replies_ready = True

    async def _on_reply(self, message: Any) -> None:
        task_id = message.correlation_id
        if not task_id:
            return
        ttl = message.expiration  # aio-pika reads the property as seconds
        self.rules._keep(task_id, message.body, float(ttl) if ttl else None)
        self._wake(task_id)

    def _wake(self, task_id: str) -> None:
        for future in self._waiters.pop(task_id, ()):
            _settle(future)

    async def get(self, task_id: str) -> bytes | None:
        return self.rules._current(task_id)

    async def store(self, task_id: str, state: str, payload: bytes, *,
                    expires: float | None) -> None:
        """A state for this client (a revoke): kept here, as the blocking one does."""
        self.rules._keep(task_id, payload, expires)
        self._wake(task_id)

    async def forget(self, task_id: str) -> None:
        self.rules.forget(task_id)

    async def wait(self, task_id: str, *, timeout: float | None,
                   previous: bytes | None) -> bytes | None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            latest = self.rules._current(task_id)
            if latest is not None and latest != previous:
                return latest
            pause = None if deadline is None else deadline - loop.time()
            if pause is not None and pause <= 0:
                return None
            future = loop.create_future()
            self._waiters.setdefault(task_id, []).append(future)
            timer = None if pause is None else loop.call_later(pause, _settle, future)
            try:
                await future
            finally:
                if timer is not None:
                    timer.cancel()
                waiting = self._waiters.get(task_id)
                if waiting is not None and future in waiting:
                    waiting.remove(future)
                    if not waiting:
                        del self._waiters[task_id]

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        self.replies_ready = False
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken one
                await conn.close()
