"""Settlement is never dropped: acks that fail in a broker outage longer than the
ack retry limit, or while another process holds the SQLite write lock past the busy
timeout, are carried to the next connection; every task runs once, none stays leased.

On RabbitMQ a lost connection takes its unacked deliveries with it (the broker gives
them back at once and a tag is never valid on another channel), so there a task the
worker had finished but not yet acked runs again: the trials assert every task ran,
only deliveries held at the cut ran twice, and nothing is left unacked."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from conveyor.exceptions import OperationalError
from fault_lab import Lab, rabbitmqctl

#: How long the Redis transport retries an ack before giving it up to the worker.
ACK_PATIENCE = 15.0


def _drain_through_a_fault(lab: Lab, fault: str, hurt: Callable[[], float]) -> None:
    lab.vt = 60.0  # a dropped ack or forgotten lease would hold its task a minute
    worker = lab.worker(pool="threads", concurrency=2, prefetch=4)
    lab.wait_consuming(worker)
    for n in range(12):
        lab.send(n, 0.3)
    lab.wait_for(lambda: len(lab.runs("S")) >= 2, 30, "the first tasks to start")
    lasted = hurt()
    healed = time.monotonic()
    lab.wait_for(lambda: len(lab.ended()) == 12 and lab.waiting() == 0, 40,
                 "every task to run and be settled")
    settled = time.monotonic() - healed
    ended = lab.ended()
    duplicates = sum(count - 1 for count in ended.values())
    lab.figure(f"{fault} for {lasted:.1f}s; 12 tasks, "
               f"{sum(ended.values())} runs, {duplicates} duplicates; all settled "
               f"{settled:.1f}s after it ended")
    assert ended == {n: 1 for n in range(12)}
    assert lab.leased() == 0
    assert worker.poll() is None, lab.stderr()


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_acks_survive_a_redis_outage_longer_than_the_ack_retry_limit(lab: Lab) -> None:
    proxy = lab.through_proxy()

    def outage() -> float:
        proxy.cut()
        time.sleep(ACK_PATIENCE + 2)
        proxy.restore()
        return ACK_PATIENCE + 2

    _drain_through_a_fault(lab, "broker outage", outage)
    # The outage reached the worker (a fetch that lost its connection, or a reconnect
    # refused while the proxy was cut), and yet every task ran once and was settled.
    said = lab.stderr(tail=None)  # the outage's first lines are followed by many more
    assert "Lost the broker connection" in said or "Cannot connect to" in said


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_time_limit_kills_its_task_during_a_broker_outage(lab: Lab) -> None:
    """The processes pool's results and limits are read by the consumer thread; while
    it waits to reconnect it still reads them, so a task past its ``time_limit`` is
    killed then, not when the broker is back (results go direct: stored at once)."""
    proxy = lab.through_proxy()
    worker = lab.worker(pool="processes", concurrency=1)
    lab.wait_consuming(worker)
    result = lab.send(0, 30, time_limit=2)
    lab.wait_for(lambda: lab.runs("S"), 30, "the task to start")
    proxy.cut()
    lab.wait_for(lambda: "time_limit=2s exceeded" in lab.said(), 10,
                 "the task killed at its time limit while the broker is cut")
    lab.wait_for(lambda: result.state == "FAILURE", 10, "its FAILURE stored")
    assert not lab.runs("E")
    proxy.restore()
    assert lab.send(1).get(timeout=30) == 1  # the worker serves again
    assert worker.poll() is None, lab.stderr()


@pytest.mark.parametrize("broker", ["sqlite"], indirect=True)
def test_acks_survive_a_lock_held_past_the_busy_timeout(lab: Lab) -> None:
    # Held past SQLite's default busy timeout (10 s) and the workers' own bound
    # (broker_connection_timeout, 1 s in faulttasks).
    def lock() -> float:
        holder = lab.hold_lock(11.0)
        holder.wait(30)
        return 11.0

    _drain_through_a_fault(lab, "write lock held by another process", lock)


@pytest.mark.parametrize("broker", ["sqlite"], indirect=True)
def test_publishing_under_a_held_lock_honours_the_callers_bounds(lab: Lab) -> None:
    lab.app.conf.broker_connection_timeout = 0.5
    lab.send(0)  # creates the database
    holder = lab.hold_lock(30.0)
    try:
        start = time.monotonic()
        with pytest.raises(OperationalError, match="locked"):
            lab.send(1, retry=False)
        alone = time.monotonic() - start
        start = time.monotonic()
        with pytest.raises(OperationalError, match="gave up after 4 attempts"):
            lab.send(2)  # the default policy: 4 attempts, 0.6 s of sleeps between
        policy = time.monotonic() - start
    finally:
        holder.kill()
    lab.figure(f"publish under a held lock gave up after {alone:.2f}s "
               f"(retry=False) and {policy:.2f}s (default policy), "
               f"broker_connection_timeout=0.5")
    assert 0.4 < alone < 1.5
    assert policy < 4.0


@pytest.mark.parametrize("broker", ["sqlite"], indirect=True)
@pytest.mark.parametrize("target", ["directory", "file"])
def test_a_database_this_process_cannot_write_stops_the_worker(lab: Lab,
                                                               target: str) -> None:
    lab.send(0)  # the database exists
    path = lab.root / "broker.db"
    if target == "directory":
        lab.root.chmod(0o500)
    else:
        path.chmod(0o444)
    # As root, permissions bind only without CAP_DAC_OVERRIDE: drop every capability.
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"] \
        if os.geteuid() == 0 else []
    try:
        out = subprocess.run(
            [*drop, sys.executable, "-m", "conveyor.cli", "-A", "faulttasks", "worker"],
            cwd=lab.root, env=lab.env(), capture_output=True, text=True, timeout=30)
    finally:
        lab.root.chmod(0o755)
        path.chmod(0o644)
    assert out.returncode == 2, out.stderr
    said = "is not writable" if target == "directory" else "read-only"
    assert f"error: Cannot open SQLite database {str(path)!r}" in out.stderr
    assert said in out.stderr and "Traceback" not in out.stderr


def _amqp_drain_through(lab: Lab, fault: str, hurt: Callable[[], float]) -> None:
    """60 tasks of 0.1 s on 2 threads (8 prefetched) with ``hurt`` mid-drain."""
    worker = lab.worker(pool="threads", concurrency=2, prefetch=4)
    lab.wait_consuming(worker)
    lab.send_many(60, seconds=0.1)
    lab.wait_for(lambda: len(lab.ended()) >= 10, 30, "the first tasks to end")
    lasted = hurt()
    healed = time.monotonic()
    lab.wait_for(lambda: set(lab.ended()) == set(range(60)) and lab.ready("celery") == 0,
                 60, "every task to run")
    settled = time.monotonic() - healed
    assert worker.poll() is None, lab.stderr()
    worker.terminate()  # a warm shutdown: what it still held unacked would come back
    worker.wait(30)
    ended = lab.ended()
    duplicates = sum(count - 1 for count in ended.values())
    lab.figure(f"{fault} for {lasted:.1f}s; 60 tasks, {sum(ended.values())} runs, "
               f"{duplicates} duplicates (deliveries held at the cut); all ran "
               f"{settled:.1f}s after it ended")
    assert duplicates <= 8  # the worker's prefetch: what a lost channel gives back
    assert lab.ready("celery") == 0 and lab.leased() == 0
    said = lab.said()
    assert "Lost the broker connection" in said or "Cannot connect to" in said, said[-3000:]


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_a_rabbitmq_outage_loses_no_task(lab: Lab) -> None:
    proxy = lab.through_proxy()

    def outage() -> float:  # RabbitMQ has no ack to retry: any outage costs the same
        proxy.cut()
        time.sleep(3.0)
        proxy.restore()
        return 3.0

    _amqp_drain_through(lab, "broker outage", outage)


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_connections_closed_by_rabbitmq_lose_no_task(lab: Lab) -> None:
    """RabbitMQ closes the worker's connections (as at a node's maintenance or an
    operator's ``close_connection``): only this suite's vhost is touched."""
    def close() -> float:
        start = time.monotonic()
        rabbitmqctl("close_all_connections", "--vhost", str(lab.vhost), "fault suite")
        return time.monotonic() - start

    _amqp_drain_through(lab, "connections closed by RabbitMQ", close)
