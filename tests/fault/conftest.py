"""The fault suite: real worker processes on real brokers, hurt on purpose.

Every test here is marked ``fault`` (``uv run pytest -m fault`` runs just these).
Each test's figures (tasks run, duplicates, seconds until redelivery, …) are printed
at the end of every run that includes it, in a "fault suite figures" section of the
terminal summary, so CI's log shows them without ``-s``. Redis tests use db 3 of the
suite's Redis (``CONVEYOR_TEST_REDIS_PORT``), flushed before and after each test;
RabbitMQ tests a vhost of the suite's own on the shared RabbitMQ.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # for fault_lab (unique name: shadows nothing)
    sys.path.append(_HERE)

from fault_lab import BROKERS, FIGURE, Lab, redis_or_fail  # noqa: E402
from rabbit_vhosts import private_vhost  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().parent == Path(_HERE):
            item.add_marker(pytest.mark.fault)


@pytest.fixture(scope="session")
def fault_vhost() -> Iterator[str]:
    """The fault suite's own vhost on the shared RabbitMQ, deleted afterwards."""
    yield from private_vhost()


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str:
    """Each test taking ``broker`` runs on SQLite, Redis and RabbitMQ (a test that
    parametrizes ``broker`` itself runs on the brokers it names)."""
    if request.param == "redis":
        redis_or_fail()
    return str(request.param)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures every fault test recorded (``Lab.figure``), passed or failed."""
    lines = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            lines += [value for name, value in getattr(report, "user_properties", ())
                      if name == FIGURE]
    if lines:
        terminalreporter.section("fault suite figures")
        for line in lines:
            terminalreporter.line(line)


@pytest.fixture
def lab(request: pytest.FixtureRequest, tmp_path: Path, broker: str) -> Iterator[Lab]:
    vhost = request.getfixturevalue("fault_vhost") if broker == "amqp" else None
    lab = Lab(tmp_path, broker, vhost=vhost)
    lab.node = request.node
    try:
        yield lab
    finally:
        lab.close()
