"""SIGKILL ×3 during a 500-task drain, on each pool and broker (acks_late).

On RabbitMQ the killed worker's connection closes with it, so what it held unacked
is given back at once; a redelivered message goes to the back of its queue (it is
published again carrying its delivery count), which is what "redelivery after" shows
there.

Asserts: every task ran; a task ran twice only if a killed worker had finished it
without having acked it yet (at most the pool's concurrency per kill); no pool child
outlived its worker; nothing is left leased or queued. Prints the figures."""

from __future__ import annotations

import signal
import time

import pytest

from fault_lab import BROKERS, Lab, alive, children_of

#: Enough for three kills well inside the drain, each with deliveries in flight and
#: prefetched behind them (a larger drain proves nothing more and costs the suite).
TASKS = 500
KILL_AT = (100, 225, 350)


POOLS = [("solo", 1), ("threads", 2), ("processes", 2)]


@pytest.mark.parametrize(
    ("broker", "pool", "concurrency"),
    # Every pool on each broker, but for the solo pool on RabbitMQ (what RabbitMQ
    # gives back does not depend on the pool; the suite's time does).
    [(b, p, c) for b in BROKERS for p, c in POOLS if (b, p) != ("amqp", "solo")],
    indirect=["broker"])
def test_sigkill_during_a_drain(lab: Lab, pool: str, concurrency: int) -> None:
    lab.send_many(TASKS, seconds=0.004)
    started = time.monotonic()
    killed: list[tuple[set[int], float]] = []  # each killed worker and its children
    orphans = 0
    worker = lab.worker(pool=pool, concurrency=concurrency)
    for threshold in KILL_AT:
        lab.wait_for(lambda: len(lab.ended()) >= threshold, 60, f"{threshold} tasks")
        children = children_of(worker.pid)
        worker.send_signal(signal.SIGKILL)
        killed.append(({worker.pid, *children}, time.time()))
        worker.wait(10)
        time.sleep(0.2)
        orphans += sum(alive(pid) for pid in children)
        worker = lab.worker(pool=pool, concurrency=concurrency)
    lab.wait_for(lambda: len(lab.ended()) == TASKS and lab.waiting() == 0, 90,
                 f"all {TASKS} tasks to run and be settled")
    took = time.monotonic() - started
    children = children_of(worker.pid)
    worker.send_signal(signal.SIGTERM)
    worker.wait(20)
    lab.wait_for(lambda: not any(alive(pid) for pid in children), 5,
                 "the last worker's children to exit with it")

    ended = lab.ended()
    duplicates = {n: count - 1 for n, count in ended.items() if count > 1}
    first_end = {}
    for n, pid, _at in lab.runs("E"):
        first_end.setdefault(n, pid)
    dead_pids = set().union(*(pids for pids, _at in killed))
    # Seconds from each kill until the first task its worker left in flight (started,
    # not ended) started again elsewhere.
    redelivery = []
    for pids, at in killed:
        mine = {n for n, p, _t in lab.runs("S") if p in pids}
        done = {n for n, p, _t in lab.runs("E") if p in pids}
        again = [t for n, p, t in lab.runs("S") if n in mine - done and t > at]
        if again:
            redelivery.append(min(again) - at)
    lab.figure(f"{pool} pool: {TASKS} tasks, {sum(ended.values())} runs, "
               f"{sum(duplicates.values())} duplicates, {len(killed)} SIGKILLs, "
               f"{orphans} orphans, redelivery after "
               f"{', '.join(f'{s:.2f}s' for s in redelivery) or '-'}, drained in {took:.1f}s")
    assert set(ended) == set(range(TASKS))
    assert orphans == 0
    assert sum(duplicates.values()) <= len(killed) * concurrency
    assert all(first_end[n] in dead_pids for n in duplicates), duplicates
    assert lab.leased() == 0 and lab.waiting() == 0
