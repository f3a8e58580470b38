"""Messages built, serialized (json) and parsed per second for add(2, 2).

Prints JSON. Side by side in the same run: Celery's own path for the same message
(``app.amqp.as_task_v2`` + kombu's json ``dumps``/``loads``), as a ratio, because
machines are noisy. Run: ``uv run python bench/envelope.py [--seconds 2]``.

Each side does the same work: Conveyor resolves the call's options and builds the
message as ``apply_async`` does (``app.publishing.plan`` and ``build``: headers,
properties, the body serialized), then decodes the body with the app's codecs, as
Celery's side decodes it with kombu's ``loads``. ``conveyor_request_median_per_s``
also turns each message into the worker's request (``parse_message``), which the
Celery side does not do.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

from conveyor import Conveyor
from conveyor.envelope import parse_message


def rates(fn: Callable[[], object], seconds: float, slices: int = 7) -> list[float]:
    """Calls per second of ``fn`` in each of ``slices`` slices of about ``seconds``."""
    out = []
    for _ in range(slices):
        n, start = 0, time.perf_counter()
        deadline = start + seconds / slices
        while True:
            for _ in range(200):
                fn()
            n += 200
            now = time.perf_counter()
            if now >= deadline:
                break
        out.append(n / (now - start))
    return out


def conveyor_round(app: Conveyor, request: bool = False) -> Callable[[], object]:
    """Build (options resolved) and decode one message; with ``request``, parse it
    into the worker's request instead of decoding only its body."""
    add = app.tasks["bench.add"]
    accept = app.conf.accept_content
    plan, build, codecs = app.publishing.plan, app.publishing.build, app.codecs

    def once() -> object:
        message = build(*plan("bench.add", (2, 2), {}, {}, {}, add), (2, 2), {})[0]
        return message.headers, codecs.loads(message.body, message.content_type, None,
                                             accept)

    def parsed() -> object:
        message = build(*plan("bench.add", (2, 2), {}, {}, {}, add), (2, 2), {})[0]
        return parse_message(message, codecs, accept)
    return parsed if request else once


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
    parser.add_argument("--seconds", type=float, default=6.0)
    ns = parser.parse_args()
    app = Conveyor("bench", broker="memory://bench")

    @app.task(name="bench.add")
    def add(x: int, y: int) -> int:
        return x + y

    celery = celery_round()
    ours_all, theirs_all, requests = [], [], []
    for _ in range(2):  # interleaved, so all see the same machine weather
        ours_all += rates(conveyor_round(app), ns.seconds / 2)
        if celery:
            theirs_all += rates(celery, ns.seconds / 2)
        requests += rates(conveyor_round(app, request=True), ns.seconds / 4)
    ours, median = max(ours_all), statistics.median(ours_all)
    theirs = max(theirs_all) if theirs_all else None
    print(json.dumps({
        "benchmark": "envelope build+serialize(json)+parse, add(2, 2)",
        "python": platform.python_version(),
        "conveyor_per_s": round(ours),
        "conveyor_median_per_s": round(median),
        "conveyor_us_per_message": round(1e6 / ours, 2),
        "celery_per_s": round(theirs) if theirs else None,
        "celery_median_per_s": round(statistics.median(theirs_all)) if theirs_all else None,
        "ratio_conveyor_to_celery": round(ours / theirs, 2) if theirs else None,
        "ratio_of_medians": round(median / statistics.median(theirs_all), 2)
        if theirs_all else None,
        "conveyor_request_median_per_s": round(statistics.median(requests)),
        "target_median_per_s": 80000,
    }, indent=2))


if __name__ == "__main__":
    main()
