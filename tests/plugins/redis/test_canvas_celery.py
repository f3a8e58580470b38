"""Canvas interop with real Celery 5.7 on Redis (broker db 4, results db 5: these
tests' own, flushed before and after; queue names start with ``t.redis.canvas``).

* a chain sent by a Celery client is run, step by step, by a Conveyor worker, and a
  chain sent by Conveyor is run by a Celery worker;
* one chord's header runs on a Celery worker and a Conveyor worker at once, and the
  join (Celery's ``.j``/``.s`` keys) fires the body exactly once, whichever client
  sent the chord.

Celery is a test-only dependency; Conveyor never imports it.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conveyor import Conveyor, chain, chord
from redis_dbs import flush_dbs
from redis_support import Proc

celery = pytest.importorskip("celery")

BROKER_DB, RESULT_DB = 4, 5

#: The same tasks on both sides, after each side's app line; ``side`` says who ran one.
TASKS = """
@app.task(name="cv.add")
def add(x, y):
    return x + y


@app.task(name="cv.side")
def side(i):
    time.sleep(0.1)
    return [i, SIDE]


@app.task(name="cv.collect")
def collect(values):
    return values


@app.task(name="cv.replace_with_group", bind=True)
def replace_with_group(self, n, queue):
    return self.replace(group(add.s(i, i).set(queue=queue) for i in range(n)))


@app.task(name="cv.stamps", bind=True)
def stamps(self, *args):
    return [SIDE, self.request.stamps]
"""

CELERY_APP = """
import os, time
from celery import Celery, group

SIDE = "celery"
app = Celery("canvas_celery", broker=os.environ["C_BROKER"], backend=os.environ["C_BACKEND"])
app.conf.update(task_default_queue=os.environ["C_QUEUE"], worker_prefetch_multiplier=1,
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
"""

CONVEYOR_APP = """
import os, time
from conveyor import Conveyor, group

SIDE = "conveyor"
app = Conveyor("canvas_conveyor", broker=os.environ["C_BROKER"],
               backend=os.environ["C_BACKEND"])
app.conf.update(task_default_queue=os.environ["C_QUEUE"])
"""


@pytest.fixture(scope="module")
def urls() -> Iterator[tuple[str, str]]:
    broker, backend = flush_dbs(BROKER_DB, RESULT_DB)
    yield broker, backend
    flush_dbs(BROKER_DB, RESULT_DB)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: Any) -> Path:
    path = tmp_path_factory.mktemp("canvas-celery")
    (path / "canvas_celery.py").write_text(CELERY_APP + TASKS)
    (path / "canvas_conveyor.py").write_text(CONVEYOR_APP + TASKS)
    return path


def _env(urls: tuple[str, str], queue: str) -> dict[str, str]:
    return {"C_BROKER": urls[0], "C_BACKEND": urls[1], "C_QUEUE": queue}


def celery_worker(workdir: Path, urls: tuple[str, str], queue: str) -> Proc:
    proc = Proc([sys.executable, "-m", "celery", "-A", "canvas_celery", "worker",
                 "-P", "solo", "-c", "1", "-Q", queue, "-l", "INFO", "--without-gossip",
                 "--without-mingle", "--without-heartbeat", "-n", f"{queue}@%h"],
                workdir, env=_env(urls, queue))
    proc.wait_output("ready.", 40)
    return proc


def conveyor_worker(workdir: Path, urls: tuple[str, str], queue: str) -> Proc:
    proc = Proc([sys.executable, "-m", "conveyor.cli", "-A", "canvas_conveyor", "-l",
                 "INFO", "worker", "-Q", queue, "--pool", "solo",
                 "--prefetch-multiplier", "1"], workdir, env=_env(urls, queue))
    proc.wait_output("consuming", 40)
    return proc


def celery_client(urls: tuple[str, str], queue: str) -> Any:
    app = celery.Celery("canvas_client", broker=urls[0], backend=urls[1])
    app.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=True)
    return app


def conveyor_client(urls: tuple[str, str], queue: str) -> Conveyor:
    return Conveyor("canvas_client", broker=urls[0], backend=urls[1],
                    task_default_queue=queue)


def _queue() -> str:
    return f"t.redis.canvas.{uuid.uuid4().hex[:6]}"


def test_conveyor_worker_runs_a_chain_a_celery_client_sent(urls: tuple[str, str],
                                                           workdir: Path) -> None:
    queue = _queue()
    client = celery_client(urls, queue)
    add = client.signature("cv.add")
    with conveyor_worker(workdir, urls, queue) as proc:
        result = celery.chain(add.clone((1, 1)), add.clone((2,)), add.clone((3,))).apply_async()
        assert result.get(timeout=20) == 7, proc.output()[-3000:]
        assert result.parent.get(timeout=5) == 4
    client.close()


def test_celery_worker_runs_a_chain_conveyor_sent(urls: tuple[str, str],
                                                  workdir: Path) -> None:
    queue = _queue()
    app = conveyor_client(urls, queue)
    with celery_worker(workdir, urls, queue) as proc:
        result = chain(app.signature("cv.add", (1, 1)), app.signature("cv.add", (2,)),
                       app.signature("cv.add", (3,))).apply_async()
        assert result.get(timeout=20) == 7, proc.output()[-3000:]
        assert result.parent.get(timeout=5) == 4
    app.close()


@pytest.mark.parametrize("sender", ["conveyor", "celery"])
def test_one_chord_header_shared_by_a_celery_and_a_conveyor_worker(
        urls: tuple[str, str], workdir: Path, sender: str) -> None:
    queue = _queue()
    size = 40
    with celery_worker(workdir, urls, queue) as cel, \
            conveyor_worker(workdir, urls, queue) as conv:
        if sender == "conveyor":
            app = conveyor_client(urls, queue)
            result = chord([app.signature("cv.side", (i,)) for i in range(size)],
                           app.signature("cv.collect")).apply_async()
        else:
            app = celery_client(urls, queue)
            result = celery.chord([app.signature("cv.side", (i,)) for i in range(size)],
                                  app.signature("cv.collect")).apply_async()
        try:
            values = result.get(timeout=60)
        except Exception:
            print(cel.output()[-3000:], conv.output()[-3000:])
            raise
        finally:
            app.close()
    assert [v[0] for v in values] == list(range(size))
    # Both workers ran part of the header, so the join crossed between them.
    assert {v[1] for v in values} == {"celery", "conveyor"}


def test_conveyor_worker_runs_map_starmap_and_chunks_a_celery_client_sent(
        urls: tuple[str, str], workdir: Path) -> None:
    """Celery's ``celery.map``/``celery.starmap`` messages (``chunks`` sends a group
    of the latter) run on Conveyor's built-in tasks of those names."""
    queue = _queue()
    client = celery_client(urls, queue)
    add = client.signature("cv.add")
    with conveyor_worker(workdir, urls, queue) as proc:
        assert celery.canvas.xstarmap(add, [(1, 2), (3, 4)]).apply_async().get(
            timeout=20) == [3, 7], proc.output()[-3000:]
        side = client.signature("cv.side")
        assert celery.canvas.xmap(side, [1, 2]).apply_async().get(timeout=20) == [
            [1, "conveyor"], [2, "conveyor"]]
        parts = celery.canvas.chunks(add, [(i, i) for i in range(5)], 2).apply_async()
        assert parts.get(timeout=20) == [[0, 2], [4, 6], [8]]
    client.close()


def test_celery_worker_runs_map_and_chunks_conveyor_sent(urls: tuple[str, str],
                                                         workdir: Path) -> None:
    from conveyor import chunks, xmap
    queue = _queue()
    app = conveyor_client(urls, queue)
    with celery_worker(workdir, urls, queue) as proc:
        assert xmap(app.signature("cv.side"), [1, 2]).apply_async().get(timeout=20) == [
            [1, "celery"], [2, "celery"]], proc.output()[-3000:]
        parts = chunks(app.signature("cv.add"), [(i, i) for i in range(5)], 2).apply_async()
        assert parts.get(timeout=20) == [[0, 2], [4, 6], [8]]
    app.close()


def test_stamps_cross_between_celery_and_conveyor(urls: tuple[str, str],
                                                  workdir: Path) -> None:
    """A chain stamped by each client, run by the other side's worker: every step
    reads the stamps as ``self.request.stamps``."""
    queue = _queue()
    client = celery_client(urls, queue)
    with conveyor_worker(workdir, urls, queue) as proc:
        flow = celery.chain(client.signature("cv.stamps"), client.signature("cv.stamps"))
        flow.stamp(tenant="acme")
        result = flow.apply_async()
        assert result.get(timeout=20) == ["conveyor", {"tenant": "acme"}], proc.output()[-3000:]
        assert result.parent.get(timeout=5) == ["conveyor", {"tenant": "acme"}]
    client.close()
    queue = _queue()
    app = conveyor_client(urls, queue)
    with celery_worker(workdir, urls, queue) as proc:
        flow = chain(app.signature("cv.stamps"), app.signature("cv.stamps"))
        result = flow.stamp(tenant="acme", wave=2).apply_async()
        assert result.get(timeout=20) == ["celery", {"tenant": "acme", "wave": 2}], \
            proc.output()[-3000:]
        assert result.parent.get(timeout=5) == ["celery", {"tenant": "acme", "wave": 2}]


def test_a_task_replaced_by_a_group_on_one_side_joins_on_the_other(
        urls: tuple[str, str], workdir: Path) -> None:
    """``self.replace(group(...))`` on each side's worker, the group's tasks run by
    the other side's: the join (``celery.accumulate``, a chord's body) runs where
    the last of them finishes, and the replaced task's id gives the list."""
    for replacer, members in ((conveyor_worker, celery_worker),
                              (celery_worker, conveyor_worker)):
        first, second = _queue(), _queue()
        app = conveyor_client(urls, first)
        with replacer(workdir, urls, first) as one, members(workdir, urls, second) as two:
            result = app.send_task("cv.replace_with_group", (3, second))
            assert result.get(timeout=30) == [0, 2, 4], \
                one.output()[-3000:] + two.output()[-3000:]
        app.close()
