"""Built wheels install the right plugins, from the umbrella and from the core.

Each test makes a fresh virtual environment where plain pip installs Conveyor's
wheels (see ``packaging_support``). The example plugin is installed and tested the way its
README says, by ``test_documented_commands.py`` (its printed commands, in a fresh
environment holding these wheels).
"""

from __future__ import annotations

import re
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging_support import REPO, installed, make_venv, run, third_party, uv

pytestmark = pytest.mark.slow

FIRST_PARTY_CODECS = {"conveyor-msgpack", "conveyor-yaml", "conveyor-auth", "conveyor-zstd",
                      "conveyor-lz4", "conveyor-brotli"}


def _extras(pyproject: Path) -> dict[str, set[str]]:
    """Each extra of a pyproject, as the Conveyor distributions it names (a reference
    to the distribution's own extras followed, conveyor-core[std] itself left out)."""
    meta = tomllib.loads(pyproject.read_text())["project"]
    raw = meta["optional-dependencies"]

    def names(extra: str) -> set[str]:
        out: set[str] = set()
        for req in map(Requirement, raw[extra]):
            if req.name == meta["name"]:
                for inner in req.extras:
                    out |= names(inner)
            elif req.name != "conveyor-core":
                out.add(req.name)
        return out
    return {extra: names(extra) for extra in raw}


@pytest.mark.parametrize("extra", sorted(_extras(REPO / "pyproject.toml")))
def test_the_core_has_every_extra_the_umbrella_has(extra: str) -> None:
    """``conveyor-core[X]`` installs what ``conveyor[X]`` does, beside the standard
    plugins (the umbrella's own dependencies), for every X: the README says so."""
    std = {Requirement(r).name for r in tomllib.loads(
        (REPO / "pyproject.toml").read_text())["project"]["dependencies"]} - {"conveyor-core"}
    core = _extras(REPO / "core" / "pyproject.toml")
    assert core["std"] == std
    assert core.get(extra) == _extras(REPO / "pyproject.toml")[extra] | std, core


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


def test_core_extras_install_what_the_umbrella_extras_do(tmp_path: Path,
                                                         wheelhouse: Path) -> None:
    """``conveyor-core[redis,zstd]`` (pip resolves the extra's reference to its own
    ``std`` extra and the cycle through conveyor-redis) is conveyor[redis,zstd]
    without the umbrella distribution."""
    bindir = make_venv(tmp_path / "venv", wheelhouse, ["conveyor-core[redis,zstd]"])
    names = installed(bindir)
    assert {"conveyor-core", "conveyor-std", "conveyor-sqlite", "conveyor-redis",
            "conveyor-zstd"} <= names
    assert "conveyor" not in names
    assert not (FIRST_PARTY_CODECS - {"conveyor-zstd"}) & names
    listing = run([bindir / "conveyor", "plugins"], timeout=60)
    for name, dist in [("redis", "conveyor-redis"), ("zstd", "conveyor-zstd"),
                       ("json", "conveyor-std"), ("sqlite", "conveyor-sqlite")]:
        assert re.search(rf"^  {name} +{dist} .* ok$", listing, re.M), listing
    assert "None installed" not in listing


def test_bare_core_says_what_to_install_then_uv_adds_extras(tmp_path: Path,
                                                            wheelhouse: Path) -> None:
    bindir = make_venv(tmp_path / "venv", wheelhouse, ["conveyor-core"])
    assert not {n for n in installed(bindir) if n.startswith("conveyor-")} - {"conveyor-core"}
    hint = "pip install conveyor or pip install 'conveyor-core[std]'"
    listing = run([bindir / "conveyor", "plugins"], timeout=60)
    assert "None installed in conveyor.serializers" in listing and hint in listing, listing

    send = textwrap.dedent("""
        from conveyor import Conveyor
        from conveyor.exceptions import PluginError
        app = Conveyor("bare", broker="memory://bare")
        try:
            app.send_task("bare.add", (2, 2))
        except PluginError as exc:
            print(exc)
    """)
    error = run([bindir / "python", "-c", send], timeout=60, cwd=tmp_path)
    assert "Installed: none." in error and hint in error, error

    # uv resolves the same self-referencing extras (Conveyor's wheels only).
    deps = third_party(wheelhouse, ["conveyor-core[redis,zstd]"])
    run([*uv(), "pip", "install", "-q", "--python", bindir / "python", *deps], timeout=300)
    run([*uv(), "pip", "install", "--python", bindir / "python", "--no-index",
         "--find-links", wheelhouse, "conveyor-core[redis,zstd]"], timeout=120)
    assert {"conveyor-std", "conveyor-redis", "conveyor-zstd"} <= installed(bindir)
    assert "None installed" not in run([bindir / "conveyor", "plugins"], timeout=60)


def test_amqp_extra_installs_the_rabbitmq_plugins(tmp_path: Path, wheelhouse: Path) -> None:
    """``conveyor[amqp]`` brings conveyor-amqp and pika; ``conveyor plugins`` lists the
    amqp/amqps transports and the rpc backend as loading."""
    bindir = make_venv(tmp_path / "venv", wheelhouse, ["conveyor[amqp]"])
    names = installed(bindir)
    assert {"conveyor-amqp", "pika"} <= names and "conveyor-redis" not in names
    listing = run([bindir / "conveyor", "plugins"], timeout=60)
    for name in ("amqp", "amqps", "rpc"):
        assert re.search(rf"^  {name} +conveyor-amqp .* ok$", listing, re.M), listing
