"""The canvas API without a broker: what a signature, chain, group and chord are,
how they compose (as in Celery), and how they read Celery's own wire form."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor, Signature, chain, chord, group, signature
from conveyor.canvas import from_dict
from conveyor.exceptions import ConfigurationError
from wire_samples import sample

_n = iter(range(10**6))


@pytest.fixture
def app() -> Iterator[Conveyor]:
    name = f"memory://canvas-{next(_n)}"
    app = Conveyor(f"canvas{next(_n)}", broker=name, backend=name)

    @app.task(name="c.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="c.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    yield app
    app.close()


def sig(app: Conveyor, *args: Any, name: str = "c.add", **options: Any) -> Signature[Any]:
    return app.signature(name, args, **options)


def test_partial_application_prepends_args_and_merges_kwargs(app: Conveyor) -> None:
    s = app.signature("c.add", (2,), {"a": 1})
    clone = s.clone((1,), {"b": 2}, queue="q")
    assert clone.args == [1, 2] and clone.kwargs == {"a": 1, "b": 2}
    assert clone.options == {"queue": "q"} and s.options == {} and s.args == [2]
    # An immutable signature ignores what it is given.
    frozen = app.tasks["c.add"].si(1, 2)
    assert frozen.clone((99,)).args == [1, 2] and frozen.immutable
    # set() adds options in place and refuses unknown ones.
    assert s.set(countdown=3) is s and s.options["countdown"] == 3
    with pytest.raises(TypeError, match="contdown"):
        s.set(contdown=3)
    assert app.signature("c.add", (2,))(3) == 5  # calling runs here with the partial args


def test_replace_gives_a_copy_with_new_parts_and_id_reads_the_task_id(
        app: Conveyor) -> None:
    s = sig(app, 1, 2, queue="q")
    assert s.id is None and s.freeze("fixed").id == "fixed" == s.id
    other = s.replace(args=(5,))
    assert (other.args, other.kwargs, other.options) == ([5], {}, s.options)
    other = s.replace(kwargs={"y": 1}, options={"countdown": 3})
    assert (other.args, other.kwargs, other.options) == ([1, 2], {"y": 1}, {"countdown": 3})
    assert s.args == [1, 2] and s.options == {"queue": "q", "task_id": "fixed"}
    with pytest.raises(TypeError, match="contdown"):
        s.replace(options={"contdown": 3})


def test_on_error_links_the_errback_and_returns_the_signature(app: Conveyor) -> None:
    errback = sig(app, name="c.tsum")
    for canvas in (sig(app, 1, 1), chain(sig(app, 1, 1), sig(app, 2))):
        assert canvas.on_error(errback) is canvas
    one, two = chain(sig(app, 1, 1), sig(app, 2)).on_error(errback).tasks
    assert one.options["link_error"] == [errback] == two.options["link_error"]


def test_skew_spreads_the_members_countdowns_as_celery_does(app: Conveyor) -> None:
    g = group(sig(app, i, i) for i in range(5))
    assert g.skew(start=1, stop=3, step=1) is g
    assert [t.options["countdown"] for t in g.tasks] == [1, 2, 3, 3, 3]
    spread = group(sig(app, i, i) for i in range(3)).skew(step=0.5)
    assert [t.options["countdown"] for t in spread.tasks] == [1, 1.5, 2]
    parts = app.tasks["c.add"].chunks([(i, i) for i in range(4)], 2).group().skew(start=0)
    assert [t.options["countdown"] for t in parts.tasks] == [0, 1]


def test_group_piped_into_a_task_is_a_chord(app: Conveyor) -> None:
    c = group(sig(app, 1, 1), sig(app, 2, 2)) | sig(app, name="c.tsum")
    assert isinstance(c, chord)
    assert [t.args for t in c.header.tasks] == [[1, 1], [2, 2]]
    assert c.body is not None and c.body.name == "c.tsum"
    # A task piped after a chord joins its body (a chain of body and task).
    longer = c | sig(app, 10)
    assert isinstance(longer, chord) and isinstance(longer.body, chain)
    assert [t.name for t in longer.body.tasks] == ["c.tsum", "c.add"]


def test_chain_steps_upgrade_a_group_followed_by_a_task_to_a_chord(app: Conveyor) -> None:
    c = chain(sig(app, 1, 1), group(sig(app, 1), sig(app, 2)), sig(app, name="c.tsum"),
              sig(app, 100))
    steps = c.steps()
    assert [type(s).__name__ for s in steps] == ["Signature", "chord", "Signature"]
    assert steps[1].body.name == "c.tsum"  # type: ignore[attr-defined]
    # A chord whose body is a chain keeps only its first task as the body.
    c2 = chain(sig(app, 1, 1), chord([sig(app, 1)], chain(sig(app, 2), sig(app, 3))))
    steps2 = c2.steps()
    assert [type(s).__name__ for s in steps2] == ["Signature", "chord", "Signature"]
    assert steps2[1].body.args == [2] and steps2[2].args == [3]  # type: ignore[attr-defined]


def test_nested_chains_and_groups_flatten(app: Conveyor) -> None:
    c = chain(sig(app, 1, 1), chain(sig(app, 2), sig(app, 3)))
    assert [t.args for t in c.tasks] == [[1, 1], [2], [3]]
    assert c() == 7
    # As in Celery, a group inside a group runs its tasks as the outer group's
    # members: one flat list, in order (also when rebuilt from its dict).
    g = group(sig(app, 1, 1), group(sig(app, 2, 2), group(sig(app, 3, 3))), sig(app, 4, 4))
    assert [t.args for t in g.tasks] == [[1, 1], [2, 2], [3, 3], [4, 4]]
    assert g() == [2, 4, 6, 8]
    assert [t.args for t in from_dict(json.loads(json.dumps(
        {**sig(app, 0), "subtask_type": "group", "task": "celery.group",
         "kwargs": {"tasks": [group(sig(app, 1, 1), sig(app, 2, 2)), sig(app, 3, 3)]}})),
        app).tasks] == [[1, 1], [2, 2], [3, 3]]
    # The inner group's options go to its members that set none of their own; its
    # id is not theirs.
    inner = group(sig(app, 2, 2), sig(app, 3, 3).set(queue="mine"), queue="inner",
                  priority=3)
    frozen = inner.freeze()
    outer = group(sig(app, 1, 1), inner)
    assert [t.options.get("queue") for t in outer.tasks] == [None, "inner", "mine"]
    assert [t.options.get("priority") for t in outer.tasks] == [None, 3, 3]
    assert [t.options.get("task_id") for t in outer.tasks[1:]] == \
        [r.id for r in frozen.results]  # their own ids, not the inner group's
    assert "queue" not in inner.tasks[0].options  # the inner group is left as it was
    with pytest.raises(TypeError, match="use a chord"):
        group(sig(app, 1, 1)).link(sig(app, 1))


def test_canvases_rebuild_from_their_dicts_by_subtask_type(app: Conveyor) -> None:
    workflow = chain(sig(app, 1, 1), chord([sig(app, 1), chain(sig(app, 2), sig(app, 3))],
                                           sig(app, name="c.tsum")))
    wire = json.loads(json.dumps(workflow))
    rebuilt = from_dict(wire, app)
    assert isinstance(rebuilt, chain) and isinstance(rebuilt.tasks[1], chord)
    assert isinstance(rebuilt.tasks[1].header.tasks[1], chain)
    assert json.loads(json.dumps(rebuilt)) == wire
    assert pickle.loads(pickle.dumps(workflow)) == workflow
    assert isinstance(signature(wire, app=app), chain)


def test_celerys_chord_and_chain_messages_read_as_canvases(app: Conveyor) -> None:
    (message,) = sample("redis-json-chord")["messages"][:1]
    body = message["body"]["decoded"][2]["chord"]
    assert signature(body, app=app).options["group_id"] == \
        message["envelope"]["headers"]["group"]
    celery_chord = {  # what Celery 5.7 writes for chord([a.s(1), a.s(2)], a.s())
        "task": "celery.chord", "args": [], "options": {}, "subtask_type": "chord",
        "immutable": False, "kwargs": {"kwargs": {}, "body": {
            "task": "x.a", "args": [], "kwargs": {}, "options": {},
            "subtask_type": None, "immutable": False},
            "header": [{"task": "x.a", "args": [n], "kwargs": {}, "options": {},
                        "subtask_type": None, "immutable": False} for n in (1, 2)]}}
    c = from_dict(celery_chord, app)
    assert isinstance(c, chord) and [t.args for t in c.header.tasks] == [[1], [2]]
    # Options a newer Celery adds are dropped, not refused: they came off the wire.
    step = dict(celery_chord["kwargs"]["body"], options={"newer_option": ["x"]})  # type: ignore[arg-type]
    assert from_dict(step, app).options == {}


def test_freeze_fixes_ids_before_sending(app: Conveyor) -> None:
    c = chord([sig(app, 1, 1), sig(app, 2, 2)], sig(app, name="c.tsum"))
    result = c.freeze("body-id")
    assert result.id == "body-id" and c.body is not None
    assert c.body.options["task_id"] == "body-id"
    assert [r.id for r in result.parent] == [t.options["task_id"] for t in c.header.tasks]
    assert result.parent.id == c.header.options["task_id"]
    chained = chain(sig(app, 1, 1), sig(app, 2)).freeze()
    assert chained.parent is not None and chained.parent.parent is None


def test_backend_without_join_counters_refuses_a_chord_naming_one_that_can(
        fake_plugins: Any) -> None:
    fake_plugins("conveyor-plainbackend",
                 {"conveyor.backends": {"plainstore": "plain_mod:Plain"}},
                 {"plain_mod.py": """
                     from conveyor.interfaces import BackendCapabilities
                     class Plain:
                         capabilities = BackendCapabilities()
                         def __init__(self, url, app):
                             pass
                         def get(self, task_id):
                             return None
                         def close(self):
                             pass
                 """})
    app = Conveyor("plain", broker="memory://plain", backend="plainstore://")
    c = chord([app.signature("c.add", (1, 1))], app.signature("c.tsum"))
    with pytest.raises(ConfigurationError, match=r"plainstore://.*redis://"):
        c.apply_async()
    with pytest.raises(ConfigurationError, match="redis://"):
        group(app.signature("c.add", (1, 1))).freeze().save()
    app.close()
