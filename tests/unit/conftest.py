"""Fixtures for core tests: fake entry points, so tests never depend on what is
installed beyond the workspace; and no broker, so ``uv run pytest tests/unit``
(CONTRIBUTING.md: "the core only, no broker needed") holds with brokers up or down."""

from __future__ import annotations

import os
import socket
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from stevedore.extension import ExtensionManager


@pytest.fixture
def fake_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> Callable[[str, dict[str, dict[str, str]], dict[str, str]], None]:
    """Install a throwaway distribution with entry points and modules on sys.path.

    ``make(dist_name, {group: {name: "module:attr"}}, {"module.py": source})``
    """
    counter = [0]

    def make(dist: str, groups: dict[str, dict[str, str]], modules: dict[str, str]) -> None:
        counter[0] += 1
        root = tmp_path / f"site{counter[0]}"
        root.mkdir()
        info = root / f"{dist.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        lines = []
        for group, entries in groups.items():
            lines.append(f"[{group}]")
            lines += [f"{name} = {target}" for name, target in entries.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for filename, source in modules.items():
            (root / filename).write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(root))
        # stevedore caches each group's entry points per process; a plugin installed
        # mid-process (only tests do that) needs the cache dropped.
        monkeypatch.setattr(ExtensionManager, "ENTRY_POINT_CACHE", {})

    return make


#: The ports of the brokers the suite uses elsewhere (Redis, RabbitMQ).
BROKER_PORTS = {6379, 5672, 5671, int(os.environ.get("CONVEYOR_TEST_REDIS_PORT", "6379"))}


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A unit test (or a thread it starts) that connects to a broker port fails at
    once, naming the port, even when the broker is up: the core's tests run on
    ``memory://`` and SQLite files only."""
    real = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and len(address) >= 2 and address[1] in BROKER_PORTS:
            raise AssertionError(f"a unit test connected to a broker port {address!r}: "
                                 "tests/unit runs without brokers (use memory:// or "
                                 "sqlite://, or move the test to tests/plugins)")
        real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield
