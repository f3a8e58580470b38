"""The loader: lazy, one name at a time, and every failure a clear PluginError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.exceptions import PluginError
from conveyor.plugins import describe, find, load

Make = Callable[[str, dict[str, dict[str, str]], dict[str, str]], None]


def test_first_party_plugins_arrive_through_entry_points() -> None:
    names = {(p.name, p.distribution) for p in find("conveyor.serializers")}
    assert ("json", "conveyor-std") in names and ("pickle", "conveyor-std") in names
    compressors = {p.name for p in find("compressors") if p.distribution == "conveyor-std"}
    assert compressors == {"zlib", "gzip", "bzip2", "lzma"}
    assert "memory" in {p.name for p in find("transports")}
    assert "memory" in {p.name for p in find("backends")}


def test_misspelt_name_gets_did_you_mean_and_the_installed_list() -> None:
    with pytest.raises(PluginError) as info:
        load("conveyor.serializers", "jsn")
    text = str(info.value)
    assert "'jsn'" in text and "conveyor.serializers" in text
    assert "Did you mean 'json'" in text and "Installed: " in text and "pickle" in text


def test_install_hints_name_only_extras_that_exist() -> None:
    # No extra provides a nats transport: no hint, never a fake extra.
    with pytest.raises(PluginError) as info:
        load("conveyor.transports", "nats")
    assert "pip install" not in str(info.value), str(info.value)


def test_install_hints_come_from_the_distributions_extras(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_plugins: Make) -> None:
    # A conveyor distribution declaring a "nats" extra (as a later release would),
    # found first on sys.path, and the plugin of that extra installed broken.
    info = tmp_path / "conveyor-9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: conveyor\nVersion: 9.9\n"
        "Requires-Dist: conveyor-core\n"
        "Requires-Dist: conveyor-nats==9.9; extra == 'nats'\n"
        "Requires-Dist: conveyor-nats==9.9; extra == 'all'\n"
        "Requires-Dist: conveyor-redis==9.9; extra == 'all'\n"
        "Provides-Extra: nats\nProvides-Extra: all\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"pip install 'conveyor\[nats\]'"):
        load("conveyor.transports", "nats")
    with pytest.raises(PluginError, match=r"pip install 'conveyor\[nats\]'"):
        load("conveyor.transports", "natss")  # a name extending the extra's (as rediss)
    fake_plugins("conveyor-nats", {"conveyor.transports": {"jetstream": "nats_mod:T"}},
                 {"nats_mod.py": "import nats_client_not_installed_xyz\n"})
    with pytest.raises(PluginError) as failed:
        load("conveyor.transports", "jetstream")  # its library is missing
    assert "pip install 'conveyor[nats]'" in str(failed.value)


def test_broken_plugin_is_wrapped_with_its_cause(fake_plugins: Make) -> None:
    fake_plugins("broken-plugin", {"conveyor.compressors": {"brokenz": "brokenz_mod:Comp"}},
                 {"brokenz_mod.py": "import not_a_real_module_xyz\n"})
    with pytest.raises(PluginError) as info:
        load("conveyor.compressors", "brokenz")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert "broken-plugin" in str(info.value) and "brokenz" in str(info.value)


def test_a_backend_without_capabilities_is_refused_at_load_saying_what_to_add(
        fake_plugins: Make) -> None:
    fake_plugins("conveyor-bare", {"conveyor.backends": {"barestore": "bare_mod:Bare"}},
                 {"bare_mod.py": """
                     class Bare:  # no capabilities
                         def __init__(self, url, app):
                             self.url = url
                 """})
    app = Conveyor("bare", broker="memory://bare", backend="barestore://")
    for _ in range(2):  # every access, not only the first
        with pytest.raises(PluginError, match=r"barestore:// \(bare_mod\.Bare\) declares "
                                              r"no capabilities.*BackendCapabilities"):
            app.backend


def test_one_broken_plugin_breaks_nothing_else(fake_plugins: Make) -> None:
    fake_plugins("broken-plugin", {"conveyor.serializers": {"broken": "nope_mod_xyz:S"}}, {})
    rows = {r.info.name: r for r in describe()}
    assert rows["broken"].ok is False and "ModuleNotFoundError" in (rows["broken"].error or "")
    assert rows["json"].ok is True
    app = Conveyor("p", broker="memory://plugins-broken")

    @app.task
    def echo(x: Any) -> Any:
        return x

    with app.Worker(pool="solo").running():
        assert echo.delay(5).get(timeout=5) == 5


def test_third_party_serializer_is_used_by_name(fake_plugins: Make) -> None:
    fake_plugins("conveyor-rot13", {"conveyor.serializers": {"rot13json": "rot_mod:Rot"}},
                 {"rot_mod.py": '''
                     import codecs, json
                     class Rot:
                         content_type = "application/x-rot13-json"
                         content_encoding = "utf-8"
                         def __init__(self, app=None): pass
                         def dumps(self, obj): return codecs.encode(json.dumps(obj), "rot13").encode()
                         def loads(self, data): return json.loads(codecs.decode(data.decode(), "rot13"))
                 '''})
    app = Conveyor("p", broker="memory://plugins-rot", accept_content=["json", "rot13json"])

    @app.task
    def echo(x: Any) -> Any:
        return x

    with app.Worker(pool="solo").running():
        result = echo.apply_async(("hello",), serializer="rot13json")
        assert result.get(timeout=5) == "hello"


def test_importing_and_configuring_loads_no_plugin() -> None:
    code = (
        "import sys\n"
        "from conveyor import Conveyor\n"
        "app = Conveyor('lazy', broker='memory://lazy', task_serializer='json')\n"
        "app.conf.update(task_compression='zlib')\n"
        "@app.task\n"
        "def add(x, y): return x + y\n"
        "print(sorted(m for m in sys.modules if m.startswith('conveyor_')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_conveyor_plugins_command_lists_std_plugins_and_exits_zero(fake_plugins: Make) -> None:
    out = subprocess.run([sys.executable, "-m", "conveyor.cli", "plugins"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for name in ("json", "pickle", "zlib", "gzip", "bzip2", "lzma", "memory"):
        assert any(line.split()[:2] == [name, "conveyor-std"] for line in lines), name
    # memory is listed as a transport and as a backend
    assert sum(1 for line in lines if line.split()[:1] == ["memory"]) == 2
