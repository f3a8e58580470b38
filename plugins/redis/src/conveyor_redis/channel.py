"""Publishing: kombu's envelope onto the list of its priority step, through Celery's
bindings (``_kombu.binding.<exchange>``) when published to a named exchange.

A mixin of :class:`~.transport.RedisTransport` (which provides ``line``, ``layout``,
``url`` and the bookkeeping attributes declared below), kept apart so each module
stays readable.
"""

from __future__ import annotations

import logging
import time
from binascii import b2a_base64
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import redis
from conveyor.envelope import KOMBU_JSON, NO_ARGS, NO_KWARGS, BuiltMessage, usual
from conveyor.interfaces import Binding, Message, Outgoing, Route

from . import delay
from .connection import Line
from .envelope import encode, frame_of, framed, new_tag, new_tags, usual_frame
from .errors import CONNECTION_ERRORS, translate, wrap
from .layout import MAX_WIRE, Layout, to_wire

log = logging.getLogger("conveyor.redis")

#: How often a producer moves due parked messages back, at most.
_PRODUCER_MOVE_EVERY = 1.0
#: Parked messages moved back per script call.
MOVE_BATCH = 100
#: Envelopes per LPUSH command inside one publish_many pipeline.
_PUSH_CHUNK = 1000
#: The origin of no run of usual messages (see ``commands``).
_NO_RUN = object()


class PublisherMixin:
    """``declare``, ``publish`` and ``publish_many`` for the Redis transport."""

    url: str
    layout: Layout
    _declared: set[Route]
    _lists: dict[tuple[str, int], str]
    _next_move: float

    if TYPE_CHECKING:
        @property
        def line(self) -> Line: ...

    def _binding(self, route: Route) -> list[tuple[Any, ...]]:
        """The route's own binding (:meth:`Route.own_binding`), as kombu writes it:
        in ``_kombu.binding.<queue>`` and, as the binding of a queue without
        ``x-expires``, in ``_kombu.binding_permanent.<queue>``, which keeps kombu's
        sweep from deleting the table."""
        bound = route.own_binding()
        member = self.layout.binding_member(bound.routing_key, bound.queue, bound.pattern)
        return [("SADD", self.layout.binding(route.queue), member),
                ("SADD", self.layout.binding_permanent(route.queue), member)]

    def declare(self, route: Route) -> None:
        if route in self._declared:
            return
        with translate(self.url, f"declaring queue {route.queue!r}"):
            check(self.line.pipeline(self._binding(route)))
        self._declared.add(route)

    def _envelope(self, message: Message, route: Route,
                  queue: str | None = None) -> tuple[str, str]:
        """The envelope and the list it goes on (``queue``, default the route's)."""
        queue = queue or route.queue
        wire = to_wire(message.priority)
        raw = encode(message, route.exchange, route.key, wire, new_tag())
        return raw, self._lists.get((queue, wire)) or self._list_key(queue, wire)

    def _list_key(self, queue: str, wire: int) -> str:
        """The list ``queue``'s messages of wire priority ``wire`` go on (kept)."""
        list_key = self._lists[(queue, wire)] = self.layout.list_for(queue, wire)
        return list_key

    def _push(self, list_key: str, raw: str, due: float | None) -> tuple[Any, ...]:
        if due is not None and due > time.time():
            return ("ZADD", self.layout.delayed, due, delay.member(list_key, raw))
        return ("LPUSH", list_key, raw)

    def _tables(self, batch: Sequence[Outgoing]) -> dict[str, list[Binding]]:
        """The binding tables of the exchanges routed messages go through (one round
        trip, only when there are any): kombu's ``_kombu.binding.<exchange>`` sets."""
        exchanges = routed_exchanges(batch)
        if not exchanges:
            return {}
        with translate(self.url, "reading exchange bindings", retryable_raw=True):
            replies = check(self.line.pipeline(self.table_reads(exchanges)))
        return self.parse_tables(exchanges, replies)

    def table_reads(self, exchanges: Sequence[str]) -> list[tuple[Any, ...]]:
        """The commands that read ``exchanges``' binding tables."""
        return [("SMEMBERS", self.layout.binding(e)) for e in exchanges]

    def parse_tables(self, exchanges: Sequence[str], replies: Sequence[Any]
                     ) -> dict[str, list[Binding]]:
        """The binding tables from :meth:`table_reads`' replies."""
        sep = self.layout.sep
        tables: dict[str, list[Binding]] = {}
        for exchange, members in zip(exchanges, replies):
            rows = (_text(m).split(sep) for m in members)
            tables[exchange] = sorted(Binding(*row) for row in rows if len(row) == 3)
        return tables

    def publish(self, message: Message, route: Route, *, due: float | None = None) -> None:
        if route.routed:
            self.publish_many([(message, route, due)])
            return
        raw, list_key = self._envelope(message, route)
        command = self._push(list_key, raw, due)
        # As translate(..., retryable_raw=True) would, without its cost for every
        # message. perf: that generator context manager, and the text of what was
        # being done made before anything failed, cost 13.9k instructions a publish,
        # this try 0.9k (callgrind, 22,000 - 2,000 blocks); delay() on Redis went
        # 133.9k -> 112.1k instructions with the publish path's hook answers kept.
        try:
            if route in self._declared:
                self.line.call(*command)
            else:
                check(self.line.pipeline(
                    [("MULTI",), *self._binding(route), command, ("EXEC",)]))
                self._declared.add(route)
        except CONNECTION_ERRORS:
            raise  # the core's retry policy retries these, and names the URL
        except redis.RedisError as exc:
            raise wrap(exc, self.url, f"publishing to queue {route.queue!r}") from exc
        self._producer_move()

    def publish_many(self, batch: Sequence[Outgoing]) -> None:
        """One MULTI/EXEC round trip: every message is stored, or none and an error.

        A routed message goes to every queue its exchange's bindings name (read
        first, in one more round trip)."""
        if len(batch) == 1 and not batch[0][1].routed:
            message, route, due = batch[0]
            self.publish(message, route, due=due)  # perf: one command, no MULTI/EXEC
            return
        if not batch:
            return
        commands, routes = self.commands(batch)
        with translate(self.url, f"publishing {len(batch)} messages", retryable_raw=True):
            check(self.line.pipeline([("MULTI",), *commands, ("EXEC",)]))
            self._declared |= routes
        self._producer_move()

    def commands(self, batch: Sequence[tuple[Message, Route, float | None]],
                 tables: dict[str, list[Binding]] | None = None
                 ) -> tuple[list[tuple[Any, ...]], set[Route]]:
        """The commands that store ``batch`` (bindings of routes not declared yet,
        pushes, parks), to run in one transaction; and those routes. ``tables``: the
        routed exchanges' bindings when the caller read them (else read here)."""
        now = time.time()
        if tables is None:
            tables = self._tables(batch)
        pushes: dict[str, list[str]] = {}
        parks: list[Any] = []
        routes: set[Route] = set()
        lists, declared, tag = self._lists, self._declared, new_tag
        #: A delivery tag a message, made in one call (perf: a Python call of new_tag
        #: for each was a third of its cost); a message going to several queues
        #: takes more, from new_tag once these run out.
        tags = iter(new_tags(len(batch)))
        last: Route | None = None
        queues: Sequence[str] = ()
        exchange = key = ""
        #: The template, content type and encoding of the last core-built message,
        #: and its frame, wire priority and lists (each with the envelopes pushed on
        #: it): those of the next one too when it shares them and its route. perf: a
        #: bulk publish is mostly one kind of message; commands() of 1,000 no-op
        #: messages took 1.77 µs a message with the lookups per message, 1.35
        #: without (67.0k -> 65.0k instructions a buffered apply_async, callgrind).
        run: tuple[Any, ...] = (None,)
        #: For a run whose messages are usual (conveyor.envelope.usual) and go on one
        #: list: their origin (_NO_RUN: none), that list's envelopes, and the text
        #: around their own values (usual_frame). perf: such a message is written
        #: here with one join, without framed() -> headers_json() -> write() (three
        #: Python calls a message): a buffered apply_async 53.7k -> 51.0k
        #: instructions (callgrind, 22,000 - 2,000 messages).
        origin: Any = _NO_RUN
        pushed_usual: list[str] = []
        a = b = c = d = e = f = no_args = no_kwargs = ""
        string, dumps = KOMBU_JSON.string, KOMBU_JSON.encode
        for message, route, due in batch:
            if route is not last:  # perf: a batch is mostly one route
                last, exchange, key = route, route.exchange, route.key
                queues = route.destinations(tables[exchange]) if route.routed \
                    else (route.queue,)
                if route not in declared:
                    routes.add(route)
                run, origin = (None,), _NO_RUN
            if type(message) is BuiltMessage and message.template is run[0] \
                    and message.props is None and message.content_type is run[1] \
                    and message.content_encoding is run[2]:
                if due is None and message.laid is None \
                        and len(values := message.values) == 4 and values[3] is origin:
                    id_, args, kwargs, _origin = values
                    ident = string(id_) if type(id_) is str else dumps(id_)
                    pushed_usual.append(
                        f'{{"body": "{b2a_base64(message.body, newline=False).decode()}'
                        f'{a}{ident}{b}{ident}{c}'
                        f'{no_args if args is NO_ARGS else string(args)}{d}'
                        f'{no_kwargs if kwargs is NO_KWARGS else string(kwargs)}{e}'
                        f'{ident}{f}{next(tags, None) or tag()}"}}}}')
                    continue
                frame, targets = run[3], run[4]
            else:
                priority = message.priority
                wire = MAX_WIRE if priority is None else to_wire(priority)
                frame = frame_of(message, exchange, key, wire)
                targets = [(list_key, pushes.setdefault(list_key, []))
                           for list_key in (lists.get((queue, wire))
                                            or self._list_key(queue, wire)
                                            for queue in queues)]
                origin = _NO_RUN
                if frame is not None:
                    built = cast(BuiltMessage, message)
                    run = (built.template, message.content_type,
                           message.content_encoding, frame, targets)
                    own = usual(message)
                    if own is not None and len(targets) == 1:
                        origin, pushed_usual = own[3], targets[0][1]
                        a, b, c, d, e, f, no_args, no_kwargs = usual_frame(
                            built, frame, origin)
            for list_key, pushed in targets:
                if frame is not None:  # a BuiltMessage's (perf: no cast(), a call)
                    raw = framed(message, frame,  # type: ignore[arg-type]
                                 next(tags, None) or tag())
                else:
                    raw = encode(message, exchange, key, wire, next(tags, None) or tag())
                if due is not None and due > now:
                    parks += (due, delay.member(list_key, raw))
                else:
                    pushed.append(raw)
        commands: list[tuple[Any, ...]] = []
        for route in routes:
            commands += self._binding(route)
        for list_key, raws in pushes.items():
            for i in range(0, len(raws), _PUSH_CHUNK):
                commands.append(("LPUSH", list_key, *raws[i:i + _PUSH_CHUNK]))
        if parks:
            commands.append(("ZADD", self.layout.delayed, *parks))
        return commands, routes

    def _producer_move(self) -> None:
        """Move due parked messages back, at most once a second per producer.

        Never raises: the message is already stored, and an error here would make the
        core's retry policy publish it a second time. Consumers move them anyway.
        """
        now = time.time()
        if now >= self._next_move:
            self._next_move = now + _PRODUCER_MOVE_EVERY
            try:
                delay.MOVE_DUE(self.line, [self.layout.delayed], [now, MOVE_BATCH])
            except redis.RedisError as exc:
                log.debug("Could not move due delayed messages: %s", exc)


def routed_exchanges(batch: Sequence[Outgoing]) -> list[str]:
    """The exchanges whose bindings route messages of ``batch``, once each."""
    found: dict[str, None] = {}
    last = None
    for _message, route, _due in batch:
        if route is not last:  # perf: a batch is mostly one route
            last = route
            if route.routed:
                found[route.exchange] = None
    return list(found)


def check(replies: list[Any]) -> list[Any]:
    """Raise the first error reply of a pipeline (EXEC's nested ones included)."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, list):
            for item in reply:
                if isinstance(item, Exception):
                    raise item
    return replies


def _text(member: bytes | str) -> str:
    return member.decode("utf-8", "replace") if isinstance(member, bytes) else member
