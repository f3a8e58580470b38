"""The ``conveyor`` command line. Logs go to stderr; results to stdout."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from typing import Any, cast

from . import __version__
from .app import Conveyor
from .connection import Connection
from .clicommands import add_plugin_commands
from .control import cli as control_cli
from .exceptions import ConveyorError
from .interfaces import (
    DeadLetter, DeadLetterTransport, InspectTransport, PurgeTransport, QueueStats, Transport,
    require,
)

EXAMPLES = """\
examples:
  conveyor -A proj worker -l INFO -Q celery,priority.high -c 4 --pool threads
  conveyor -A proj call proj.add --args '[2, 2]' --countdown 10
  conveyor -A proj result 6f1c…            # state and value of a task
  conveyor -A proj purge -Q celery -f
  conveyor -A proj dead list --json        # messages the worker could not handle
  conveyor -A proj dead requeue --all -Q celery
  conveyor -A proj inspect queues --json  # waiting, delayed, leased, dead per queue
  conveyor -A proj inspect active          # what each worker runs now (also ping, stats…)
  conveyor -A proj control revoke 6f1c… --terminate
  conveyor -A proj status                  # the workers that answer
  conveyor plugins                         # every installed plugin and whether it loads
  conveyor demo                            # worker + client on the embedded SQLite default
"""


LOG_FORMAT = "[%(asctime)s %(levelname)s %(name)s] %(message)s"


def load_app(spec: str | None) -> Conveyor:
    """``module`` or ``module:attribute`` → the app; no spec → a default app."""
    if not spec:
        return Conveyor()
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConveyorError(
                f"Cannot import the app module {module_name!r} (-A {spec}): {exc}. Run "
                f"conveyor from the directory that holds it, or check the name.") from exc
        raise ConveyorError(
            f"Importing the app module {module_name!r} (-A {spec}) failed: "
            f"{type(exc).__name__}: {exc}.") from exc
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


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _loglevel(value: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown log level {value!r}; choose one of {', '.join(LOG_LEVELS)}")
    return level


def _argument_parser() -> argparse.ArgumentParser:
    # Every subcommand takes -l after its name too, where Celery users type it; given
    # there it overrides the one before the subcommand (SUPPRESS: unset otherwise).
    level = argparse.ArgumentParser(add_help=False)
    level.add_argument("-l", "--loglevel", type=_loglevel, default=argparse.SUPPRESS,
                       help="DEBUG, INFO, WARNING, …")
    p = argparse.ArgumentParser(prog="conveyor", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Conveyor: tasks over the Celery protocol.")
    p.add_argument("-A", "--app", help="the app: module or module:attribute")
    p.add_argument("-l", "--loglevel", type=_loglevel, default="WARNING",
                   help="DEBUG, INFO, WARNING, … (also accepted after the command)")
    p.add_argument("--version", action="version", version=f"conveyor {__version__}")
    sub = p.add_subparsers(dest="command", metavar="command")

    w = sub.add_parser("worker", parents=[level], help="consume queues and run tasks")
    w.add_argument("-Q", "--queues", help="comma-separated queues (default: task_default_queue)")
    w.add_argument("-c", "--concurrency", type=int)
    w.add_argument("-P", "--pool", default="threads", help="solo, threads or processes")
    w.add_argument("--prefetch-multiplier", type=int)
    w.add_argument("-n", "--hostname")
    w.add_argument("-E", "--task-events", action="store_true",
                   help="send task and worker events (monitor, Flower)")
    w.add_argument("-f", "--logfile", help="write the log to this file (default: stderr)")
    w.add_argument("--autoscale", metavar="MAX,MIN",
                   help="grow the pool up to MAX under load, shrink back to MIN")
    w.add_argument("--max-tasks-per-child", type=int, metavar="N",
                   help="replace a processes-pool child after N tasks")
    w.add_argument("--max-memory-per-child", type=int, metavar="KIB",
                   help="replace a processes-pool child once it used more memory (KiB)")

    c = sub.add_parser("call", parents=[level], help="send a task by name and print its id")
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

    r = sub.add_parser("result", parents=[level], help="print a task's state and value")
    r.add_argument("task_id")
    r.add_argument("--wait", type=float, metavar="SECONDS")

    pg = sub.add_parser("purge", parents=[level], help="delete waiting messages of queues")
    pg.add_argument("-Q", "--queues")
    pg.add_argument("-f", "--force", action="store_true", help="do not ask")

    d = sub.add_parser("dead", parents=[level], help="list, requeue or purge dead letters")
    dsub = d.add_subparsers(dest="dead_command", metavar="action", required=True)
    dl = dsub.add_parser("list", parents=[level],
                         help="one line per dead letter: id, task id, task, queue, time, "
                              "reason")
    dl.add_argument("-Q", "--queue")
    dl.add_argument("--json", action="store_true", help="one JSON object per line")
    dr = dsub.add_parser("requeue", parents=[level],
                         help="put dead letters back on their queue")
    dr.add_argument("ids", nargs="*", metavar="ID", help="task ids or dead-letter ids")
    dr.add_argument("--all", action="store_true", help="every dead letter (of -Q)")
    dr.add_argument("-Q", "--queue")
    dp = dsub.add_parser("purge", parents=[level], help="delete dead letters")
    dp.add_argument("-Q", "--queue")
    dp.add_argument("-f", "--force", action="store_true", help="do not ask")

    i = sub.add_parser("inspect", parents=[level], help="look at queues and workers")
    isub = i.add_subparsers(dest="inspect_command", metavar="what", required=True)
    iq = isub.add_parser("queues", parents=[level],
                         help="per queue: waiting by priority, delayed and next due, "
                              "leased, dead letters, age of the oldest waiting")
    iq.add_argument("-Q", "--queues", help="comma-separated (default: the default queue)")
    iq.add_argument("--json", action="store_true", help="one JSON object per line")
    control_cli.add_parsers(sub, isub, level)

    sub.add_parser("plugins", parents=[level],
                   help="list installed plugins and whether they load")
    dm = sub.add_parser("demo", parents=[level],
                        help="run a worker and the calling examples on SQLite")
    dm.add_argument("--keep", action="store_true", help="keep the temporary directory")
    add_plugin_commands(sub, level)
    return p


def _confirm(question: str, force: bool) -> bool:
    """Ask on stderr and read the answer from stdin, a terminal or a pipe alike
    (``echo y | conveyor -A proj purge``); end of input means no."""
    if force:
        return True
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if answer.strip().lower() in ("y", "yes"):
        return True
    print(("" if answer else "\n") + "Nothing deleted (pass -f to skip the question).",
          file=sys.stderr)
    return False


def cmd_worker(app: Conveyor, ns: argparse.Namespace) -> int:
    from .worker.banner import banner
    if ns.logfile:
        root = logging.getLogger()
        handler = logging.FileHandler(ns.logfile)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(handler)
    if ns.task_events:
        from .events import enable
        app.conf.worker_send_task_events = True
        enable(app)
    worker = app.Worker(queues=ns.queues, concurrency=ns.concurrency, pool=ns.pool,
                        prefetch_multiplier=ns.prefetch_multiplier, hostname=ns.hostname,
                        autoscale=ns.autoscale, max_tasks_per_child=ns.max_tasks_per_child,
                        max_memory_per_child=ns.max_memory_per_child)
    print(banner(worker, app_spec=ns.app,
                 show_tasks=logging.getLogger().isEnabledFor(logging.INFO)), flush=True)
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


def _connected(app: Conveyor) -> Transport:
    """A transport connected to the broker by the publish retry policy: a broker that
    is down is an :class:`OperationalError` naming the (masked) URL, as for ``call``."""
    return Connection(app, app.broker_url).ensure(lambda transport: transport,
                                                  what="connect")


def cmd_purge(app: Conveyor, ns: argparse.Namespace) -> int:
    queues = _queues(app, ns.queues)
    transport = app.transport_factory()
    require(transport, "purge", "conveyor purge")
    if not _confirm(f"Delete every waiting message of {', '.join(queues)}?", ns.force):
        return 1
    transport = _connected(app)
    try:
        for q in queues:
            print(f"{q}: purged {cast(PurgeTransport, transport).purge(q)} message(s)")
    finally:
        transport.close()
    return 0


def cmd_dead(app: Conveyor, ns: argparse.Namespace) -> int:
    found = app.transport_factory()
    require(found, "dead_letters", f"conveyor dead {ns.dead_command}")
    transport = cast(DeadLetterTransport, _connected(app))
    try:
        if ns.dead_command == "list":
            for dl in transport.dead_letters(ns.queue):
                row = _dead_row(dl)
                if ns.json:
                    print(json.dumps(row))
                else:
                    print("  ".join(str(row[k] or "-") for k in DEAD_FIELDS))
        elif ns.dead_command == "requeue":
            if bool(ns.ids) == ns.all:
                print("error: give task ids or dead-letter ids, or --all (not both)",
                      file=sys.stderr)
                return 2
            ids = None
            if ns.ids:
                ids = _dead_ids(transport.dead_letters(ns.queue), ns.ids)
                if ids is None:
                    return 1
            count = transport.requeue_dead(ids, ns.queue)
            print(f"requeued {count} message(s)")
        else:
            where = f" of queue {ns.queue}" if ns.queue else ""
            if not _confirm(f"Delete every dead letter{where}?", ns.force):
                return 1
            print(f"purged {transport.purge_dead(ns.queue)} dead letter(s)")
    finally:
        transport.close()
    return 0


def cmd_inspect(app: Conveyor, ns: argparse.Namespace) -> int:
    if ns.inspect_command != "queues":
        return control_cli.cmd_inspect(app, ns)
    queues = _queues(app, ns.queues)
    found = app.transport_factory()
    require(found, "inspect", "conveyor inspect queues")
    transport = cast(InspectTransport, found)
    transport.connect()
    try:
        rows = [_stats_row(transport.stats(q)) for q in queues]
    finally:
        transport.close()
    if ns.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    table = [STATS_FIELDS, *([_cell(row[k]) for k in STATS_FIELDS] for row in rows)]
    widths = [max(len(line[n]) for line in table) for n in range(len(STATS_FIELDS))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    for note in _stats_notes(rows):
        print(note)
    return 0


#: The fields of ``inspect queues``, in the order of its columns (the JSON objects
#: also carry ``delayed_shared``).
STATS_FIELDS = ("queue", "ready", "waiting", "delayed", "next_due", "leased", "dead",
                "oldest_age")


def _stats_row(stats: QueueStats) -> dict[str, Any]:
    due = stats.next_due
    age = stats.oldest_age
    waiting = {str(p): n for p, n in sorted(stats.waiting.items(), reverse=True)}
    return {"queue": stats.queue, "ready": stats.ready,
            "waiting": waiting if stats.by_priority else None,
            "delayed": stats.delayed, "delayed_shared": stats.delayed_shared,
            "next_due": None if due is None else _utc(due),
            "leased": stats.leased, "dead": stats.dead,
            "oldest_age": None if age is None else round(age, 3)}


def _stats_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What a ``-`` in the table means when the broker cannot count it, so a blank
    is never read as zero."""
    notes = []
    shared = {row["delayed_shared"] for row in rows if row["delayed"] is None} - {None}
    if shared:
        notes.append(f"delayed -: this broker parks the delayed messages of every queue "
                     f"together ({max(shared)} parked in all) and cannot count one "
                     "queue's")
    if any(row["waiting"] is None for row in rows):
        notes.append("waiting -: this broker does not count ready messages by priority")
    if any(row["leased"] is None for row in rows):
        notes.append("leased -: this broker does not say how many deliveries its "
                     "consumers hold unacked")
    return notes


def _cell(value: Any) -> str:
    """A table cell: ``-`` for nothing, ``priority:count`` pairs for ``waiting``."""
    if isinstance(value, dict):
        return ",".join(f"{p}:{n}" for p, n in value.items()) or "-"
    return "-" if value is None else str(value)


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


#: The fields of ``dead list``, in the order of its columns and JSON keys.
DEAD_FIELDS = ("id", "task_id", "task", "queue", "time", "reason")


def _dead_row(dl: DeadLetter) -> dict[str, Any]:
    headers = dl.message.headers if isinstance(dl.message.headers, dict) else {}
    values = (dl.id, headers.get("id"), headers.get("task"), dl.queue, _utc(dl.time),
              dl.reason)
    return dict(zip(DEAD_FIELDS, values))


def _dead_ids(letters: list[DeadLetter], wanted: list[str]) -> list[str] | None:
    """The dead-letter ids that ``wanted`` names, each either a dead-letter id or a
    task id (users hold task ids); None, after saying which, if one names nothing."""
    found: dict[str, list[str]] = {}
    for dl in letters:
        task_id = dl.message.headers.get("id") if isinstance(dl.message.headers, dict) \
            else None
        for key in {dl.id, task_id} - {None}:
            found.setdefault(str(key), []).append(dl.id)
    missing = [w for w in wanted if w not in found]
    if missing:
        print(f"error: no dead letter has the id or task id {', '.join(missing)}; "
              "nothing requeued (see `conveyor dead list`)", file=sys.stderr)
        return None
    return list(dict.fromkeys(i for w in wanted for i in found[w]))


def cmd_plugins(_app: Conveyor | None, _ns: argparse.Namespace) -> int:
    from .plugins import GROUPS, OPTIONAL, bare_core_hint, describe
    rows = describe()
    missing = [g for g in GROUPS.values() if g not in OPTIONAL
               and not any(r.info.group == g for r in rows)]
    width = max((len(r.info.name) for r in rows), default=4)
    group = None
    for row in rows:
        if row.info.group != group:
            group = row.info.group
            print(f"{group}:")
        status = "ok" if row.ok else f"FAILS: {row.error}"
        print(f"  {row.info.name:<{width}}  {row.info.distribution} {row.info.version}  {status}")
        for note in row.notes:
            print(f"  {'':<{width}}    {note}")
    if missing:
        print(f"None installed in {', '.join(missing)}. {bare_core_hint()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = _argument_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=str(ns.loglevel).upper(), format=LOG_FORMAT)
    if ns.command is None:
        _argument_parser().print_help()
        return 2
    try:
        if ns.command == "plugins":
            return cmd_plugins(None, ns)
        if ns.command == "demo":
            from .demo import run_demo
            return run_demo(keep=ns.keep)
        app = load_app(ns.app)
        if getattr(ns, "plugin_command", None) is not None:
            return int(ns.plugin_command.run(app, ns))
        handler = {"worker": cmd_worker, "call": cmd_call, "result": cmd_result,
                   "purge": cmd_purge, "dead": cmd_dead,
                   "inspect": cmd_inspect, "control": control_cli.cmd_control,
                   "status": control_cli.cmd_status}[ns.command]
        return handler(app, ns)
    except ConveyorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
