"""Drain rate by pool, Conveyor beside Celery on the same Redis in the same run.

For each pool (``solo``; ``threads -c 4``; ``processes -c 2``, Celery's ``prefork``)
and each kind of task (``incr``: one Redis ``INCR`` and its result stored; ``noop``:
nothing, result stored; ``wait``: 5 ms waiting on I/O, as a task calling a slow
service does, result stored — ``n // 10`` of these, the pools' scaling on waits being
what they show), ``n`` tasks are queued before one worker process starts;
the drain is timed from the first result written to the last (worker start-up
excluded). Also measured over that window: the worker's CPU (the process and its
children, from ``/proc``: percent of one core, and microseconds a task), Redis
commands a task (``INFO commandstats`` delta, less the bench's own polling) and the
Redis server's own CPU a task (``INFO cpu`` delta): on a 2-core machine the worker's
processes and Redis share the cores, so CPU a task bounds what ``processes -c 2``
can reach.

Used by ``redis_bench.py`` (``--pools``); rounds alternate Conveyor and Celery so a
busy moment on the machine hits both.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import redis
from bench_support import Worker

#: (label, Conveyor pool, Celery pool, concurrency)
POOLS = [("solo", "solo", "solo", 1), ("threads_c4", "threads", "threads", 4),
         ("processes_c2", "processes", "prefork", 2)]
KINDS = ("incr", "noop", "wait")
#: What a ``wait`` task waits for (the GIL is released meanwhile, as on a socket).
WAIT_S = 0.005
QUEUE = "bench.pools"

#: The tasks module each worker imports; ``{app}`` makes the app (same names on both).
TASKS = '''
import time
import redis
{app}
counter = redis.Redis.from_url("{broker}")

@app.task(name="bench.incr")
def incr():
    return counter.incr("bench:counter")

@app.task(name="bench.noop")
def noop():
    return None

@app.task(name="bench.wait")
def wait():
    time.sleep({wait})
'''
APPS = {
    "conveyor": 'from conveyor import Conveyor\n'
                'app = Conveyor("benchpools", broker="{broker}", backend="{backend}")',
    "celery": 'from celery import Celery\n'
              'app = Celery("benchpools", broker="{broker}", backend="{backend}")\n'
              'app.conf.worker_hijack_root_logger = False',
}


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return out


def _cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def _calls(client: redis.Redis) -> int:
    return sum(v["calls"] for v in client.info("commandstats").values())


def _server_cpu(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def enqueue(system: str, app: Any, name: str, n: int) -> None:
    if system == "conveyor":
        for start in range(0, n, 1000):
            app.publish_batch([(name, (), {}, {"queue": QUEUE}, {})
                               for _ in range(min(1000, n - start))])
    else:
        task = app.tasks[name]
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                task.apply_async(queue=QUEUE, producer=producer)


def drain(system: str, app: Any, kind: str, pool: str, concurrency: int, n: int,
          workdir: Path, broker: str, backend: str) -> dict[str, Any]:
    """One drain: ``n`` queued ``kind`` tasks through one worker with ``pool``."""
    results = redis.Redis.from_url(backend)
    server = redis.Redis.from_url(broker)
    server.flushdb()
    results.flushdb()
    enqueue(system, app, f"bench.{kind}", n)
    if system == "conveyor":
        args = [str(Path(sys.executable).parent / "conveyor"), "-A", "bench_pools_conveyor",
                "worker", "-Q", QUEUE, "-c", str(concurrency), "--pool", pool,
                "-l", "WARNING"]
    else:
        args = [sys.executable, "-m", "celery", "-A", "bench_pools_celery", "worker",
                "-Q", QUEUE, "-c", str(concurrency), "-P", pool, "--without-gossip",
                "--without-mingle", "--without-heartbeat", "-l", "WARNING"]
    worker = Worker(args, workdir)
    try:
        deadline = time.monotonic() + 60
        while results.dbsize() == 0:
            if time.monotonic() > deadline or worker.proc.poll() is not None:
                raise SystemExit(f"bench: {system} {pool} worker did not start:\n"
                                 f"{worker.tail()}")
            time.sleep(0.005)
        first, cpu0, calls0 = time.perf_counter(), _cpu(worker.proc.pid), _calls(server)
        server_cpu0 = _server_cpu(server)
        polls = 0
        deadline = time.monotonic() + 600
        while results.dbsize() < n:
            polls += 1
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {system} {pool} did not drain {n} tasks")
            time.sleep(0.02)
        took = time.perf_counter() - first
        cpu = _cpu(worker.proc.pid) - cpu0
        server_cpu = _server_cpu(server) - server_cpu0
        # Own calls: the polling dbsize (results db: same server) and INFO itself.
        calls = _calls(server) - calls0 - polls - 2
    finally:
        worker.stop()
    return {"per_s": round((n - 1) / took), "worker_cpu_pct": round(100 * cpu / took),
            "worker_cpu_us_per_task": round(cpu / (n - 1) * 1e6),
            "redis_cmds_per_task": round(calls / (n - 1), 2),
            "redis_cpu_us_per_task": round(server_cpu / (n - 1) * 1e6)}


def pools(n: int, rounds: int, workdir: Path, urls: list[str]) -> dict[str, Any]:
    """Every pool × kind, each system, median of ``rounds`` (all rounds listed)."""
    import statistics

    from celery import Celery
    from conveyor import Conveyor
    for system, (broker, backend) in (("conveyor", urls[0:2]), ("celery", urls[2:4])):
        (workdir / f"bench_pools_{system}.py").write_text(TASKS.format(
            app=APPS[system].format(broker=broker, backend=backend), broker=broker,
            wait=WAIT_S))
    apps = {"conveyor": Conveyor("benchpools", broker=urls[0], backend=urls[1]),
            "celery": Celery("benchpools", broker=urls[2], backend=urls[3])}
    for app in apps.values():
        for kind in KINDS:
            def task() -> None:
                return None
            app.task(name=f"bench.{kind}")(task)
    broker_backend = {"conveyor": urls[0:2], "celery": urls[2:4]}
    out: dict[str, Any] = {}
    for label, mine, theirs, concurrency in POOLS:
        for kind in KINDS:
            runs: dict[str, list[dict[str, Any]]] = {"conveyor": [], "celery": []}
            count = max(2, n // 10) if kind == "wait" else n
            for _ in range(rounds):
                for system, pool in (("conveyor", mine), ("celery", theirs)):
                    runs[system].append(drain(system, apps[system], kind, pool, concurrency,
                                              count, workdir, *broker_backend[system]))
            row: dict[str, Any] = {}
            for system, got in runs.items():
                row[system] = {key: statistics.median(r[key] for r in got)
                               for key in got[0]}
                row[system]["rounds_per_s"] = [r["per_s"] for r in got]
            row["ratio"] = round(row["conveyor"]["per_s"] / row["celery"]["per_s"], 2)
            out[f"{label}_{kind}"] = row
    for app in apps.values():
        app.close()
    for url in urls:
        redis.Redis.from_url(url).flushdb()
    c = {key: row["conveyor"]["per_s"] for key, row in out.items()}
    out["ratios"] = {
        f"processes_c2/solo ({kind})": round(c[f"processes_c2_{kind}"] / c[f"solo_{kind}"], 2)
        for kind in KINDS}
    out["ratios"]["threads_c4/solo (wait)"] = round(c["threads_c4_wait"] / c["solo_wait"], 2)
    out["targets"] = {
        "processes -c 2 >= 1.5x solo (incr)": out["ratios"]["processes_c2/solo (incr)"] >= 1.5,
        "processes -c 2 >= 5x celery prefork -c 2 (incr)":
            out["processes_c2_incr"]["ratio"] >= 5,
        "solo >= 6x celery solo (incr)": out["solo_incr"]["ratio"] >= 6,
        # Four threads on tasks that wait: near four times one (3x leaves the slack
        # of the consumer and result writes that do not overlap).
        "threads -c 4 >= 3x solo (wait)": out["ratios"]["threads_c4/solo (wait)"] >= 3,
    }
    return out
