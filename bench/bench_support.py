"""What the broker benchmarks share: bounded waits and worker subprocesses."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


class Worker:
    """A worker subprocess in its own process group; always killed on exit."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.log = (cwd / f"{args[0].rsplit('/', 1)[-1]}-{time.time_ns()}.log").open("w+b")
        self.proc = subprocess.Popen(args, cwd=cwd, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()

    def tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]


def enqueue_drain_roundtrip(system: str, noop: Any, queue: str, n: int, results: Any,
                            worker_args: list[str], workdir: Path,
                            roundtrips: int) -> dict[str, Any]:
    """The three numbers every broker bench measures for one system, with ``n``
    queued tasks and results counted in the Redis db ``results``:
    ``enqueue_per_s`` (``apply_async`` in a loop), ``drain_per_s`` (one worker
    process, first to last result written) and ``roundtrip_p50_ms``/``p90``
    (``delay().get()`` one after another)."""
    out: dict[str, Any] = {}
    start = time.perf_counter()
    for _ in range(n):
        noop.apply_async(queue=queue)
    out["enqueue_per_s"] = round(n / (time.perf_counter() - start))

    worker = Worker(worker_args, workdir)
    try:
        wait_until(lambda: results.dbsize() > 0, 60, f"{system} worker to start")
        first = time.perf_counter()
        wait_until(lambda: results.dbsize() >= n, 600, f"{system} to drain {n} tasks")
        out["drain_per_s"] = round((n - 1) / (time.perf_counter() - first))

        for _ in range(20):
            noop.apply_async(queue=queue).get(timeout=30)
        times = []
        for _ in range(roundtrips):
            t0 = time.perf_counter()
            noop.apply_async(queue=queue).get(timeout=30)
            times.append(time.perf_counter() - t0)
        out["roundtrip_p50_ms"] = round(statistics.median(times) * 1000, 3)
        out["roundtrip_p90_ms"] = round(sorted(times)[int(len(times) * 0.9)] * 1000, 3)
    except BaseException:
        print(worker.tail(), file=sys.stderr)
        raise
    finally:
        worker.stop()
    return out
