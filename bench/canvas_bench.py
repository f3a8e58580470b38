"""Canvas: Conveyor vs Celery on the same Redis, same run: chain bytes, chord time.

Run alone: ``CONVEYOR_BENCH_REDIS_PORT=6390 uv run --frozen python bench/canvas_bench.py``.
Prints one JSON object. Each system gets its own dbs (defaults: Conveyor broker 2 /
results 3, Celery broker 4 / results 5; ``--dbs``) on 127.0.0.1 at
``CONVEYOR_BENCH_REDIS_PORT`` (or ``--port``; default 6379); they are flushed before
and after, so point it at a Redis no test suite is using. One worker process each
(``--pool solo``/``-P solo``).

Measured for each system:

* ``chain_<n>`` for ``--chain-sizes`` (default 10, 100, 1000): a chain of ``n``
  no-op tasks from ``apply_async`` to the last result. ``message_bytes`` is the sum
  of the task messages pushed onto the queue (Redis ``MONITOR``, LPUSH payloads:
  the client's first message and every next step the worker sends);
  ``redis_input_bytes`` is everything every client sent the Redis server in that
  time (``total_net_input_bytes``: messages, acknowledgement bookkeeping, results,
  and for Conveyor's ``backend`` mode the stored steps), so nothing is hidden;
  ``seconds`` is the wall time. Conveyor is measured twice: ``task_chain_embed=
  "message"`` (Celery's wire format, the default: each message carries the rest of
  the chain) and ``"backend"`` (each step stored once, messages name the next).
* ``chord_seconds``: ``chord([noop.s()] * --chord-size, count.s()).apply_async()``
  to the body's result (``--chord-size`` default 1000), best of ``--chord-runs``.

``ratios`` divides Conveyor by Celery (lower is better for all of them); ``targets``
says whether each goal holds.
"""

from __future__ import annotations

import os
import sys

# `python bench/canvas_bench.py` puts bench/ first on sys.path; keep real packages
# first, and bench/ last for the shared worker helper.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0]) == _HERE:
    del sys.path[0]
sys.path.append(_HERE)

import argparse  # noqa: E402
import codecs  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402
from bench_support import Worker, wait_until  # noqa: E402

#: The Redis to use: ``CONVEYOR_BENCH_REDIS_PORT`` (or ``--port``), default 6379.
PORT = int(os.environ.get("CONVEYOR_BENCH_REDIS_PORT", "6379"))
QUEUE = "bench.canvas"

TASKS = '''
@app.task(name="bench.noop")
def noop(*args):
    return None


@app.task(name="bench.count")
def count(values):
    return len(values)
'''

CONVEYOR_APP = '''
from conveyor import Conveyor
app = Conveyor("bench", broker="{broker}", backend="{backend}",
               task_default_queue="bench.canvas")
'''

CELERY_APP = '''
from celery import Celery
app = Celery("bench", broker="{broker}", backend="{backend}")
app.conf.update(worker_hijack_root_logger=False, task_default_queue="bench.canvas")
'''

_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')


class PushedBytes:
    """Sums the payloads LPUSHed onto one queue's lists, read from Redis ``MONITOR``."""

    def __init__(self, url: str, key: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.conn = self.client.connection_pool.get_connection()
        self.conn.send_command("MONITOR")
        assert self.conn.read_response() in (b"OK", "OK")
        self.key = key.encode()
        self.total = 0
        self.lock = threading.Lock()
        self.stopped = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stopped:
            try:
                line = self.conn.read_response(disable_decoding=True)
            except (redis.ConnectionError, OSError, ValueError):
                return
            if not isinstance(line, bytes) or b'"LPUSH"' not in line:
                continue
            args = [codecs.escape_decode(a)[0] for a in _ARG.findall(line)]
            # the queue's list, or one of its priority step lists (``<queue>\x06\x16<n>``)
            if len(args) >= 3 and args[0] == b"LPUSH" and (
                    args[1] == self.key or args[1].startswith(self.key + b"\x06\x16")):
                with self.lock:
                    self.total += sum(len(a) for a in args[2:])

    def take(self) -> int:
        """The bytes counted since the last call (after MONITOR caught up)."""
        time.sleep(0.3)
        with self.lock:
            total, self.total = self.total, 0
        return total

    def close(self) -> None:
        self.stopped = True
        self.conn.disconnect()
        self.client.close()


def net_input(client: redis.Redis) -> int:
    return int(client.info("stats")["total_net_input_bytes"])


def measure(system: str, workdir: Path, broker: str, backend: str,
            sizes: list[int], chord_size: int, chord_runs: int,
            modes: tuple[str, ...]) -> dict[str, Any]:
    """Every number for one system (``conveyor`` or ``celery``)."""
    server = redis.Redis.from_url(broker)
    if system == "conveyor":
        from conveyor import Conveyor, chain, chord
        app: Any = Conveyor("bench", broker=broker, backend=backend,
                            task_default_queue=QUEUE)
        args = [str(Path(sys.executable).parent / "conveyor"), "-A", "bench_conveyor",
                "-l", "WARNING", "worker", "-Q", QUEUE, "-c", "1", "--pool", "solo"]
    else:
        from celery import Celery, chain, chord
        app = Celery("bench", broker=broker, backend=backend)
        app.conf.task_default_queue = QUEUE
        args = [sys.executable, "-m", "celery", "-A", "bench_celery", "worker",
                "-Q", QUEUE, "-c", "1", "-P", "solo", "--without-gossip",
                "--without-mingle", "--without-heartbeat", "-l", "WARNING"]
    noop, count = app.signature("bench.noop"), app.signature("bench.count")
    out: dict[str, Any] = {}
    pushed = PushedBytes(broker, QUEUE)
    worker = Worker(args, workdir)
    try:
        wait_until(lambda: _alive(app, noop), 60, f"{system} worker to start")
        for mode in modes:
            if system == "conveyor":
                app.conf.task_chain_embed = mode
            key = "chain" if system == "celery" else f"chain_{mode}"
            for n in sizes:
                pushed.take()
                before = net_input(server)
                start = time.perf_counter()
                chain([noop.clone() for _ in range(n)]).apply_async().get(timeout=600)
                seconds = time.perf_counter() - start
                out.setdefault(key, {})[str(n)] = {
                    "message_bytes": pushed.take(), "seconds": round(seconds, 3),
                    "redis_input_bytes": net_input(server) - before}
        times = []
        for _ in range(chord_runs):
            start = time.perf_counter()
            result = chord([noop.clone() for _ in range(chord_size)], count.clone()
                           ).apply_async()
            assert result.get(timeout=600) == chord_size
            times.append(time.perf_counter() - start)
        out["chord_seconds"] = round(min(times), 3)
        out["chord_runs_seconds"] = [round(t, 3) for t in times]
    except BaseException:
        print(worker.tail(), file=sys.stderr)
        raise
    finally:
        worker.stop()
        pushed.close()
        app.close()
    return out


def _alive(app: Any, noop: Any) -> bool:
    noop.clone().apply_async().get(timeout=60)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=PORT,
                        help="Redis port on 127.0.0.1 (env CONVEYOR_BENCH_REDIS_PORT; "
                             "use one no test suite runs on)")
    parser.add_argument("--dbs", default="2,3,4,5",
                        help="Conveyor broker,results,Celery broker,results db numbers")
    parser.add_argument("--chain-sizes", default="10,100,1000")
    parser.add_argument("--chord-size", type=int, default=1000)
    parser.add_argument("--chord-runs", type=int, default=3)
    ns = parser.parse_args()
    urls = [f"redis://127.0.0.1:{ns.port}/{d}" for d in ns.dbs.split(",")]
    sizes = [int(x) for x in ns.chain_sizes.split(",")]
    for url in urls:
        redis.Redis.from_url(url).flushdb()
    report: dict[str, Any] = {
        "bench": "canvas", "python": platform.python_version(),
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "redis": redis.Redis.from_url(urls[0]).info("server")["redis_version"],
        "chord_size": ns.chord_size,
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "bench_conveyor.py").write_text(
            CONVEYOR_APP.format(broker=urls[0], backend=urls[1]) + TASKS)
        (workdir / "bench_celery.py").write_text(
            CELERY_APP.format(broker=urls[2], backend=urls[3]) + TASKS)
        try:
            report["conveyor"] = measure("conveyor", workdir, urls[0], urls[1], sizes,
                                         ns.chord_size, ns.chord_runs,
                                         ("message", "backend"))
            report["celery"] = measure("celery", workdir, urls[2], urls[3], sizes,
                                       ns.chord_size, ns.chord_runs, ("message",))
        finally:
            for url in urls:
                redis.Redis.from_url(url).flushdb()
    c, k = report["conveyor"], report["celery"]
    ratios: dict[str, Any] = {"chord_seconds": round(c["chord_seconds"] / k["chord_seconds"], 3)}
    for mode in ("message", "backend"):
        for n in map(str, sizes):
            ratios[f"chain_{mode}_{n}_message_bytes"] = round(
                c[f"chain_{mode}"][n]["message_bytes"] / k["chain"][n]["message_bytes"], 4)
            ratios[f"chain_{mode}_{n}_redis_input_bytes"] = round(
                c[f"chain_{mode}"][n]["redis_input_bytes"]
                / k["chain"][n]["redis_input_bytes"], 4)
    report["ratios"] = ratios
    report["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    small, large = str(sizes[0]), str(sizes[-1])
    growth = sizes[-1] / sizes[0]
    per_task = c["chain_backend"]
    report["targets"] = {
        "chord <= 0.25x celery": ratios["chord_seconds"] <= 0.25,
        # linear: bytes per task at the largest size within 1.5x of the smallest
        "backend-mode chain bytes grow linearly": per_task[large]["message_bytes"]
        <= 1.5 * growth * per_task[small]["message_bytes"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
