"""Chords end to end: a real ``conveyor worker`` process joins every chord, on the
SQLite embedded default and on Redis; on RabbitMQ with results on Redis, the chord of
100, the dead-lettered header task and the revoked group (see
``tests/support/canvas_lab.py``).

What a user sees: a chord of 100 header tasks gets every result in order; a failed
or dead-lettered header task fails the chord with a ChordError naming it and calls
the body's errback; groups and chords inside chains; a GroupResult saved in one
process and restored in another; a group's failures counted and its tasks revoked.
"""

from __future__ import annotations

import time
import uuid

import pytest

from conveyor import GroupResult, chain, chord, group, states
from conveyor.exceptions import ChordError, TaskRevokedError

from canvas_lab import Lab, canvas_lab, not_on_rabbitmq  # noqa: F401 - canvas_lab is the "lab" fixture


def test_chord_of_100_header_tasks_gets_every_result_in_order(lab: Lab) -> None:
    result = chord([lab.s("add", i, i) for i in range(100)], lab.s("collect")).apply_async()
    assert result.get(timeout=60) == [2 * i for i in range(100)], lab.stderr()
    header = result.parent
    assert isinstance(header, GroupResult) and len(header) == 100
    assert header.get(timeout=5)[99] == 198


@not_on_rabbitmq
def test_group_piped_into_a_task_is_a_chord(lab: Lab) -> None:
    result = (group(lab.s("add", 1, 1), lab.s("add", 2, 2)) | lab.s("tsum")).delay()
    assert result.get(timeout=20) == 6, lab.stderr()


@not_on_rabbitmq
def test_a_group_inside_a_group_or_a_chord_header_runs_as_its_members(lab: Lab) -> None:
    """As in Celery: the inner group's tasks are members of the outer group, with
    one flat list of results (before, such a group was refused)."""
    nested = group(lab.s("add", 1, 1), group(lab.s("add", 2, 2), lab.s("add", 3, 3)))
    result = nested.apply_async()
    assert result.get(timeout=20) == [2, 4, 6], lab.stderr()
    assert len(result) == 3
    body = chord(group(group(lab.s("add", 1, 1), lab.s("add", 2, 2)), lab.s("add", 3, 3)),
                 lab.s("collect")).apply_async()
    assert body.get(timeout=20) == [2, 4, 6], lab.stderr()


@not_on_rabbitmq
def test_failed_header_task_fails_the_chord_and_calls_the_body_errback(lab: Lab) -> None:
    errback_id = str(uuid.uuid4())
    c = chord([lab.s("add", 1, 1), lab.s("boom", 7), lab.s("add", 2, 2)], lab.s("tsum"))
    c.link_error(lab.s("remember").set(task_id=errback_id))
    result = c.apply_async()
    with pytest.raises(ChordError) as info:
        result.get(timeout=20)
    failed_id = result.parent[1].id
    assert failed_id in str(info.value) and "ValueError('boom 7')" in str(info.value)
    # The errback got the body's id (Celery's one-argument errback form).
    assert lab.app.AsyncResult(errback_id).get(timeout=10) == result.id


def test_dead_lettered_header_task_fails_the_chord(lab: Lab) -> None:
    c = chord([lab.s("add", 1, 1), lab.app.signature("canvas.not_registered", (1,))],
              lab.s("tsum"))
    result = c.apply_async()
    with pytest.raises(ChordError, match="not_registered|NotRegistered") as info:
        result.get(timeout=20)
    assert result.parent[1].id in str(info.value)


@not_on_rabbitmq
def test_group_inside_a_chain(lab: Lab) -> None:
    # A group followed by a task is a chord; a group at the end is the chain's result.
    mid = chain(lab.s("add", 1, 1), group(lab.s("add", 1), lab.s("add", 2)), lab.s("tsum"))
    assert mid.apply_async().get(timeout=20) == 7, lab.stderr()
    last = (lab.s("add", 1, 1) | group(lab.s("add", 10), lab.s("add", 20))).apply_async()
    assert isinstance(last, GroupResult)
    assert last.get(timeout=20) == [12, 22]


@not_on_rabbitmq
def test_chord_inside_a_chain(lab: Lab) -> None:
    workflow = (lab.s("add", 1, 1)
                | chord([lab.s("add", 1), lab.s("add", 2)], lab.s("tsum"))
                | lab.s("add", 1000))
    assert workflow.apply_async().get(timeout=20) == 1007, lab.stderr()


@not_on_rabbitmq
def test_chain_inside_a_group_reports_its_last_task(lab: Lab) -> None:
    g = group(chain(lab.s("add", 1, 1), lab.s("add", 10)), lab.s("add", 5, 5))
    assert g.apply_async().get(timeout=20) == [12, 10], lab.stderr()
    c = chord([chain(lab.s("add", 1, 1), lab.s("add", 10)), lab.s("add", 5, 5)],
              lab.s("collect"))
    assert c.apply_async().get(timeout=20) == [12, 10]


def test_group_result_reports_failures_and_revokes_what_has_not_run(lab: Lab) -> None:
    mixed = group(lab.s("add", 1, 1), lab.s("boom", 2), lab.s("add", 3, 3)).apply_async()
    values = mixed.join(timeout=20, propagate=False)
    assert values[0] == 2 and values[2] == 6 and repr(values[1]) == "ValueError('boom 2')"
    assert mixed.ready() and mixed.failed() and not mixed.successful()
    assert mixed.completed_count() == 2 and not mixed.waiting()
    with pytest.raises(ValueError, match="boom 2"):
        mixed.get(timeout=5)

    later = group(lab.s("add", i, i) for i in range(3)).apply_async(countdown=1.5)
    later.revoke()
    with pytest.raises(TaskRevokedError):
        later.get(timeout=5)
    # A task due after them has run: the revoked ones came due and were skipped.
    assert lab.s("add", 0, 0).apply_async(countdown=1.6).get(timeout=20) == 0
    time.sleep(0.3)
    assert [r.state for r in later] == [states.REVOKED] * 3, lab.stderr()


@not_on_rabbitmq
def test_group_result_saved_here_is_restored_by_id(lab: Lab) -> None:
    saved = group(lab.s("add", i, 1) for i in range(3)).apply_async().save()
    other = lab.client("canvas-other")
    try:
        restored = GroupResult.restore(saved.id, app=other)
        assert restored is not None
        assert [r.id for r in restored] == [r.id for r in saved]
        assert restored.get(timeout=20) == [1, 2, 3]
        restored.delete()
        assert GroupResult.restore(saved.id, app=other) is None
    finally:
        other.close()
