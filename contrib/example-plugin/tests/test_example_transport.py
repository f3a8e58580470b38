"""The example transport: the contract kit's required part, then what the core does
without each capability, and the clear errors for what it cannot do."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from conveyor import Conveyor
from conveyor.exceptions import CapabilityError, NotRegistered
from conveyor.interfaces import Delivery
from conveyor_example_plugin.transport import ExampleTransport
from conveyor_pytest.contract import TransportContract


class TestExampleTransportContract(TransportContract):
    """Only the required part: the transport declares no capability."""

    covers = ("example",)

    @pytest.fixture
    def transport_options(self) -> dict[str, Any]:
        return {}  # no visibility_timeout: nothing is leased

    @pytest.fixture
    def broker_url(self) -> str:
        return f"example://contract-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def app() -> Iterator[Conveyor]:
    name = uuid.uuid4().hex[:8]
    app = Conveyor(f"caps-{name}", broker=f"example://{name}", backend=f"memory://{name}",
                   worker_eta_horizon=5.0)
    yield app
    app.close()


def test_priority_names_the_option_and_the_transport(app: Conveyor) -> None:
    @app.task(name="caps.noop")
    def noop() -> None: ...

    with pytest.raises(CapabilityError, match=r"priority=5 .*'priorities'.*'example'"):
        noop.apply_async(priority=5)


def test_countdown_beyond_the_horizon_is_refused_near_one_runs(app: Conveyor) -> None:
    @app.task(name="caps.stamp")
    def stamp() -> float:
        return time.time()

    with pytest.raises(CapabilityError, match=r"countdown/eta 3600s .*'delays'.*'example'"):
        stamp.apply_async(countdown=3600)
    with app.Worker(queues=["celery"], concurrency=1).running():
        sent = time.time()
        result = stamp.apply_async(countdown=1)  # held in the worker's memory
        assert result.get(timeout=10) >= sent + 0.9


def test_broker_delayed_delivery_needs_delays() -> None:
    app = Conveyor("caps-broker", broker="example://caps-broker", backend="memory://cb",
                   broker_transport_options={"delayed_delivery": "broker"})
    with pytest.raises(CapabilityError, match="delayed_delivery='broker'.*'delays'"):
        app.send_task("caps.any", countdown=1)


def test_dead_list_is_a_clear_cli_error() -> None:
    env = {**os.environ, "CONVEYOR_BROKER_URL": "example://cli"}
    out = subprocess.run([sys.executable, "-m", "conveyor.cli", "dead", "list"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "conveyor dead list" in out.stderr and "'dead_letters'" in out.stderr
    assert "'example'" in out.stderr


def test_unhandled_message_is_logged_acked_and_failed_without_dead_letters(
        app: Conveyor, caplog: pytest.LogCaptureFixture) -> None:
    result = app.send_task("caps.not_registered")
    with app.Worker(queues=["celery"], concurrency=1).running():
        with pytest.raises(NotRegistered):
            result.get(timeout=10)
    assert "keeps no dead letters" in caplog.text
    probe = app.transport_factory()
    assert probe.fetch(["celery"], limit=1, timeout=0.2) == []  # acked, not looping


def test_channel_settlement_never_acks_an_old_delivery_on_a_new_channel(
        app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection breaks while an acks_late task runs: the broker redelivers it
    and the worker must not ack the old delivery through the new channel."""
    runs: list[int] = []
    started = threading.Event()

    @app.task(name="caps.slow", acks_late=True)
    def slow(n: int) -> int:
        runs.append(n)
        started.set()
        time.sleep(0.5)
        return n

    foreign: list[Any] = []
    real_ack, real_fetch = ExampleTransport.ack, ExampleTransport.fetch
    broken = threading.Event()

    def ack(self: ExampleTransport, deliveries: Sequence[Delivery]) -> None:
        foreign.extend(d for d in deliveries if d.tag not in self._held)
        real_ack(self, deliveries)

    def fetch(self: ExampleTransport, queues: Sequence[str], *, limit: int,
              timeout: float) -> list[Delivery]:
        if started.is_set() and not broken.is_set():
            broken.set()
            raise ConnectionError("connection reset by the test")
        return real_fetch(self, queues, limit=limit, timeout=timeout)

    monkeypatch.setattr(ExampleTransport, "ack", ack)
    monkeypatch.setattr(ExampleTransport, "fetch", fetch)
    result = slow.delay(7)
    with app.Worker(queues=["celery"], concurrency=2).running():
        assert result.get(timeout=15) == 7
        deadline = time.monotonic() + 10
        while len(runs) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.6)  # let the redelivered run finish and be acked
    assert broken.is_set() and runs == [7, 7]  # redelivered by the broker, run again
    assert foreign == []  # no ack of another channel's delivery
    assert app.transport_factory().fetch(["celery"], limit=1, timeout=0.2) == []
