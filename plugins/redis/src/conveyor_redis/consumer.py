"""Consuming: fetch in kombu's poll order with an atomic claim, BRPOP when idle.

A mixin of :class:`~.transport.RedisTransport` (which provides ``line``, ``client``,
``layout`` and the bookkeeping attributes declared below).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import redis
from conveyor.utils import mask_url
from conveyor.interfaces import Delivery

from . import lease
from .channel import MOVE_BATCH
from .connection import Backoff, Collect, Line
from .envelope import decode
from .errors import CONNECTION_ERRORS, wrap
from .layout import Layout

log = logging.getLogger("conveyor.redis")

#: Messages a BRPOP took whose claim failed, per Redis URL, for whichever transport
#: of this process reaches that Redis next: the one that took them may be abandoned.
_ORPHANS: dict[str, list[tuple[str, bytes]]] = {}
#: Claims whose reply was lost, per Redis URL: the time each passed, which is the
#: score it gave the leases it made (see :func:`.lease.give_back_claim`). Without
#: this, what such a claim took stays leased to nobody until the visibility timeout.
_LOST_CLAIMS: dict[str, list[float]] = {}
_ORPHANS_LOCK = threading.Lock()
#: How long ``fetch(timeout=None)`` retries a broken connection before raising.
_UNBOUNDED_PATIENCE = 30.0


class _Poll(NamedTuple):
    """What fetching from one list of queues needs, computed once."""

    keys: list[str]
    names: list[str]
    slot: dict[bytes, int]
    claim: tuple[tuple[Any, ...], tuple[Any, ...]]


class Lease(NamedTuple):
    """``Delivery.tag``: the delivery tag plus what settling needs, self-contained."""

    tag: str
    raw: bytes
    list: str


class ConsumerMixin:
    """``fetch`` for the Redis transport."""

    url: str
    layout: Layout
    polling_interval: float
    sweep_interval: float
    _visibility: float
    _broken: bool
    _claim_keys: list[str]
    _held: dict[str, Lease]
    _backoff: Backoff
    _next_sweep: float
    _next_due: float | None
    _rr: int
    _polls: dict[tuple[str, ...], _Poll]
    _lease_keys: list[str]
    #: A claim sent ahead (:meth:`ack_and_fetch_ahead`) whose deliveries the next
    #: fetch returns: the poll it used and where its reply is kept.
    _ahead: tuple[_Poll, Collect, float] | None

    if TYPE_CHECKING:
        @property
        def line(self) -> Line: ...

        @property
        def client(self) -> redis.Redis: ...

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

    def fetch(self, queues: Sequence[str], *, limit: int,
              timeout: float | None) -> list[Delivery]:
        """Up to ``limit`` deliveries; ``timeout`` None waits until one comes.

        A broken connection is retried with backoff until the deadline (at most
        ``_UNBOUNDED_PATIENCE`` seconds without one), then raised as a connection
        error that names the URL, for the worker to reconnect.
        """
        if not queues or limit <= 0:
            return []
        start = time.monotonic()
        deadline = math.inf if timeout is None else start + max(0.0, timeout)
        patience = start + _UNBOUNDED_PATIENCE if timeout is None else deadline
        poll = self._poll(queues)
        while True:
            try:
                if _ORPHANS.get(self.url) or _LOST_CLAIMS.get(self.url):
                    self._flush_orphans(self.line)
                if time.time() >= self._next_sweep:
                    lease.sweep(self.client, self.layout, self._visibility)
                    self._next_sweep = time.time() + self.sweep_interval
                if self._ahead is not None:
                    got = self._take_ahead()
                    if got:
                        return got
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
                    return self._claim(poll, limit, (poll.slot[popped[0]], popped[1]))
                except BaseException:
                    _ORPHANS.setdefault(self.url, []).append(
                        (popped[0].decode("utf-8"), popped[1]))
                    raise
            except CONNECTION_ERRORS as exc:
                pause = self._backoff.next()
                if time.monotonic() + pause > patience:
                    self._broken = True
                    raise wrap(exc, self.url, "fetching messages") from exc
                log.warning("Redis at %s unreachable while fetching (%s); retrying in "
                            "%.2fs", mask_url(self.url), exc, pause)
                time.sleep(pause)
            except redis.RedisError as exc:
                raise wrap(exc, self.url, "fetching messages") from exc

    def _claim_ahead(self, queues: Sequence[str],
                     limit: int) -> tuple[tuple[Any, ...], Collect]:
        """The command of a claim to send ahead (``ack_and_fetch_ahead``) and where its
        reply will be kept, recorded as the claim whose deliveries the next
        :meth:`fetch` returns.

        A claim is not idempotent, so where its reply is refused or lost it is not
        run again as a sent-ahead ack is: its :class:`.Collect` records it as lost
        instead (by its lease score, as :meth:`_claim` does), and the next fetch
        gives back what it took before claiming."""
        poll = self._poll(queues)
        now = time.time()
        url = self.url

        def lost() -> None:
            with _ORPHANS_LOCK:
                _LOST_CLAIMS.setdefault(url, []).append(now)

        head, tail = poll.claim  # ("EVALSHA", sha, numkeys, *keys), constant args
        command = (*lease.CLAIM.head(self.line), *head[2:], now, limit, MOVE_BATCH, 0,
                   b"", *tail)
        collect = Collect(lost)
        self._ahead = (poll, collect, now)
        return command, collect

    def _take_ahead(self) -> list[Delivery]:
        """The deliveries of the claim sent ahead (none if its reply was lost: it is
        then given back, see :meth:`ack_and_fetch_ahead`).

        Nobody renewed their leases meanwhile (the worker learns of them only now):
        read after half the visibility timeout, they are renewed first, and only
        those still leased by this claim are returned. One that lapsed was given to
        another consumer, or back to its queue, and must not run here too."""
        assert self._ahead is not None
        (poll, collect, at), self._ahead = self._ahead, None
        kept: set[bytes] | None = None
        try:
            self.line.confirm()  # reads every reply sent ahead: the claim's too
            if collect.reply is not None and time.time() - at >= self._visibility / 2:
                tags = lease.parse_claimed(collect.reply)[0][3::4]
                kept = set(lease.RENEW_CLAIMED(self.line, [self.layout.unacked_index],
                                               [at, time.time(), *tags]))
        except BaseException:
            collect()  # its reply, or the renewal's, may be gone: give back what it took
            raise
        if collect.reply is None:
            return []  # refused: run as owed, it gave back (nothing)
        got = self._taken(poll, collect.take())  # held now: given back on close
        if kept is not None:
            for d in got:
                if d.tag.tag.encode() not in kept:
                    self._held.pop(d.tag.tag, None)
            got = [d for d in got if d.tag.tag.encode() in kept]
        return got

    def _claim(self, poll: _Poll, limit: int,
               pre: tuple[int, bytes] | None) -> list[Delivery]:
        now = time.time()
        try:
            reply = lease.CLAIM.run_prepared(
                self.line, poll.claim,
                [now, limit, MOVE_BATCH, pre[0] if pre else 0, pre[1] if pre else b""])
        except BaseException:
            with _ORPHANS_LOCK:  # it may have run: what it took is given back
                _LOST_CLAIMS.setdefault(self.url, []).append(now)
            raise
        return self._taken(poll, reply)

    def _taken(self, poll: _Poll, reply: Any) -> list[Delivery]:
        """The deliveries of a claim's ``reply``, held (:class:`Lease`) until settled."""
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
                deliveries=count, exchange=d.exchange, routing_key=d.routing_key or queue,
                error=d.error))
        if deliveries and len(names) > len(self.layout.steps):
            self._rr += 1
        return deliveries

    def _flush_orphans(self, line: Line) -> None:
        """Push back messages a BRPOP took whose claim failed (connection broke),
        then give back what claims whose reply was lost had leased.

        If the claim did run before the reply was lost, a BRPOP's message is leased:
        the lease is dropped in the same step, so exactly one copy ends up in the
        list; the lost claims' leases are looked up after that, so it is not given
        back twice.
        """
        with _ORPHANS_LOCK:
            self._return_orphans(line, _ORPHANS.get(self.url, []))
            claims = _LOST_CLAIMS.get(self.url, [])
            while claims:
                lease.give_back_claim(self.client, self.layout, claims[0])
                claims.pop(0)

    def _return_orphans(self, line: Line, orphans: list[tuple[str, bytes]]) -> None:
        while orphans:
            list_key, raw = orphans[0]
            tag = decode(raw).tag or "conveyor-" + hashlib.sha1(raw).hexdigest()
            lease.RETURN_ORPHAN(line, [self.layout.unacked, self.layout.unacked_index,
                                       list_key], [tag, raw])
            orphans.pop(0)
