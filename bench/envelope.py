"""Messages built, serialized (json) and parsed per second for add(2, 2).

Prints JSON. Side by side in the same run: Celery's own path for the same message
(``app.amqp.as_task_v2`` + kombu's json ``dumps``/``loads``), as a ratio, because
machines are noisy. Run: ``uv run python bench/envelope.py [--seconds 2]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

from conveyor import Conveyor
from conveyor.envelope import parse_message


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (best of three slices)."""
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        deadline = start + seconds / 3
        while True:
            for _ in range(200):
                fn()
            n += 200
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n / (now - start))
    return best


def conveyor_round(app: Conveyor) -> Callable[[], object]:
    add = app.tasks["bench.add"]
    accept = app.conf.accept_content

    def once() -> object:
        message, _route, _due, _opts = app.prepare("bench.add", (2, 2), {}, {}, {}, add)
        return parse_message(message, app.codecs, accept)
    return once


def celery_round() -> Callable[[], object] | None:
    try:
        from celery import Celery
        from kombu.serialization import dumps, loads
    except ImportError:
        return None
    capp = Celery("bench", broker="memory://", set_as_current=False)

    @capp.task(name="bench.add")
    def add(x: int, y: int) -> int:
        return x + y

    import uuid

    def once() -> object:
        msg = capp.amqp.as_task_v2(str(uuid.uuid4()), "bench.add", args=(2, 2), kwargs={})
        ctype, enc, body = dumps(msg.body, serializer="json")
        return msg.headers, loads(body, ctype, enc, accept=["application/json"])
    return once


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    ns = parser.parse_args()
    app = Conveyor("bench", broker="memory://bench")

    @app.task(name="bench.add")
    def add(x: int, y: int) -> int:
        return x + y

    ours = rate(conveyor_round(app), ns.seconds)
    celery = celery_round()
    theirs = rate(celery, ns.seconds) if celery else None
    print(json.dumps({
        "benchmark": "envelope build+serialize(json)+parse, add(2, 2)",
        "python": platform.python_version(),
        "conveyor_per_s": round(ours),
        "conveyor_us_per_message": round(1e6 / ours, 2),
        "celery_per_s": round(theirs) if theirs else None,
        "ratio_conveyor_to_celery": round(ours / theirs, 2) if theirs else None,
        "target_per_s": 50000,
    }, indent=2))


if __name__ == "__main__":
    main()
