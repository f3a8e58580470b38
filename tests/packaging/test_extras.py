"""Built wheels install the right plugins, and an outside plugin works from its wheel.

Each test makes a fresh virtual environment with ``python -m venv`` and plain pip.
Third-party dependencies come from the package index; Conveyor's own distributions
come only from the wheels built here (``--no-index``), so a same-named project on
the index can never be picked up instead. Every subprocess is bounded.
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "contrib" / "example-plugin"
FIRST_PARTY_CODECS = {"conveyor-msgpack", "conveyor-yaml", "conveyor-auth", "conveyor-zstd",
                      "conveyor-lz4", "conveyor-brotli"}


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


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of every workspace member and of the example plugin."""
    out = tmp_path_factory.mktemp("wheelhouse")
    run([*uv(), "build", "--all-packages", "--wheel", "-o", out], cwd=REPO, timeout=180)
    run([*uv(), "build", EXAMPLE, "--wheel", "-o", out], cwd=REPO, timeout=120)
    return out


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
            external.add(f"{req.name}{req.specifier}")
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
    """A fresh venv with ``roots`` installed: third-party deps from the index, then
    Conveyor's distributions from the wheelhouse only. Returns its bin directory."""
    run([sys.executable, "-m", "venv", path], timeout=120)
    bindir = path / "bin"
    pip = [bindir / "python", "-m", "pip", "--disable-pip-version-check", "-q"]
    deps = third_party(wheelhouse, roots)
    if deps:
        run([*pip, "install", *deps], timeout=300)
    run([*pip, "install", "--no-index", "--find-links", wheelhouse, *roots], timeout=180)
    return bindir


def installed(bindir: Path) -> set[str]:
    out = run([bindir / "python", "-m", "pip", "list", "--format=json"], timeout=60)
    return {canonicalize_name(p["name"]) for p in json.loads(out)}


def test_extras_install_exactly_their_plugins(tmp_path: Path, wheelhouse: Path) -> None:
    bindir = make_venv(tmp_path / "venv", wheelhouse, ["conveyor[msgpack,zstd]"])
    names = installed(bindir)
    assert {"conveyor", "conveyor-core", "conveyor-std", "conveyor-sqlite",
            "conveyor-msgpack", "conveyor-zstd"} <= names
    assert not (FIRST_PARTY_CODECS - {"conveyor-msgpack", "conveyor-zstd"}) & names
    assert "conveyor-redis" not in names

    listing = run([bindir / "conveyor", "plugins"], timeout=60)
    rows = {tuple(line.split()[:2]): line for line in listing.splitlines()
            if line.startswith("  ")}
    for name, dist in [("msgpack", "conveyor-msgpack"), ("zstd", "conveyor-zstd"),
                       ("zstandard", "conveyor-zstd"), ("json", "conveyor-std")]:
        assert rows[(name, dist)].rstrip().endswith("ok"), listing
    assert not any(name in ("yaml", "auth", "lz4", "brotli") for name, _ in rows), listing

    check = textwrap.dedent("""
        from conveyor.exceptions import PluginError
        from conveyor.plugins import load
        body = [[2, 2], {}, {"callbacks": None}]
        mp = load("conveyor.serializers", "msgpack")(None)
        zs = load("conveyor.compressors", "zstd")(None)
        assert mp.loads(zs.decompress(zs.compress(mp.dumps(body)))) == body
        try:
            load("conveyor.serializers", "yaml")
        except PluginError as exc:
            assert "pip install 'conveyor[yaml]'" in str(exc), exc
        else:
            raise AssertionError("yaml loaded although conveyor-yaml is not installed")
        print("codecs ok")
    """)
    assert run([bindir / "python", "-c", check], timeout=60).strip() == "codecs ok"


def test_example_plugin_works_from_its_wheel(tmp_path: Path, wheelhouse: Path) -> None:
    bindir = make_venv(tmp_path / "venv", wheelhouse,
                       ["conveyor", "conveyor-example-plugin[test]"])
    assert "conveyor-example-plugin" in installed(bindir)

    listing = run([bindir / "conveyor", "plugins"], timeout=60)
    for name in ("compactjson", "deflate", "example-trace"):
        assert any(line.split()[:2] == [name, "conveyor-example-plugin"]
                   and line.rstrip().endswith("ok") for line in listing.splitlines()), listing

    script = tmp_path / "use_example.py"
    script.write_text(textwrap.dedent("""
        import json
        from conveyor import Conveyor

        app = Conveyor("example-user", broker="memory://example", backend="memory://example",
                       accept_content=["json", "compactjson"])
        seen = {}

        @app.task(name="example.add", bind=True)
        def add(self, x, y):
            seen["trace"] = self.request.headers.get("x-example-trace")
            return x + y

        worker = app.Worker(queues=["celery"], concurrency=1, pool="threads")
        with worker.running(timeout=15):
            result = add.apply_async((2, 2), serializer="compactjson", compression="deflate")
            value = result.get(timeout=10)
        print(json.dumps({"value": value, "trace": seen.get("trace")}))
    """))
    out = json.loads(run([bindir / "python", script], timeout=60, cwd=tmp_path))
    assert out["value"] == 4
    assert out["trace"] and len(out["trace"]) == 32  # the plugin's hook stamped it

    # The plugin's own test suite, as its author runs it (pytest, conveyor-pytest).
    report = run([bindir / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", EXAMPLE],
                 timeout=120, cwd=EXAMPLE, env={"PYTHONDONTWRITEBYTECODE": "1"})
    summary = report.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary), report
    assert not re.search(r"\b(failed|errors?|skipped)\b", summary), report
