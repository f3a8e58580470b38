"""The fault suite: real worker processes on real brokers, hurt on purpose.

Every test here is marked ``fault`` (``uv run pytest -m fault -s`` runs just these and
shows their figures). Redis tests use db 3 of the suite's Redis
(``CONVEYOR_TEST_REDIS_PORT``), flushed before and after each test.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # for fault_lab (unique name: shadows nothing)
    sys.path.append(_HERE)

from fault_lab import BROKERS, Lab, redis_or_fail  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().parent == Path(_HERE):
            item.add_marker(pytest.mark.fault)


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str:
    """Each test taking ``broker`` runs on SQLite and on Redis."""
    if request.param == "redis":
        redis_or_fail()
    return str(request.param)


@pytest.fixture
def lab(tmp_path: Path, broker: str) -> Iterator[Lab]:
    lab = Lab(tmp_path, broker)
    try:
        yield lab
    finally:
        lab.close()
