"""The asyncio client against the blocking one, on the same Redis and worker, same run.

Run alone: ``CONVEYOR_BENCH_REDIS_PORT=6390 uv run --frozen python
bench/async_roundtrip.py [--n 10000]``. Prints one JSON object. Uses dbs 14 (broker)
and 15 (results) of ``--url`` (default ``redis://127.0.0.1:`` and
``CONVEYOR_BENCH_REDIS_PORT``, else 6379), flushed before and after. One worker
process (``--pool threads``, the worker's default pool, with ``-c``
``--concurrency``, 8 by default, and the default prefetch) runs a no-op task for
every phase, so the blocking and the asyncio client meet the same worker:

* ``blocking`` — ``noop.delay().get()`` one after another: p50/p99 and throughput;
* ``async_c1`` — ``await (await noop.adelay()).aget()`` one after another;
* ``async_c100`` — ``--n`` round trips, at most 100 in flight (100 coroutines, each
  one round trip after another: the loop is never handed ``--n`` tasks at once);
* ``async_gather`` — ``--n`` round trips started at once with ``asyncio.gather``;
* ``debug`` — ``async_c100`` again (``--debug-n`` round trips) with the loop in
  asyncio debug mode and ``slow_callback_duration`` 0.1 s: every slow callback the
  loop logs is counted (``slow_callbacks``) and the longest reported.

Each phase reports ``client_cpu_us``, the CPU time this process spent per round
trip (the worker and Redis share the machine: a client that needs less leaves more
to them). ``targets`` says whether each goal holds: async p50 at concurrency 1 no worse than
the blocking p50; at concurrency 100 at least 5× the blocking throughput; no slow
callback over 100 ms in debug mode.
"""

from __future__ import annotations

import os
import sys

# `python bench/async_roundtrip.py` puts bench/ first on sys.path; keep packages first.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402

TASKS = '''
import os
from conveyor import Conveyor

app = Conveyor("benchasync", broker=os.environ["B_BROKER"], backend=os.environ["B_BACKEND"],
               task_default_queue="bench.async")


@app.task(name="bench.noop")
def noop() -> None:
    return None
'''


def summary(latencies: list[float], elapsed: float, cpu: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"n": len(ordered), "per_s": round(len(ordered) / elapsed, 1),
            "p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3),
            "client_cpu_us": round(cpu / len(ordered) * 1e6, 1)}


def blocking(noop: Any, n: int) -> dict[str, float]:
    latencies = []
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        t = time.perf_counter()
        noop.delay().get(timeout=30)
        latencies.append(time.perf_counter() - t)
    return summary(latencies, time.perf_counter() - start, time.process_time() - cpu)


async def concurrent(noop: Any, n: int, limit: int | None) -> dict[str, float]:
    latencies: list[float] = []

    async def one() -> None:
        t = time.perf_counter()
        await (await noop.adelay()).aget(timeout=60)
        latencies.append(time.perf_counter() - t)

    async def lane(share: int) -> None:
        for _ in range(share):
            await one()

    start, cpu = time.perf_counter(), time.process_time()
    if limit:  # `limit` lanes, each one round trip after another: at most limit in flight
        await asyncio.gather(*(lane(n // limit + (k < n % limit)) for k in range(limit)))
    else:
        await asyncio.gather(*(one() for _ in range(n)))
    return summary(latencies, time.perf_counter() - start, time.process_time() - cpu)


class _SlowCallbacks(logging.Handler):
    """Counts asyncio debug mode's "Executing ... took 0.123 seconds" records."""

    def __init__(self) -> None:
        super().__init__()
        self.took: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"took (\d+\.\d+) seconds", record.getMessage())
        if found:
            self.took.append(float(found.group(1)))


def run(coro: Callable[[], Awaitable[dict[str, Any]]], app: Any, debug: bool = False
        ) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        loop.slow_callback_duration = 0.1
        try:
            return await coro()
        finally:
            await app.aclose()

    return asyncio.run(main(), debug=debug)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="concurrent round trips")
    parser.add_argument("--sequential", type=int, default=500,
                        help="round trips of the one-at-a-time phases")
    parser.add_argument("--debug-n", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=8, help="worker -c")
    parser.add_argument("--url", default="redis://127.0.0.1:"
                        + os.environ.get("CONVEYOR_BENCH_REDIS_PORT", "6379"),
                        help="Redis server (default port: env CONVEYOR_BENCH_REDIS_PORT, "
                             "else 6379; use one no test suite runs on)")
    args = parser.parse_args()
    broker, backend = f"{args.url}/14", f"{args.url}/15"
    flush = [redis.Redis.from_url(u) for u in (broker, backend)]
    for client in flush:
        client.flushdb()
    workdir = Path(tempfile.mkdtemp(prefix="bench-async-"))
    (workdir / "benchasync.py").write_text(TASKS)
    env = {**os.environ, "B_BROKER": broker, "B_BACKEND": backend}
    os.environ.update(B_BROKER=broker, B_BACKEND=backend)
    sys.path.insert(0, str(workdir))
    import benchasync  # type: ignore[import-not-found]
    log = (workdir / "worker.log").open("w+b")
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "-A", "benchasync:app", "-l", "WARNING",
         "worker", "--pool", "threads", "-c", str(args.concurrency)],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out: dict[str, Any] = {"python": platform.python_version(), "n": args.n,
                           "worker": f"threads -c {args.concurrency}",
                           "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    try:
        noop = benchasync.noop
        noop.delay().get(timeout=30)  # the worker is up; connections are warm
        out["blocking"] = blocking(noop, args.sequential)
        out["async_c1"] = run(lambda: concurrent(noop, args.sequential, 1), benchasync.app)
        out["async_c100"] = run(lambda: concurrent(noop, args.n, 100), benchasync.app)
        out["async_gather"] = run(lambda: concurrent(noop, args.n, None), benchasync.app)
        slow = _SlowCallbacks()
        logging.getLogger("asyncio").addHandler(slow)
        logging.getLogger("asyncio").setLevel(logging.WARNING)
        out["debug"] = run(lambda: concurrent(noop, args.debug_n, 100), benchasync.app,
                           debug=True)
        out["debug"].update(slow_callbacks=len(slow.took),
                            slowest_callback_ms=round(max(slow.took, default=0) * 1000, 1))
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(5)
        log.close()
        for client in flush:
            client.flushdb()
            client.close()
    out["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    blocking_p50, blocking_rate = out["blocking"]["p50_ms"], out["blocking"]["per_s"]
    out["ratios"] = {
        "async_c1_p50_vs_blocking_p50": round(out["async_c1"]["p50_ms"] / blocking_p50, 2),
        "async_c100_vs_blocking_per_s": round(out["async_c100"]["per_s"] / blocking_rate, 2),
        "async_gather_vs_blocking_per_s": round(out["async_gather"]["per_s"] / blocking_rate,
                                                2),
    }
    out["targets"] = {
        "async_c1_p50_no_worse": out["async_c1"]["p50_ms"] <= blocking_p50,
        "async_c100_at_least_5x": out["ratios"]["async_c100_vs_blocking_per_s"] >= 5,
        "no_slow_callback_over_100ms": out["debug"]["slow_callbacks"] == 0,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
