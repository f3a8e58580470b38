"""Fixtures for the AMQP plugin tests: the real RabbitMQ on 127.0.0.1:5672.

Each test session gets its own vhost (``amqp_support.make_vhost``), deleted at the
end, so runs in parallel on one machine never see each other's queues. When
RabbitMQ does not answer the tests skip with the reason, or fail under
``CONVEYOR_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from rabbit_vhosts import private_vhost

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # for amqp_support (unique name: shadows nothing)
    sys.path.append(_HERE)

from amqp_support import url_for  # noqa: E402


@pytest.fixture(scope="session")
def amqp_vhost() -> Iterator[str]:
    """A vhost of this session's own, deleted afterwards."""
    yield from private_vhost()


@pytest.fixture(scope="session")
def amqp_url(amqp_vhost: str) -> str:
    return url_for(amqp_vhost)


@pytest.fixture
def queue() -> str:
    return f"t.amqp.{uuid.uuid4().hex[:8]}"
