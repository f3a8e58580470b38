"""The contract-test kit: what every plugin of a kind must do, as test classes.

A plugin author subclasses the class for their kind and provides one fixture::

    from conveyor_pytest.contract import TransportContract

    class TestMyTransport(TransportContract):
        @pytest.fixture
        def broker_url(self, tmp_path):
            return "mybroker://localhost/0"

Conveyor's own plugins are tested with exactly these classes (``tests/contract``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.interfaces import Backend, Compressor, Message, Route, Serializer, Transport

TASK_BODY = [[2, 2], {"k": "v", "n": [1, 2.5, None, True]},
             {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


def _wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


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


class TransportContract:
    """Provide ``broker_url``; override ``transport_options`` to add options.

    Uses ``visibility_timeout`` of 1 s (leasing transports) so redelivery is quick.
    """

    visibility_timeout = 1.0

    @pytest.fixture
    def transport_options(self) -> dict[str, Any]:
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
        transport = app.transport_factory()
        transport.connect()
        transport.declare(Route(queue))
        yield transport
        try:
            transport.purge(queue)
            transport.purge_dead(queue)
        finally:
            transport.close()

    def message(self, n: int, priority: int | None = None) -> Message:
        return Message({"task": "contract.t", "id": f"m{n}-{uuid.uuid4().hex[:6]}",
                        "x-n": n}, f"[[{n}], {{}}, {{}}]".encode(), "application/json",
                       "utf-8", {"priority": priority, "correlation_id": f"m{n}"})

    def drain(self, transport: Transport, queue: str, expect: int,
              timeout: float = 5) -> list[Any]:
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < expect and time.monotonic() < deadline:
            batch = transport.fetch([queue], limit=expect - len(got), timeout=0.5)
            transport.ack(batch)
            got.extend(batch)
        return got

    def test_publish_fetch_ack_keeps_the_message(self, transport: Transport, queue: str) -> None:
        sent = self.message(1, priority=3)
        transport.publish(sent, Route(queue))
        [got] = self.drain(transport, queue, 1)
        m = got.message
        assert (m.headers["id"], m.headers["x-n"], m.body) == (sent.headers["id"], 1, sent.body)
        assert (m.content_type, m.content_encoding) == ("application/json", "utf-8")
        assert m.properties.get("priority") == 3 and got.queue == queue
        assert got.deliveries == 1 and not got.redelivered
        assert transport.fetch([queue], limit=1, timeout=0.2) == []

    def test_fetch_timeout_is_bounded(self, transport: Transport, queue: str) -> None:
        start = time.monotonic()
        assert transport.fetch([queue], limit=5, timeout=0.3) == []
        assert time.monotonic() - start < 2.5

    def test_higher_priority_first_fifo_within(self, transport: Transport, queue: str) -> None:
        # Levels distinct on every transport (Redis has four: 0, 1–3, 4–6, 7–255).
        for n, priority in enumerate([None, 5, 9, 5, 0, 2]):
            transport.publish(self.message(n, priority), Route(queue))
        order = [d.message.headers["x-n"] for d in self.drain(transport, queue, 6)]
        assert order == [2, 1, 3, 5, 0, 4]

    def test_publish_many_and_depth(self, transport: Transport, queue: str) -> None:
        transport.publish_many([(self.message(n), Route(queue), None) for n in range(25)])
        assert transport.depth(queue) == 25
        assert transport.purge(queue) == 25 and transport.depth(queue) == 0

    def test_due_messages_wait_until_due(self, transport: Transport, queue: str) -> None:
        transport.publish(self.message(1), Route(queue), due=time.time() + 1.0)
        assert transport.fetch([queue], limit=1, timeout=0.3) == []
        got = self.drain(transport, queue, 1, timeout=5)
        assert [d.message.headers["x-n"] for d in got] == [1]

    def test_defer_parks_a_delivery_until_due(self, transport: Transport, queue: str) -> None:
        transport.publish(self.message(1), Route(queue))
        [d] = transport.fetch([queue], limit=1, timeout=2)
        transport.defer(d, time.time() + 1.0)
        assert transport.fetch([queue], limit=1, timeout=0.3) == []
        [again] = self.drain(transport, queue, 1, timeout=5)
        assert again.message.headers["id"] == d.message.headers["id"]

    def test_requeue_gives_it_back(self, transport: Transport, queue: str) -> None:
        transport.publish(self.message(1), Route(queue))
        [d] = transport.fetch([queue], limit=1, timeout=2)
        transport.requeue(d)
        [again] = self.drain(transport, queue, 1)
        assert again.message.headers["id"] == d.message.headers["id"]

    def test_unacked_delivery_comes_back_after_visibility_timeout(
            self, transport: Transport, queue: str) -> None:
        if not transport.visibility_timeout:
            pytest.skip("the broker itself redelivers on connection loss (no lease)")
        transport.publish(self.message(1), Route(queue))
        [d] = transport.fetch([queue], limit=1, timeout=2)
        again = _wait_for(lambda: transport.fetch([queue], limit=1, timeout=0.3),
                          timeout=self.visibility_timeout * 8 + 5)
        assert again and again[0].message.headers["id"] == d.message.headers["id"]
        assert again[0].deliveries == 2 and again[0].redelivered
        transport.ack(again)

    def test_extend_keeps_a_live_lease(self, transport: Transport, queue: str) -> None:
        if not transport.visibility_timeout:
            pytest.skip("the broker itself redelivers on connection loss (no lease)")
        transport.publish(self.message(1), Route(queue))
        [d] = transport.fetch([queue], limit=1, timeout=2)
        deadline = time.monotonic() + self.visibility_timeout * 2.5
        while time.monotonic() < deadline:
            transport.extend([d])
            assert transport.fetch([queue], limit=1, timeout=self.visibility_timeout / 4) == []
        transport.ack([d])

    def test_dead_letters_keep_message_reason_and_can_be_requeued(
            self, transport: Transport, queue: str) -> None:
        sent = self.message(7)
        transport.publish(sent, Route(queue))
        [d] = transport.fetch([queue], limit=1, timeout=2)
        transport.dead_letter(d, "DecodeError: broken body")
        [dead] = transport.dead_letters(queue)
        assert dead.queue == queue and dead.reason == "DecodeError: broken body"
        assert dead.message.headers["id"] == sent.headers["id"] and dead.message.body == sent.body
        assert abs(dead.time - time.time()) < 60
        assert transport.depth(queue) == 0
        assert transport.requeue_dead([dead.id]) == 1
        assert transport.dead_letters(queue) == []
        [back] = transport.fetch([queue], limit=1, timeout=2)
        transport.dead_letter(back, "again")
        assert transport.purge_dead(queue) == 1 and transport.dead_letters(queue) == []


def _doc(status: str, result: Any) -> bytes:
    """A state document as the core writes it with the default json serializer."""
    import json
    return json.dumps({"status": status, "result": result, "traceback": None,
                       "children": [], "date_done": None, "task_id": "x"}).encode()


class BackendContract:
    """Provide ``backend_url``. Payloads are JSON state documents, as the core
    writes them with the default ``result_serializer``."""

    @pytest.fixture
    def backend(self, backend_url: str) -> Iterator[Backend]:
        app = Conveyor(f"contract-{uuid.uuid4().hex[:6]}", broker="memory://contract",
                       backend=backend_url)
        backend = app.backend
        yield backend
        app.close()

    @pytest.fixture
    def task_id(self, backend: Backend) -> Iterator[str]:
        task_id = f"contract-{uuid.uuid4()}"
        yield task_id
        backend.forget(task_id)

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
