"""The worker's core cases on the kombu bridge, per kombu transport (memory in-process,
filesystem and Redis with real ``conveyor worker`` processes)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from kombu_lab import CONVEYOR_BIN, Lab
from processes import wait_for

from conveyor.canvas import signature
from conveyor.exceptions import CapabilityError, NotRegistered, TaskRevokedError


def test_delay_countdown_link_and_expires(lab: Lab) -> None:
    app = lab.app()
    q = lab.queue
    with lab.worker():
        assert app.send_task("k.add", (2, 2), queue=q).get(timeout=20) == 4
        start = time.monotonic()
        later = app.send_task("k.add", (2, 3), queue=q, countdown=1.0)
        assert later.get(timeout=20) == 5 and time.monotonic() - start >= 1.0
        callback = signature("k.add", args=(10,), app=app, queue=q)
        linked = app.send_task("k.add", (2, 2), queue=q, link=callback)
        assert linked.get(timeout=20) == 4
        (child,) = wait_for(lambda: app.AsyncResult(linked.id).children, 20,
                            what="the link's child")
        assert child.get(timeout=20) == 14
        expired = app.send_task("k.add", (1, 1), queue=q, countdown=1.0, expires=0.5)
        with pytest.raises(TaskRevokedError):
            expired.get(timeout=20)


def test_unhandled_message_is_dead_lettered_listed_requeued_and_purged(lab: Lab) -> None:
    app = lab.app()
    with lab.worker():
        result = app.send_task("k.nobody", (1,), queue=lab.queue)
        with pytest.raises(NotRegistered):
            result.get(timeout=20)
    transport = app.transport_factory()
    try:
        (dead,) = transport.dead_letters(lab.queue)
        assert dead.message.task_id == result.id and "NotRegistered" in dead.reason
        assert transport.requeue_dead([dead.id]) == 1
        assert transport.dead_letters(lab.queue) == []
        (back,) = transport.fetch([lab.queue], limit=1, timeout=5)
        assert back.message.task_id == result.id
        transport.dead_letter(back, "by hand")
        assert transport.purge_dead(lab.queue) == 1
    finally:
        transport.close()


def test_delivery_limit_dead_letters_a_message_that_keeps_coming_back(lab: Lab) -> None:
    """A delivery lost with its channel comes back counted; past
    worker_max_deliveries the worker dead-letters it instead of running it."""
    app = lab.app()
    sender = app.transport_factory()
    result = app.send_task("k.add", (1, 1), queue=lab.queue)
    (first,) = sender.fetch([lab.queue], limit=1, timeout=5)
    sender.close()  # the channel is lost: kombu gives the message back
    tasks = lab.tasks(K_MAX_DELIVERIES="1")
    with tasks.app.Worker(queues=[lab.queue], concurrency=1, pool="threads").running():
        with pytest.raises(Exception, match="[Dd]elivery limit"):
            result.get(timeout=20)
    transport = app.transport_factory()
    try:
        (dead,) = transport.dead_letters(lab.queue)
        assert dead.message.task_id == first.message.task_id
    finally:
        transport.close()


def test_priority_where_kombu_orders_by_it(lab: Lab) -> None:
    app = lab.app()
    if lab.kind != "redis":
        with pytest.raises(CapabilityError, match=r"priority=5.*'kombu' transport"):
            app.send_task("k.add", (1, 1), queue=lab.queue, priority=5)
        return
    log = lab.path / "order.txt"
    sent = [(0, None), (1, 0), (2, 9), (3, 4), (4, 200), (5, 2)]
    results = [app.send_task("k.record", (str(log), n), queue=lab.queue, priority=p)
               for n, p in sent]
    with lab.process("-c", "1", "-P", "solo", "--prefetch-multiplier", "1"):
        for r in results:
            r.get(timeout=20)
    # kombu's Redis has four levels (0, 1–3, 4–6, 7–9 on its reversed scale)
    assert [int(n) for n in log.read_text().split()] == [2, 4, 3, 5, 0, 1]


@pytest.mark.parametrize("lab", ["redis"], indirect=True)
def test_acks_late_task_of_a_killed_worker_is_redelivered_on_redis(lab: Lab) -> None:
    """kombu's Redis keeps an unacked copy and restores it after visibility_timeout
    (kombu's filesystem and memory transports keep none outside the process: see
    the feature table)."""
    app = lab.app()
    marker = lab.path / "marker.txt"
    result = app.send_task("k.slow_once", (str(marker),), queue=lab.queue)
    with lab.process("-c", "1", "-P", "solo") as first:
        wait_for(marker.exists, 20, what="the first run to start")
        first.kill()
        first.popen.wait(5)
    with lab.process("-c", "1", "-P", "solo"):
        assert result.get(timeout=30) == "done"
    assert len(marker.read_text().split()) == 2


@pytest.mark.parametrize("lab", ["filesystem", "redis"], indirect=True)
def test_a_worker_says_when_acks_late_cannot_survive_a_crash(lab: Lab) -> None:
    """Where kombu keeps no unacked copy (filesystem), a worker with acks_late tasks
    says at start that a killed worker's task is lost; where it keeps one (Redis), it
    says nothing. The setting is not ignored silently either way."""
    with lab.process("-c", "1", "-P", "solo") as proc:
        app = lab.app()
        assert app.send_task("k.add", (1, 2), queue=lab.queue).get(timeout=20) == 3
        said = proc.output()
    warned = "keeps no copy of an unacked message" in said
    assert warned == (lab.kind == "filesystem"), said
    if warned:
        assert "acks_late on k.slow_once" in said and "kombu+filesystem://" in said


@pytest.mark.parametrize("lab", ["filesystem", "redis"], indirect=True)
def test_conveyor_dead_commands_work_on_the_bridge(lab: Lab) -> None:
    """``conveyor dead list/requeue/purge`` from another process, no -Q needed: the
    dead-letter queues are found through kombu's binding table."""
    app = lab.app()
    transport = app.transport_factory()
    result = app.send_task("k.add", (1, 1), queue=lab.queue)
    (d,) = transport.fetch([lab.queue], limit=1, timeout=5)
    transport.dead_letter(d, "ValueError: by hand")
    transport.close()

    def dead(*args: str) -> str:
        out = subprocess.run([CONVEYOR_BIN, "-A", "k_tasks", "dead", *args], cwd=lab.path,
                             env={**os.environ, **lab.env}, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    listed = dead("list")
    assert result.id in listed and "ValueError: by hand" in listed and lab.queue in listed
    assert "requeued 1 message(s)" in dead("requeue", result.id)
    assert result.id not in dead("list")
    again = app.transport_factory()
    try:
        (back,) = again.fetch([lab.queue], limit=1, timeout=5)
        assert back.message.task_id == result.id
        again.dead_letter(back, "again")
    finally:
        again.close()
    assert "purged 1 dead letter(s)" in dead("purge", "-f")
    assert dead("list") == ""


def test_compressed_tasks_run_fresh_restored_and_in_a_compression_kombu_lacks(
        lab: Lab) -> None:
    """kombu decompresses a body on receipt and drops the ``compression`` header only
    when it restores the message; the bridge hands the worker a body and header that
    agree either way. lz4 (``application/x-lz4``) is Conveyor's only: kombu cannot
    decompress it, and the worker does."""
    app = lab.app()
    q = lab.queue
    restored = app.send_task("k.add", (1, 2), queue=q, compression="zlib")
    holder = app.transport_factory()
    (held,) = holder.fetch([q], limit=1, timeout=5)
    assert held.message.task_id == restored.id
    holder.close()  # the channel is lost: kombu restores the message
    fresh = app.send_task("k.add", (3, 4), queue=q, compression="zlib")
    lz4 = app.send_task("k.add", (5, 6), queue=q, compression="lz4")
    with lab.worker():
        assert restored.get(timeout=20) == 3
        assert fresh.get(timeout=20) == 7
        assert lz4.get(timeout=20) == 11
