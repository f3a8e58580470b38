"""Conveyor vs Celery on the same Redis, same run: enqueue, drain, round trip, bulk.

Run alone: ``CONVEYOR_BENCH_REDIS_PORT=6390 uv run --frozen python bench/redis_bench.py
[--n 10000] [--pools-n 20000] [--only-pools]``. Prints one JSON object. Each system
gets its own dbs on 127.0.0.1 at ``CONVEYOR_BENCH_REDIS_PORT`` (or ``--port``; default
6379) (defaults: Conveyor broker 8 / results 9, Celery broker 10 / results 11;
``--dbs``); they are flushed before and after, so point it at a Redis no test suite
is using (the Redis tests own dbs 8–13 of theirs).

``pools`` (``pool_drain.py``) drains ``--pools-n`` queued tasks (one Redis ``INCR``
each, and no-ops; a tenth as many that wait 5 ms on I/O) with ``solo``, ``threads -c 4`` and ``processes -c 2`` beside
Celery's ``solo``, ``threads`` and ``prefork``, with worker CPU and Redis commands a
task.

Measured for each system, with ``n`` no-op tasks and default settings (results on):

* ``enqueue_per_s`` — ``noop.apply_async()`` in a loop, one thread;
* ``drain_per_s`` — one worker process (``--pool solo``, ``-c 1``) running the ``n``
  queued tasks: first to last result written (worker start-up excluded);
* ``roundtrip_p50_ms`` — ``noop.delay().get()`` one after another, worker running;
* ``bulk_per_s`` — ``n`` tasks through one publisher. Conveyor: ``noop.apply_async(
  queue=..., publisher=pub)`` in a loop inside ``with app.pool.acquire() as conn,
  noop.get_publisher(conn) as pub:`` (buffered; one pipelined ``publish_many`` per
  1000 messages). Celery: ``group(...).apply_async()``;
* ``bulk_batch_per_s`` — Conveyor's ``group(...).apply_async()`` path,
  ``app.publish_batch`` (every message built, then one ``publish_many``);
  Celery: ``apply_async(producer=...)`` in a loop over one producer
  (``with app.producer_or_acquire() as producer``), for comparison.

Each bulk figure is the best of ``--bulk-runs`` runs (default 3; the queue is flushed
before each); ``bulk_runs_per_s`` lists them all. ``ratios`` divides Conveyor by
Celery (for the round trip, lower is better); ``targets`` says whether each goal
holds. Each of Conveyor's ``bulk`` runs is followed at once by redis-py's pipelined
LPUSH of the same bytes (``lpush_paired_per_s``); ``bulk_vs_pipelined_lpush_pairs``
divides each run by its pair. ``profile`` splits Conveyor's publishing cost between
the core (``app.prepare``: options, routing, message build) and the transport
(envelope; one ``publish`` each; one ``publish_many`` for all), in microseconds per
task, and gives the transport's own bulk rate for messages already built.

Every timed bulk run (both systems, and each LPUSH pair) starts from a settled heap
(``gc.collect()`` just before it): the bench's own allocations before it (the
drain and round-trip phases, the 10,000 messages kept for the LPUSH pairs) otherwise
owe the garbage collector a full collection, which fell into whichever run came
first (measured: 23.6 ms of a 123 ms run on a loaded machine; none in the runs
after). Collections caused by a run's own allocations still count in that run.
"""

from __future__ import annotations

import os
import sys

# `python bench/redis_bench.py` puts bench/ first on sys.path; keep real packages first.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # bench_support, last

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402
from bench_support import enqueue_drain_roundtrip  # noqa: E402
from pool_drain import pools  # noqa: E402

#: The Redis to use: ``CONVEYOR_BENCH_REDIS_PORT`` (or ``--port``), default 6379.
PORT = int(os.environ.get("CONVEYOR_BENCH_REDIS_PORT", "6379"))
QUEUE = "bench.redis"

CONVEYOR_TASKS = '''
from conveyor import Conveyor
app = Conveyor("bench", broker="{broker}", backend="{backend}")

@app.task(name="bench.noop")
def noop():
    return None
'''

CELERY_TASKS = '''
from celery import Celery
app = Celery("bench", broker="{broker}", backend="{backend}")
app.conf.worker_hijack_root_logger = False

@app.task(name="bench.noop")
def noop():
    return None
'''


def measure(system: str, n: int, workdir: Path, broker: str, backend: str,
            roundtrips: int, bulk_runs: int) -> dict[str, Any]:
    """Every number for one system (``conveyor`` or ``celery``)."""
    results = redis.Redis.from_url(backend)
    if system == "conveyor":
        from conveyor import Conveyor
        app = Conveyor("bench", broker=broker, backend=backend)

        @app.task(name="bench.noop")
        def noop() -> None:
            return None

        worker_args = [str(Path(sys.executable).parent / "conveyor"), "-A", "bench_conveyor",
                       "worker", "-Q", QUEUE, "-c", "1", "--pool", "solo"]

        def bulk() -> None:
            with app.pool.acquire() as conn, noop.get_publisher(conn) as pub:
                for _ in range(n):
                    noop.apply_async(queue=QUEUE, publisher=pub)

        def bulk_batch() -> None:
            app.publish_batch([("bench.noop", (), {}, {"queue": QUEUE}, {})
                               for _ in range(n)])
    else:
        from celery import Celery, group
        app = Celery("bench", broker=broker, backend=backend)

        @app.task(name="bench.noop")
        def noop() -> None:
            return None

        worker_args = [sys.executable, "-m", "celery", "-A", "bench_celery", "worker",
                       "-Q", QUEUE, "-c", "1", "-P", "solo", "--without-gossip",
                       "--without-mingle", "--without-heartbeat", "-l", "WARNING"]

        def bulk() -> None:
            group(noop.s().set(queue=QUEUE) for _ in range(n)).apply_async()

        def bulk_batch() -> None:
            with app.producer_or_acquire() as producer:
                for _ in range(n):
                    noop.apply_async(queue=QUEUE, producer=producer)

    out: dict[str, Any] = {}
    noop.apply_async(queue=QUEUE)  # warm up connections and plugin loading
    redis.Redis.from_url(broker).flushdb()
    results.flushdb()

    out.update(enqueue_drain_roundtrip(system, noop, QUEUE, n, results, worker_args,
                                       workdir, roundtrips))

    # Conveyor's bulk runs are paired with redis-py LPUSHing the very bytes they
    # publish, each pair back to back: the ratio then compares the same moment of a
    # noisy machine, not two best runs taken minutes apart.
    raws = publishing_bytes(app, n) if system == "conveyor" else None
    for key, fn in (("bulk_per_s", bulk), ("bulk_batch_per_s", bulk_batch)):
        rates = []
        for _ in range(bulk_runs):
            redis.Redis.from_url(broker).flushdb()
            gc.collect()  # see "settled heap" in the module docstring
            start = time.perf_counter()
            fn()
            rates.append(round(n / (time.perf_counter() - start)))
            if raws is not None and key == "bulk_per_s":
                out.setdefault("lpush_paired_per_s", []).append(lpush_rate(broker, raws))
        out[key] = max(rates)
        out.setdefault("bulk_runs_per_s", {})[key] = rates
    redis.Redis.from_url(broker).flushdb()
    if system == "conveyor":
        out["profile"] = profile(app, n)
    app.close()
    return out


def profile(app: Any, n: int) -> dict[str, float]:
    """Microseconds per task: core message build vs transport envelope + LPUSH."""
    from conveyor.interfaces import Route
    task = app.tasks["bench.noop"]
    start = time.perf_counter()
    built = [app.prepare("bench.noop", (), {}, {"queue": QUEUE}, {}, task)
             for _ in range(n)]
    core = (time.perf_counter() - start) / n * 1e6
    transport = app.transport_factory()
    start = time.perf_counter()
    for message, route, _due, _opts in built:
        transport._envelope(message, route)
    envelope = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for message, route, _due, _opts in built:
        transport.publish(message, Route(QUEUE))
    publish = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    transport.publish_many([(m, Route(QUEUE), None) for m, _r, _d, _o in built])
    many = (time.perf_counter() - start) / n * 1e6
    transport.close()
    return {"core_build_us": round(core, 2), "transport_envelope_us": round(envelope, 2),
            "transport_publish_us": round(publish, 2),
            "transport_publish_many_us": round(many, 2),
            "transport_publish_many_per_s": round(1e6 / many)}


def publishing_bytes(app: Any, n: int) -> list[tuple[bytes, str]]:
    """What ``bulk`` publishes: ``n`` no-op messages as the transport lays them out."""
    from conveyor.interfaces import Route
    task = app.tasks["bench.noop"]
    transport = app.transport_factory()
    raws = [transport._envelope(app.prepare("bench.noop", (), {}, {"queue": QUEUE}, {},
                                            task)[0], Route(QUEUE)) for _ in range(n)]
    transport.close()
    return raws


def lpush_rate(url: str, raws: list[tuple[bytes, str]]) -> int:
    """The pipelined limit: redis-py LPUSHing the very bytes Conveyor publishes, one
    non-transactional pipeline a 1,000 messages (the publisher's buffer)."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    gc.collect()  # as before each bulk run
    start = time.perf_counter()
    for i in range(0, len(raws), 1000):
        pipe = client.pipeline(transaction=False)
        for raw, key in raws[i:i + 1000]:
            pipe.lpush(key, raw)
        pipe.execute()
    rate = round(len(raws) / (time.perf_counter() - start))
    client.flushdb()
    return rate


def _load() -> str:
    """The machine's load averages (1, 5, 15 min): rates are only comparable within
    a run, and this says how busy the run was."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="tasks per measurement")
    parser.add_argument("--roundtrips", type=int, default=300)
    parser.add_argument("--bulk-runs", type=int, default=3,
                        help="runs of each bulk measurement (the best is reported)")
    parser.add_argument("--dbs", default="8,9,10,11",
                        help="Conveyor broker,results,Celery broker,results db numbers")
    parser.add_argument("--port", type=int, default=PORT,
                        help="Redis port on 127.0.0.1 (env CONVEYOR_BENCH_REDIS_PORT; "
                             "use one no test suite runs on)")
    parser.add_argument("--pools-n", type=int, default=20_000,
                        help="tasks per drain in the by-pool section (0: skip it)")
    parser.add_argument("--pools-rounds", type=int, default=1,
                        help="rounds of the by-pool section (median reported)")
    parser.add_argument("--only-pools", action="store_true",
                        help="run only the by-pool drain section")
    ns = parser.parse_args()
    dbs = [int(x) for x in ns.dbs.split(",")]
    urls = [f"redis://127.0.0.1:{ns.port}/{d}" for d in dbs]
    for url in urls:
        redis.Redis.from_url(url).flushdb()
    report: dict[str, Any] = {
        "bench": "redis", "n": ns.n, "python": platform.python_version(),
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "redis": redis.Redis.from_url(urls[0]).info("server")["redis_version"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "bench_conveyor.py").write_text(
            textwrap.dedent(CONVEYOR_TASKS).format(broker=urls[0], backend=urls[1]))
        (workdir / "bench_celery.py").write_text(
            textwrap.dedent(CELERY_TASKS).format(broker=urls[2], backend=urls[3]))
        try:
            if ns.pools_n:
                report["uptime_before"] = _load()
                report["pools"] = pools(ns.pools_n, ns.pools_rounds, workdir, urls)
                report["uptime_after_pools"] = _load()
            if ns.only_pools:
                print(json.dumps(report, indent=2))
                return
            report["conveyor"] = measure("conveyor", ns.n, workdir, urls[0], urls[1],
                                         ns.roundtrips, ns.bulk_runs)
            report["celery"] = measure("celery", ns.n, workdir, urls[2], urls[3],
                                       ns.roundtrips, ns.bulk_runs)
        finally:
            for url in urls:
                redis.Redis.from_url(url).flushdb()
    c, k = report["conveyor"], report["celery"]
    report["ratios"] = {
        "enqueue": round(c["enqueue_per_s"] / k["enqueue_per_s"], 2),
        "drain": round(c["drain_per_s"] / k["drain_per_s"], 2),
        "roundtrip_p50": round(c["roundtrip_p50_ms"] / k["roundtrip_p50_ms"], 2),
        "bulk": round(c["bulk_per_s"] / k["bulk_per_s"], 2),
        "bulk_batch": round(c["bulk_batch_per_s"] / k["bulk_batch_per_s"], 2),
        # One ratio per back-to-back pair (bulk run, LPUSH of its bytes); the target
        # holds only if every pair meets it.
        "bulk_vs_pipelined_lpush_pairs": [
            round(b / lp, 2) for b, lp in zip(c["bulk_runs_per_s"]["bulk_per_s"],
                                              c["lpush_paired_per_s"], strict=True)],
    }
    r = report["ratios"]
    report["targets"] = {
        "enqueue >= 3x celery": r["enqueue"] >= 3,
        "drain >= 5x celery": r["drain"] >= 5,
        "roundtrip p50 <= 0.5x celery": r["roundtrip_p50"] <= 0.5,
        "bulk >= 50000/s": c["bulk_per_s"] >= 50_000,
        "bulk_batch >= 50000/s": c["bulk_batch_per_s"] >= 50_000,
        "bulk >= 0.8x redis-py pipelined LPUSH (every pair)":
            min(r["bulk_vs_pipelined_lpush_pairs"]) >= 0.8,
    }
    report["uptime_after"] = _load()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
