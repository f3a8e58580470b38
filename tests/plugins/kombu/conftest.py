"""Makes this directory's helpers (``kombu_lab``) importable by its tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)

from kombu_lab import TRANSPORTS, Lab, make_lab  # noqa: E402


@pytest.fixture(params=TRANSPORTS)
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    """A bridged broker of each tested kombu transport, with its backend."""
    made = make_lab(request.param, tmp_path)
    yield made
    made.close()
