"""Fixtures for the SQLite transport and backend: a fresh database file per test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from conveyor.interfaces import Message
from conveyor_sqlite import SQLiteBackend, SQLiteTransport


def stub_app(**options: Any) -> Any:
    """Just what BaseTransport reads from an app: the transport options."""
    return SimpleNamespace(conf=SimpleNamespace(broker_transport_options=options,
                                                broker_connection_timeout=4.0))


def make_message(n: int = 0, priority: int | None = None, **headers: Any) -> Message:
    task_id = str(uuid.uuid4())
    return Message({"id": task_id, "task": "tests.noop", "n": n, **headers},
                   b'[[], {}, {}]', properties={"correlation_id": task_id,
                                                "priority": priority})


@pytest.fixture
def db_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path}/broker.db"


@pytest.fixture
def make_transport(db_url: str) -> Iterator[Callable[..., SQLiteTransport]]:
    """Transports on the test's database; options as broker_transport_options."""
    made: list[SQLiteTransport] = []

    def make(**options: Any) -> SQLiteTransport:
        transport = SQLiteTransport(db_url, stub_app(**options))
        transport.connect()
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()


@pytest.fixture
def transport(make_transport: Callable[..., SQLiteTransport]) -> SQLiteTransport:
    return make_transport()


@pytest.fixture
def backend(tmp_path: Any) -> Iterator[SQLiteBackend]:
    backend = SQLiteBackend(f"sqlite:///{tmp_path}/results.db")
    yield backend
    backend.close()


@pytest.fixture
def new_message() -> Callable[..., Message]:
    """``new_message(n, priority=None, **headers)``: a small task message."""
    return make_message
