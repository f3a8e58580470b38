"""What ``Task.replace`` sends in place of a running task: the replacement built
from the task's request (its id, links, place and following steps), and the headers
Celery writes for it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conveyor import Conveyor, chain, chord, group
from conveyor.envelope import parse_message
from conveyor.exceptions import ConfigurationError, ConveyorError
from conveyor.interfaces import Message
from conveyor.replace import ACCUMULATE, replacement, tail


@pytest.fixture(scope="module")
def app() -> Conveyor:
    app = Conveyor("replacing", broker="memory://replacing")

    @app.task(name="rp.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def _request(app: Conveyor, headers: dict[str, Any], embed: dict[str, Any]) -> Any:
    body = json.dumps([[1], {}, embed]).encode()
    message = Message({"task": "rp.add", "id": "the-id", "root_id": "root",
                       "parent_id": "parent", **headers},
                      body, "application/json", "utf-8", {})
    return parse_message(message, app.codecs, ["json"])


def test_a_task_takes_over_the_id_links_place_and_nesting(app: Conveyor) -> None:
    add = app.tasks["rp.add"]
    callback, errback = dict(add.s(7)), dict(add.si(0, 0))
    request = _request(app, {"group": "g", "group_index": 2, "replaced_task_nesting": 1},
                       {"callbacks": [callback], "errbacks": [errback],
                        "chord": dict(add.s(9))})
    new = replacement(app, request, add.s(1, 100))
    assert new.name == "rp.add" and new.args == [1, 100]
    options = new.options
    assert options["task_id"] == "the-id"
    assert [s["task"] for s in options["link"]] == ["rp.add"]
    assert [s["args"] for s in options["link_error"]] == [[0, 0]]
    assert (options["group_id"], options["group_index"], options["chord"]["args"]) == (
        "g", 2, [9])
    assert (options["root_id"], options["parent_id"], options["replaced_task_nesting"]) \
        == ("root", "parent", 2)
    message, *_ = app.prepare(new.name, new.args, new.kwargs, {}, new.options, None)
    assert message.headers["replaced_task_nesting"] == 2  # Celery's header
    assert message.headers["id"] == "the-id" and message.headers["group"] == "g"


def test_a_group_is_joined_by_accumulate_and_the_chain_goes_on(app: Conveyor) -> None:
    add = app.tasks["rp.add"]
    rest = [dict(add.s(1000).set(task_id="last")), dict(add.s(10).set(task_id="next"))]
    request = _request(app, {}, {"chain": rest})  # Celery's order: the last step first
    new = replacement(app, request, group(add.s(1, i) for i in range(3)))
    assert isinstance(new, chain)
    joined, *after = new.tasks
    assert isinstance(joined, chord) and joined.body is not None
    assert (joined.body.name, joined.body.kwargs) == (ACCUMULATE, {"index": 0})
    assert tail(joined).options["task_id"] == "the-id"
    assert [(s.args, s.options["task_id"]) for s in after] == [([10], "next"),
                                                              ([1000], "last")]
    assert app.tasks[ACCUMULATE]([0, 2, 4], index=0) == [0, 2, 4]


def test_a_chain_keeps_its_steps_and_gives_its_last_the_id(app: Conveyor) -> None:
    add = app.tasks["rp.add"]
    original = chain(add.s(1, 1), add.s(2))
    new = replacement(app, _request(app, {}, {}), original)
    assert isinstance(new, chain) and tail(new).options["task_id"] == "the-id"
    assert all(step.options["replaced_task_nesting"] == 1 for step in new.tasks)
    assert "task_id" not in original.tasks[-1].options  # the caller's is not changed


def test_replace_says_what_is_wrong(app: Conveyor) -> None:
    add = app.tasks["rp.add"]
    with pytest.raises(ConfigurationError, match="part of a chord"):
        replacement(app, _request(app, {}, {}), add.s(1, 1).set(chord=dict(add.s())))
    with pytest.raises(TypeError, match="needs a signature"):
        replacement(app, _request(app, {}, {}), "rp.add")  # type: ignore[arg-type]
    with pytest.raises(ConveyorError, match="inside a running task"):
        add.replace(add.s(1, 1))
