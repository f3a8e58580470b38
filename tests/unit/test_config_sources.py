"""config_from_object, autodiscover_tasks and shared_task: what a Celery project
moving over relies on."""

from __future__ import annotations

import sys
import textwrap
import types
import uuid
from pathlib import Path

import pytest

from conveyor import Conveyor, shared_task
from conveyor.exceptions import ConfigurationError, NotRegistered, UnknownOptionError


def _app() -> Conveyor:
    name = f"cfg-{uuid.uuid4().hex[:6]}"
    return Conveyor(name, broker=f"memory://{name}", backend=f"memory://{name}")


def test_namespaced_keys_become_settings_and_the_rest_is_ignored() -> None:
    app = _app()
    app.config_from_object({"CELERY_BROKER_URL": "memory://ns", "CELERY_TASK_SERIALIZER":
                            "json", "CELERY_TASK_DEFAULT_QUEUE": "web", "DEBUG": True,
                            "SECRET_KEY": "x", "CELERY": {"not": "a setting"}},
                           namespace="CELERY")
    assert app.conf.broker_url == "memory://ns"
    assert app.conf.task_default_queue == "web"


def test_an_unknown_key_inside_the_namespace_says_did_you_mean_and_applies_nothing() -> None:
    app = _app()
    with pytest.raises(UnknownOptionError) as info:
        app.config_from_object({"CELERY_TASK_DEFAULT_QUEUE": "web",
                                "CELERY_TASK_SERIALISER": "json"}, namespace="CELERY")
    text = str(info.value)
    assert "CELERY_TASK_SERIALISER" in text and "task_serializer" in text
    assert "CELERY_TASK_SERIALIZER" in text
    assert app.conf.task_default_queue == "celery"


def test_a_module_without_namespace_reads_lower_case_names(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    name = f"celeryconfig_{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import os
        from datetime import timedelta
        broker_url = "memory://mod"
        result_expires = int(timedelta(hours=2).total_seconds())
        def helper():
            return 1
        NOT_A_SETTING = 1
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    app = _app()
    app.config_from_object(name)
    assert (app.conf.broker_url, app.conf.result_expires) == ("memory://mod", 7200)
    other = _app()
    other.config_from_object(sys.modules[name])
    assert other.conf.broker_url == "memory://mod"


def test_dotted_paths_name_an_attribute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    name = f"proj_{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{name}.py").write_text(
        "class Config:\n    broker_url = 'memory://cls'\n    task_acks_late = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec in (f"{name}:Config", f"{name}.Config"):
        app = _app()
        app.config_from_object(spec)
        assert (app.conf.broker_url, app.conf.task_acks_late) == ("memory://cls", True)
    with pytest.raises(ConfigurationError, match="has no attribute 'Nope'"):
        _app().config_from_object(f"{name}:Nope")
    with pytest.raises(ConfigurationError, match="cannot import"):
        _app().config_from_object("no_such_module_anywhere.settings")


def test_an_unknown_lower_case_name_without_namespace_is_an_error() -> None:
    conf = types.SimpleNamespace(broker_url="memory://x", worker_concurency=4)
    with pytest.raises(UnknownOptionError, match="worker_concurrency"):
        _app().config_from_object(conf)


def _package(root: Path, name: str, tasks: str | None) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    if tasks is not None:
        (root / name / "tasks.py").write_text(textwrap.dedent(tasks))


def test_autodiscover_imports_tasks_modules_lazily(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    tag = uuid.uuid4().hex[:6]
    orders, empty = f"orders_{tag}", f"empty_{tag}"
    _package(tmp_path, orders, """
        from conveyor import shared_task

        @shared_task
        def total(prices):
            return sum(prices)
    """)
    _package(tmp_path, empty, None)
    monkeypatch.syspath_prepend(str(tmp_path))
    app = _app()
    app.autodiscover_tasks(lambda: [orders, empty])
    assert f"{orders}.tasks" not in sys.modules  # lazily: nothing imported yet
    task = app.tasks[f"{orders}.tasks.total"]
    assert f"{orders}.tasks" in sys.modules and task.app is app
    assert task([1, 2, 3]) == 6
    with pytest.raises(NotRegistered, match="autodiscover_tasks"):
        app.tasks["nowhere.task"]


def test_an_import_error_inside_a_tasks_module_is_not_hidden(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    broken = f"broken_{uuid.uuid4().hex[:6]}"
    _package(tmp_path, broken, "import module_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = _app()
    app.autodiscover_tasks([broken])
    with pytest.raises(ModuleNotFoundError, match="module_that_is_not_installed"):
        app.finalize()


def test_shared_task_binds_to_the_current_app_when_used() -> None:
    @shared_task(name=f"shared.mul.{uuid.uuid4().hex[:6]}", queue="math")
    def mul(x: int, y: int) -> int:
        return x * y

    first = _app()
    assert mul(3, 4) == 12 and mul.app is first
    second = _app()  # the current app now
    assert mul.app is second and mul.queue == "math"
    assert first.tasks[mul.name] is not second.tasks[mul.name]
