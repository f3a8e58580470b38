"""Hook specs: a plugin observes and shapes the lifecycle through pluggy."""

from __future__ import annotations

import inspect
from typing import Any

import pluggy
import pytest

from conveyor import Conveyor, hookimpl, hookspecs


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def app_configured(self, app: Conveyor) -> None:
        self.calls.append("app_configured")

    @hookimpl
    def before_task_publish(self, message: Any, name: str) -> None:
        self.calls.append(f"before_task_publish:{name}")
        message.headers["x-trace"] = "span-7"

    @hookimpl
    def after_task_publish(self, name: str) -> None:
        self.calls.append("after_task_publish")

    @hookimpl
    def message_received(self, message: Any) -> None:
        self.calls.append(f"message_received:{message.headers.get('x-trace')}")

    @hookimpl
    def task_prerun(self, task_id: str) -> None:
        self.calls.append("task_prerun")

    @hookimpl
    def task_success(self, result: Any) -> None:
        self.calls.append(f"task_success:{result}")

    @hookimpl
    def task_failure(self, exception: BaseException) -> None:
        self.calls.append(f"task_failure:{type(exception).__name__}")

    @hookimpl
    def task_postrun(self, state: str) -> None:
        self.calls.append(f"task_postrun:{state}")

    @hookimpl
    def worker_ready(self) -> None:
        self.calls.append("worker_ready")

    @hookimpl
    def worker_shutdown(self) -> None:
        self.calls.append("worker_shutdown")


class Router:
    @hookimpl
    def route_task(self, name: str) -> dict[str, Any] | None:
        return {"queue": "hooked"} if name.endswith("routed") else None


def test_lifecycle_hooks_fire_in_order_and_may_edit_headers() -> None:
    rec = Recorder()
    app = Conveyor("hooks", broker="memory://hooks-1", plugins=[rec])

    @app.task(name="h.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="h.boom")
    def boom() -> None:
        raise KeyError("x")

    with app.Worker(pool="solo").running():
        assert add.delay(1, 2).get(timeout=5) == 3
        with pytest.raises(KeyError):
            boom.delay().get(timeout=5)
    assert rec.calls[0] == "app_configured"
    assert rec.calls[1:8] == [
        "before_task_publish:h.add", "after_task_publish", "worker_ready",
        "message_received:span-7", "task_prerun", "task_success:3", "task_postrun:SUCCESS",
    ] or rec.calls.index("worker_ready") < rec.calls.index("message_received:span-7")
    assert "task_failure:KeyError" in rec.calls and "task_postrun:FAILURE" in rec.calls
    assert rec.calls[-1] == "worker_shutdown"


def test_route_task_hook_routes_when_no_router_does() -> None:
    app = Conveyor("hooks", broker="memory://hooks-2", plugins=[Router()])
    _m, route, _d, _o = app.prepare("x.routed", (), {}, {}, {}, None)
    assert route.queue == "hooked"
    _m, route, _d, _o = app.prepare("x.other", (), {}, {}, {}, None)
    assert route.queue == "celery"


def test_a_raising_observer_does_not_fail_the_task() -> None:
    class Broken:
        @hookimpl
        def task_success(self) -> None:
            raise RuntimeError("observer bug")

    app = Conveyor("hooks", broker="memory://hooks-3", plugins=[Broken()])

    @app.task(name="h.one")
    def one() -> int:
        return 1

    with app.Worker(pool="solo").running():
        assert one.delay().get(timeout=5) == 1


def test_hook_entry_point_plugins_are_registered_at_start(fake_plugins: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake_plugins("conveyor-tracer", {"conveyor.hooks": {"tracer": "tracer_mod"}},
                 {"tracer_mod.py": '''
                     from conveyor import hookimpl
                     SEEN = []
                     @hookimpl
                     def before_task_publish(message):
                         message.headers["x-tracer"] = "on"
                 '''})
    app = Conveyor("hooks", broker="memory://hooks-4")
    message, *_ = app.prepare("a.b", (), {}, {}, {}, None)
    app.hooks.before_task_publish(app=app, name="a.b", message=message, route=None, options={})
    assert message.headers["x-tracer"] == "on"
    monkeypatch.setenv("CONVEYOR_DISABLE_PLUGIN_AUTOLOAD", "1")
    app2 = Conveyor("hooks", broker="memory://hooks-5")
    assert "tracer" not in dict(app2.plugin_manager.list_name_plugin())


def test_every_spec_is_documented_and_impls_match_specs() -> None:
    specs = [f for n, f in vars(hookspecs).items()
             if inspect.isfunction(f) and hasattr(f, "conveyor_spec")]
    assert len(specs) >= 15
    for spec in specs:
        assert spec.__doc__ and len(spec.__doc__.split()) > 5, spec.__name__
    pm = pluggy.PluginManager("conveyor")
    pm.add_hookspecs(hookspecs)
    pm.register(Recorder())
    pm.register(Router())
    pm.check_pending()

    class Wrong:
        @hookimpl
        def task_success(self, not_an_argument: Any) -> None: ...

    with pytest.raises(pluggy.PluginValidationError, match="not_an_argument"):
        pm.register(Wrong())


class Publishing:
    """The hooks of the publish path, recording their calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def route_task(self, name: str) -> None:
        self.calls.append(f"route_task:{name}")

    @hookimpl
    def before_task_publish(self, name: str) -> None:
        self.calls.append(f"before_task_publish:{name}")

    @hookimpl
    def after_task_publish(self, name: str) -> None:
        self.calls.append(f"after_task_publish:{name}")


@pytest.mark.parametrize("how", ["register_plugin", "plugin_manager"])
def test_a_plugin_registered_after_publishing_began_is_called_until_unregistered(
        how: str) -> None:
    # The publish path keeps which hooks have implementations, and what calls
    # without options use (perf); a plugin that comes later, through the app or
    # straight through its plugin manager, or goes, is seen at the next message,
    # buffered or not, delay() or apply_async().
    app = Conveyor("hooks", broker=f"memory://hooks-late-{how}")

    @app.task(name="h.late")
    def late() -> None:
        return None

    late.apply_async(queue="q")
    with app.pool.acquire() as conn, late.get_publisher(conn) as pub:
        late.apply_async(queue="q", publisher=pub)
    late.delay()
    late.delay()  # what calls without options use is kept from here (perf)
    plugin = Publishing()
    if how == "register_plugin":
        app.register_plugin(plugin, "late")
    else:
        app.plugin_manager.register(plugin, "late")
    once = ["route_task:h.late", "before_task_publish:h.late", "after_task_publish:h.late"]
    late.apply_async(queue="q")
    assert plugin.calls == once
    with app.pool.acquire() as conn, late.get_publisher(conn) as pub:
        late.apply_async(queue="q", publisher=pub)
        assert plugin.calls == once + once[:2]
    assert plugin.calls == once + once
    late.delay()
    assert plugin.calls == once + once + once
    app.plugin_manager.unregister(plugin)
    late.apply_async(queue="q")
    with app.pool.acquire() as conn, late.get_publisher(conn) as pub:
        late.apply_async(queue="q", publisher=pub)
    late.delay()
    assert plugin.calls == once + once + once
    app.close()
