"""The ``conveyor`` command line. Logs go to stderr; results to stdout."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from typing import Any

from . import __version__
from .app import Conveyor
from .exceptions import ConveyorError

EXAMPLES = """\
examples:
  conveyor -A proj worker -l INFO -Q celery,priority.high -c 4 --pool threads
  conveyor -A proj call proj.add --args '[2, 2]' --countdown 10
  conveyor -A proj result 6f1c…            # state and value of a task
  conveyor -A proj purge -Q celery -f
  conveyor -A proj dead list --json        # messages the worker could not handle
  conveyor -A proj dead requeue --all -Q celery
  conveyor plugins                         # every installed plugin and whether it loads
  conveyor demo                            # worker + client on the embedded SQLite default
"""


def load_app(spec: str | None) -> Conveyor:
    """``module`` or ``module:attribute`` → the app; no spec → a default app."""
    if not spec:
        return Conveyor()
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    if attr:
        found = getattr(module, attr)
        if callable(found) and not isinstance(found, Conveyor):
            found = found()  # an app factory
        if not isinstance(found, Conveyor):
            raise ConveyorError(f"{spec!r} is not a Conveyor app but {type(found).__name__}.")
        return found
    for name in ("app", "conveyor", "celery"):
        candidate = getattr(module, name, None)
        if isinstance(candidate, Conveyor):
            return candidate
    apps = [v for v in vars(module).values() if isinstance(v, Conveyor)]
    if len(apps) == 1:
        return apps[0]
    raise ConveyorError(f"No Conveyor app found in module {module_name!r}; "
                        f"name it 'app' or pass -A {module_name}:<attribute>.")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conveyor", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Conveyor: tasks over the Celery protocol.")
    p.add_argument("-A", "--app", help="the app: module or module:attribute")
    p.add_argument("-l", "--loglevel", default="WARNING", help="DEBUG, INFO, WARNING, …")
    p.add_argument("--version", action="version", version=f"conveyor {__version__}")
    sub = p.add_subparsers(dest="command", metavar="command")

    w = sub.add_parser("worker", help="consume queues and run tasks")
    w.add_argument("-Q", "--queues", help="comma-separated queues (default: task_default_queue)")
    w.add_argument("-c", "--concurrency", type=int)
    w.add_argument("-P", "--pool", default="threads", help="solo, threads or processes")
    w.add_argument("--prefetch-multiplier", type=int)
    w.add_argument("-n", "--hostname")

    c = sub.add_parser("call", help="send a task by name and print its id")
    c.add_argument("name")
    c.add_argument("--args", default="[]", help="JSON list")
    c.add_argument("--kwargs", default="{}", help="JSON object")
    c.add_argument("--queue")
    c.add_argument("--countdown", type=float)
    c.add_argument("--eta", help="ISO 8601")
    c.add_argument("--expires", type=float)
    c.add_argument("--priority", type=int)
    c.add_argument("--serializer")
    c.add_argument("--wait", type=float, metavar="SECONDS", help="wait for the result")

    r = sub.add_parser("result", help="print a task's state and value")
    r.add_argument("task_id")
    r.add_argument("--wait", type=float, metavar="SECONDS")

    pg = sub.add_parser("purge", help="delete waiting messages of queues")
    pg.add_argument("-Q", "--queues")
    pg.add_argument("-f", "--force", action="store_true", help="do not ask")

    d = sub.add_parser("dead", help="list, requeue or purge dead letters")
    dsub = d.add_subparsers(dest="dead_command", metavar="action", required=True)
    dl = dsub.add_parser("list")
    dl.add_argument("-Q", "--queue")
    dl.add_argument("--json", action="store_true", help="one JSON object per line")
    dr = dsub.add_parser("requeue")
    dr.add_argument("ids", nargs="*")
    dr.add_argument("--all", action="store_true")
    dr.add_argument("-Q", "--queue")
    dp = dsub.add_parser("purge")
    dp.add_argument("-Q", "--queue")
    dp.add_argument("-f", "--force", action="store_true")

    sub.add_parser("plugins", help="list installed plugins and whether they load")
    dm = sub.add_parser("demo", help="run a worker and the calling examples on SQLite")
    dm.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p


def _confirm(question: str, force: bool) -> bool:
    if force:
        return True
    if not sys.stdin.isatty():
        print(f"{question} Refusing without a terminal: pass -f.", file=sys.stderr)
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def cmd_worker(app: Conveyor, ns: argparse.Namespace) -> int:
    worker = app.Worker(queues=ns.queues, concurrency=ns.concurrency, pool=ns.pool,
                        prefetch_multiplier=ns.prefetch_multiplier, hostname=ns.hostname)
    worker.install_signal_handlers()
    worker.run()
    app.close()
    return 0


def cmd_call(app: Conveyor, ns: argparse.Namespace) -> int:
    import datetime as dt
    options: dict[str, Any] = {k: getattr(ns, k) for k in
                               ("queue", "countdown", "expires", "priority", "serializer")
                               if getattr(ns, k) is not None}
    if ns.eta:
        options["eta"] = dt.datetime.fromisoformat(ns.eta)
    result = app.send_task(ns.name, json.loads(ns.args), json.loads(ns.kwargs), **options)
    print(result.id)
    if ns.wait is not None:
        print(json.dumps(result.get(timeout=ns.wait, propagate=False), default=repr))
    return 0


def cmd_result(app: Conveyor, ns: argparse.Namespace) -> int:
    result = app.AsyncResult(ns.task_id)
    if ns.wait is not None:
        result.get(timeout=ns.wait, propagate=False)
    meta = app.results.load(app.backend.get(ns.task_id))
    print(json.dumps({"task_id": ns.task_id, "status": meta.get("status"),
                      "result": meta.get("result"), "traceback": meta.get("traceback")},
                     default=repr))
    return 0


def _queues(app: Conveyor, value: str | None) -> list[str]:
    return [q for q in (value or app.conf.task_default_queue).split(",") if q]


def cmd_purge(app: Conveyor, ns: argparse.Namespace) -> int:
    queues = _queues(app, ns.queues)
    if not _confirm(f"Delete every waiting message of {', '.join(queues)}?", ns.force):
        return 1
    transport = app.transport_factory()
    transport.connect()
    try:
        for q in queues:
            print(f"{q}: purged {transport.purge(q)} message(s)")
    finally:
        transport.close()
    return 0


def cmd_dead(app: Conveyor, ns: argparse.Namespace) -> int:
    transport = app.transport_factory()
    transport.connect()
    try:
        if ns.dead_command == "list":
            for dl in transport.dead_letters(ns.queue):
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(dl.time))
                row = {"id": dl.id, "task_id": dl.message.headers.get("id"),
                       "task": dl.message.headers.get("task"), "queue": dl.queue,
                       "reason": dl.reason, "time": when}
                if ns.json:
                    print(json.dumps(row))
                else:
                    print(f"{dl.id}  {row['task'] or '?'}  {dl.queue}  {when}  {dl.reason}")
        elif ns.dead_command == "requeue":
            if not ns.ids and not ns.all:
                print("error: give dead-letter ids or --all", file=sys.stderr)
                return 2
            count = transport.requeue_dead(None if ns.all else ns.ids, ns.queue)
            print(f"requeued {count} message(s)")
        else:
            where = f" of queue {ns.queue}" if ns.queue else ""
            if not _confirm(f"Delete every dead letter{where}?", ns.force):
                return 1
            print(f"purged {transport.purge_dead(ns.queue)} dead letter(s)")
    finally:
        transport.close()
    return 0


def cmd_plugins(_app: Conveyor | None, _ns: argparse.Namespace) -> int:
    from .plugins import describe
    rows = describe()
    width = max((len(r.info.name) for r in rows), default=4)
    group = None
    for row in rows:
        if row.info.group != group:
            group = row.info.group
            print(f"{group}:")
        status = "ok" if row.ok else f"FAILS: {row.error}"
        print(f"  {row.info.name:<{width}}  {row.info.distribution} {row.info.version}  {status}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=str(ns.loglevel).upper(),
                        format="[%(asctime)s %(levelname)s %(name)s] %(message)s")
    if ns.command is None:
        _parser().print_help()
        return 2
    try:
        if ns.command == "plugins":
            return cmd_plugins(None, ns)
        if ns.command == "demo":
            from .demo import run_demo
            return run_demo(keep=ns.keep)
        app = load_app(ns.app)
        handler = {"worker": cmd_worker, "call": cmd_call, "result": cmd_result,
                   "purge": cmd_purge, "dead": cmd_dead}[ns.command]
        return handler(app, ns)
    except ConveyorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
