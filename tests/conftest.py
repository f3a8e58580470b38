"""Makes ``tests/support`` (helpers every test directory uses, such as
``wire_samples``) importable, and runs the tests that restart a shared broker last.

The suite runs with ``--import-mode=importlib``, which keeps test directories off
``sys.path``; the helper modules have unique names, so adding this one directory
cannot shadow anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_SUPPORT = str(Path(__file__).resolve().parent / "support")
if _SUPPORT not in sys.path:
    sys.path.append(_SUPPORT)


@pytest.hookimpl(trylast=True)  # after any plugin that shuffles or selects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``broker_restart`` (``rabbitmqctl stop_app``/``start_app``) go
    last: a test that ran while RabbitMQ was down would fail for nothing, and they
    wait for it to answer again before they end."""
    restarts = [item for item in items if item.get_closest_marker("broker_restart")]
    if restarts:
        items[:] = [item for item in items if item not in restarts] + restarts
