"""Calls without options (``delay()``): the publish path keeps what it worked out for
a task's last such call (perf), and must drop it whenever anything it depends on
changes: a setting, a hook plugin, a task attribute, the app's connections, a fork."""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import count
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.connection import ConnectionPool
from conveyor.exceptions import OperationalError

_n = count()


@pytest.fixture
def app() -> Iterator[Conveyor]:
    name = f"memory://plain-{next(_n)}"
    app = Conveyor(f"plain{next(_n)}", broker=name, backend=name)
    yield app
    app.close()


def _queued(app: Conveyor, queue: str) -> list[str]:
    """The task names of what waits in ``queue`` (taken off it)."""
    deliveries = app.transport_factory().fetch([queue], limit=100, timeout=0.05)
    return [d.message.headers["task"] for d in deliveries]


@pytest.fixture
def kept(app: Conveyor) -> Any:
    """A task called twice without options: its plan is kept."""
    @app.task(name="p.kept")
    def kept() -> None:
        return None

    kept.delay()
    kept.delay()
    return kept


def test_routes_and_settings_set_after_delay_are_honoured(app: Conveyor, kept: Any) -> None:
    app.conf.task_routes = {"p.kept": {"queue": "by-route"}}
    kept.delay()
    app.conf.update(task_routes=None, task_default_queue="by-default")
    kept.delay()
    assert _queued(app, "celery") == ["p.kept"] * 2
    assert _queued(app, "by-route") == ["p.kept"]
    assert _queued(app, "by-default") == ["p.kept"]


def test_a_task_attribute_set_after_delay_is_honoured(app: Conveyor, kept: Any) -> None:
    kept.queue = "moved"
    kept.ignore_result = True
    assert kept.delay().ignored
    assert _queued(app, "celery") == ["p.kept"] * 2
    assert _queued(app, "moved") == ["p.kept"]


def test_a_task_of_its_own_kind_is_published_as_before(app: Conveyor) -> None:
    """A task class with its own ``execution_defaults`` or equality (so no hash)
    is never taken from what was kept: its defaults are read for every call."""
    from conveyor.task import Task

    wanted = {"queue": "one"}

    class Moving(Task[Any, Any]):
        def execution_defaults(self) -> dict[str, Any]:
            return dict(wanted)  # a new dict each time: read again for every call

        def __eq__(self, other: object) -> bool:
            return self is other

    @app.task(name="p.moving")
    def moving() -> None:
        return None

    moving.__class__ = Moving  # app.task() makes a Task; this one is of its own kind
    moving.delay()
    moving.delay()
    wanted["queue"] = "two"  # no attribute set: only this task's own method knows
    moving.delay()
    assert _queued(app, "one") == ["p.moving"] * 2
    assert _queued(app, "two") == ["p.moving"]


@pytest.fixture
def pools_used(monkeypatch: pytest.MonkeyPatch) -> list[ConnectionPool]:
    """The pool of each publish, in order."""
    used: list[ConnectionPool] = []
    publish = ConnectionPool.publish

    def spy(self: ConnectionPool, *args: Any) -> None:
        used.append(self)
        publish(self, *args)

    monkeypatch.setattr(ConnectionPool, "publish", spy)
    return used


def test_after_close_delay_publishes_through_a_new_pool(
        app: Conveyor, pools_used: list[ConnectionPool], kept: Any) -> None:
    app.close()
    kept.delay()
    first, again, after = pools_used
    assert first is again and after is not first and after is app.pool
    assert _queued(app, "celery") == ["p.kept"] * 3


def test_a_forked_child_publishes_through_its_own_pool(
        app: Conveyor, pools_used: list[ConnectionPool], kept: Any) -> None:
    pool = app.pool
    pid = os.fork()
    if pid == 0:  # the child reports through its exit status
        try:
            kept.delay()
            ok = pools_used[-1] is not pool and pools_used[-1] is app.pool
        except BaseException:  # noqa: BLE001 - reported as a status
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert app.pool is pool and pools_used == [pool, pool]


def test_a_lost_connection_on_a_usual_publish_gets_the_retry_policy(
        app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once connected with its route declared, a publish is the transport's call
    alone; when that fails, the retry policy decides as for any attempt."""
    @app.task(name="p.lost")
    def lost() -> None:
        return None

    lost.delay()  # connects and declares
    with app.pool.acquire() as conn:
        transport = conn.transport
    send = type(transport).publish_many
    calls: list[int] = []

    def lost_once(self: Any, batch: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("connection lost")
        send(self, batch)

    monkeypatch.setattr(type(transport), "publish_many", lost_once)
    lost.delay()
    assert len(calls) == 2  # the lost one, then the retry on a new connection
    assert _queued(app, "celery") == ["p.lost"] * 2

    def refused(self: Any, batch: Any) -> None:
        raise ValueError("not a connection error")

    monkeypatch.setattr(type(transport), "publish_many", refused)
    with pytest.raises(OperationalError, match="not retried"):
        lost.delay()
    with pytest.raises(OperationalError, match="gave up after 2 attempts"):
        monkeypatch.setattr(type(transport), "publish_many",
                            lambda self, batch: (_ for _ in ()).throw(ConnectionError("down")))
        lost.apply_async(retry_policy={"max_retries": 1, "interval_start": 0})


def test_send_task_of_an_unregistered_name_repeats(app: Conveyor) -> None:
    for _ in range(3):
        app.send_task("p.elsewhere")
    assert _queued(app, "celery") == ["p.elsewhere"] * 3
