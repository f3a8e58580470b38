"""The contract-test kit: what every plugin of a kind must do, as test classes.

A plugin author subclasses the class for their kind and provides one fixture::

    from conveyor_pytest.contract import DelayContract, TransportContract

    class TestMyTransport(TransportContract, DelayContract):
        covers = ("mybroker",)

        @pytest.fixture
        def broker_url(self, tmp_path):
            return "mybroker://localhost/0"

A transport's contract is its required part (:class:`TransportContract`) plus one
class per capability it declares (:data:`CAPABILITY_CONTRACTS`); a backend's is
:class:`BackendContract` plus one class per capability it declares
(:data:`BACKEND_CAPABILITY_CONTRACTS`: joins, groups, replies). The asyncio twins
(``conveyor.async_transports``/``conveyor.async_backends``) have theirs:
:class:`AsyncTransportContract` and :class:`AsyncBackendContract`, each checked
against what the blocking twin reads or stores.

Conveyor's own plugins are tested with exactly these classes (``tests/contract``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, cast

import pytest

from conveyor import Conveyor
from conveyor.connection import scheme_of
from conveyor.interfaces import (
    ASYNC_BACKEND_PROTOCOLS, CAPABILITY_PROTOCOLS, DIRECT, FANOUT, LEASE, TOPIC,
    AbandonTransport, AsyncBackend, AsyncJoinBackend, AsyncReplyBackend, AsyncTransport,
    Backend, BroadcastTransport, Compressor, DeadLetterTransport, DelayTransport, Delivery,
    Exchange, FetchAheadTransport, GroupBackend, HeartbeatTransport, InspectTransport, Join, JoinBackend, LeaseTransport, Message,
    Outgoing, PurgeTransport, ReplyBackend, Route, Serializer, Subscription, Transport,
)

TASK_BODY = [[2, 2], {"k": "v", "n": [1, 2.5, None, True]},
             {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


def _wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def _check_declared(test: object, plugin: Any, caps: Any, contracts: Mapping[str, type],
                    protocols: Mapping[str, type]) -> None:
    """Every capability flag ``plugin`` declares has its contract class mixed into
    ``test``, no class is mixed in for a flag it does not declare, and a declared
    flag's protocol is satisfied."""
    for flag, contract in contracts.items():
        declared, tested = getattr(caps, flag), isinstance(test, contract)
        assert declared == tested, (
            f"{type(plugin).__name__} {'declares' if declared else 'does not declare'}"
            f" {type(caps).__name__}.{flag}, but {type(test).__name__} "
            f"{'does not mix in' if declared else 'mixes in'} {contract.__name__}.")
        protocol = protocols.get(flag)
        if declared and protocol is not None:
            assert isinstance(plugin, protocol), (
                f"{type(plugin).__name__} declares {type(caps).__name__}.{flag} but "
                f"lacks methods of {protocol.__name__}.")


class SerializerContract:
    """Provide ``serializer``: an instance of the plugin under test."""

    def test_declares_content_type_and_encoding(self, serializer: Serializer) -> None:
        assert isinstance(serializer.content_type, str) and "/" in serializer.content_type
        assert isinstance(serializer.content_encoding, str) and serializer.content_encoding

    def test_round_trips_a_task_body(self, serializer: Serializer) -> None:
        data = serializer.dumps(TASK_BODY)
        assert isinstance(data, bytes)
        back = serializer.loads(data)
        assert [list(back[0]), dict(back[1]), dict(back[2])] == TASK_BODY

    def test_round_trips_unicode_and_nesting(self, serializer: Serializer) -> None:
        value = {"text": "grüße ✓", "nested": {"a": [{"b": 1}]}, "empty": []}
        assert serializer.loads(serializer.dumps(value)) == value


class CompressorContract:
    """Provide ``compressor``: an instance of the plugin under test."""

    def test_declares_its_header_value(self, compressor: Compressor) -> None:
        assert isinstance(compressor.content_type, str) and compressor.content_type

    @pytest.mark.parametrize("size", [0, 1, 600, 100_000])
    def test_round_trips(self, compressor: Compressor, size: int) -> None:
        data = (b"conveyor " * (size // 9 + 1))[:size]
        packed = compressor.compress(data)
        assert isinstance(packed, bytes)
        assert compressor.decompress(packed) == data

    def test_shrinks_repetitive_data(self, compressor: Compressor) -> None:
        data = b"a" * 100_000
        assert len(compressor.compress(data)) < len(data) // 10

    def test_garbage_raises(self, compressor: Compressor) -> None:
        with pytest.raises(Exception):  # noqa: B017 - any error; the core wraps it
            compressor.decompress(b"\x00\x01definitely not compressed\xff" * 3)


class _TransportKit:
    """Fixtures and helpers shared by the transport contract classes."""

    #: Seconds of ``visibility_timeout`` (leasing transports): short, so a lapsed
    #: lease comes back quickly.
    visibility_timeout = 1.0

    @pytest.fixture
    def transport_options(self) -> dict[str, Any]:
        """``broker_transport_options`` for the app; override to add or drop keys."""
        return {"visibility_timeout": self.visibility_timeout}

    @pytest.fixture
    def app(self, broker_url: str, transport_options: dict[str, Any]) -> Iterator[Conveyor]:
        app = Conveyor(f"contract-{uuid.uuid4().hex[:6]}", broker=broker_url,
                       backend="memory://contract",
                       broker_transport_options=transport_options)
        yield app
        app.close()

    @pytest.fixture
    def queue(self) -> str:
        return f"contract.{uuid.uuid4().hex[:10]}"

    @pytest.fixture
    def transport(self, app: Conveyor, queue: str) -> Iterator[Transport]:
        transport = self.connect(app, queue)
        yield transport
        try:
            caps = transport.capabilities
            if caps.purge:
                cast(PurgeTransport, transport).purge(queue)
            else:
                self.drain(transport, queue, 10_000, timeout=0.5)
            if caps.dead_letters:
                cast(DeadLetterTransport, transport).purge_dead(queue)
        finally:
            transport.close()

    def connect(self, app: Conveyor, queue: str) -> Transport:
        """A new connected transport with ``queue`` declared."""
        transport = app.transport_factory()
        transport.connect()
        transport.declare(Route(queue))
        return transport

    def message(self, n: int, priority: int | None = None) -> Message:
        return Message({"task": "contract.t", "id": f"m{n}-{uuid.uuid4().hex[:6]}",
                        "x-n": n}, f"[[{n}], {{}}, {{}}]".encode(), "application/json",
                       "utf-8", {"priority": priority, "correlation_id": f"m{n}"})

    def send(self, transport: Transport, queue: str, *messages: Message,
             due: float | None = None) -> None:
        transport.publish_many([(m, Route(queue), due) for m in messages])

    def drain(self, transport: Transport, queue: str, expect: int,
              timeout: float = 5) -> list[Delivery]:
        """Fetch and ack until ``expect`` deliveries came or ``timeout`` passed."""
        got: list[Delivery] = []
        deadline = time.monotonic() + timeout
        while len(got) < expect and time.monotonic() < deadline:
            batch = transport.fetch([queue], limit=min(expect - len(got), 100), timeout=0.3)
            transport.ack(batch)
            got.extend(batch)
        return got

    def ids(self, deliveries: list[Delivery]) -> list[Any]:
        return [d.message.headers["x-n"] for d in deliveries]


class TransportContract(_TransportKit):
    """What every transport must do (the required :class:`Transport` protocol).

    Provide a ``broker_url`` fixture, and mix in the contract class of every
    capability the transport declares (:data:`CAPABILITY_CONTRACTS`;
    :class:`FullTransportContract` has them all). A declared capability without its
    contract class, or a contract class for a capability not declared, fails
    ``test_declared_capabilities_are_tested``. Set ``covers`` to the entry-point
    names the class tests (Conveyor's suite checks every installed one is covered).
    """

    covers: ClassVar[tuple[str, ...]] = ()

    def test_declared_capabilities_are_tested(self, transport: Transport) -> None:
        _check_declared(self, transport, transport.capabilities, CAPABILITY_CONTRACTS,
                        CAPABILITY_PROTOCOLS)
        assert isinstance(transport, Transport)

    def test_publish_fetch_ack_keeps_the_message(self, transport: Transport,
                                                 queue: str) -> None:
        sent = self.message(1, priority=3)
        self.send(transport, queue, sent)
        [got] = self.drain(transport, queue, 1)
        m = got.message
        assert (m.headers["id"], m.headers["x-n"], m.body) == (sent.headers["id"], 1, sent.body)
        assert (m.content_type, m.content_encoding) == ("application/json", "utf-8")
        assert m.properties.get("correlation_id") == "m1" and got.queue == queue
        assert got.deliveries == 1 and not got.redelivered
        assert transport.fetch([queue], limit=1, timeout=0.2) == []

    def test_fetch_timeout_is_bounded(self, transport: Transport, queue: str) -> None:
        start = time.monotonic()
        assert transport.fetch([queue], limit=5, timeout=0.3) == []
        assert time.monotonic() - start < 2.5

    def test_declare_is_idempotent(self, transport: Transport, queue: str) -> None:
        transport.declare(Route(queue))
        transport.declare(Route(queue))
        self.send(transport, queue, self.message(1))
        assert self.ids(self.drain(transport, queue, 1)) == [1]

    def test_a_named_exchange_routes_through_bindings(self, transport: Transport,
                                                      queue: str) -> None:
        """Declaring queue X binds it to exchange X with key X (Celery's automatic
        queue), so a message published to exchange X reaches X whatever its route's
        queue; through an exchange nobody bound, it goes to the route's queue."""
        high = f"{queue}.high"
        transport.declare(Route(high))
        transport.publish_many([(self.message(1), Route(queue, high, high), None),
                                (self.message(2), Route(queue, high, "other-key"), None)])
        assert self.ids(self.drain(transport, high, 1)) == [1]
        assert self.ids(self.drain(transport, queue, 1)) == [2]  # no binding matched
        transport.publish_many([(self.message(3), Route(queue, high, high), None)])
        assert self.ids(self.drain(transport, high, 1)) == [3]  # a batch of one too

    def test_a_batch_arrives_whole_and_in_order(self, transport: Transport,
                                                queue: str) -> None:
        self.send(transport, queue, *(self.message(n) for n in range(25)))
        assert self.ids(self.drain(transport, queue, 25)) == list(range(25))

    def test_limit_is_respected(self, transport: Transport, queue: str) -> None:
        self.send(transport, queue, *(self.message(n) for n in range(5)))
        first = transport.fetch([queue], limit=2, timeout=2)
        assert 1 <= len(first) <= 2
        transport.ack(first)
        assert len(first) + len(self.drain(transport, queue, 5 - len(first))) == 5

    def test_a_queue_left_out_of_fetch_delivers_nothing_more(self, transport: Transport,
                                                             queue: str) -> None:
        """The worker's queues may change between fetches (remote control's
        ``add_consumer``/``cancel_consumer``): a transport that subscribes must stop
        delivering a queue no longer asked for, and deliver one asked for again."""
        other = f"{queue}.other"
        transport.declare(Route(other))
        try:
            self.send(transport, other, self.message(1))
            got: list[Delivery] = []
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                got = transport.fetch([queue, other], limit=5, timeout=0.3)
            transport.ack(got)
            assert self.ids(got) == [1] and got[0].queue == other
            assert transport.fetch([queue], limit=5, timeout=0.2) == []
            self.send(transport, other, self.message(2))
            assert transport.fetch([queue], limit=5, timeout=0.5) == []
            assert self.ids(self.drain(transport, other, 1)) == [2]
        finally:
            if transport.capabilities.purge:
                cast(PurgeTransport, transport).purge(other)

    def test_requeue_gives_it_back_uncounted(self, transport: Transport, queue: str) -> None:
        self.send(transport, queue, self.message(1))
        [d] = transport.fetch([queue], limit=1, timeout=2)
        transport.requeue(d)
        [again] = self.drain(transport, queue, 1)
        assert again.message.headers["id"] == d.message.headers["id"]
        assert again.deliveries == 1

    def test_close_gives_unsettled_deliveries_back(self, app: Conveyor, transport: Transport,
                                                  queue: str) -> None:
        other = self.connect(app, queue)
        self.send(other, queue, self.message(1))
        [d] = other.fetch([queue], limit=1, timeout=2)
        if other.capabilities.leases:  # may count deliveries only once they start
            cast(LeaseTransport, other).started([d])
        other.close()
        [again] = self.drain(transport, queue, 1)
        assert again.message.headers["id"] == d.message.headers["id"]
        assert again.deliveries == 2 and again.redelivered

    def test_settlement_model(self, app: Conveyor, transport: Transport, queue: str) -> None:
        """Lease: another connection may ack a delivery, and it is gone. Channel: a
        delivery whose channel is lost comes back to another one, redelivered."""
        first = self.connect(app, queue)
        self.send(first, queue, self.message(1))
        [d] = first.fetch([queue], limit=1, timeout=2)
        if transport.capabilities.settlement == LEASE:
            transport.ack([d])
            first.close()
            assert transport.fetch([queue], limit=1, timeout=0.5) == []
        else:
            first.close()
            [again] = self.drain(transport, queue, 1)
            assert again.message.headers["id"] == d.message.headers["id"]
            assert again.redelivered


class PriorityContract(_TransportKit):
    """``Capabilities.priorities``: higher ``priority`` first, FIFO within one."""

    def test_higher_priority_first_fifo_within(self, transport: Transport,
                                               queue: str) -> None:
        # Levels distinct on every transport (Redis has four: 0, 1–3, 4–6, 7–255).
        for n, priority in enumerate([None, 5, 9, 5, 0, 2]):
            self.send(transport, queue, self.message(n, priority))
        assert self.ids(self.drain(transport, queue, 6)) == [2, 1, 3, 5, 0, 4]
        self.send(transport, queue, self.message(9, 7))
        [d] = self.drain(transport, queue, 1)
        assert d.message.priority == 7


class DelayContract(_TransportKit):
    """``Capabilities.delays``: ``due`` parks a message; ``defer`` parks a delivery."""

    def test_due_messages_wait_until_due(self, transport: Transport, queue: str) -> None:
        self.send(transport, queue, self.message(1), due=time.time() + 1.0)
        assert transport.fetch([queue], limit=1, timeout=0.3) == []
        assert self.ids(self.drain(transport, queue, 1, timeout=5)) == [1]

    def test_a_message_that_fell_due_is_ready(self, transport: Transport, queue: str) -> None:
        """Once due, a parked message counts as waiting (``depth``) and is fetched."""
        self.send(transport, queue, self.message(1), due=time.time() + 0.5)
        time.sleep(1.2)
        if transport.capabilities.inspect:
            assert cast(InspectTransport, transport).depth(queue) == 1
        assert self.ids(self.drain(transport, queue, 1)) == [1]

    def test_defer_parks_a_delivery_until_due(self, transport: Transport, queue: str) -> None:
        self.send(transport, queue, self.message(1))
        [d] = transport.fetch([queue], limit=1, timeout=2)
        cast(DelayTransport, transport).defer(d, time.time() + 1.0)
        assert transport.fetch([queue], limit=1, timeout=0.3) == []
        [again] = self.drain(transport, queue, 1, timeout=5)
        assert again.message.headers["id"] == d.message.headers["id"]
        assert again.deliveries == 1


class LeaseContract(_TransportKit):
    """``Capabilities.leases``: a lapsed lease comes back; ``extend`` keeps one."""

    def test_unacked_delivery_comes_back_after_visibility_timeout(
            self, transport: Transport, queue: str) -> None:
        self.send(transport, queue, self.message(1))
        [d] = transport.fetch([queue], limit=1, timeout=2)
        cast(LeaseTransport, transport).started([d])  # an unstarted one need not count
        again = _wait_for(lambda: transport.fetch([queue], limit=1, timeout=0.3),
                          timeout=self.visibility_timeout * 8 + 5)
        assert again and again[0].message.headers["id"] == d.message.headers["id"]
        assert again[0].deliveries == 2 and again[0].redelivered
        transport.ack(again)

    def test_extend_keeps_a_live_lease(self, app: Conveyor, transport: Transport,
                                       queue: str) -> None:
        keeper = cast(LeaseTransport, self.connect(app, queue))
        assert cast(LeaseTransport, transport).visibility_timeout == self.visibility_timeout
        self.send(transport, queue, self.message(1))
        [d] = transport.fetch([queue], limit=1, timeout=2)
        deadline = time.monotonic() + self.visibility_timeout * 2.5
        try:
            while time.monotonic() < deadline:
                keeper.extend([d])  # from another connection, as the worker does
                assert transport.fetch([queue], limit=1,
                                       timeout=self.visibility_timeout / 4) == []
        finally:
            keeper.close()
        transport.ack([d])


class DeadLetterContract(_TransportKit):
    """``Capabilities.dead_letters``: kept with reason and time, listed, requeued."""

    def test_dead_letters_keep_message_reason_and_can_be_requeued(
            self, transport: Transport, queue: str) -> None:
        dl = cast(DeadLetterTransport, transport)
        sent = self.message(7)
        self.send(transport, queue, sent)
        [d] = transport.fetch([queue], limit=1, timeout=2)
        dl.dead_letter(d, "DecodeError: broken body")
        [dead] = dl.dead_letters(queue)
        assert dead.queue == queue and dead.reason == "DecodeError: broken body"
        assert dead.message.headers["id"] == sent.headers["id"] and dead.message.body == sent.body
        assert abs(dead.time - time.time()) < 60
        assert transport.fetch([queue], limit=1, timeout=0.3) == []
        assert dl.requeue_dead([dead.id]) == 1
        assert dl.dead_letters(queue) == []
        [back] = transport.fetch([queue], limit=1, timeout=2)
        dl.dead_letter(back, "again")
        assert dl.purge_dead(queue) == 1 and dl.dead_letters(queue) == []


class PurgeContract(_TransportKit):
    """``Capabilities.purge``: ``purge`` deletes what waits and says how much."""

    def test_purge(self, transport: Transport, queue: str) -> None:
        self.send(transport, queue, *(self.message(n) for n in range(12)))
        assert cast(PurgeTransport, transport).purge(queue) == 12
        assert transport.fetch([queue], limit=1, timeout=0.3) == []


class InspectContract(_TransportKit):
    """``Capabilities.inspect``: ``depth`` counts what could be delivered now.

    Messages are taken by a second transport (``reader``), as a worker would take
    them, and counted by the first. A broker that pushes ahead (AMQP: up to the
    prefetch, ``limit`` of the first fetch) counts what it pushed as delivered, so
    the reader is closed before counting what it left (what it was pushed and did
    not ack comes back)."""

    def test_depth(self, app: Conveyor, transport: Transport, queue: str) -> None:
        inspect = cast(InspectTransport, transport)
        assert inspect.depth(queue) == 0
        self.send(transport, queue, *(self.message(n) for n in range(25)))
        assert inspect.depth(queue) == 25
        reader = self.connect(app, queue)
        try:
            assert len(self.drain(reader, queue, 5)) == 5
        finally:
            reader.close()
        assert _wait_for(lambda: inspect.depth(queue) == 20, 5), inspect.depth(queue)

    def test_stats_count_each_state(self, app: Conveyor, transport: Transport,
                                    queue: str) -> None:
        """Waiting by priority, leased, parked with its due time, dead letters."""
        inspect = cast(InspectTransport, transport)
        empty = inspect.stats(queue)
        assert (empty.queue, empty.ready, empty.dead, empty.next_due,
                empty.oldest_age) == (queue, 0, 0, None, None)
        assert empty.delayed == 0 or (empty.delayed is None
                                      and empty.delayed_shared is not None)
        assert empty.leased in (0, None)
        caps = transport.capabilities
        urgent = 9 if caps.priorities else None
        self.send(transport, queue, *(self.message(n) for n in range(4)))
        self.send(transport, queue, self.message(9, priority=urgent))
        due = time.time() + 3600
        if caps.delays:
            self.send(transport, queue, self.message(10), self.message(11), due=due)
        reader = self.connect(app, queue)
        try:
            held = reader.fetch([queue], limit=2, timeout=2)
            if len(held) < 2:  # a pushing broker may hand the second over a moment later
                held += reader.fetch([queue], limit=2 - len(held), timeout=2)
            stats = inspect.stats(queue)
            assert stats.ready == inspect.depth(queue) == 3
            if caps.priorities and stats.by_priority:
                assert stats.waiting == {0: 3}  # the urgent one went first
            if caps.settlement == LEASE or stats.leased is not None:
                assert stats.leased == len(held) == 2
            if caps.delays and stats.delayed is not None:
                assert stats.delayed == 2 and stats.next_due == pytest.approx(due, abs=1)
            elif caps.delays:  # parked with every queue's: this test's two among them
                assert stats.delayed_shared is not None and empty.delayed_shared is not None
                assert stats.delayed_shared - empty.delayed_shared == 2
            assert stats.oldest_age is None or 0 <= stats.oldest_age < 60
            if caps.dead_letters:
                cast(DeadLetterTransport, reader).dead_letter(held.pop(), "broken")
            assert inspect.stats(queue).dead == (1 if caps.dead_letters else 0)
            reader.ack(held)
            # Another connection's view: a transport may send its acks ahead and have
            # them applied by the server a moment later (its own figures include them,
            # another client's catch up), so the acks must show, not at this instant.
            assert _wait_for(lambda: inspect.stats(queue).leased in (0, None), 5), \
                inspect.stats(queue)
        finally:
            reader.close()


class AbandonContract(_TransportKit):
    """``Capabilities.abandon``: dropping a broken connection gives nothing back."""

    def test_abandon_keeps_running_deliveries(self, app: Conveyor, transport: Transport,
                                              queue: str) -> None:
        lost = self.connect(app, queue)
        self.send(lost, queue, self.message(1))
        [d] = lost.fetch([queue], limit=1, timeout=2)
        cast(AbandonTransport, lost).abandon()
        if transport.capabilities.settlement == LEASE:
            # still leased: not handed to anyone, and the new connection acks it
            assert transport.fetch([queue], limit=1, timeout=0.3) == []
            transport.ack([d])
        else:  # the broker redelivers what the lost channel held
            [again] = self.drain(transport, queue, 1)
            assert again.message.headers["id"] == d.message.headers["id"]


class HeartbeatContract(_TransportKit):
    """``Capabilities.heartbeats``: ``heartbeat()`` keeps the connection and takes
    nothing: deliveries held and arriving meanwhile stay for ``fetch`` and ``ack``."""

    def test_heartbeat_keeps_deliveries_for_fetch_and_ack(self, transport: Transport,
                                                          queue: str) -> None:
        beats = cast(HeartbeatTransport, transport)

        def take_one() -> Delivery:  # limit 2: a prefetch with room for the second
            got: list[Delivery] = _wait_for(
                lambda: transport.fetch([queue], limit=2, timeout=0.3), 5)
            assert len(got) == 1, f"expected one delivery from {queue}, got {got}"
            return got[0]

        self.send(transport, queue, self.message(1))
        first = take_one()  # held, unacked, across the heartbeats
        self.send(transport, queue, self.message(2))
        for _ in range(3):
            beats.heartbeat()
        second = take_one()
        assert self.ids([first, second]) == [1, 2]
        transport.ack([first, second])
        beats.heartbeat()
        assert transport.fetch([queue], limit=1, timeout=0.3) == []


class FetchAheadContract(_TransportKit):
    """``Capabilities.fetch_ahead``: an ack and the next fetch in one write; the
    fetched deliveries wait for the next ``fetch``, and are given back on close."""

    def test_the_next_fetch_returns_what_was_fetched_ahead(self, transport: Transport,
                                                            queue: str) -> None:
        ahead = cast(FetchAheadTransport, transport)
        self.send(transport, queue, *(self.message(n) for n in range(5)))
        first = transport.fetch([queue], limit=1, timeout=2)
        ahead.ack_and_fetch_ahead(first, [queue], 3)
        got = transport.fetch([queue], limit=3, timeout=2)
        assert self.ids(got) == [1, 2, 3]
        ahead.ack_and_fetch_ahead(got, [queue], 3)
        last = transport.fetch([queue], limit=3, timeout=2)
        assert self.ids(last) == [4]
        ahead.ack_and_fetch_ahead(last, [queue], 3)  # the queue is empty now
        # every ack landed: nothing comes back once the leases would have lapsed
        time.sleep(self.visibility_timeout + 0.5)
        assert self.drain(transport, queue, 5, timeout=1) == []

    def test_an_empty_fetch_ahead_leaves_fetch_waiting_as_usual(
            self, app: Conveyor, transport: Transport, queue: str) -> None:
        ahead = cast(FetchAheadTransport, transport)
        self.send(transport, queue, self.message(1))
        ahead.ack_and_fetch_ahead(transport.fetch([queue], limit=1, timeout=2), [queue], 4)
        self.send(self.connect(app, queue), queue, self.message(2))  # after the claim
        assert self.ids(_wait_for(lambda: transport.fetch([queue], limit=4, timeout=0.3),
                                  5)) == [2]

    def test_close_gives_back_what_was_fetched_ahead(self, app: Conveyor,
                                                     transport: Transport,
                                                     queue: str) -> None:
        other = self.connect(app, queue)
        self.send(other, queue, *(self.message(n) for n in range(4)))
        first = other.fetch([queue], limit=1, timeout=2)
        cast(FetchAheadTransport, other).ack_and_fetch_ahead(first, [queue], 2)
        other.close()  # a worker stopping after its last task: the two were never run
        assert self.ids(self.drain(transport, queue, 4)) == [1, 2, 3]


class BroadcastContract(_TransportKit):
    """``Capabilities.broadcast``: fanout, topic and direct exchanges, as kombu's
    pidbox (remote control) and Celery's events use them."""

    @pytest.fixture
    def subscriptions(self) -> Iterator[list[Subscription]]:
        opened: list[Subscription] = []
        yield opened
        for sub in opened:
            sub.close()

    def exchange(self, kind: str) -> Exchange:
        return Exchange(f"contract.{kind}.{uuid.uuid4().hex[:8]}", kind,
                        auto_delete=True)

    def subscribe(self, transport: Transport, opened: list[Subscription],
                  exchange: Exchange, key: str = "", queue: str | None = None) -> Subscription:
        sub = cast(BroadcastTransport, transport).subscribe(exchange, key, queue=queue,
                                                             expires=30)
        opened.append(sub)
        return sub

    def receive(self, sub: Subscription, expect: int, timeout: float = 5) -> list[Delivery]:
        got: list[Delivery] = []
        deadline = time.monotonic() + timeout
        while len(got) < expect and time.monotonic() < deadline:
            got += sub.get(timeout=0.3)
        return got

    def test_fanout_reaches_every_subscriber(self, transport: Transport,
                                             subscriptions: list[Subscription]) -> None:
        ex = self.exchange(FANOUT)
        first = self.subscribe(transport, subscriptions, ex)
        second = self.subscribe(transport, subscriptions, ex)
        sent = self.message(1)
        cast(BroadcastTransport, transport).broadcast(ex, "", sent)
        for sub in (first, second):
            [got] = self.receive(sub, 1)
            m = got.message
            assert (m.headers["id"], m.body, m.content_type) == (
                sent.headers["id"], sent.body, "application/json")
            assert got.exchange == ex.name and got.routing_key == ""
            assert sub.get(timeout=0.2) == []

    def test_nothing_is_kept_for_a_later_subscriber(
            self, transport: Transport, subscriptions: list[Subscription]) -> None:
        ex = self.exchange(FANOUT)
        cast(BroadcastTransport, transport).broadcast(ex, "", self.message(1))
        late = self.subscribe(transport, subscriptions, ex)
        assert late.get(timeout=0.3) == []

    def test_get_is_bounded(self, transport: Transport,
                            subscriptions: list[Subscription]) -> None:
        sub = self.subscribe(transport, subscriptions, self.exchange(FANOUT))
        start = time.monotonic()
        assert sub.get(timeout=0.3) == []
        assert time.monotonic() - start < 3

    def test_topic_routes_by_key_like_celery_events(
            self, transport: Transport, subscriptions: list[Subscription]) -> None:
        ex = self.exchange(TOPIC)
        everything = self.subscribe(transport, subscriptions, ex, "#")
        tasks = self.subscribe(transport, subscriptions, ex, "task.*")
        bt = cast(BroadcastTransport, transport)
        bt.broadcast(ex, "worker.heartbeat", self.message(1))
        bt.broadcast(ex, "task.succeeded", self.message(2))
        got = self.receive(everything, 2)
        assert sorted((d.routing_key, self.ids([d])[0]) for d in got) == [
            ("task.succeeded", 2), ("worker.heartbeat", 1)]
        [task] = self.receive(tasks, 1)
        assert (task.routing_key, self.ids([task])) == ("task.succeeded", [2])
        assert tasks.get(timeout=0.2) == []

    def test_direct_replies_reach_the_named_subscriber_only(
            self, transport: Transport, subscriptions: list[Subscription]) -> None:
        ex = self.exchange(DIRECT)
        me, other = uuid.uuid4().hex, uuid.uuid4().hex
        mine = self.subscribe(transport, subscriptions, ex, me, queue=f"{me}.{ex.name}")
        theirs = self.subscribe(transport, subscriptions, ex, other,
                                queue=f"{other}.{ex.name}")
        bt = cast(BroadcastTransport, transport)
        bt.broadcast(ex, me, self.message(1))
        bt.broadcast(ex, me, self.message(2))
        # both, in no promised order (kombu's filesystem transport orders its
        # files only to the millisecond; a reply never depends on another's order)
        assert sorted(self.ids(self.receive(mine, 2))) == [1, 2]
        assert theirs.get(timeout=0.2) == []
        theirs.close()
        bt.broadcast(ex, other, self.message(3))  # nobody bound: dropped, no error
        again = self.subscribe(transport, subscriptions, ex, other,
                               queue=f"{other}.{ex.name}")
        assert again.get(timeout=0.3) == []


#: The contract class of each capability flag.
CAPABILITY_CONTRACTS: dict[str, type] = {
    "priorities": PriorityContract, "delays": DelayContract, "leases": LeaseContract,
    "dead_letters": DeadLetterContract, "purge": PurgeContract,
    "inspect": InspectContract, "abandon": AbandonContract,
    "heartbeats": HeartbeatContract, "broadcast": BroadcastContract,
    "fetch_ahead": FetchAheadContract,
}


class FullTransportContract(TransportContract, PriorityContract, DelayContract,
                            LeaseContract, DeadLetterContract, PurgeContract,
                            InspectContract, AbandonContract, BroadcastContract):
    """Every part, for a transport that declares every capability but ``heartbeats``
    (a connection that stays open unread: mix in :class:`HeartbeatContract` if not)."""


def _doc(status: str, result: Any) -> bytes:
    """A state document as the core writes it with the default json serializer."""
    import json
    return json.dumps({"status": status, "result": result, "traceback": None,
                       "children": [], "date_done": None, "task_id": "x"}).encode()


class _BackendKit:
    """Fixtures shared by the backend contract classes, blocking and asyncio."""

    covers: ClassVar[tuple[str, ...]] = ()

    @pytest.fixture
    def backend_broker(self) -> str:
        """The apps' ``broker_url``; override for a backend that needs a real one."""
        return "memory://contract"

    def make_backend(self, backend_url: str, backend_broker: str) -> tuple[Conveyor, Backend]:
        """An app of its own and its backend: what one process holds."""
        app = Conveyor(f"contract-{uuid.uuid4().hex[:6]}", broker=backend_broker,
                       backend=backend_url)
        return app, app.backend

    @pytest.fixture
    def backend(self, backend_url: str, backend_broker: str) -> Iterator[Backend]:
        app, backend = self.make_backend(backend_url, backend_broker)
        yield backend
        app.close()

    @pytest.fixture
    def task_id(self, backend: Backend) -> Iterator[str]:
        task_id = f"contract-{uuid.uuid4()}"
        yield task_id
        backend.forget(task_id)


class BackendContract(_BackendKit):
    """Provide ``backend_url`` (and ``backend_broker`` when the backend rides on the
    broker's connection, as ``rpc://`` does). Payloads are JSON state documents, as
    the core writes them with the default ``result_serializer``. Mix in the class of
    every capability the backend declares (:data:`BACKEND_CAPABILITY_CONTRACTS`)."""

    def test_declared_capabilities_are_tested(self, backend: Backend) -> None:
        _check_declared(self, backend, backend.capabilities, BACKEND_CAPABILITY_CONTRACTS,
                        BACKEND_CAPABILITY_PROTOCOLS)
        assert isinstance(backend, Backend)

    def test_pending_is_none_then_stored(self, backend: Backend, task_id: str) -> None:
        assert backend.get(task_id) is None
        backend.store(task_id, "STARTED", _doc("STARTED", None), expires=60)
        assert backend.get(task_id) == _doc("STARTED", None)

    def test_success_is_final(self, backend: Backend, task_id: str) -> None:
        backend.store(task_id, "SUCCESS", _doc("SUCCESS", "ok"), expires=60)
        backend.store(task_id, "FAILURE", _doc("FAILURE", "late"), expires=60)
        assert backend.get(task_id) == _doc("SUCCESS", "ok")

    def test_failure_can_be_overwritten(self, backend: Backend, task_id: str) -> None:
        backend.store(task_id, "FAILURE", _doc("FAILURE", "first"), expires=60)
        backend.store(task_id, "SUCCESS", _doc("SUCCESS", "retried"), expires=60)
        assert backend.get(task_id) == _doc("SUCCESS", "retried")

    def test_wait_wakes_on_change_and_is_bounded(self, backend: Backend, task_id: str) -> None:
        import threading
        start = time.monotonic()
        assert backend.wait(task_id, timeout=0.3, previous=None) is None
        assert 0.25 <= time.monotonic() - start < 2.5
        timer = threading.Timer(0.3, backend.store, (task_id, "SUCCESS", _doc("SUCCESS", 1)),
                                {"expires": 60})
        timer.start()
        start = time.monotonic()
        got = backend.wait(task_id, timeout=5, previous=None)
        timer.join()
        assert got == _doc("SUCCESS", 1) and time.monotonic() - start < 1.5

    def test_forget(self, backend: Backend, task_id: str) -> None:
        backend.store(task_id, "SUCCESS", _doc("SUCCESS", "x"), expires=60)
        backend.forget(task_id)
        assert backend.get(task_id) is None

    def test_expiry(self, backend: Backend, task_id: str) -> None:
        backend.store(task_id, "SUCCESS", _doc("SUCCESS", "short"), expires=1)
        assert _wait_for(lambda: backend.get(task_id) is None, timeout=5, interval=0.2)


class JoinContract:
    """``BackendCapabilities.joins``: each member counted once, exactly one claim."""

    @pytest.fixture
    def joins(self, backend: Backend) -> JoinBackend:
        return cast(JoinBackend, backend)

    @pytest.fixture
    def group_id(self) -> str:
        return f"contract-group-{uuid.uuid4()}"

    def test_members_counted_once_and_one_claim(self, joins: JoinBackend,
                                                group_id: str) -> None:
        joins.join_size(group_id, 3, expires=60)
        seen = [joins.join_add(group_id, f"t{i}", i, f"r{i}".encode(), expires=60,
                               claim_for=10) for i in (2, 0, 0, 1)]
        assert [(j.done, j.size) for j in seen] == [(1, 3), (2, 3), (2, 3), (3, 3)]
        assert [j.claim is not None for j in seen] == [False, False, False, True]
        again = joins.join_add(group_id, "t1", 1, b"r1", expires=60, claim_for=10)
        assert (again.done, again.claim) == (3, None)  # a redelivered member
        assert joins.join_results(group_id) == [b"r0", b"r1", b"r2"]  # by index

    def test_concurrent_members_make_one_claim(self, joins: JoinBackend,
                                               group_id: str) -> None:
        import threading
        n = 20
        joins.join_size(group_id, n, expires=60)
        claims: list[str] = []
        start = threading.Barrier(n)

        def member(i: int) -> None:
            start.wait(10)
            claim = joins.join_add(group_id, f"t{i}", i, b"x%d" % i, expires=60,
                                   claim_for=10).claim
            if claim:
                claims.append(claim)

        threads = [threading.Thread(target=member, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(claims) == 1 and len(joins.join_results(group_id)) == n

    def test_finish_needs_the_claim_and_ignores_late_members(
            self, joins: JoinBackend, group_id: str) -> None:
        joins.join_size(group_id, 1, expires=60)
        claim = joins.join_add(group_id, "t0", 0, b"r0", expires=60, claim_for=10).claim
        assert claim is not None
        assert not joins.join_finish(group_id, "not-the-claim", expires=60)
        assert joins.join_finish(group_id, claim, expires=60)
        late = joins.join_add(group_id, "t0", 0, b"r0", expires=60, claim_for=10)
        assert late.done == -1 and late.claim is None
        assert joins.join_results(group_id) == []
        joins.join_size(group_id, 1, expires=60)  # the same chord applied again
        assert joins.join_add(group_id, "t9", 0, b"r9", expires=60, claim_for=10).claim

    def test_join_without_size_counts_but_never_claims(self, joins: JoinBackend,
                                                       group_id: str) -> None:
        got = joins.join_add(group_id, "t0", None, b"r", expires=60, claim_for=10)
        assert (got.done, got.size, got.claim) == (1, None, None)

    def test_join_expires(self, joins: JoinBackend, group_id: str) -> None:
        joins.join_size(group_id, 2, expires=1)
        joins.join_add(group_id, "t0", 0, b"r0", expires=1, claim_for=10)
        assert _wait_for(lambda: joins.join_results(group_id) == [], timeout=5,
                         interval=0.2)


class GroupContract:
    """``BackendCapabilities.groups``: a saved group's payload by id, replaced by a
    later save, gone once forgotten or expired (``GroupResult.save``/``restore``)."""

    @pytest.fixture
    def groups(self, backend: Backend) -> Iterator[GroupBackend]:
        yield cast(GroupBackend, backend)

    @pytest.fixture
    def group_id(self, groups: GroupBackend) -> Iterator[str]:
        group_id = f"contract-saved-{uuid.uuid4()}"
        yield group_id
        groups.forget_group(group_id)

    def test_saved_replaced_and_forgotten(self, groups: GroupBackend, group_id: str) -> None:
        assert groups.get_group(group_id) is None
        groups.save_group(group_id, b'{"result": 1}', expires=60)
        assert groups.get_group(group_id) == b'{"result": 1}'
        groups.save_group(group_id, b'{"result": 2}', expires=60)
        assert groups.get_group(group_id) == b'{"result": 2}'
        groups.forget_group(group_id)
        assert groups.get_group(group_id) is None
        groups.forget_group(group_id)  # forgetting twice is no error

    def test_a_saved_group_expires(self, groups: GroupBackend, group_id: str) -> None:
        groups.save_group(group_id, b"short", expires=1)
        assert _wait_for(lambda: groups.get_group(group_id) is None, timeout=5,
                         interval=0.2)


class ReplyContract:
    """``BackendCapabilities.replies``: a state stored with a caller's ``reply_to``
    reaches that caller's backend (another process's), not the storing one's."""

    @pytest.fixture
    def peer(self, backend_url: str, backend_broker: str) -> Iterator[ReplyBackend]:
        """The backend of another process: the worker that stores the result."""
        make = cast(BackendContract, self).make_backend
        app, backend = make(backend_url, backend_broker)
        yield cast(ReplyBackend, backend)
        app.close()

    def test_a_state_goes_to_the_callers_queue(self, backend: Backend, peer: ReplyBackend,
                                               task_id: str) -> None:
        caller = cast(ReplyBackend, backend)
        queue = caller.reply_to
        assert queue and queue != peer.reply_to
        peer.store(task_id, "STARTED", _doc("STARTED", None), expires=60, reply_to=queue)
        peer.store(task_id, "SUCCESS", _doc("SUCCESS", 7), expires=60, reply_to=queue)
        assert _wait_for(lambda: caller.get(task_id) == _doc("SUCCESS", 7), timeout=5)
        assert peer.get(task_id) is None  # the storing process keeps nothing


#: Backend capability flag → the contract class that tests it (mix it in).
BACKEND_CAPABILITY_CONTRACTS: dict[str, type] = {
    "joins": JoinContract, "groups": GroupContract, "replies": ReplyContract,
}
#: Backend capability flag → the protocol a backend that declares it satisfies.
BACKEND_CAPABILITY_PROTOCOLS: dict[str, type] = {
    "joins": JoinBackend, "groups": GroupBackend, "replies": ReplyBackend,
}


# --------------------------------------------------------------------------- asyncio twins
ASYNC_TRANSPORTS = "conveyor.async_transports"
ASYNC_BACKENDS = "conveyor.async_backends"


class AsyncTransportContract(_TransportKit):
    """The asyncio twin of a transport (``conveyor.async_transports``, the same name):
    it publishes for the asyncio client, and what it publishes the blocking transport
    (a worker) fetches unchanged. Provide ``broker_url``; ``transport`` is the
    blocking twin. Mix in :class:`AsyncPriorityContract` and
    :class:`AsyncDelayContract` when the transport declares ``priorities`` or
    ``delays`` (the capabilities a publish depends on)."""

    covers: ClassVar[tuple[str, ...]] = ()

    def publish(self, app: Conveyor, batch: Sequence[Outgoing]) -> None:
        """Send ``batch`` through a new twin, on an event loop of its own."""
        async def send() -> None:
            twin = app.loader.load(ASYNC_TRANSPORTS, scheme_of(app.broker_url))(
                app.broker_url, app)
            await twin.connect()
            try:
                for route in {route for _, route, _ in batch}:
                    await twin.declare(route)
                await twin.publish_many(batch)
            finally:
                await twin.close()
        asyncio.run(send())

    def test_a_twin_of_the_blocking_transport(self, app: Conveyor,
                                              transport: Transport) -> None:
        twin = app.loader.load(ASYNC_TRANSPORTS, scheme_of(app.broker_url))(
            app.broker_url, app)
        assert isinstance(twin, AsyncTransport)
        assert twin.capabilities == transport.capabilities
        _check_declared(self, twin, twin.capabilities, ASYNC_CAPABILITY_CONTRACTS, {})

    def test_what_it_publishes_is_fetched_whole(self, app: Conveyor, transport: Transport,
                                                queue: str) -> None:
        sent = self.message(1)
        self.publish(app, [(sent, Route(queue), None)])
        [got] = self.drain(transport, queue, 1)
        m = got.message
        assert (m.headers["id"], m.headers["x-n"], m.body) == (sent.headers["id"], 1, sent.body)
        assert (m.content_type, m.content_encoding) == ("application/json", "utf-8")
        assert m.properties.get("correlation_id") == "m1"
        assert got.deliveries == 1 and not got.redelivered

    def test_a_batch_arrives_whole_and_in_order(self, app: Conveyor, transport: Transport,
                                                queue: str) -> None:
        self.publish(app, [(self.message(n), Route(queue), None) for n in range(25)])
        assert self.ids(self.drain(transport, queue, 25)) == list(range(25))

    def test_a_named_exchange_routes_through_bindings(self, app: Conveyor,
                                                      transport: Transport,
                                                      queue: str) -> None:
        """The worker's declaration binds ``high`` to its own exchange; the twin
        routes through that binding, and to the route's queue when none matches."""
        high = f"{queue}.high"
        transport.declare(Route(high))
        self.publish(app, [(self.message(1), Route(queue, high, high), None),
                           (self.message(2), Route(queue, high, "other-key"), None)])
        assert self.ids(self.drain(transport, high, 1)) == [1]
        assert self.ids(self.drain(transport, queue, 1)) == [2]


class AsyncPriorityContract(_TransportKit):
    """``Capabilities.priorities`` through the twin: the blocking transport serves
    what it published highest priority first."""

    def test_higher_priority_first(self, app: Conveyor, transport: Transport,
                                   queue: str) -> None:
        priorities = [None, 5, 9, 5, 0, 2]
        cast(AsyncTransportContract, self).publish(
            app, [(self.message(n, p), Route(queue), None) for n, p in enumerate(priorities)])
        assert self.ids(self.drain(transport, queue, 6)) == [2, 1, 3, 5, 0, 4]


class AsyncDelayContract(_TransportKit):
    """``Capabilities.delays`` through the twin: ``due`` parks the message until then."""

    def test_due_messages_wait_until_due(self, app: Conveyor, transport: Transport,
                                         queue: str) -> None:
        # Due 2 s ahead, not 1: a first asyncio publish connects before it looks at
        # the time, and a message already due when it looks goes straight to its
        # queue; on a loaded machine that connect has eaten the 0.7 s left.
        cast(AsyncTransportContract, self).publish(
            app, [(self.message(1), Route(queue), time.time() + 2.0)])
        assert transport.fetch([queue], limit=1, timeout=0.3) == []
        assert self.ids(self.drain(transport, queue, 1, timeout=6)) == [1]


#: The capabilities a publish depends on → the twin's contract class for each.
ASYNC_CAPABILITY_CONTRACTS: dict[str, type] = {
    "priorities": AsyncPriorityContract, "delays": AsyncDelayContract,
}


class AsyncBackendContract(_BackendKit):
    """The asyncio twin of a result backend (``conveyor.async_backends``): what the
    asyncio client awaits. It reads what the blocking twin (a worker) stores, and
    the reverse; ``wait`` wakes on a store from the blocking side. Provide what
    :class:`BackendContract` asks for; mix in :class:`AsyncJoinContract` or
    :class:`AsyncReplyContract` for what the twin declares (a subset of the
    blocking backend's capabilities). The blocking backend's own tests are not
    run again here."""

    def run(self, app: Conveyor, use: Any) -> Any:
        """``await use(twin)`` with a new twin, on an event loop of its own."""
        async def go() -> Any:
            twin = app.loader.load(ASYNC_BACKENDS, scheme_of(app.backend_url))(
                app.backend_url, app)
            try:
                return await use(twin)
            finally:
                await twin.close()
        return asyncio.run(go())

    @pytest.fixture
    def backend_app(self, backend_url: str, backend_broker: str) -> Iterator[Conveyor]:
        app, _ = self.make_backend(backend_url, backend_broker)
        yield app
        app.close()

    @pytest.fixture
    def backend(self, backend_app: Conveyor) -> Backend:
        """The blocking twin (what a worker stores through)."""
        return backend_app.backend

    def test_declared_capabilities_are_tested(self, backend: Backend,
                                              backend_app: Conveyor) -> None:
        async def caps(twin: AsyncBackend) -> None:
            assert isinstance(twin, AsyncBackend)
            _check_declared(self, twin, twin.capabilities, ASYNC_BACKEND_CONTRACTS,
                            ASYNC_BACKEND_PROTOCOLS)
            for flag in ASYNC_BACKEND_CONTRACTS:
                assert not getattr(twin.capabilities, flag) or getattr(
                    backend.capabilities, flag), (
                    f"{type(twin).__name__} declares {flag}, its blocking twin does not.")
        self.run(backend_app, caps)

    def test_pending_is_none_then_stored(self, backend: Backend, backend_app: Conveyor,
                                         task_id: str) -> None:
        async def use(twin: AsyncBackend) -> Any:
            before = await twin.get(task_id)
            await twin.store(task_id, "STARTED", _doc("STARTED", None), expires=60)
            return before, await twin.get(task_id)
        assert self.run(backend_app, use) == (None, _doc("STARTED", None))

    def test_success_is_final(self, backend: Backend, backend_app: Conveyor,
                              task_id: str) -> None:
        async def use(twin: AsyncBackend) -> bytes | None:
            await twin.store(task_id, "SUCCESS", _doc("SUCCESS", "ok"), expires=60)
            await twin.store(task_id, "FAILURE", _doc("FAILURE", "late"), expires=60)
            return await twin.get(task_id)
        assert self.run(backend_app, use) == _doc("SUCCESS", "ok")

    def test_failure_can_be_overwritten(self, backend: Backend, backend_app: Conveyor,
                                        task_id: str) -> None:
        async def use(twin: AsyncBackend) -> bytes | None:
            await twin.store(task_id, "FAILURE", _doc("FAILURE", "first"), expires=60)
            await twin.store(task_id, "SUCCESS", _doc("SUCCESS", "retried"), expires=60)
            return await twin.get(task_id)
        assert self.run(backend_app, use) == _doc("SUCCESS", "retried")

    def test_wait_wakes_on_change_and_is_bounded(self, backend: Backend,
                                                 backend_app: Conveyor,
                                                 task_id: str) -> None:
        """What the client's ``aget`` does while a worker (the blocking twin, another
        thread here) stores the result."""
        async def use(twin: AsyncBackend) -> tuple[bytes | None, bytes | None, float]:
            reply_to = None
            if twin.capabilities.replies:  # a worker answers to the client's queue
                await cast(AsyncReplyBackend, twin).ready_replies()
                reply_to = cast(AsyncReplyBackend, twin).reply_to
            start = time.monotonic()
            empty = await twin.wait(task_id, timeout=0.3, previous=None)
            assert 0.25 <= time.monotonic() - start < 2.5
            loop = asyncio.get_running_loop()
            store = loop.run_in_executor(None, self.store_later, backend, task_id, reply_to)
            start = time.monotonic()
            got = await twin.wait(task_id, timeout=5, previous=None)
            await store
            return empty, got, time.monotonic() - start
        empty, got, took = self.run(backend_app, use)
        assert empty is None and got == _doc("SUCCESS", 1) and took < 1.5

    @staticmethod
    def store_later(backend: Backend, task_id: str, reply_to: str | None) -> None:
        time.sleep(0.3)
        if reply_to is None:
            backend.store(task_id, "SUCCESS", _doc("SUCCESS", 1), expires=60)
        else:
            cast(ReplyBackend, backend).store(task_id, "SUCCESS", _doc("SUCCESS", 1),
                                              expires=60, reply_to=reply_to)

    def test_forget(self, backend: Backend, backend_app: Conveyor, task_id: str) -> None:
        async def use(twin: AsyncBackend) -> bytes | None:
            await twin.store(task_id, "SUCCESS", _doc("SUCCESS", "x"), expires=60)
            await twin.forget(task_id)
            return await twin.get(task_id)
        assert self.run(backend_app, use) is None

    def test_expiry(self, backend: Backend, backend_app: Conveyor, task_id: str) -> None:
        async def use(twin: AsyncBackend) -> bytes | None:
            await twin.store(task_id, "SUCCESS", _doc("SUCCESS", "short"), expires=1)
            deadline = time.monotonic() + 5
            while await twin.get(task_id) is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            return await twin.get(task_id)
        assert self.run(backend_app, use) is None


class AsyncJoinContract:
    """``BackendCapabilities.joins`` on the twin: the client sizes a chord's join,
    the workers (blocking) complete it; the twin's own counting holds too."""

    @pytest.fixture
    def group_id(self) -> str:
        return f"contract-async-group-{uuid.uuid4()}"

    def test_the_client_sizes_the_join_and_workers_complete_it(
            self, backend: Backend, backend_app: Conveyor, group_id: str) -> None:
        async def size(twin: AsyncBackend) -> None:
            await cast(AsyncJoinBackend, twin).join_size(group_id, 2, expires=60)
        cast(AsyncBackendContract, self).run(backend_app, size)
        joins = cast(JoinBackend, backend)
        first = joins.join_add(group_id, "t0", 0, b"r0", expires=60, claim_for=10)
        second = joins.join_add(group_id, "t1", 1, b"r1", expires=60, claim_for=10)
        assert (first.done, first.claim) == (1, None)
        assert (second.done, second.size) == (2, 2) and second.claim is not None

    def test_members_counted_once_and_one_claim(self, backend_app: Conveyor,
                                                group_id: str) -> None:
        async def use(twin: AsyncBackend) -> tuple[list[Join], list[bytes], bool]:
            joins = cast(AsyncJoinBackend, twin)
            await joins.join_size(group_id, 2, expires=60)
            seen = [await joins.join_add(group_id, f"t{i}", i, f"r{i}".encode(),
                                         expires=60, claim_for=10) for i in (1, 1, 0)]
            results = await joins.join_results(group_id)
            claim = seen[-1].claim
            return seen, results, bool(claim and await joins.join_finish(
                group_id, claim, expires=60))
        seen, results, finished = cast(AsyncBackendContract, self).run(backend_app, use)
        assert [(j.done, j.claim is not None) for j in seen] == [(1, False), (1, False),
                                                                 (2, True)]
        assert results == [b"r0", b"r1"] and finished


class AsyncReplyContract:
    """``BackendCapabilities.replies`` on the twin: its reply queue is made ready
    once, and a worker's answer to it wakes a waiter."""

    def test_ready_once_then_a_worker_answers(self, backend: Backend, backend_app: Conveyor,
                                              task_id: str) -> None:
        async def use(twin: AsyncBackend) -> bytes | None:
            replies = cast(AsyncReplyBackend, twin)
            assert not replies.replies_ready
            await replies.ready_replies()
            await replies.ready_replies()  # once
            assert replies.replies_ready and replies.reply_to
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: cast(ReplyBackend, backend).store(
                task_id, "SUCCESS", _doc("SUCCESS", 3), expires=60,
                reply_to=replies.reply_to))
            return await twin.wait(task_id, timeout=5, previous=None)
        assert cast(AsyncBackendContract, self).run(backend_app, use) == _doc("SUCCESS", 3)


#: Backend capability flag → the twin's contract class for it.
ASYNC_BACKEND_CONTRACTS: dict[str, type] = {
    "joins": AsyncJoinContract, "replies": AsyncReplyContract,
}
