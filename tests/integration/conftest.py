"""Fixtures for tests whose module defines a project to run in a worker process:
``PROJECT`` (the module name) and ``PROJ`` (its source), on the SQLite broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlite_project import client_of, sqlite_project

from conveyor import Conveyor


@pytest.fixture
def proj(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """The worker's environment for the test module's ``PROJECT``."""
    return sqlite_project(tmp_path, request.module.PROJECT, request.module.PROJ)


@pytest.fixture
def client(proj: dict[str, str]) -> Iterator[Conveyor]:
    with client_of(proj) as app:
        yield app
