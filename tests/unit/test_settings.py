from __future__ import annotations

import pytest

from conveyor import Conveyor
from conveyor.exceptions import UnknownOptionError


def test_unknown_setting_in_constructor_suggests_the_closest() -> None:
    with pytest.raises(UnknownOptionError, match="Did you mean 'task_serializer'"):
        Conveyor("s", task_serialiser="json")


def test_unknown_setting_in_update_applies_nothing() -> None:
    app = Conveyor("s", broker="memory://s")
    with pytest.raises(UnknownOptionError, match="result_expries"):
        app.conf.update(task_default_queue="q", result_expries=10)
    assert app.conf.task_default_queue == "celery"


def test_unknown_setting_on_assignment_and_read() -> None:
    app = Conveyor("s", broker="memory://s")
    with pytest.raises(UnknownOptionError, match="Did you mean 'broker_pool_limit'"):
        app.conf.broker_pool_limt = 3
    with pytest.raises(AttributeError, match="accept_content"):
        app.conf.accept_contents  # noqa: B018
    app.conf["task_default_queue"] = "x"
    assert app.conf.task_default_queue == "x"


def test_environment_gives_broker_and_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "memory://env-broker")
    monkeypatch.setenv("CONVEYOR_RESULT_BACKEND", "memory://env-backend")
    app = Conveyor("s")
    assert app.broker_url == "memory://env-broker"
    assert app.backend_url == "memory://env-backend"


def test_defaults_are_the_embedded_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_BROKER_URL", raising=False)
    monkeypatch.delenv("CONVEYOR_RESULT_BACKEND", raising=False)
    app = Conveyor("s")
    assert app.broker_url == "sqlite:///conveyor.sqlite3"
    assert app.backend_url == "sqlite:///conveyor.sqlite3"


def test_backend_follows_a_broker_whose_scheme_has_a_backend() -> None:
    assert Conveyor("s", broker="memory://b1").backend_url == "memory://b1"


def test_defaults_are_not_shared_between_apps() -> None:
    a, b = Conveyor("a", broker="memory://a"), Conveyor("b", broker="memory://b")
    a.conf.accept_content.append("pickle")
    assert b.conf.accept_content == ["json"]
