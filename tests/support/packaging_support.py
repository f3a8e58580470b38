"""Helpers of the packaging tests: build Conveyor's wheels, make fresh virtual
environments from them, run commands there.

Third-party dependencies come from the package index; Conveyor's own distributions
come only from the wheels built here (``--no-index``), so a same-named project on
the index can never be picked up instead. Every subprocess is bounded.
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "contrib" / "example-plugin"


def run(cmd: list[str | Path], *, timeout: float, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> str:
    """Run a command; on failure show its output (pytest would hide a bare exit code)."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}", pytrace=False)
    return proc.stdout


def uv() -> list[str]:
    """The uv running this session (``uv run`` exports it as UV), else the one on PATH."""
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        pytest.fail("uv is needed to build the wheels: python -m pip install uv",
                    pytrace=False)
    return [found]


def wheel_requirements(wheelhouse: Path) -> dict[str, list[Requirement]]:
    """Requires-Dist of every wheel in the wheelhouse, by canonical project name."""
    found: dict[str, list[Requirement]] = {}
    for wheel in wheelhouse.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            meta = email.parser.Parser().parsestr(archive.read(name).decode())
        found[canonicalize_name(meta["Name"])] = [
            Requirement(r) for r in meta.get_all("Requires-Dist") or []]
    return found


def third_party(wheelhouse: Path, roots: list[str]) -> list[str]:
    """The non-Conveyor requirements that installing ``roots`` pulls in, transitively."""
    reqs = wheel_requirements(wheelhouse)
    todo = [Requirement(r) for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    external: set[str] = set()
    while todo:
        req = todo.pop()
        name, extras = canonicalize_name(req.name), frozenset(req.extras)
        if name not in reqs:
            extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            external.add(f"{req.name}{extras}{req.specifier}")
            continue
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for dep in reqs[name]:
            wanted = [{"extra": e} for e in extras] or [{"extra": ""}]
            if dep.marker is None or any(dep.marker.evaluate(env) for env in wanted):
                todo.append(dep)
    return sorted(external)


def make_venv(path: Path, wheelhouse: Path, roots: list[str]) -> Path:
    """A fresh venv with ``roots`` installed by plain pip from the wheelhouse only,
    once their third-party dependencies are there. Returns its bin directory.

    The venv (seeded with pip) and those dependencies come from uv: ``python -m venv``
    and pip would take ten times as long for what is not under test. What is under
    test, pip resolving Conveyor's wheels and their extras, is pip's alone."""
    run([*uv(), "venv", "-q", "--seed", "--python", sys.executable, path], timeout=120)
    bindir = path / "bin"
    deps = third_party(wheelhouse, roots)
    if deps:
        run([*uv(), "pip", "install", "-q", "--python", bindir / "python", *deps],
            timeout=300)
    run([bindir / "python", "-m", "pip", "--disable-pip-version-check", "-q", "install",
         "--no-index", "--find-links", wheelhouse, *roots], timeout=180)
    return bindir


def installed(bindir: Path) -> set[str]:
    out = run([bindir / "python", "-m", "pip", "list", "--format=json"], timeout=60)
    return {canonicalize_name(p["name"]) for p in json.loads(out)}


def build_wheels(out: Path) -> Path:
    """Wheels of every workspace member and of the example plugin, in ``out``."""
    for what in (["--all-packages"], [EXAMPLE]):
        cmd: list[str | Path] = [*uv(), "build", *what, "--wheel", "-o", out]
        run(cmd, cwd=REPO, timeout=180)
    return out
