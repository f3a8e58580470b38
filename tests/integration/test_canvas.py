"""The canvas end to end: a real ``conveyor worker`` process runs every workflow, on
the SQLite embedded default and on Redis (see ``conftest.py``).

What a user sees: group results in order, chain results and their parents, link
lists, and chains whose messages stay small (``task_chain_embed="backend"``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from conveyor import Conveyor, chain, group, hookimpl

from canvas_lab import Lab, canvas_lab  # noqa: F401 - canvas_lab is the "lab" fixture


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
    assert result.parent.get(timeout=5) == 4
    assert result.parent.parent.get(timeout=5) == 2
    assert result.parent.parent.parent is None
    assert [c.id for c in result.parent.parent.children] == [result.parent.id]


def test_link_list_is_applied_in_order_each_with_the_result(lab: Lab) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    links = [lab.s("echo", n).set(task_id=task_id) for n, task_id in enumerate(ids)]
    result = lab.s("add", 2, 3).apply_async(link=links)
    assert result.get(timeout=20) == 5
    assert [c.id for c in result.children] == ids
    assert [lab.app.AsyncResult(i).get(timeout=10) for i in ids] == [[5, 0], [5, 1], [5, 2]]

class _Sizes:
    """Records the size of every message this app sends."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    @hookimpl
    def after_task_publish(self, app: Conveyor, name: str, message: Any, route: Any) -> None:
        self.sizes.append(len(message.body) + len(json.dumps(message.headers)))


def test_chain_in_backend_mode_sends_small_messages_and_still_runs(lab: Lab) -> None:
    app = Conveyor("canvas-small", broker=lab.app.conf.broker_url,
                   backend=lab.app.conf.result_backend,
                   task_default_queue=lab.queue, task_chain_embed="backend")
    sizes = _Sizes()
    app.register_plugin(sizes)
    try:
        first: dict[int, int] = {}
        for n in (10, 100):
            steps = [app.signature("canvas.add", (0, 1))]
            steps += [app.signature("canvas.add", (1,)) for _ in range(n - 1)]
            result = chain(steps).apply_async()
            first[n] = sizes.sizes[-1]
            assert result.get(timeout=30) == n, lab.stderr()
            assert result.parent.get(timeout=5) == n - 1
        # The first message names the next step; it does not carry the other 99.
        assert first[100] == first[10]
        # Celery's format (the default) embeds the rest of the chain.
        app.conf.task_chain_embed = "message"
        chain([app.signature("canvas.add", (0, 1))]
              + [app.signature("canvas.add", (1,)) for _ in range(99)]).apply_async()
        assert sizes.sizes[-1] > 20 * first[100]
    finally:
        app.close()
