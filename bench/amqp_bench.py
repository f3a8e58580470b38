"""Conveyor vs Celery on the same RabbitMQ, same run: enqueue, drain, round trip.

Run alone: ``CONVEYOR_BENCH_REDIS_PORT=6390 uv run --frozen python bench/amqp_bench.py
[--n 10000]``. Prints one JSON object. Each system gets its own vhost on
127.0.0.1:5672 (made with ``rabbitmqctl`` and deleted afterwards) and its own Redis db
for results (``--redis``, default 127.0.0.1 at ``CONVEYOR_BENCH_REDIS_PORT`` or 6379,
dbs 14 and 15, flushed before and after).

Measured for each system, with ``n`` no-op tasks and default settings (results on):

* ``enqueue_per_s`` — ``noop.apply_async()`` in a loop, one thread;
* ``drain_per_s`` — one worker process running the ``n`` queued tasks, first to
  last result written (start-up excluded). Conveyor: ``--pool threads -c 8``
  (one process, ``--concurrency``); Celery: ``-P threads -c 1`` (``--celery-pool``).
  Why 8 threads for no-op tasks: the GIL runs one at a time anyway, and what a
  pool size buys here is batching (the prefetch is 4 × concurrency and the
  consumer starts waiting jobs in batches of up to half the pool, one early-ack
  write a batch). More was tried: a first sweep under the bench lock favoured
  ``-c 32`` (tasks/s ``-c 8`` 1,624 / 2,170, ``-c 32`` 2,754 / 2,839, no gain past
  32 up to 128), but in three interleaved runs of this bench ``-c 8`` drained
  faster in two (2,974 / 2,873 / 2,119 against 2,740 / 2,536 / 2,236; worker CPU a
  task 270 / 268 / 395 against 287 / 348 / 381 µs; likely more GIL and
  scheduler hand-offs on a busy 2-core machine). Six later interleaved pairs
  of this bench (``--concurrency 8`` / ``32``, on 288e8be, load 1.4-3.5) went the
  other way in five: drain 3,694 / 4,126, 2,481 / 3,815, 3,478 / 4,096,
  3,040 / 3,213, 3,269 / 3,996, 3,629 / 3,487 (means 3,265 / 3,789); worker CPU a
  task 191 / 200, 319 / 223, 243 / 213, 269 / 263, 246 / 210, 188 / 245 µs
  (means 243 / 226); round trip p50 unchanged (medians 1.41 / 1.42 ms). Mixed
  across sessions, so the default stays 8. ``--pool solo`` was not faster
  either (1,689–2,243/s, 354–384 µs a task). Celery's ``-P solo``
  (the issue's anchor, ~1,150/s) stalls on kombu 5.7 whenever the machine is
  loaded: its early acks are queued with ``hub.call_soon`` from inside the event
  loop, which then polls with its next timer's timeout (10 s with
  ``--without-heartbeat``; the event heartbeat's 2 s without it) instead of 0; once the
  prefetch window (4) is all delivered and unacked, RabbitMQ sends nothing and the
  worker sleeps with the acks still queued (seen with strace; 33–124/s over
  5,000 tasks, against 230–520/s for ``-P threads -c 1`` in the same hour). A pool
  thread's ack wakes the loop, so the threads pool does not stall;
* ``drain_worker_cpu_us`` — the worker's CPU (user + system, from ``/proc``; both
  workers are one process, their pools threads) a task over the same first-to-last span, and ``drain_worker_core_pct``
  that CPU as a share of one core: a worker near 100 % is bound by its own CPU (its
  Python runs on one core), one well below it waits for RabbitMQ, Redis or the GIL;
  ``drain_rabbitmq_cpu_us`` the same for the RabbitMQ server (``beam.smp``): shared
  with whatever else uses it meanwhile, so an upper bound. On a small machine the
  worker, RabbitMQ and Redis share the cores: their sum a task bounds the drain;
* ``roundtrip_p50_ms`` — ``noop.delay().get()`` one after another, worker running;
* ``roundtrip_legs_ms`` — where a round trip's time goes (medians of ``--legs`` more
  round trips of a task that returns the time it started, on a fresh worker):
  ``publish`` (``apply_async`` returns), ``to_task_start`` (broker, worker wake-up,
  decoding, early ack, pool hand-off: until the task's first line), ``result_back``
  (result written, the client woken and reading it). One clock: the same machine.

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
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # bench_support, last

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402
from bench_support import Worker, enqueue_drain_roundtrip  # noqa: E402

QUEUE = "bench.amqp"
TASKS = {
    "conveyor": '''
import time
from conveyor import Conveyor
app = Conveyor("bench", broker="{broker}", backend="{backend}")

@app.task(name="bench.noop")
def noop():
    return None

@app.task(name="bench.stamp")
def stamp():
    return time.time()
''',
    "celery": '''
import time
from celery import Celery
app = Celery("bench", broker="{broker}", backend="{backend}")
app.conf.worker_hijack_root_logger = False

@app.task(name="bench.noop")
def noop():
    return None

@app.task(name="bench.stamp")
def stamp():
    return time.time()
''',
}


def rabbitmqctl(*args: str, attempts: int = 3) -> None:
    """Run ``rabbitmqctl``, again after a failure: its calls to the node fail now and
    then (seen: ``set_permissions`` exiting 64 once in 12 runs), and one such
    failure should not cost a whole benchmark run."""
    for attempt in range(1, attempts + 1):
        done = subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=60)
        if done.returncode == 0:
            return
        if attempt < attempts:
            time.sleep(1.0)
    raise SystemExit(f"rabbitmqctl {' '.join(args)} failed {attempts} times (exit "
                     f"{done.returncode}): {done.stderr.decode(errors='replace').strip()}")


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of process ``pid`` (0 when it is not there)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rabbitmq_pid() -> int | None:
    """The local RabbitMQ server's Erlang VM (``beam.smp``), if it runs here."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as fh:
                if fh.read().strip() == "beam.smp":
                    return int(entry)
        except OSError:
            continue
    return None


def worker_pid(module: str) -> int | None:
    """The worker process running ``-A module``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                args = fh.read().split(b"\0")
        except OSError:
            continue
        if module.encode() in args and b"worker" in args:
            return int(entry)
    return None


class DrainCpu(threading.Thread):
    """The worker's (and RabbitMQ's) CPU over the drain, read beside ``enqueue_drain_roundtrip``: at
    the first result written and at the ``n``-th, as its wall clock is read there
    (the same polls of the results db, so the span is the same to a few ms)."""

    def __init__(self, results: Any, module: str, n: int) -> None:
        super().__init__(name="drain-cpu", daemon=True)
        self.results, self.module, self.n = results, module, n
        self.out: dict[str, Any] = {}

    def run(self) -> None:
        deadline = time.monotonic() + 900
        while self.results.dbsize() == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)
        pid = worker_pid(self.module)
        if pid is None:
            return
        rabbit = rabbitmq_pid()
        wall, cpu, broker = time.perf_counter(), process_cpu(pid), process_cpu(rabbit)
        while self.results.dbsize() < self.n:
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)
        wall, cpu = time.perf_counter() - wall, process_cpu(pid) - cpu
        broker = process_cpu(rabbit) - broker
        self.out = {"drain_worker_cpu_us": round(cpu / (self.n - 1) * 1e6, 1),
                    "drain_worker_core_pct": round(cpu / wall * 100)}
        if rabbit is not None:
            self.out["drain_rabbitmq_cpu_us"] = round(broker / (self.n - 1) * 1e6, 1)


def legs(stamp: Any, worker_args: list[str], workdir: Path, count: int) -> dict[str, float]:
    """Median milliseconds of each leg of ``count`` round trips of ``stamp`` (a task
    returning ``time.time()`` when it starts) on a fresh worker."""
    worker = Worker(worker_args, workdir)
    try:
        for _ in range(20):  # the worker starts, connects and warms up
            stamp.apply_async(queue=QUEUE).get(timeout=60)
        publish, to_start, back = [], [], []
        for _ in range(count):
            t0 = time.time()
            result = stamp.apply_async(queue=QUEUE)
            t1 = time.time()
            started = float(result.get(timeout=30))
            t2 = time.time()
            publish.append(t1 - t0)
            to_start.append(started - t1)
            back.append(t2 - started)
    except BaseException:
        print(worker.tail(), file=sys.stderr)
        raise
    finally:
        worker.stop()
    return {leg: round(statistics.median(times) * 1000, 3) for leg, times in
            (("publish", publish), ("to_task_start", to_start), ("result_back", back))}


def measure(system: str, n: int, workdir: Path, broker: str, backend: str,
            roundtrips: int, celery_pool: str = "threads",
            leg_trips: int = 0, concurrency: int = 8) -> dict[str, Any]:
    """Every number for one system (``conveyor`` or ``celery``)."""
    results = redis.Redis.from_url(backend)
    if system == "conveyor":
        from conveyor import Conveyor
        app: Any = Conveyor("bench", broker=broker, backend=backend)
        worker_args = [str(Path(sys.executable).parent / "conveyor"), "-A", "bench_conveyor",
                       "worker", "-Q", QUEUE, "-c", str(concurrency), "--pool", "threads"]
    else:
        from celery import Celery
        app = Celery("bench", broker=broker, backend=backend)
        worker_args = [sys.executable, "-m", "celery", "-A", "bench_celery", "worker",
                       "-Q", QUEUE, "-c", "1", "-P", celery_pool, "--without-gossip",
                       "--without-mingle", "--without-heartbeat", "-l", "WARNING"]

    @app.task(name="bench.noop")
    def noop() -> None:
        return None

    @app.task(name="bench.stamp")
    def stamp() -> float:
        return time.time()

    out: dict[str, Any] = {}
    noop.apply_async(queue=QUEUE)  # warm up: connection, declarations, plugin loading
    results.flushdb()

    sampler = DrainCpu(results, f"bench_{system}", n)
    sampler.start()
    out.update(enqueue_drain_roundtrip(system, noop, QUEUE, n, results, worker_args,
                                       workdir, roundtrips))
    sampler.join(5)
    out.update(sampler.out)
    if leg_trips:
        out["roundtrip_legs_ms"] = legs(stamp, worker_args, workdir, leg_trips)
    results.flushdb()
    app.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--roundtrips", type=int, default=300)
    parser.add_argument("--legs", type=int, default=200,
                        help="round trips timed leg by leg (roundtrip_legs_ms); 0: none")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672",
                        help="RabbitMQ, without the vhost")
    parser.add_argument("--redis", default="redis://127.0.0.1:"
                        + os.environ.get("CONVEYOR_BENCH_REDIS_PORT", "6379"),
                        help="Redis for results (dbs 14 and 15 are flushed; default port "
                        "from CONVEYOR_BENCH_REDIS_PORT, else 6379)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="threads of Conveyor's worker (--pool threads -c N)")
    parser.add_argument("--celery-pool", default="threads", choices=("threads", "solo"),
                        help="Celery's pool, one slot (solo stalls under load: see above)")
    ns = parser.parse_args()
    import celery
    import pika
    report: dict[str, Any] = {
        "n": ns.n, "python": platform.python_version(), "celery_version": celery.__version__,
        "pika_version": pika.__version__,
        "workers": {"conveyor": f"--pool threads -c {ns.concurrency}",
                    "celery": f"-P {ns.celery_pool} -c 1"},
        "loadavg": os.getloadavg()}
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
                                         ns.roundtrips, ns.celery_pool, ns.legs,
                                         ns.concurrency)
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
