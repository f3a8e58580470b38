"""The wheelhouse every packaging test installs from, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging_support import build_wheels


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of every workspace member and of the example plugin."""
    return build_wheels(tmp_path_factory.mktemp("wheelhouse"))
