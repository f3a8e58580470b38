"""Conveyor vs Celery on the same RabbitMQ, same run: enqueue, drain, round trip.

Run alone: ``uv run --frozen python bench/amqp_bench.py [--n 10000]``. Prints one
JSON object. Each system gets its own vhost on 127.0.0.1:5672 (made with
``rabbitmqctl`` and deleted afterwards) and its own Redis db for results (``--redis``,
default ``redis://127.0.0.1:6379``, dbs 14 and 15, flushed before and after).

Measured for each system, with ``n`` no-op tasks and default settings (results on):

* ``enqueue_per_s`` — ``noop.apply_async()`` in a loop, one thread;
* ``drain_per_s`` — one worker process running the ``n`` queued tasks, first to
  last result written (start-up excluded). Conveyor: ``--pool threads -c 8`` (one
  process); Celery: ``-P solo`` (its fastest single process here, the issue's
  anchor);
* ``roundtrip_p50_ms`` — ``noop.delay().get()`` one after another, worker running.

``ratios`` divides Conveyor by Celery (for the round trip, lower is better), and
``targets`` checks the goals of the AMQP issue: enqueue ≥ 19,000/s (1.2× Dramatiq's
~16,100/s measured here), drain ≥ 5,800/s (5× Celery's ~1,150/s), p50 ≤ 0.73 ms.
"""

from __future__ import annotations

import os
import sys

# `python bench/amqp_bench.py` puts bench/ first on sys.path; keep real packages first.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402

QUEUE = "bench.amqp"
TASKS = {
    "conveyor": '''
from conveyor import Conveyor
app = Conveyor("bench", broker="{broker}", backend="{backend}")

@app.task(name="bench.noop")
def noop():
    return None
''',
    "celery": '''
from celery import Celery
app = Celery("bench", broker="{broker}", backend="{backend}")
app.conf.worker_hijack_root_logger = False

@app.task(name="bench.noop")
def noop():
    return None
''',
}


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


class Worker:
    """A worker subprocess in its own process group; always killed on exit."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.log = (cwd / f"worker-{time.time_ns()}.log").open("w+b")
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


def measure(system: str, n: int, workdir: Path, broker: str, backend: str,
            roundtrips: int) -> dict[str, Any]:
    """Every number for one system (``conveyor`` or ``celery``)."""
    results = redis.Redis.from_url(backend)
    if system == "conveyor":
        from conveyor import Conveyor
        app: Any = Conveyor("bench", broker=broker, backend=backend)
        worker_args = [str(Path(sys.executable).parent / "conveyor"), "-A", "bench_conveyor",
                       "worker", "-Q", QUEUE, "-c", "8", "--pool", "threads"]
    else:
        from celery import Celery
        app = Celery("bench", broker=broker, backend=backend)
        worker_args = [sys.executable, "-m", "celery", "-A", "bench_celery", "worker",
                       "-Q", QUEUE, "-c", "1", "-P", "solo", "--without-gossip",
                       "--without-mingle", "--without-heartbeat", "-l", "WARNING"]

    @app.task(name="bench.noop")
    def noop() -> None:
        return None

    out: dict[str, Any] = {}
    noop.apply_async(queue=QUEUE)  # warm up: connection, declarations, plugin loading
    results.flushdb()

    start = time.perf_counter()
    for _ in range(n):
        noop.apply_async(queue=QUEUE)
    out["enqueue_per_s"] = round(n / (time.perf_counter() - start))

    worker = Worker(worker_args, workdir)
    try:
        wait_until(lambda: results.dbsize() > 0, 60, f"{system} worker to start")
        first = time.perf_counter()
        wait_until(lambda: results.dbsize() >= n, 600, f"{system} to drain {n} tasks")
        out["drain_per_s"] = round((n - 1) / (time.perf_counter() - first))

        for _ in range(20):
            noop.apply_async(queue=QUEUE).get(timeout=30)
        times = []
        for _ in range(roundtrips):
            t0 = time.perf_counter()
            noop.apply_async(queue=QUEUE).get(timeout=30)
            times.append(time.perf_counter() - t0)
        out["roundtrip_p50_ms"] = round(statistics.median(times) * 1000, 3)
        out["roundtrip_p90_ms"] = round(sorted(times)[int(len(times) * 0.9)] * 1000, 3)
    except BaseException:
        print(worker.tail(), file=sys.stderr)
        raise
    finally:
        worker.stop()
    results.flushdb()
    app.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--roundtrips", type=int, default=300)
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672",
                        help="RabbitMQ, without the vhost")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379",
                        help="Redis for results (dbs 14 and 15 are flushed)")
    ns = parser.parse_args()
    import celery
    import pika
    report: dict[str, Any] = {
        "n": ns.n, "python": platform.python_version(), "celery_version": celery.__version__,
        "pika_version": pika.__version__,
        "workers": {"conveyor": "--pool threads -c 8", "celery": "-P solo -c 1"}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for db, system in ((14, "conveyor"), (15, "celery")):
            vhost = f"bench-{system}-{uuid.uuid4().hex[:6]}"
            rabbitmqctl("add_vhost", vhost)
            broker, backend = f"{ns.amqp}/{vhost}", f"{ns.redis}/{db}"
            try:
                rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
                (workdir / f"bench_{system}.py").write_text(
                    textwrap.dedent(TASKS[system]).format(broker=broker, backend=backend))
                report[system] = measure(system, ns.n, workdir, broker, backend,
                                         ns.roundtrips)
            finally:
                rabbitmqctl("delete_vhost", vhost)
                redis.Redis.from_url(backend).flushdb()
    c, k = report["conveyor"], report["celery"]
    report["ratios"] = {
        "enqueue": round(c["enqueue_per_s"] / k["enqueue_per_s"], 2),
        "drain": round(c["drain_per_s"] / k["drain_per_s"], 2),
        "roundtrip_p50": round(c["roundtrip_p50_ms"] / k["roundtrip_p50_ms"], 2),
    }
    report["targets"] = {
        "enqueue >= 19000/s": c["enqueue_per_s"] >= 19_000,
        "drain >= 5800/s": c["drain_per_s"] >= 5_800,
        "roundtrip p50 <= 0.73 ms": c["roundtrip_p50_ms"] <= 0.73,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
