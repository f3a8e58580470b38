"""The asyncio client against the blocking one, on the same Redis and worker, same run.

Run alone: ``CONVEYOR_BENCH_REDIS_PORT=6390 uv run --frozen python
bench/async_roundtrip.py [--n 10000]``. Prints one JSON object. Uses dbs 14 (broker)
and 15 (results) of ``--url`` (default ``redis://127.0.0.1:`` and
``CONVEYOR_BENCH_REDIS_PORT``, else 6379), flushed before and after.

The worker: one process, ``--pool threads`` (the worker's default pool) with ``-c 8``
and the default prefetch, started once and used by every phase, so the blocking and
the asyncio client meet the same worker (``--pool``/``--concurrency`` change it for
both). It runs a no-op task. It is not what bounds the concurrent phases: each phase
reports the CPU of the client, the worker and Redis (``*_cpu_us`` a round trip,
``*_core_pct`` of one core over the phase), and at concurrency 100 none of the three
is near a full core; the three together, on a shared 2-core machine, are the bound.

* ``blocking`` and ``async_c1`` — ``noop.delay().get()`` and ``await (await
  noop.adelay()).aget()``, ``--sequential`` each, alternately (one blocking, one
  async, …, on one loop) so a busy moment of the machine hits both alike: p50/p99,
  throughput (round trips a second of the side's own time) and client CPU;
* ``async_c100`` — ``--n`` round trips, at most 100 in flight (100 coroutines, each
  one round trip after another: the loop is never handed ``--n`` tasks at once);
* ``async_gather`` — ``--n`` round trips started at once with ``asyncio.gather``;
* ``debug`` — ``async_c100`` again (``--debug-n`` round trips) with the loop in
  asyncio debug mode and ``slow_callback_duration`` 0.1 s: every slow callback the
  loop logs is counted (``slow_callbacks``), the slowest reported with what it ran,
  beside the garbage collector's longest pause in the phase (a full collection
  stalls whichever callback runs).

``targets`` says whether each goal holds: async p50 at concurrency 1 no worse than
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
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, TypeVar  # noqa: E402

import redis  # noqa: E402

T = TypeVar("T")

TASKS = '''
import os
from conveyor import Conveyor

app = Conveyor("benchasync", broker=os.environ["B_BROKER"], backend=os.environ["B_BACKEND"],
               task_default_queue="bench.async")


@app.task(name="bench.noop")
def noop() -> None:
    return None
'''


class Meter:
    """CPU seconds of the three processes a round trip crosses: this client, the
    worker (its process group: the worker and any pool children) and Redis (``INFO
    cpu``; a server only this bench uses)."""

    def __init__(self, worker_pid: int, server: redis.Redis) -> None:
        self.worker_pid, self.server = worker_pid, server

    def worker_cpu(self) -> float:
        ticks = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.worker_pid:  # its process group (own session)
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def read(self) -> tuple[float, float, float, float]:
        """(wall, client CPU, worker CPU, Redis CPU) now."""
        info = self.server.info("cpu")
        return (time.perf_counter(), time.process_time(), self.worker_cpu(),
                float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))


def summary(latencies: list[float], elapsed: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {"n": len(ordered), "per_s": round(len(ordered) / elapsed, 1),
            "p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3)}


def spent(meter: Meter, before: tuple[float, float, float, float], n: int
          ) -> dict[str, Any]:
    """CPU microseconds a round trip, and percent of one core over the phase, of the
    client, the worker and Redis: a process near 100 % of a core bounds the phase
    (the client and a threads worker run their Python on one core; Redis is
    single-threaded)."""
    after = meter.read()
    elapsed = after[0] - before[0]
    out: dict[str, Any] = {}
    for k, name in ((1, "client"), (2, "worker"), (3, "redis")):
        used = after[k] - before[k]
        out[f"{name}_cpu_us"] = round(used / n * 1e6, 1)
        out[f"{name}_core_pct"] = round(used / elapsed * 100)
    return out


async def sequential(noop: Any, n: int) -> dict[str, dict[str, Any]]:
    """The blocking and the asyncio client one round trip at a time, alternately
    (blocking, async, blocking, …) so a busy moment of the machine hits both alike.
    The blocking calls run on the loop's thread (nothing else is scheduled)."""
    times: dict[str, list[float]] = {"blocking": [], "async_c1": []}
    cpu: dict[str, float] = {"blocking": 0.0, "async_c1": 0.0}
    await (await noop.adelay()).aget(timeout=30)  # the loop's connections are open
    for _ in range(n):
        c, t = time.process_time(), time.perf_counter()
        noop.delay().get(timeout=30)
        times["blocking"].append(time.perf_counter() - t)
        cpu["blocking"] += time.process_time() - c
        c, t = time.process_time(), time.perf_counter()
        await (await noop.adelay()).aget(timeout=30)
        times["async_c1"].append(time.perf_counter() - t)
        cpu["async_c1"] += time.process_time() - c
    out = {}
    for side, latencies in times.items():
        out[side] = summary(latencies, sum(latencies))
        out[side]["client_cpu_us"] = round(cpu[side] / n * 1e6, 1)
    return out


async def concurrent(noop: Any, n: int, limit: int | None, meter: Meter
                     ) -> dict[str, Any]:
    latencies: list[float] = []

    async def one() -> None:
        t = time.perf_counter()
        await (await noop.adelay()).aget(timeout=60)
        latencies.append(time.perf_counter() - t)

    async def lane(share: int) -> None:
        for _ in range(share):
            await one()

    await one()  # the loop's connections are open
    latencies.clear()
    before = meter.read()
    if limit:  # `limit` lanes, each one round trip after another: at most limit in flight
        await asyncio.gather(*(lane(n // limit + (k < n % limit)) for k in range(limit)))
    else:
        await asyncio.gather(*(one() for _ in range(n)))
    return {**summary(latencies, time.perf_counter() - before[0]), **spent(meter, before, n)}


class _SlowCallbacks(logging.Handler):
    """Counts asyncio debug mode's "Executing ... took 0.123 seconds" records."""

    def __init__(self) -> None:
        super().__init__()
        self.took: list[float] = []
        self.slowest = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        found = re.search(r"took (\d+\.\d+) seconds", message)
        if found:
            if float(found.group(1)) > max(self.took, default=0):
                self.slowest = message[:300]  # which callback, to find out why
            self.took.append(float(found.group(1)))


class CallbackCpu:
    """While installed, the CPU time (this thread's) of every loop callback whose wall
    time passed ``slow`` seconds: a callback that blocks the loop spends its time on
    the CPU (or in a blocking call); one that the OS descheduled on a busy machine
    does not, though debug mode logs it all the same."""

    def __init__(self, slow: float) -> None:
        self.slow = slow
        self.slowest_cpu = 0.0
        self._run: Any = None

    def __enter__(self) -> CallbackCpu:
        self._run = original = asyncio.events.Handle._run

        def timed(handle: asyncio.Handle) -> None:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                original(handle)
            finally:
                if time.perf_counter() - wall >= self.slow:
                    self.slowest_cpu = max(self.slowest_cpu, time.thread_time() - cpu)

        asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.events.Handle._run = self._run  # type: ignore[method-assign]


class GcPauses:
    """The garbage collector's pauses while installed: a full collection of this
    process's heap (which debug mode's tracebacks grow) stalls whatever callback is
    running, so a slow callback is compared with the longest pause."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.count = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count += 1
            self.longest = max(self.longest, time.perf_counter() - self._started)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def run(coro: Callable[[], Awaitable[T]], app: Any, debug: bool = False) -> T:
    async def main() -> T:
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
    parser.add_argument("--pool", default="threads", help="worker --pool (both clients)")
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
         "worker", "--pool", args.pool, "-c", str(args.concurrency)],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out: dict[str, Any] = {"python": platform.python_version(), "n": args.n,
                           "worker": f"{args.pool} -c {args.concurrency}",
                           "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    try:
        noop = benchasync.noop
        noop.delay().get(timeout=30)  # the worker is up; connections are warm
        meter = Meter(worker.pid, flush[0])
        out.update(run(lambda: sequential(noop, args.sequential), benchasync.app))
        out["async_c100"] = run(lambda: concurrent(noop, args.n, 100, meter), benchasync.app)
        out["async_gather"] = run(lambda: concurrent(noop, args.n, None, meter),
                                  benchasync.app)
        slow = _SlowCallbacks()
        logging.getLogger("asyncio").addHandler(slow)
        logging.getLogger("asyncio").setLevel(logging.WARNING)
        with GcPauses() as pauses, CallbackCpu(0.1) as callbacks:
            out["debug"] = run(lambda: concurrent(noop, args.debug_n, 100, meter),
                               benchasync.app, debug=True)
        out["debug"].update(gc_collections=pauses.count,
                            longest_gc_pause_ms=round(pauses.longest * 1000, 1),
                            slowest_callback_cpu_ms=round(callbacks.slowest_cpu * 1000, 1))
        out["debug"].update(slow_callbacks=len(slow.took),
                            slowest_callback_ms=round(max(slow.took, default=0) * 1000, 1),
                            slowest_callback=slow.slowest)
    except BaseException:
        log.seek(0)
        sys.stderr.write(f"bench: the worker's log:\n{log.read().decode(errors='replace')}\n")
        raise
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(5)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
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
