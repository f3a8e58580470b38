"""The resolution order, option by option and layer by layer (docs/architecture.md, "The core")."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.exceptions import ConfigurationError, UnknownOptionError
from conveyor.options import DEFAULTS, SETTINGS, TASK_ATTRIBUTES, resolve
from conveyor.settings import Settings

LAYERS = ("call", "signature", "task", "router", "settings")


def value_for(option: str, layer: int) -> Any:
    """A valid, distinct value of ``option`` for layer number ``layer``."""
    if option == "priority":
        return 10 + layer
    if option in ("countdown", "time_limit", "soft_time_limit"):
        return 100.0 + layer
    if option in ("eta",):
        return dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=layer)
    if option == "expires":
        return 1000 + layer
    if option in ("retry", "ignore_result"):
        return bool(layer % 2)
    if option == "retry_policy":
        return {"max_retries": layer}
    if option == "headers":
        return {"x-layer": layer}
    return f"{option}-{LAYERS[layer]}"


def layers_of(option: str) -> list[str]:
    found = ["call", "signature"]
    if option in TASK_ATTRIBUTES:
        found.append("task")
    found.append("router")
    if option in SETTINGS:
        found.append("settings")
    return found


CASES = [(option, layer) for option in DEFAULTS for layer in layers_of(option)]


@pytest.mark.parametrize(("option", "winner"), CASES, ids=[f"{o}-{w}" for o, w in CASES])
def test_highest_layer_that_gives_a_value_wins(option: str, winner: str) -> None:
    present = layers_of(option)
    present = present[present.index(winner):]  # the winner and every lower layer
    values = {layer: value_for(option, LAYERS.index(layer)) for layer in present}
    call = {option: values["call"]} if "call" in values else {}
    sig = {option: values["signature"]} if "signature" in values else {}
    task = SimpleNamespace(**({option: values["task"]} if "task" in values else {}))
    routed = {option: values["router"]} if "router" in values else None
    conf = Settings()
    if "settings" in values:
        conf[SETTINGS[option]] = values["settings"]
    seen: list[dict[str, Any]] = []

    def router(so_far: Any) -> Any:
        seen.append(dict(so_far))
        return routed

    out = resolve(call, sig, task, router, conf)
    assert out[option] == values[winner]
    # The router sees what the call, signature and task gave, not lower layers.
    assert (option in seen[0]) == (winner in ("call", "signature", "task"))


@pytest.mark.parametrize("option", sorted(DEFAULTS))
def test_built_in_default_when_no_layer_gives_one(option: str) -> None:
    out = resolve({}, {}, None, None, Settings())
    assert out[option] == DEFAULTS[option]


def test_app_settings_defaults_match_the_documented_ones() -> None:
    out = resolve({}, {}, None, None, Settings())
    assert (out["serializer"], out["queue"], out["ignore_result"]) == ("json", "celery", False)
    assert out["retry_policy"] == {"max_retries": 3, "interval_start": 0,
                                   "interval_step": 0.2, "interval_max": 0.2,
                                   "retry_errors": None}


def test_unknown_option_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="'countdwn'.*Did you mean 'countdown'"):
        resolve({"countdwn": 3}, {}, None, None, Settings())
    with pytest.raises(UnknownOptionError, match="signature"):
        resolve({}, {"qeue": "x"}, None, None, Settings())


def test_unknown_option_raises_before_anything_is_sent() -> None:
    app = Conveyor("opt", broker="memory://opt-unknown")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match="quue"):
        add.apply_async((1, 2), quue="x")
    assert app.transport_factory().depth("celery") == 0


@pytest.mark.parametrize("bad", [-1, 256, 3.5, "high", True])
def test_priority_outside_range_is_a_value_error(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="priority"):
        resolve({"priority": bad}, {}, None, None, Settings())


def test_a_map_is_routed_by_its_tasks_name_as_in_celery() -> None:
    """``task_routes`` for ``proj.add`` route ``add.map(...)``/``add.chunks(...)``
    (``celery.map``/``celery.starmap`` messages) as they route ``add`` itself."""
    app = Conveyor("opt", broker="memory://opt-map-routes",
                   task_routes={"proj.*": {"queue": "proj"}})

    @app.task(name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    for sig in (add.map([1]), add.starmap([(1, 2)]), *add.chunks([(1, 2)], 1).group().tasks):
        message, route, _due, _opts = app.prepare(sig.name, (), sig.kwargs, {}, {}, None)
        assert message.headers["task"] in ("celery.map", "celery.starmap")
        assert route.queue == "proj"
    _m, route, _d, _o = app.prepare("celery.map", (), {"task": {}, "it": []}, {}, {}, None)
    assert route.queue == "celery"  # no task to route by: the default queue


def test_router_from_task_routes_and_hook_order() -> None:
    app = Conveyor("opt", broker="memory://opt-routes",
                   task_routes={"proj.*": {"queue": "proj"}, "other.x": "otherq"})

    @app.task(name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    message, route, _due, _opts = app.prepare("proj.add", (1, 2), {}, {}, {}, add)
    assert route.queue == "proj"
    _m, route, _d, _o = app.prepare("other.x", (), {}, {}, {}, None)
    assert route.queue == "otherq"
    _m, route, _d, _o = app.prepare("proj.add", (), {}, {"queue": "explicit"}, {}, add)
    assert route.queue == "explicit"
