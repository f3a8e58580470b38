"""Every setting means something: named plugins resolve when a worker starts,
``timezone`` and ``task_queue_max_priority`` are read, ``get()`` in a task is refused
(issue 13)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
import zoneinfo
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor import Conveyor
from conveyor.exceptions import ConfigurationError
from conveyor.settings import DEFAULTS


@pytest.mark.parametrize("setting, value, said", [
    ("accept_content", ["json", "jsonn"], "Did you mean 'json'"),
    ("accept_content", ["application/jsn"], "No installed serializer writes"),
    ("result_accept_content", ["yml"], "'yml'"),
    ("task_serializer", "pickel", "Did you mean 'pickle'"),
    ("result_serializer", "msgpak", "Did you mean 'msgpack'"),
    ("task_compression", "zlb", "Did you mean 'zlib'"),
    ("result_compression", "gzp", "Did you mean 'gzip'"),
    ("task_routers", ["rutes"], "Did you mean 'routes'"),
    ("result_backend", "memroy://x", "Did you mean 'memory'"),
])
def test_a_worker_resolves_every_named_plugin_when_it_starts(setting: str, value: Any,
                                                            said: str) -> None:
    app = Conveyor("preflight", broker="memory://preflight", **{setting: value})
    with pytest.raises(ConfigurationError) as info:
        app.Worker(pool="solo")
    assert f"setting {setting}=" in str(info.value) and said in str(info.value)


def test_the_worker_command_exits_non_zero_naming_the_setting(tmp_path: Path) -> None:
    (tmp_path / "proj_badaccept.py").write_text(textwrap.dedent('''
        from conveyor import Conveyor
        app = Conveyor("proj_badaccept", broker="memory://badaccept",
                       accept_content=["jsonn"])
    '''))
    out = subprocess.run([sys.executable, "-m", "conveyor.cli", "-A", "proj_badaccept",
                          "worker", "--pool", "solo"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode != 0
    assert "accept_content=['jsonn']" in out.stderr and "'json'" in out.stderr


def test_timezone_is_checked_and_writes_computed_times_in_that_zone() -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'Europe/Paris'"):
        Conveyor("tz", broker="memory://tz", timezone="Europe/Pariss")
    app = Conveyor("tz", broker="memory://tz", timezone="Europe/Berlin")
    before = dt.datetime.now(dt.timezone.utc)
    message, *_ = app.prepare("tz.task", (), {}, {"countdown": 60}, {}, None)
    eta = dt.datetime.fromisoformat(message.headers["eta"])
    offset = before.astimezone(zoneinfo.ZoneInfo("Europe/Berlin")).utcoffset()
    assert eta.utcoffset() == offset and offset != dt.timedelta(0)
    assert dt.timedelta(seconds=59) < eta - before < dt.timedelta(seconds=62)
    naive = dt.datetime(2030, 1, 1, 12, 0)  # a naive eta still means UTC
    message, *_ = app.prepare("tz.task", (), {}, {"eta": naive}, {}, None)
    assert message.headers["eta"] == "2030-01-01T12:00:00"


def test_task_queue_max_priority_bounds_priorities() -> None:
    with pytest.raises(ConfigurationError, match="1–255"):
        Conveyor("prio", broker="memory://prio", task_queue_max_priority=300)
    app = Conveyor("prio", broker="memory://prio", task_queue_max_priority=5)
    message, *_ = app.prepare("p.task", (), {}, {"priority": 4}, {}, None)
    assert message.priority == 4
    # Above the maximum counts as the maximum, as on a RabbitMQ priority queue.
    message, *_ = app.prepare("p.task", (), {}, {"priority": 9}, {}, None)
    assert message.priority == 5


def test_get_inside_a_task_is_refused_unless_allowed() -> None:
    app = Conveyor("sync", broker="memory://sync-subtasks")

    @app.task(name="s.one")
    def one() -> int:
        return 1

    @app.task(name="s.waits")
    def waits(allow: bool) -> int:
        return one.delay().get(timeout=10, disable_sync_subtasks=not allow)

    with app.Worker(pool="threads", concurrency=2).running():
        with pytest.raises(RuntimeError, match=r"Never call result.get\(\) inside a task"):
            waits.delay(False).get(timeout=10)
        assert waits.delay(True).get(timeout=10) == 1


def test_every_setting_is_read_somewhere() -> None:
    core = Path(conveyor.__file__).parent
    plugins = core.parents[2] / "plugins"
    sources = [p.read_text() for p in [*core.rglob("*.py"), *plugins.rglob("*.py")]
               if p.name != "settings.py"]
    unread = [name for name in DEFAULTS if not any(name in text for text in sources)]
    assert unread == []
