"""Hook plugins that do not fit the specs are refused; observers cannot break what
they observe (issue 13)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor, hookimpl
from conveyor.exceptions import PluginError
from conveyor.plugins import describe

Make = Callable[[str, dict[str, dict[str, str]], dict[str, str]], None]

BAD_HOOKS = {
    "badarg_hooks.py": '''
        from conveyor import hookimpl
        @hookimpl
        def task_success(not_an_argument):
            pass
    ''',
    "misspelt_hooks.py": '''
        from conveyor import hookimpl
        @hookimpl
        def task_sucess(result):
            pass
    ''',
    "good_hooks.py": '''
        from conveyor import hookimpl
        SEEN = []
        @hookimpl
        def task_success(result):
            SEEN.append(result)
    ''',
}


def test_hook_plugins_that_do_not_fit_are_skipped_and_listed_as_failing(
        fake_plugins: Make, caplog: pytest.LogCaptureFixture) -> None:
    fake_plugins("conveyor-badhooks", {"conveyor.hooks": {
        "badarg": "badarg_hooks", "misspelt": "misspelt_hooks", "good": "good_hooks"}},
        BAD_HOOKS)
    app = Conveyor("badhooks", broker="memory://hookplugins-bad")

    @app.task(name="hp.add")
    def add(x: int, y: int) -> int:
        return x + y

    with caplog.at_level(logging.ERROR), app.Worker(pool="solo").running():
        assert add.delay(2, 2).get(timeout=10) == 4
    import good_hooks  # type: ignore[import-not-found]
    assert good_hooks.SEEN == [4]
    logged = caplog.text
    assert "badarg" in logged and "not_an_argument" in logged
    assert "misspelt" in logged and "Did you mean 'task_success'?" in logged
    rows = {row.info.name: row for row in describe()}
    assert rows["good"].ok
    assert not rows["badarg"].ok and "not_an_argument" in (rows["badarg"].error or "")
    assert not rows["misspelt"].ok and "task_sucess" in (rows["misspelt"].error or "")
    paths = [p for p in sys.path if "site" in os.path.basename(p) and os.path.exists(
        os.path.join(p, "good_hooks.py"))] + [os.environ.get("PYTHONPATH", "")]
    out = subprocess.run([sys.executable, "-m", "conveyor.cli", "plugins"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)})
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()
             if line.startswith("  ")}
    assert lines["good"].endswith(" ok")
    assert "FAILS" in lines["badarg"] and "not_an_argument" in lines["badarg"]
    assert "FAILS" in lines["misspelt"] and "task_sucess" in lines["misspelt"]


def test_an_explicit_plugin_that_does_not_fit_is_an_error_at_once() -> None:
    class Misspelt:
        @hookimpl
        def worker_redy(self) -> None: ...

    with pytest.raises(PluginError, match="Did you mean 'worker_ready'"):
        Conveyor("badhooks", broker="memory://hookplugins-explicit", plugins=[Misspelt()])
    app = Conveyor("badhooks", broker="memory://hookplugins-explicit")
    with pytest.raises(PluginError, match="worker_redy"):
        app.register_plugin(Misspelt())


OBSERVED = ("app_configured", "after_task_publish", "message_received", "task_prerun",
            "worker_start", "worker_ready", "worker_shutdown")


def _raises(hook: str) -> Any:
    def impl(self: Any) -> None:
        self.calls.append(hook)
        raise RuntimeError(f"observer bug in {hook}")
    impl.__name__, impl.__qualname__ = hook, f"Raising.{hook}"
    return hookimpl(impl)


#: Every observer hook in OBSERVED raises; the shaping ones are not implemented.
Raising = type("Raising", (), {"__init__": lambda self: setattr(self, "calls", []),
                               **{hook: _raises(hook) for hook in OBSERVED}})


def test_raising_observers_are_logged_and_change_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    observer = Raising()
    app = Conveyor("observers", broker="memory://hookplugins-observers",
                   plugins=[observer])
    runs: list[int] = []

    @app.task(name="hp.count")
    def count(n: int) -> int:
        runs.append(n)
        return n

    with caplog.at_level(logging.ERROR):
        result = count.delay(7)  # the broker took it: delay() returns
        worker = app.Worker(pool="solo")
        with worker.running(timeout=10):
            assert result.get(timeout=10) == 7
            assert count.delay(8).get(timeout=10) == 8
    assert worker.stopped.is_set() and runs == [7, 8]
    assert set(OBSERVED) <= set(observer.calls)
    assert "Lost the broker connection" not in caplog.text
    assert "Hook worker_ready of plugin" in caplog.text
    assert "Raising.worker_ready" in caplog.text


def test_a_raising_shaping_hook_still_aborts_the_publish() -> None:
    class Refuse:
        @hookimpl
        def before_task_publish(self, name: str) -> None:
            raise PermissionError(f"not sending {name}")

    app = Conveyor("observers", broker="memory://hookplugins-shaping", plugins=[Refuse()])

    @app.task(name="hp.never")
    def never() -> None: ...

    with pytest.raises(PermissionError, match="not sending hp.never"):
        never.delay()
