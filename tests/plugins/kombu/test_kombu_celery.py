"""A Celery 5.7 worker and a Conveyor worker on one kombu Redis queue: each runs what
the other side's client sends, each reads the results the other wrote, and both
serve the same queue at once, each task run by one of them.

Celery is a test-only dependency; the bridge never imports it.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
from kombu_lab import Lab
from processes import Proc, wait_for

celery = pytest.importorskip("celery")

CELERY_APP = '''
import os, time
from celery import Celery

app = Celery("kombu-interop", broker=os.environ["C_BROKER"], backend=os.environ["C_BACKEND"])
app.conf.update(worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)


@app.task(name="k.add")
def add(x, y):
    return x + y


@app.task(name="k.nap")
def nap(n):
    time.sleep(0.2)
    return n
'''


def celery_worker(lab: Lab) -> Proc:
    (lab.path / "celery_kombu.py").write_text(textwrap.dedent(CELERY_APP))
    proc = Proc([sys.executable, "-m", "celery", "-A", "celery_kombu", "worker", "-P", "solo",
                 "-c", "1", "-Q", lab.queue, "-l", "INFO", "--without-gossip",
                 "--without-mingle", "--without-heartbeat", "-n", f"{lab.queue}@%h"],
                lab.path, env={"C_BROKER": lab.broker.removeprefix("kombu+"),
                               "C_BACKEND": lab.backend})
    proc.wait_output("ready.", 40)
    return proc


@pytest.mark.parametrize("lab", ["redis"], indirect=True)
def test_celery_worker_runs_what_conveyor_sends_through_the_bridge(lab: Lab) -> None:
    app = lab.app()
    with celery_worker(lab):
        assert app.send_task("k.add", (2, 3), queue=lab.queue).get(timeout=20) == 5
        later = app.send_task("k.add", (4, 4), queue=lab.queue, countdown=1.0)
        assert later.get(timeout=20) == 8


@pytest.mark.parametrize("lab", ["redis"], indirect=True)
def test_conveyor_worker_runs_what_a_celery_client_sends(lab: Lab) -> None:
    client = celery.Celery("kombu-client", broker=lab.broker.removeprefix("kombu+"),
                           backend=lab.backend)
    try:
        with lab.process("-c", "1", "-P", "solo"):
            result = client.send_task("k.add", (20, 22), queue=lab.queue)
            assert result.get(timeout=20) == 42
            later = client.send_task("k.add", (1, 2), queue=lab.queue, countdown=1)
            assert later.get(timeout=20) == 3
    finally:
        client.close()


@pytest.mark.parametrize("lab", ["redis"], indirect=True)
def test_a_celery_worker_and_a_conveyor_worker_share_one_queue(lab: Lab) -> None:
    """Both consume the queue at once (each with a prefetch of one): every task is
    run by exactly one of them, both take a share, and the results are all there."""
    app = lab.app()
    with celery_worker(lab) as theirs, \
            lab.process("-c", "1", "-P", "solo", "--prefetch-multiplier", "1") as ours:
        results = [app.send_task("k.nap", (n,), queue=lab.queue) for n in range(12)]
        assert [r.get(timeout=30) for r in results] == list(range(12))

        def ran(worker: Proc) -> set[str]:
            return {r.id for r in results if f"k.nap[{r.id}] succeeded" in worker.output()}

        # A worker logs "succeeded" just after it stores the result: wait for the lines.
        wait_for(lambda: ran(theirs) | ran(ours) == {r.id for r in results}, 10,
                 what="every task's 'succeeded' line")
        celery_ran, conveyor_ran = ran(theirs), ran(ours)
    assert celery_ran and conveyor_ran, (len(celery_ran), len(conveyor_ran))
    assert not celery_ran & conveyor_ran
    assert celery_ran | conveyor_ran == {r.id for r in results}
