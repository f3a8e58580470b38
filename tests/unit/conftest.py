"""Fixtures for core tests: fake entry points, so tests never depend on what is
installed beyond the workspace."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

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
