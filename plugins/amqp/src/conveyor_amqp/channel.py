"""One pika connection and channel, with what Conveyor does on it.

The channel is what AMQP binds deliveries to: an ack or a reject is only valid on
the channel that received the message, so every delivery tag handed out is paired
with the channel's *generation*; after a reconnect, tags of the old generation are
dead (RabbitMQ has already given those messages back to their queues) and settling
one is a no-op rather than settling an unrelated message that reuses the number.

Publisher confirms are on when ``confirm_publish`` is set. Parking and
dead-lettering always publish with a confirm, then ack: on a second channel of the
same connection when the first has confirms off, so plain publishes stay one-way.
"""

from __future__ import annotations

import logging
import select
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast, overload

import pika
import pika.exceptions as pe
from pika import frame
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from . import frames as marshal
from .connection import open_connection
from .errors import ChannelError, translate, unroutable
from .layout import Delays, QueueShape

log = logging.getLogger("conveyor.amqp")

#: Set while this thread asks whether a queue exists (a passive declare).
_probing = threading.local()


class _QuietProbe(logging.Filter):
    """pika logs a WARNING whenever the broker closes a channel; for a passive
    declare of a missing queue that close *is* the answer ("no such queue", counted
    as 0), not a problem, so ``inspect queues`` and the monitor do not print one per
    queue without dead letters."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(_probing, "on", False) and record.levelno == logging.WARNING
                    and "(404)" in record.getMessage())


logging.getLogger("pika.channel").addFilter(_QuietProbe())

#: pika's transport over a plain socket (not TLS), which :meth:`Channel._write` may
#: send to directly.
PLAIN_TRANSPORT = "_AsyncPlaintextTransport"

#: A delivery as pika hands it over: queue, method frame, properties, body.
Raw = tuple[str, Basic.Deliver, BasicProperties, bytes]


class Channel:
    """A connection and its one channel (see the module docstring)."""

    def __init__(self, url: str, params: pika.URLParameters, shape: QueueShape, *,
                 confirm: bool) -> None:
        self.url = url
        self.params = params
        self.shape = shape
        self.confirm = confirm
        self.generation = 0
        self._conn: pika.BlockingConnection | None = None
        self._ch: BlockingChannel | None = None
        self._cch: BlockingChannel | None = None
        self._declared: set[Any] = set()
        self._buffer: deque[Raw] = deque()
        self._consuming: tuple[str, ...] = ()
        #: Consumer tag -> its queue and the index of its group in ``_groups``.
        self._consumers: dict[str, tuple[str, int]] = {}
        #: The prefetch of each group of consumers on this channel (one consumer per
        #: queue in each), in the order subscribed: the first group at the first
        #: :meth:`consume`, one more for each rise of :meth:`prefetch`. RabbitMQ
        #: fixes a consumer's prefetch when it subscribes (``basic.qos`` with
        #: ``global=false``, the only kind quorum queues accept), so a larger
        #: prefetch subscribes again for the difference. Empty: not subscribed.
        self._groups: list[int] = []
        #: The prefetch the worker wants (:meth:`prefetch`); kept across channels.
        self._target: int | None = None
        #: The ``prefetch_count`` of this channel's last ``basic.qos``.
        self._qos_sent = 0
        #: Queues whose consumer RabbitMQ cancelled (see :meth:`cancelled`).
        self._cancelled: list[str] = []
        #: Tags received and not yet settled, in order (tags only grow on a channel).
        self._unsettled: dict[int, None] = {}
        #: The negative channel number that ends ``process_data_events`` once a
        #: delivery came (see :meth:`_direct_deliveries`).
        self._stop = 0
        #: The connection's socket and a poller watching it for input, for
        #: :meth:`_write` (None: pika's path only, e.g. over TLS).
        self._direct: tuple[Any, select.poll] | None = None

    # ------------------------------------------------------------- lifecycle
    @property
    def channel(self) -> BlockingChannel:
        if self._ch is None or not self._ch.is_open:
            self.open()
        assert self._ch is not None
        return self._ch

    @property
    def confirmed(self) -> BlockingChannel:
        """A channel with confirms on (the main one when it has them)."""
        ch = self.channel
        if self.confirm:
            return ch
        if self._cch is None or not self._cch.is_open:
            assert self._conn is not None
            with translate(self.url, "opening a channel"):
                self._cch = self._conn.channel()
                self._cch.confirm_delivery()
        return self._cch

    @property
    def is_open(self) -> bool:
        return self._ch is not None and self._ch.is_open

    def open(self) -> None:
        """A new channel (and connection, unless it still answers): a new
        generation, nothing held over from the last one."""
        self._forget()
        if self._conn is None or not self._conn.is_open:
            self.drop()
            self._conn = open_connection(self.url, self.params)
            self._direct = _direct_socket(self._conn)
            _content_straight(self._conn)
        with translate(self.url, "opening a channel"):
            ch = self._conn.channel()
            if self.confirm:
                ch.confirm_delivery()
        self._ch = ch
        self.generation += 1

    def _forget(self) -> None:
        self._ch = self._cch = None
        self._declared.clear()
        self._buffer.clear()
        self._unsettled.clear()
        self._consuming = ()
        self._consumers.clear()
        self._cancelled.clear()
        self._groups = []
        self._qos_sent = 0

    def drop(self) -> None:
        """Forget the connection (closing it if it still answers)."""
        conn, self._conn = self._conn, None
        self._direct = None
        self._forget()
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except (pe.AMQPError, OSError):
                pass  # already broken: RabbitMQ gives unsettled messages back anyway

    # ------------------------------------------------------------- declaring
    def once(self, key: Any) -> bool:
        """True the first time ``key`` is asked about on this connection."""
        if key in self._declared:
            return False
        self._declared.add(key)
        return True

    def declare_queue(self, queue: str, exchange: str) -> None:
        """The task queue ``queue`` bound to the direct ``exchange``, as Celery does."""
        if not self.once(("queue", queue, exchange)):
            return
        ch = self.channel
        with translate(self.url, f"declaring queue {queue!r}"):
            ch.exchange_declare(exchange, "direct", durable=True)
            ch.queue_declare(queue, durable=True, arguments=self.shape.arguments(queue))
            ch.queue_bind(queue, exchange, routing_key=queue)

    def declare_delays(self, delays: Delays) -> None:
        """Every exchange, queue and binding of the delay layout (idempotent)."""
        if not self.once("delays"):
            return
        ch = self.channel
        with translate(self.url, "declaring the delayed-delivery layout"):
            for n in range(27, -1, -1):
                name = delays.level(n)
                ch.exchange_declare(name, "topic", durable=True)
                ch.queue_declare(name, durable=True, arguments=delays.queue_arguments(n))
                ch.queue_bind(name, name, routing_key=delays.queue_key(n))
            for destination, source, key in delays.bindings():
                if destination == delays.delivery:
                    ch.exchange_declare(destination, "topic", durable=True)
                ch.exchange_bind(destination, source, routing_key=key)

    def bind_return(self, delays: Delays, queue: str) -> None:
        """Route parked messages of ``queue`` back to it when they are due."""
        if not self.once(("return", queue)):
            return
        with translate(self.url, f"binding queue {queue!r} to the delayed delivery"):
            self.channel.queue_bind(queue, delays.delivery,
                                    routing_key=delays.return_key(queue))

    def declare_plain(self, queue: str) -> None:
        """A durable classic queue with no arguments (dead letters, the index)."""
        if self.once(("plain", queue)):
            with translate(self.url, f"declaring queue {queue!r}"):
                self.channel.queue_declare(queue, durable=True)

    # ------------------------------------------------------------- publishing
    def publish(self, exchange: str, routing_key: str, props: BasicProperties,
                body: bytes, *, confirm: bool = False) -> None:
        """Send one message; with confirms, raise unless RabbitMQ stored it.

        ``confirm`` asks for one even when ``confirm_publish`` is off. A message
        sent with confirms is ``mandatory``, so one no queue takes is an error too.
        """
        confirmed = confirm or self.confirm
        ch = self.confirmed if confirmed else self.channel
        try:
            with translate(self.url, f"publishing to exchange {exchange!r}"):
                try:
                    ch.basic_publish(exchange, routing_key, body, props,
                                     mandatory=confirmed)
                except (pe.UnroutableError, pe.NackError) as exc:
                    raise unroutable(self.url, exchange, routing_key,
                                     isinstance(exc, pe.NackError)) from exc
        except ChannelError:
            if not ch.is_open and ch is self._cch:
                self._cch = None
            raise

    def publish_plain(self, messages: Sequence[tuple[str, str, BasicProperties, bytes]]
                      ) -> None:
        """Send unconfirmed messages ``(exchange, routing_key, props, body)`` in one
        socket write.

        perf: pika writes a message's method, header and body frames one at a time,
        each through its I/O loop (a ``send`` per frame, plus arming and disarming
        the socket's writer): six system calls per message, more than the
        publishing itself. The frames are marshalled with pika's own classes (the
        method and header frames with their repeated parts kept: :mod:`.frames`)
        and handed to the connection as one buffer (:meth:`_write`), so a message (or
        a whole batch) costs one ``send``. The same frames go out, in the same order.
        """
        if self.confirm:  # confirms wait for each reply: pika's own path
            for exchange, routing_key, props, body in messages:
                self.publish(exchange, routing_key, props, body)
            return
        ch: Any = self.channel
        conn: Any = self._conn  # pika's connection and channel under the blocking facade
        with translate(self.url, "publishing"):
            impl = ch._impl
            impl._raise_if_not_open()
            number = impl.channel_number
            step = conn._impl._body_max_length
            frames: list[bytes] = []
            for exchange, routing_key, props, body in messages:
                frames.append(marshal.publish(number, exchange, routing_key))
                frames.append(marshal.header(number, len(body), props))
                for start in range(0, len(body), step):
                    frames.append(frame.Body(number, body[start:start + step]).marshal())
            if not self._write(b"".join(frames)):
                conn._flush_output()

    def _write(self, data: bytes) -> bool:
        """Hand marshalled frames to the connection; True when they are all in the
        socket, False when pika holds some and its loop must flush them.

        perf: pika's own path arms the socket's writer, polls, sends and disarms it
        (four system calls and its I/O loop's Python for one ``send``: ~100k of a
        publish's ~340k instructions). The frames go straight to the socket only
        when pika's path would do just that: pika buffers nothing before them (so
        the order holds) and no input waits on the connection. pika's poll reads
        waiting input right after its write (a close RabbitMQ sent is raised
        there), so with input waiting pika does it all, as before; a partial send
        (the socket's buffer full) leaves the rest to pika. pika's byte and frame
        counts are kept as its own output keeps them.
        """
        conn: Any = self._conn  # pika's connection under the blocking facade
        impl = conn._impl
        direct = self._direct
        sent = 0
        if direct is not None and impl._get_write_buffer_size() == 0 and \
                not direct[1].poll(0):
            try:
                sent = direct[0].send(data)
            except OSError:  # would block, or broken: pika's path sees and reports it
                sent = 0
            impl.bytes_sent += sent
            if sent == len(data):
                impl.frames_sent += 1
                return True
        impl._output_marshaled_frames([data[sent:]])
        return False

    # ------------------------------------------------------------- consuming
    def consume(self, queues: Sequence[str], prefetch: int) -> None:
        """Subscribe to ``queues`` (once per channel) with the prefetch :meth:`prefetch`
        set, else ``prefetch``, unacked messages at most; a queue subscribed to and
        no longer listed (remote control's ``cancel_consumer``) is unsubscribed
        (what it delivered before is still taken)."""
        ch = self.channel  # first: a reopened channel consumes nothing yet
        consuming = self._consuming
        new = [q for q in queues if q not in consuming]
        if not new and len(queues) == len(consuming):
            return
        gone = [q for q in consuming if q not in queues]
        with translate(self.url, "starting to consume"):
            self._cancel(ch, lambda queue, _: queue in gone)
            if not self._groups:
                ch.add_on_cancel_callback(self._on_cancel)
                self._groups.append(self._target or prefetch)
            for group, count in enumerate(self._groups):
                self._subscribe(ch, new, group, count)
        self._consuming = (*(q for q in consuming if q not in gone), *new)

    def prefetch(self, count: int) -> None:
        """Hold up to ``count`` unacked messages from now on (the worker's pool grew
        or shrank). A rise subscribes each queue once more with the difference as
        its prefetch; a fall cancels the newest such groups while the rest still
        hold ``count`` (the first subscription's prefetch stays until the channel
        is opened again). Deliveries already taken are acked as before; RabbitMQ
        requeues what it was sending to a cancelled consumer."""
        self._target = count
        ch = self._ch
        if not self._groups or ch is None or not ch.is_open:
            return  # the next subscription takes it
        total = sum(self._groups)
        with translate(self.url, "changing the prefetch"):
            if count > total:
                self._groups.append(count - total)
                self._subscribe(ch, self._consuming, len(self._groups) - 1, count - total)
                return
            while len(self._groups) > 1 and total - self._groups[-1] >= count:
                newest = len(self._groups) - 1
                total -= self._groups.pop()
                self._cancel(ch, lambda _, group: group == newest)

    def _subscribe(self, ch: BlockingChannel, queues: Sequence[str], group: int,
                   count: int) -> None:
        """A consumer of each of ``queues`` in ``group``, each with ``count`` unacked
        messages at most."""
        if queues and self._qos_sent != count:
            ch.basic_qos(prefetch_count=count)
            self._qos_sent = count
        for queue in queues:
            on_message = self._on_message(queue)
            tag = ch.basic_consume(queue, on_message)
            self._consumers[tag] = (queue, group)
            self._direct_deliveries(ch, tag, on_message)

    def _cancel(self, ch: BlockingChannel, which: Callable[[str, int], bool]) -> None:
        """Unsubscribe the consumers ``which(queue, group)`` picks."""
        for tag, (queue, group) in list(self._consumers.items()):
            if which(queue, group):
                ch.basic_cancel(tag)
                del self._consumers[tag]

    def _direct_deliveries(self, ch: BlockingChannel, tag: str, on_message: Any) -> None:
        """Have pika's channel hand consumer ``tag``'s deliveries to ``on_message`` as
        it decodes them, not through the blocking facade's event queue.

        perf: ``BlockingChannel`` wraps each delivery in an event object, queues it,
        asks its connection for a dispatch and, in ``process_data_events``, walks
        the queue again to call the consumer. pika's own channel calls whatever
        callback its consumer table holds for the tag (its lower-level API), so
        that entry is pointed at ``on_message``, which also asks
        ``process_data_events`` to return after this read (a negative channel
        number: how pika's own ``consume()`` generator ends a wait). Deliveries
        that arrived with the ``basic.consume-ok`` are already queued in the
        facade: dispatched now, before anything newer (tags stay in order for
        :meth:`ack`'s ``multiple``). The facade keeps its record of the consumer,
        so ``basic_cancel`` and a cancel from RabbitMQ work as before.
        Instructions a message of ``fetch`` + ``parse_message`` + ``ack`` (queued
        no-op tasks, prefetch 32, callgrind, two pairs): 439.5k / 439.3k ->
        418.5k / 419.9k; worker CPU a task of a 10,000 no-op drain
        (``threads -c 8``, six interleaved pairs on a loaded machine): 199.6 ->
        181.2 µs mean, lower in 5 of 6; ``bench/amqp_bench.py``, four interleaved
        pairs: 236 / 195, 218 / 195, 310 / 298, 306 / 271 µs, drain 3,005 / 3,637,
        3,105 / 3,455, 2,552 / 2,613, 2,613 / 2,975 a second; round trip p50 the
        same (six pairs of 1,500: means 1.481 / 1.477 ms).
        """
        impl: Any = cast(Any, ch)._impl  # pika's channel under the blocking facade
        conn: Any = self._conn  # pika's blocking connection
        consumers = vars(impl).get("_consumers")
        if not isinstance(consumers, dict) or tag not in consumers:
            return  # a pika laid out otherwise: its facade's path, as before
        wake = conn._channels_pending_dispatch.add
        stop = self._stop = -impl.channel_number

        def deliver(_ch: Any, method: Basic.Deliver, props: BasicProperties,
                    body: bytes) -> None:
            on_message(_ch, method, props, body)
            wake(stop)

        conn._dispatch_channel_events()
        consumers[tag] = deliver

    def _on_cancel(self, frame: Any) -> None:
        """RabbitMQ cancelled one of our consumers: its queue was deleted (or, for a
        mirrored queue, its node failed). Nothing more would come from it."""
        entry = self._consumers.pop(frame.method.consumer_tag, None)
        if entry is None:
            return
        queue = entry[0]
        # one cancel for each group's consumer of the queue: the rest go with it
        # (RabbitMQ cancels them too), and it is subscribed again once
        for tag in [t for t, (q, _) in self._consumers.items() if q == queue]:
            del self._consumers[tag]
        if queue in self._cancelled:
            return
        self._consuming = tuple(q for q in self._consuming if q != queue)
        self._declared = {key for key in self._declared
                          if not (isinstance(key, tuple) and key[:2] == ("queue", queue))}
        self._cancelled.append(queue)

    def cancelled(self) -> list[str]:
        """The queues whose consumer RabbitMQ cancelled since the last call, to be
        declared again before :meth:`consume` subscribes to them anew."""
        out, self._cancelled = self._cancelled, []
        return out

    def _on_message(self, queue: str) -> Any:
        buffer = self._buffer
        unsettled = self._unsettled

        def on_message(_ch: Any, method: Basic.Deliver, props: BasicProperties,
                       body: bytes) -> None:
            unsettled[cast(int, method.delivery_tag)] = None
            buffer.append((queue, method, props, body))
        return on_message

    def take(self, limit: int, timeout: float) -> list[Raw]:
        """Up to ``limit`` received messages, waiting at most ``timeout`` for one."""
        buffer = self._buffer
        if not buffer:
            conn = self._conn
            if conn is None:
                self.open()
                conn = self._conn
                assert conn is not None
            with translate(self.url, "waiting for messages"):
                facade: Any = conn  # pika's blocking connection
                # a wake-up left by deliveries read since (an ack's flush) would
                # end this wait at once, with nothing new
                facade._channels_pending_dispatch.discard(self._stop)
                direct = self._direct
                if timeout > 0 and direct is not None and _quiet(facade):
                    direct[1].poll(timeout * 1000)
                    timeout = 0
                conn.process_data_events(time_limit=timeout)
        out: list[Raw] = []
        while buffer and len(out) < limit:
            out.append(buffer.popleft())
        return out

    def idle(self) -> None:
        """Answer heartbeats and read what arrived, without waiting."""
        if self._conn is not None:
            with translate(self.url, "reading from the connection"):
                self._conn.process_data_events(time_limit=0)

    # ------------------------------------------------------------- settling
    def ack(self, tags: Iterable[int]) -> None:
        """Ack ``tags``: the oldest unsettled run in one ``multiple`` ack, the rest
        one by one (tasks finish out of order), all in one write.

        perf: pika's ``BlockingChannel.basic_ack`` flushes each ack through its I/O
        loop (arm the writer, poll, send, disarm: four system calls, each a GIL wait
        on a busy worker). The ack frames are marshalled by pika's own classes,
        after the checks pika's ``basic_ack`` makes (the channel and its connection
        open), and handed over in one buffer by :meth:`_write`: straight to the
        socket when pika's flush would only have sent them (nothing buffered, no
        input waiting: 7 µs against pika's 45-80 µs a flush here), otherwise
        through pika's loop as before, which sends them, then reads what waits (a
        close RabbitMQ sent is raised there, before any task starts). Noop drain on
        RabbitMQ, ``threads -c 8``: about half the flushes go straight.

        The acks go out before this returns: the worker acks a task that is not
        ``acks_late`` before it starts it, so a worker that dies while it runs does
        not get its message back (at most once, as Celery's early ack).
        """
        done = set(tags) & self._unsettled.keys()
        if not done:
            return
        ch: Any = self._ch
        if ch is None or not ch.is_open:
            # Their channel closed meanwhile: RabbitMQ gave those messages back, and
            # their tags mean nothing on a new channel (it would close with 406).
            for tag in done:
                del self._unsettled[tag]
            return
        top = None
        for tag in self._unsettled:
            if tag not in done:
                break
            top = tag
        with translate(self.url, "acknowledging messages"):
            impl = ch._impl  # pika's channel under the blocking facade
            impl._raise_if_not_open()
            if impl.connection.is_closed:
                raise pe.ConnectionWrongStateError(
                    "Attempted to send a frame on closed connection.")
            number = impl.channel_number
            frames = []
            if top is not None:
                frames.append(frame.Method(number, Basic.Ack(top, multiple=True)).marshal())
                for tag in list(self._unsettled):
                    if tag > top:
                        break
                    del self._unsettled[tag]
                    done.discard(tag)
            for tag in sorted(done):
                frames.append(frame.Method(number, Basic.Ack(tag)).marshal())
                del self._unsettled[tag]
            if not self._write(b"".join(frames)):
                ch._flush_output()

    def reject(self, tag: int, *, requeue: bool) -> None:
        if self._unsettled.pop(tag, 0) is None:
            with translate(self.url, "giving a message back"):
                self.channel.basic_reject(tag, requeue=requeue)

    def get(self, queue: str) -> tuple[Basic.GetOk, BasicProperties, bytes] | None:
        """One message from ``queue`` without consuming (listing, requeueing)."""
        with translate(self.url, f"reading queue {queue!r}"):
            method, props, body = self.channel.basic_get(queue)
        if method is None or props is None:
            return None
        return method, props, body or b""

    def settle_got(self, tag: int, *, ack: bool) -> None:
        """Settle a message taken with :meth:`get` (ack it, or give it back)."""
        with translate(self.url, "settling a message"):
            if ack:
                self.channel.basic_ack(tag)
            else:
                self.channel.basic_nack(tag, requeue=True)

    @overload
    def count(self, queue: str) -> int: ...

    @overload
    def count(self, queue: str, *, missing: None) -> int | None: ...

    def count(self, queue: str, *, missing: int | None = 0) -> int | None:
        """Messages ready in ``queue`` (``missing`` when it does not exist)."""
        ch = self.channel
        _probing.on = True
        try:
            with translate(self.url, f"measuring queue {queue!r}"):
                ok = ch.queue_declare(queue, passive=True)
        except ChannelError as exc:
            self._ch = None  # closed by the broker: the next call opens a new one
            if exc.reply_code == 404:
                return missing
            raise
        finally:
            _probing.on = False
        return int(ok.method.message_count)

    def purge(self, queue: str) -> int:
        try:
            with translate(self.url, f"purging queue {queue!r}"):
                ok = self.channel.queue_purge(queue)
        except ChannelError as exc:
            self._ch = None  # closed by the broker: the next call opens a new one
            if exc.reply_code == 404:
                return 0
            raise
        return int(cast(int, ok.method.message_count))


def _quiet(conn: Any) -> bool:
    """Whether a wait on ``conn`` (pika's blocking connection) can be a wait on its
    socket alone: pika has nothing to write and no event queued for dispatch.

    perf: ``process_data_events(time_limit=t)`` sets a pika timer for ``t`` and
    cancels it when input comes first; pika keeps cancelled timers in its heap
    until they would have fired, and its poll wakes up for each: the worker waits
    up to 50 ms at a time while tasks run, so a round trip a millisecond leaves
    dozens pending, and the consumer woke for them, each time taking the GIL
    from the pool's threads. :meth:`Channel.take` waits on the socket
    instead (:func:`select.poll`, no Python run until input comes), then lets
    pika read what came (``time_limit=0``: one poll, its due timers run; pika's
    own timers, heartbeats among them, run at most one wait late, and the worker
    reads the connection every second anyway). pika polls a ``delay().get()``
    round trip (1,000 a run, worker ``threads -c 8``, five runs each, loaded
    machine): 1.32-1.54 -> 1.01-1.03; wall clock and CPU within the noise.
    """
    return conn._impl._get_write_buffer_size() == 0 and not conn._ready_events \
        and not conn._channels_pending_dispatch


def _content_straight(conn: pika.BlockingConnection) -> None:
    """Have pika's connection hand a delivery's frames (``basic.deliver``, content
    header, body) straight to their channel, as its own ``_process_frame`` ends up
    doing, without first asking its callback table about each.

    perf: pika's ``_process_frame`` looks every method frame up in its callback
    manager (a prefixed key built and sanitised per frame) before it passes the
    frame on; nothing in pika waits on a ``basic.deliver`` (the channel assembles
    deliveries from the frames it is handed), so for those and for content frames
    the answer is always "none pending". Every other frame (replies, closes,
    heartbeats, frames of a channel pika does not know) takes pika's path.
    That lookup was ~13 % of the consumer's frame handling in a noop drain
    (py-spy). ``bench/amqp_bench.py``, five interleaved pairs on a loaded machine:
    worker CPU a task 260 / 191, 211 / 207, 238 / 202, 229 / 212, 144 / 159 µs,
    drain 3,055 / 4,264, 3,668 / 3,364, 3,187 / 3,637, 2,872 / 3,409,
    4,680 / 4,637 a second; round trip p50 the same (medians 1.03 / 1.12 ms).
    """
    impl: Any = cast(Any, conn)._impl  # pika's connection under the blocking facade
    channels = vars(impl).get("_channels")
    if not isinstance(channels, dict):
        return  # a pika laid out otherwise: its own path
    slow = impl._process_frame
    content = (frame.Header, frame.Body)
    deliver = Basic.Deliver

    def process(value: Any) -> None:
        kind = type(value)
        if kind in content or (kind is frame.Method and type(value.method) is deliver):
            channel = impl._channels.get(value.channel_number)
            if channel is not None:
                impl.frames_received += 1
                channel._handle_content_frame(value)
                return
        slow(value)

    impl._process_frame = process


def _direct_socket(conn: pika.BlockingConnection) -> tuple[Any, select.poll] | None:
    """The plain socket under ``conn`` and a poller watching it for input, or None
    (TLS, or a pika whose layout differs): see :meth:`Channel._write`."""
    facade: Any = conn
    impl = facade._impl  # pika's connection under the blocking facade
    transport = vars(impl).get("_transport")  # pika's (the core's _transport is another)
    if type(transport).__name__ != PLAIN_TRANSPORT:
        return None
    sock = vars(transport).get("_sock")
    if sock is None:
        return None
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return sock, poller
