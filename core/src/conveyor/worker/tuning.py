"""Celery's remote control commands that retune a running worker: ``rate_limit``,
``time_limit``, ``pool_grow``/``pool_shrink``, ``autoscale``,
``add_consumer``/``cancel_consumer`` and ``pool_restart`` (Flower's "Pool", "Limits"
and "Queues" buttons, ``celery control …``), with Celery's arguments and replies.

They run on the control thread; what the consumer thread owns (the pool, the
throttles, the prefetch, the queues) is changed there at its next turn
(:meth:`Worker.call_soon`), so a reply says what *will* happen, as Celery's do
("pool will grow").
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigurationError
from ..ratelimit import parse_rate

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("conveyor.worker")


def rate_limit(worker: Worker, task_name: str = "", rate_limit: Any = None,
               **_: Any) -> dict[str, str]:
    """Set a task's ``rate_limit`` in this worker (``0``/``None``: no limit)."""
    try:
        rate = parse_rate(rate_limit)
    except ConfigurationError as exc:
        return {"error": f"Invalid rate limit string: {exc}"}
    task = worker.app.tasks.get(task_name)
    if task is None:
        return {"error": "unknown task"}
    task.rate_limit = rate_limit
    worker.call_soon(lambda _: worker.reset_rate_limits())
    if rate is None:
        log.info("Rate limits disabled for tasks of type %s", task_name)
        return {"ok": "rate limit disabled successfully"}
    log.info("New rate limit for tasks of type %s: %s", task_name, rate_limit)
    return {"ok": "new rate limit set successfully"}


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    seconds = float(value)
    if seconds < 0:
        raise ValueError(value)
    return seconds or None


def time_limit(worker: Worker, task_name: str = "", hard: Any = None, soft: Any = None,
               **_: Any) -> dict[str, str]:
    """Set a task's ``time_limit`` (``hard``) and ``soft_time_limit`` (``soft``) in
    this worker and its pool's children; ``None`` removes one."""
    task = worker.app.tasks.get(task_name)
    if task is None:
        return {"error": "unknown task"}
    try:
        hard_s, soft_s = _seconds(hard), _seconds(soft)
    except (TypeError, ValueError):
        return {"error": f"Invalid time limits: soft={soft!r} hard={hard!r} (seconds, "
                         "or none)"}
    task.time_limit, task.soft_time_limit = hard_s, soft_s
    worker.pool.task_limits(task_name, soft_s, hard_s)
    log.info("New time limits for tasks of type %s: soft=%s hard=%s", task_name,
             soft_s, hard_s)
    return {"ok": "time limits set successfully"}


def _resize_by(worker: Worker, by: int, word: str) -> dict[str, str]:
    if worker.autoscale is not None:
        return {"error": f"pool_{word} is not supported with autoscale. Adjust "
                         "autoscale range instead."}
    if worker.pool_name == "solo":
        return {"error": f"pool_{word} needs --pool threads or processes (solo runs "
                         "one task at a time)"}
    worker.call_soon(lambda _: worker.resize(worker.concurrency + by))
    return {"ok": f"pool will {word}"}


def pool_grow(worker: Worker, n: Any = 1, **_: Any) -> dict[str, str]:
    """Run ``n`` more tasks at once (and prefetch for them)."""
    return _resize_by(worker, int(n), "grow")


def pool_shrink(worker: Worker, n: Any = 1, **_: Any) -> dict[str, str]:
    """Run ``n`` fewer tasks at once (at least one)."""
    return _resize_by(worker, -int(n), "shrink")


def autoscale(worker: Worker, max: Any = None, min: Any = None,  # noqa: A002 - Celery's
              **_: Any) -> dict[str, str]:
    """New ``--autoscale`` bounds; either may be left out."""
    if worker.autoscale is None:
        return {"error": "Autoscale not enabled"}
    most = int(max) if max is not None else worker.autoscale[0]
    least = int(min) if min is not None else worker.autoscale[1]
    if not 1 <= least <= most:
        return {"error": f"Bad autoscale max={most} min={least}: give 1 <= min <= max"}
    worker.call_soon(lambda _: worker.set_autoscale(most, least))
    return {"ok": f"autoscale now max={most} min={least}"}


def add_consumer(worker: Worker, queue: str = "", exchange: Any = None,
                 exchange_type: Any = None, routing_key: Any = None,
                 **_: Any) -> dict[str, str]:
    """Consume ``queue`` too (declared as ``-Q`` declares it: Conveyor's own
    exchange and routing key for it; Celery's other arguments are not used)."""
    if not queue:
        return {"error": "add_consumer needs a queue name"}
    worker.call_soon(lambda transport: worker.add_queue(transport, queue))
    return {"ok": f"add consumer {queue}"}


def cancel_consumer(worker: Worker, queue: str = "", **_: Any) -> dict[str, str]:
    """Stop consuming ``queue``; tasks already fetched from it still run."""
    if queue not in worker.queues:
        return {"error": f"not consuming from {queue}"}
    if worker.queues == [queue]:
        return {"error": f"{queue} is the only queue consumed: add another first"}
    worker.call_soon(lambda _: worker.cancel_queue(queue))
    return {"ok": f"no longer consuming from {queue}"}


def pool_restart(worker: Worker, modules: Any = None, reload: Any = False,
                 **_: Any) -> dict[str, str]:
    """Import ``modules`` in the worker (reloading those it has when ``reload``),
    then replace its ``processes`` pool children once their current tasks are done:
    new children are forked from the worker, so they run the code just loaded.
    Threads and solo pools run tasks in the worker itself, which has that code now.

    Off unless ``worker_pool_restarts`` (Celery's setting). The imports run here, so
    the reply names a module that failed; Celery's ``reloader`` argument (a function,
    which cannot travel in a message) is not used.
    """
    if not worker.app.conf.worker_pool_restarts:
        return {"error": "Pool restarts not enabled (set worker_pool_restarts=True "
                         "in the worker's configuration)"}
    if isinstance(modules, str):
        modules = [modules]
    for name in modules or ():
        try:
            if name not in sys.modules:
                importlib.import_module(name)
                log.info("pool_restart: imported module %s", name)
            elif reload:
                importlib.reload(sys.modules[name])
                log.info("pool_restart: reloaded module %s", name)
        except Exception as exc:  # noqa: BLE001 - the user's module: say what failed
            log.exception("pool_restart: could not import %s", name)
            return {"error": f"Could not import {name}: {type(exc).__name__}: {exc}"}
    worker.call_soon(lambda _: worker.pool.restart())
    return {"ok": "reload started"}


#: Command name -> function of (worker, **arguments).
COMMANDS: dict[str, Callable[..., dict[str, str]]] = {"rate_limit": rate_limit, "time_limit": time_limit, "pool_grow": pool_grow,
            "pool_shrink": pool_shrink, "autoscale": autoscale,
            "add_consumer": add_consumer, "cancel_consumer": cancel_consumer,
            "pool_restart": pool_restart}
