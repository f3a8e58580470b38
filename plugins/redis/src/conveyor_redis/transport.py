"""The ``redis://`` transport: kombu's Redis layout, so Celery peers interoperate.

What goes where (docs/architecture.md, "Redis broker"; key names in :mod:`.layout`):

* a message is kombu's JSON envelope (:mod:`.envelope`), ``LPUSH``\\ ed onto the list
  of its priority step; consumers take from the other end, steps in kombu's order;
* a taken message is leased in ``unacked`` / ``unacked_index`` exactly as kombu
  writes them (:mod:`.lease`), so Celery and Conveyor workers restore each other's
  in-flight messages after the visibility timeout;
* delayed messages wait in a sorted set (:mod:`.delay`), dead letters in a hash per
  queue (:mod:`.deadletter`);
* broadcasts (remote control, events) are kombu's pub/sub channels
  (:mod:`.broadcast`).

Publishing lives in :mod:`.channel`, fetching in :mod:`.consumer` (mixins of the
transport class); settling, dead letters and inspection here.

Round trips: ``publish`` is one, ``publish_many`` one for the whole batch, ``fetch``
one per batch of up to ``limit`` messages while messages wait (a blocking ``BRPOP``
only when the queues are empty), ``ack`` none of its own: it is written at once and
its reply read with the next command (:meth:`.Line.send`). The hot calls go through one
connection the transport holds (:class:`~.connection.Line`), taken from a pool shared
per URL, so no call sets a connection up.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import redis
from conveyor.exceptions import ConfigurationError
from conveyor.interfaces import (
    LEASE, BaseTransport, Capabilities, DeadLetter, Delivery, QueueStats, Route,
)

from . import deadletter, delay, lease
from .broadcast import BroadcastMixin
from .stats import read as read_stats
from .channel import MOVE_BATCH, PublisherMixin, check
from .connection import Backoff, Line, client_for, pack_many
from .consumer import ConsumerMixin, Lease, _Poll
from .errors import CONNECTION_ERRORS, retrying, translate, wrap
from .layout import Layout

T = TypeVar("T")
log = logging.getLogger("conveyor.redis")

#: How long ack/requeue/defer/extend keep retrying through a broken connection.
_SETTLE_PATIENCE = 15.0
#: Settle commands an abandoned transport still owed, per URL, for the next line.
_UNSETTLED: dict[str, list[tuple[Callable[[Line], Any], str]]] = {}
_UNSETTLED_LOCK = threading.Lock()


class RedisTransport(PublisherMixin, ConsumerMixin, BroadcastMixin, BaseTransport):
    """kombu-compatible Redis transport (see the module docstring)."""

    scheme = "redis"
    capabilities: ClassVar[Capabilities] = Capabilities(
        delays=True, leases=True, dead_letters=True, priorities=True, purge=True,
        inspect=True, abandon=True, broadcast=True, fetch_ahead=True, settlement=LEASE)
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
        #: kombu's pub/sub channel naming for broadcasts (:mod:`.broadcast`);
        #: keep Celery's defaults unless every peer changes them too.
        "fanout_prefix": True,
        "fanout_patterns": True,
    }

    def __init__(self, url: str = "redis://", app: Any = None) -> None:
        super().__init__(url, app)
        o = self.options
        self.visibility_timeout = self._visibility = float(o["visibility_timeout"])
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
        self._backoff = Backoff()
        self._next_sweep = 0.0
        self._next_move = 0.0
        self._next_due: float | None = None
        self._rr = 0
        self._polls: dict[tuple[str, ...], _Poll] = {}
        self._ahead = None

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
        """The connection this transport holds for its hot calls.

        A new line takes over what an abandoned transport for this URL still owed
        (acks sent ahead whose replies were lost), so a reconnecting worker does not
        leave finished tasks leased until the visibility timeout runs them again.
        """
        if self._line is None:
            line = Line(self.client.connection_pool)
            with _UNSETTLED_LOCK:
                line.owed = _UNSETTLED.pop(self.url, [])
            self._line = line
        return self._line

    def connect(self) -> None:
        with translate(self.url, "connecting", retryable_raw=True):
            self.line.call("PING")
        self._broken = False

    def close(self) -> None:
        """Give back deliveries still held (next out, as kombu does at shutdown), last
        taken first, so they come out again in the order they were taken.

        Not after a lost connection (see :meth:`abandon`): tasks may still be running
        on those deliveries, and giving them back would run them twice; their leases
        expire instead (the visibility timeout) unless they are acked first. A claim
        sent ahead (:meth:`ack_and_fetch_ahead`) ran no task: its deliveries are given
        back with the rest, or after a lost connection by the next fetch from this URL.
        """
        if self._ahead is not None:  # a claim sent ahead: its deliveries are held too
            if self._broken:
                ahead, self._ahead = self._ahead, None
                ahead[1]()  # the next fetch from this URL gives them back
            else:
                with contextlib.suppress(redis.RedisError):  # else given back as lost
                    self._take_ahead()
        held, self._held = list(self._held.values()), {}
        line, self._line = self._line, None
        if line is None:
            return
        if not self._broken:
            try:
                for token in reversed(held):  # each pushed where the next pop takes
                    lease.GIVE_BACK(line, [*self._lease_keys[:2], token.list],
                                    [token.tag, token.raw, "R"])
                self._flush_orphans(line)
            except redis.RedisError:
                pass  # unreachable: the visibility timeout brings them back
            line.close()
            return
        owed = line.abandon()
        if owed:
            with _UNSETTLED_LOCK:
                _UNSETTLED.setdefault(self.url, []).extend(owed)

    def abandon(self) -> None:
        """Drop the connection after a connection error, giving nothing back.

        The worker calls this when it reconnects: tasks still running keep their
        leases and are acked through the new transport when they finish.
        """
        self._broken = True
        self.close()

    def _settle(self, doing: str, call: Callable[[Line], T]) -> T:
        """Run an idempotent settle call, retrying through a broken connection."""
        def give_up() -> None:
            self._broken = True

        return retrying(lambda: call(self.line), url=self.url, doing=doing,
                        patience=_SETTLE_PATIENCE, on_give_up=give_up)

    # ------------------------------------------------------------- settling
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        tags = [d.tag.tag for d in deliveries]
        # perf: sent ahead; the replies are read with the next command (Line.send)
        what = f"the ack of {len(tags)} message(s)"
        try:
            # perf: the first try straight, not through _settle's closures (a solo
            # worker acks every task: 1.4 us); a broken connection is retried there
            lease.send_ack(self.line, self._lease_keys, tags, what)
        except CONNECTION_ERRORS:
            self._settle("acknowledging messages",
                         lambda line: lease.send_ack(line, self._lease_keys, tags, what))
        except redis.RedisError as exc:
            raise wrap(exc, self.url, "acknowledging messages") from exc
        for tag in tags:
            self._held.pop(tag, None)

    def started(self, deliveries: Sequence[Delivery]) -> None:
        """Charge these deliveries (:data:`~.lease.STARTED`), so a lease that lapses
        while the task runs comes back counted towards ``worker_max_deliveries``.

        perf: sent ahead (idempotent: it sets each count to the delivery's own
        number); only ``acks_late`` starts pay for it. Not retried here: it is
        accounting, and the worker must not wait on it in an outage. A send that
        fails stays owed on the line, which runs it before anything else once the
        connection is back (or hands it to the next line after a reconnect).
        """
        if not deliveries:
            return
        args: list[Any] = []
        for d in deliveries:
            args += (d.tag.tag, d.deliveries)
        keys = [self.layout.unacked, self.layout.deliveries]
        what = f"the start of {len(deliveries)} delivery(ies)"
        with translate(self.url, "counting started deliveries"):
            lease.STARTED.send(self.line, keys, args, what)

    def ack_and_start(self, acks: Sequence[Delivery], starts: Sequence[Delivery]) -> None:
        """:meth:`ack` ``acks`` and count ``starts`` as started (:meth:`started`) in one
        script sent ahead (:data:`~.lease.ACK_STARTED`).

        perf: the processes pool acks the jobs its children began and charges the ones
        it hands them in the same turn; two scripts sent back to back cost a second
        write and a wait for the first one's reply before it (:meth:`.Line.send`).
        Retried like :meth:`ack` (the acks must not be lost; the charge is idempotent).
        """
        if not starts:
            self.ack(acks)
            return
        if not acks:
            self.started(starts)
            return
        tags = [d.tag.tag for d in acks]
        args: list[Any] = [len(tags), *tags]
        for d in starts:
            args += (d.tag.tag, d.deliveries)
        what = f"the ack of {len(tags)} and the start of {len(starts)} message(s)"
        self._settle("acknowledging messages", lambda line: lease.ACK_STARTED.send(
            line, self._lease_keys, args, what))
        for tag in tags:
            self._held.pop(tag, None)

    def ack_and_fetch_ahead(self, acks: Sequence[Delivery], queues: Sequence[str],
                            limit: int) -> None:
        """:meth:`ack` ``acks`` and write the next claim behind the ack in the same
        write; its reply is read by the next :meth:`fetch`, which returns its
        deliveries (:class:`~conveyor.interfaces.FetchAheadTransport`).

        perf: the solo worker's claim, sent with the early ack of the last task it
        holds, runs on Redis while that task runs, and costs no write of its own
        (``bench/pool_drain.py``'s solo drain of 20,000 queued tasks, interleaved
        pairs, tasks/s without -> with: one Redis INCR 3358, 3503, 3544, 2998, 3184
        -> 4059, 4034, 3480, 3201, 4029; no-op 6737, 6736, 6647, 7789 -> 7946, 8095,
        6686, 8366)."""
        if self._ahead is not None or not acks or not queues or limit <= 0:
            self.ack(acks)
            return
        tags = [d.tag.tag for d in acks]
        keys = self._lease_keys
        what = f"the ack of {len(tags)} message(s)"
        try:
            claim, collect = self._claim_ahead(queues, limit)
            self.line.send_each(
                pack_many([*lease.ack_commands(keys, tags), claim]),
                [(lambda again: lease.ACK(again, keys, tags), what)] * 3
                + [(collect, "a claim sent ahead")])
        except CONNECTION_ERRORS:
            if self._ahead is not None:
                self._ahead[1]()  # it may have run: what it took is given back
                self._ahead = None
            self._settle("acknowledging messages",
                         lambda line: lease.send_ack(line, keys, tags, what))
        except redis.RedisError as exc:
            raise wrap(exc, self.url, "acknowledging messages") from exc
        for tag in tags:
            self._held.pop(tag, None)

    def flush(self) -> None:
        """Wait until the server has confirmed every ack sent ahead (see :meth:`ack`).

        Not needed for correctness (the next command reads those replies anyway); for
        a caller that checks the broker through another connection right after.
        """
        self._settle("confirming acknowledgements", lambda line: line.confirm())

    def requeue(self, delivery: Delivery) -> None:
        token: Lease = delivery.tag
        self._settle("requeueing a message", lambda line: lease.GIVE_BACK(
            line, [*self._lease_keys[:2], token.list], [token.tag, token.raw, "L"]))
        self._held.pop(token.tag, None)

    def defer(self, delivery: Delivery, due: float) -> None:
        token: Lease = delivery.tag
        self._settle("parking a delayed message", lambda line: delay.DEFER(
            line, [*self._lease_keys[:2], self.layout.delayed],
            [token.tag, delay.member(token.list, token.raw), due]))
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
            replies = check(self.line.pipeline(
                [("MULTI",), *(("LLEN", k) for k in lists), ("DEL", *lists), ("EXEC",)]))
            return sum(replies[-1][:-1])

    def depth(self, queue: str) -> int:
        """Messages that could be delivered now: due parked ones are moved back first
        (what any consumer's next claim would do), then the step lists counted."""
        with translate(self.url, f"measuring queue {queue!r}"):
            delay.MOVE_DUE(self.line, [self.layout.delayed], [time.time(), MOVE_BATCH])
            return sum(check(self.line.pipeline([("LLEN", k)
                                                  for k in self.layout.lists(queue)])))

    def stats(self, queue: str) -> QueueStats:
        """Read through another connection, so acks sent ahead on the line are
        confirmed first: the figures include this transport's own settling."""
        if self._line is not None and self._line.ahead:
            self.flush()
        with translate(self.url, f"reading the statistics of queue {queue!r}"):
            return read_stats(self.client, self.layout, queue)


class SecureRedisTransport(RedisTransport):
    """``rediss://``: the same transport over TLS (``ssl`` option for certificates)."""

    scheme = "rediss"
