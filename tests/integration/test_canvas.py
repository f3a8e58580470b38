"""The canvas end to end: a real ``conveyor worker`` process runs every workflow, on
the SQLite embedded default and on Redis, and the group and the chain on RabbitMQ
with results on Redis (see ``tests/support/canvas_lab.py``).

What a user sees: group results in order, chain results and their parents, link
lists, and chains whose messages grow linearly with their length
(``task_chain_embed="backend"``) where Celery's format grows quadratically.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from conveyor import Conveyor, StampingVisitor, chain, chord, group

from canvas_lab import Lab, canvas_lab, not_on_rabbitmq  # noqa: F401 - canvas_lab is the "lab" fixture


def test_group_results_come_back_in_group_order(lab: Lab) -> None:
    # The first members sleep longest, so they finish last.
    g = group(lab.s("nap_add", i, i, (10 - i) * 0.02) for i in range(10))
    result = g.apply_async()
    assert result.get(timeout=20) == [2 * i for i in range(10)], lab.stderr()
    assert result.ready() and result.successful() and not result.failed()
    assert result.completed_count() == 10 and not result.waiting()


def test_chain_result_is_the_last_task_and_parents_lead_back(lab: Lab) -> None:
    result = chain(lab.s("add", 1, 1), lab.s("add", 2), lab.s("add", 3)).apply_async()
    assert result.get(timeout=20) == 7, lab.stderr()
    assert ~chain(lab.s("add", 1, 1), lab.s("add", 2)) == 4  # Celery's shorthand
    assert result.parent.get(timeout=5) == 4
    assert result.parent.parent.get(timeout=5) == 2
    assert result.parent.parent.parent is None
    assert [c.id for c in result.parent.parent.children] == [result.parent.id]


@not_on_rabbitmq
def test_link_list_is_applied_in_order_each_with_the_result(lab: Lab) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    links = [lab.s("echo", n).set(task_id=task_id) for n, task_id in enumerate(ids)]
    result = lab.s("add", 2, 3).apply_async(link=links)
    assert result.get(timeout=20) == 5
    assert [c.id for c in result.children] == ids
    assert [lab.app.AsyncResult(i).get(timeout=10) for i in ids] == [[5, 0], [5, 1], [5, 2]]

def _chain_of(app: Conveyor, n: int) -> Any:
    steps = [app.signature("canvas.add", (0, 1))]
    return chain(steps + [app.signature("canvas.add", (1,)) for _ in range(n - 1)])


@not_on_rabbitmq
def test_chain_messages_grow_linearly_in_backend_mode_and_quadratically_in_celerys(
        lab: Lab) -> None:
    """Every message of the chain counts: the client's first and each next step the
    worker sends. Per task, a 100-step chain costs what a 10-step one does in
    ``backend`` mode; in Celery's format each message carries the rest of the chain."""
    per_task: dict[tuple[str, int], float] = {}
    for mode in ("backend", "message"):
        app = lab.client(f"canvas-{mode}", task_chain_embed=mode)
        app.register_plugin(lab.sizes)
        try:
            for n in (10, 100):
                result = _chain_of(app, n).apply_async()
                assert result.get(timeout=30) == n, lab.stderr()
                assert result.parent.get(timeout=5) == n - 1
                per_task[mode, n] = lab.sent_bytes(_root(result), messages=n) / n
        finally:
            app.close()
    assert per_task["backend", 100] <= 1.1 * per_task["backend", 10], per_task
    assert per_task["message", 100] > 3 * per_task["message", 10], per_task
    # The same 100 tasks: Celery's format sends many times the bytes.
    assert per_task["message", 100] > 10 * per_task["backend", 100], per_task


def _root(result: Any) -> str:
    while result.parent is not None:
        result = result.parent
    return str(result.id)


def test_map_and_starmap_run_every_item_in_one_task(lab: Lab) -> None:
    """``add.map``/``add.starmap`` are one ``celery.map``/``celery.starmap`` message
    each: the worker calls the task once per item and returns the list."""
    from conveyor import xmap, xstarmap
    before = len(lab.app.tasks)
    mapped = xmap(lab.s("echo"), [1, "a", [2]]).apply_async()
    assert mapped.get(timeout=20) == [[1], ["a"], [[2]]], lab.stderr()
    starred = xstarmap(lab.s("add"), [(1, 2), (3, 4), (5, 6)]).apply_async()
    assert starred.get(timeout=20) == [3, 7, 11]
    assert len(lab.app.tasks) == before  # nothing registered on the client for it


def test_chunks_send_a_group_of_parts_each_a_list_of_results(lab: Lab) -> None:
    from conveyor import chunks
    pairs = [(i, i) for i in range(10)]
    result = chunks(lab.s("add"), pairs, 4).apply_async()
    assert len(result.results) == 3  # parts of 4, 4 and 2
    assert result.get(timeout=20) == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]], lab.stderr()


@not_on_rabbitmq
def test_a_map_item_that_raises_fails_the_map_task_with_its_error(lab: Lab) -> None:
    from conveyor import xmap
    result = xmap(lab.s("boom"), [1, 2]).apply_async()
    with pytest.raises(ValueError, match="boom 1"):
        result.get(timeout=20)
    assert result.state == "FAILURE"


def test_stamps_reach_every_task_of_a_workflow_and_survive_a_retry(lab: Lab) -> None:
    """``stamp()`` on a chord inside a chain: each task, header and body and the
    step after, reads its stamps as ``self.request.stamps``; a retried task keeps
    them."""
    class Place(StampingVisitor):
        def on_chord_header_start(self, chord: Any, **stamps: Any) -> dict[str, Any]:
            return {"part": "header"}

        def on_chord_body(self, chord: Any, **stamps: Any) -> dict[str, Any]:
            return {"part": "body"}

    workflow = chain(chord([lab.s("stamps"), lab.s("stamps")], lab.s("stamps")),
                     lab.s("stamps"))
    result = workflow.stamp(Place(), tenant="acme").apply_async()
    assert result.get(timeout=20) == {"tenant": "acme"}, lab.stderr()
    body = result.parent
    assert body.get(timeout=5) == {"tenant": "acme", "part": "body"}
    assert body.parent.get(timeout=5) == [{"tenant": "acme", "part": "header"}] * 2
    retried = lab.s("stamps_after_retry").stamp(tenant="acme", wave=[1, 2]).apply_async()
    assert retried.get(timeout=20) == [1, {"tenant": "acme", "wave": [1, 2]}], lab.stderr()


def test_a_replaced_task_hands_its_id_links_and_place_to_the_replacement(lab: Lab) -> None:
    """``self.replace(sig)`` with a task, a chain and a group: whoever waits on the
    replaced task gets the replacement's result; the steps after it in its chain,
    its link and its place in a chord carry on from the replacement."""
    def replacing(*args: Any, kind: str) -> Any:
        return lab.app.signature("canvas.replace_with", args, {"kind": kind})

    alone = replacing(1, kind="task").apply_async()
    assert alone.get(timeout=20) == 101, lab.stderr()
    flow = chain(lab.s("add", 1, 1), replacing(kind="chain"),
                 lab.s("add", 1000)).apply_async()
    assert flow.get(timeout=20) == 1013, lab.stderr()
    assert flow.parent.get(timeout=5) == 13  # the replaced step's id: its chain's result
    remembered = lab.s("remember").set(task_id=str(uuid.uuid4()))
    grouped = replacing(5, kind="group").apply_async(link=remembered)
    assert grouped.get(timeout=20) == [5, 6, 7], lab.stderr()
    assert lab.app.AsyncResult(remembered.options["task_id"]).get(timeout=10) == [5, 6, 7]
    joined = chord([replacing(1, kind="task"), lab.s("add", 2, 2)],
                   lab.s("collect")).apply_async()
    assert joined.get(timeout=20) == [101, 4], lab.stderr()


def test_a_replaced_step_of_a_chain_kept_in_the_backend_carries_it_on(lab: Lab) -> None:
    """With ``task_chain_embed="backend"`` the steps after a task are parked in the
    result backend: its replacement (a chain here) carries them on."""
    app = lab.client("canvas-replace-backend", task_chain_embed="backend")
    try:
        replaced = app.signature("canvas.replace_with", (), {"kind": "chain"})
        flow = chain(app.signature("canvas.add", (1, 1)), replaced,
                     app.signature("canvas.add", (1000,)),
                     app.signature("canvas.add", (5,))).apply_async()
        assert flow.get(timeout=20) == 1018, lab.stderr()
        assert flow.parent.parent.get(timeout=5) == 13
    finally:
        app.close()
