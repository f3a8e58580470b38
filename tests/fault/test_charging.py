"""Only a delivery that ran is charged: a healthy task prefetched beside a task that
kills its worker runs, once, and only the killer is dead-lettered."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fault_lab import Lab


# SQLite and Redis charge a delivery in ``started()``. Not on RabbitMQ: it gives every
# unacked message back alike when a worker dies, so a message prefetched there is
# charged as if it had run (README, "Not there yet").
@pytest.mark.parametrize("broker", ["sqlite", "redis"], indirect=True)
def test_prefetched_task_beside_a_worker_killer_runs(lab: Lab) -> None:
    killer = lab.app.send_task("fault.kill_worker", (0,))
    lab.send(1)
    def settled() -> bool:
        return bool(lab.ended()[1]) and killer.state == "FAILURE"

    for _attempt in range(4):  # the killer is charged twice, then dead-lettered
        worker = lab.worker(pool="solo", prefetch=2, FAULT_MAX_DELIVERIES="2")
        lab.wait_for(lambda: worker.poll() is not None or settled(), 30,
                     "the worker to die, or both tasks to be settled")
        if settled():
            break
    dead = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "-A", "faulttasks", "dead", "list", "--json"],
        cwd=lab.root, env=lab.env(), capture_output=True, text=True, timeout=30)
    assert dead.returncode == 0, dead.stderr
    rows = [json.loads(line) for line in dead.stdout.splitlines()]
    assert [(r["task_id"], r["reason"].split(":")[0]) for r in rows] == [
        (killer.id, "DeliveryLimitExceeded")]
    starts = [n for n, _pid, _at in lab.runs("S")]
    lab.figure(f"killer started {starts.count(0)} times, "
               f"healthy task ran {lab.ended()[1]} time(s)")
    assert starts.count(0) == 2 and starts.count(1) == 1
