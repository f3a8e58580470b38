"""Pool children die with their worker: SIGKILL leaves no orphan to run a task twice."""

from __future__ import annotations

import signal
import time

import pytest

from fault_lab import Lab, alive, children_of


# On SQLite and Redis; the SIGKILL drains count orphans on RabbitMQ too.
@pytest.mark.parametrize("broker", ["sqlite", "redis"], indirect=True)
def test_pool_children_die_with_a_killed_worker(lab: Lab) -> None:
    worker = lab.worker(pool="processes", concurrency=3)
    lab.wait_consuming(worker)
    for n in range(3):
        lab.send(n, 3.0)
    lab.wait_for(lambda: len(lab.runs("S")) == 3, 30, "3 tasks to start")
    children = children_of(worker.pid)
    assert len(children) == 3
    running = {pid for _n, pid, _at in lab.runs("S")}
    assert running <= set(children)

    killed = time.monotonic()
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    lab.wait_for(lambda: not any(alive(pid) for pid in children), 5,
                 "the pool children to die with their worker")
    gone = time.monotonic() - killed
    lab.figure(f"3 pool children gone {gone:.2f}s after SIGKILL")

    # A new worker runs each task once; no orphan finishes one.
    again = lab.worker(pool="processes", concurrency=3)
    lab.wait_consuming(again)
    lab.wait_for(lambda: len(lab.ended()) == 3, 30, "the 3 tasks to run again")
    time.sleep(0.5)
    assert lab.ended() == {0: 1, 1: 1, 2: 1}
    assert not {pid for _n, pid, _at in lab.runs("E")} & set(children)
