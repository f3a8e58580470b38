"""``conveyor inspect <command>``, ``conveyor control <command>`` and ``conveyor status``:
Celery's remote control from the command line, printed as Celery prints it.

Every worker that answers within ``--timeout`` gets a ``->  name: OK`` block; with
``-d`` the named workers that did not answer are listed as such and the command
exits 1, as it does when no worker answered at all. ``--json`` prints one JSON
object ``{name: reply}`` instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app import Conveyor
    from .client import Reply

#: ``inspect`` commands (Celery's names) and what each shows.
INSPECT = {
    "ping": "each worker answers pong",
    "active": "tasks running now",
    "reserved": "tasks received and waiting to run (not scheduled ones)",
    "scheduled": "tasks waiting for their ETA/countdown",
    "registered": "task names each worker knows",
    "stats": "pool, broker, totals and resource usage",
    "revoked": "task ids each worker keeps as revoked",
    "active_queues": "queues each worker consumes",
}


#: ``control`` commands with arguments (beside ``revoke``): their names, Celery's.
ARGUMENTS = {"rate_limit": ("task_name", "rate_limit"),
             "time_limit": ("task_name", "soft", "hard"),
             "pool_grow": ("n",), "pool_shrink": ("n",), "autoscale": ("max", "min"),
             "add_consumer": ("queue",), "cancel_consumer": ("queue",),
             "pool_restart": ("modules", "reload")}


def add_parsers(sub: Any, inspect_sub: Any, level: argparse.ArgumentParser) -> None:
    """Add ``inspect <command>`` (to ``inspect_sub``), ``control`` and ``status``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-t", "--timeout", type=float, default=1.0,
                        help="seconds to wait for replies (default 1)")
    common.add_argument("-d", "--destination",
                        help="comma-separated worker names (default: every worker)")
    common.add_argument("-j", "--json", action="store_true",
                        help="print one JSON object {worker: reply}")
    for name, text in INSPECT.items():
        inspect_sub.add_parser(name, parents=[level, common], help=text)

    c = sub.add_parser("control", parents=[level], help="revoke tasks, shut workers down")
    csub = c.add_subparsers(dest="control_command", metavar="command", required=True)
    rv = csub.add_parser("revoke", parents=[level, common],
                         help="skip tasks wherever they have not run yet")
    rv.add_argument("task_ids", nargs="+", metavar="ID")
    rv.add_argument("--terminate", action="store_true",
                    help="also stop the task where it runs (recorded REVOKED)")
    rv.add_argument("--signal", default="SIGTERM",
                    help="signal for a process-pool child (default SIGTERM)")
    rs = csub.add_parser("revoke_by_stamped_headers", parents=[level, common],
                         help="skip every task stamped NAME=VALUE wherever it has not "
                              "run yet")
    rs.add_argument("headers", nargs="+", metavar="NAME=VALUE")
    rs.add_argument("--terminate", action="store_true",
                    help="also stop such tasks where they run (recorded REVOKED)")
    rs.add_argument("--signal", default="SIGTERM",
                    help="signal for a process-pool child (default SIGTERM)")
    csub.add_parser("enable_events", parents=[level, common],
                    help="workers send task events from now on (as worker -E)")
    csub.add_parser("disable_events", parents=[level, common],
                    help="workers stop sending task events (heartbeats go on)")
    csub.add_parser("shutdown", parents=[level, common],
                    help="warm shutdown: workers finish running tasks and exit")
    rl = csub.add_parser("rate_limit", parents=[level, common],
                         help="start a task at most this often (10/s, 100/m; 0: no limit)")
    rl.add_argument("task_name", metavar="TASK")
    rl.add_argument("rate_limit", metavar="RATE")
    tl = csub.add_parser("time_limit", parents=[level, common],
                         help="a task's soft and hard time limits, in seconds")
    tl.add_argument("task_name", metavar="TASK")
    tl.add_argument("soft", type=float, metavar="SOFT")
    tl.add_argument("hard", type=float, nargs="?", metavar="HARD")
    for name, word in (("pool_grow", "more"), ("pool_shrink", "fewer")):
        p = csub.add_parser(name, parents=[level, common],
                            help=f"run N {word} tasks at once (not with --autoscale)")
        p.add_argument("n", type=int, nargs="?", default=1, metavar="N")
    au = csub.add_parser("autoscale", parents=[level, common],
                         help="new --autoscale bounds of autoscaled workers")
    au.add_argument("max", type=int, metavar="MAX")
    au.add_argument("min", type=int, nargs="?", metavar="MIN")
    for name, text in (("add_consumer", "workers consume QUEUE too"),
                       ("cancel_consumer", "workers stop consuming QUEUE")):
        p = csub.add_parser(name, parents=[level, common], help=text)
        p.add_argument("queue", metavar="QUEUE")

    pr = csub.add_parser("pool_restart", parents=[level, common],
                         help="import MODULEs (--reload: again) and replace pool children "
                              "(workers with worker_pool_restarts=True)")
    pr.add_argument("modules", nargs="*", metavar="MODULE",
                    help="dotted name of a module that defines tasks (proj.tasks)")
    pr.add_argument("--reload", action="store_true",
                    help="reload the MODULEs a worker imported already")

    sub.add_parser("status", parents=[level, common], help="list the workers that answer")


def _destination(ns: argparse.Namespace) -> list[str] | None:
    return [d for d in ns.destination.split(",") if d] if ns.destination else None


def _pretty(reply: Any) -> tuple[str, str]:
    """Celery's ``pretty``: a status word and the reply's text."""
    if isinstance(reply, dict) and set(reply) == {"ok"}:
        return "OK", str(reply["ok"])
    if isinstance(reply, dict) and "error" in reply:
        return "ERROR", str(reply["error"])
    if isinstance(reply, list):
        if not reply:
            return "OK", "- empty -"
        return "OK", "\n".join(f"* {item if isinstance(item, str) else json.dumps(item)}"
                               for item in reply)
    return "OK", json.dumps(reply, indent=2, default=repr)


def _indent(text: str, by: int = 4) -> str:
    return "\n".join(" " * by + line for line in text.splitlines())


def _report(replies: list[Reply], ns: argparse.Namespace, *, show: bool = True) -> int:
    """Print the replies; 1 when nobody answered or a named worker did not."""
    merged: dict[str, Any] = {}
    for reply in replies:
        merged.update(reply)
    wanted = _destination(ns) or []
    missing = [name for name in wanted if name not in merged]
    if ns.json:
        print(json.dumps(merged, default=repr))
    else:
        for name, reply in merged.items():
            status, text = _pretty(reply)
            print(f"->  {name}: {status}")
            if show:
                print(_indent(text))
        for name in missing:
            print(f"->  {name}: no reply within {ns.timeout:g}s")
        if merged:
            count = len(merged)
            print(f"\n{count} node{'s' if count != 1 else ''} online.")
    if not merged:
        print(f"error: no worker replied within {ns.timeout:g}s (is one running, on "
              "this broker?)", file=sys.stderr)
        return 1
    return 1 if missing else 0


def cmd_inspect(app: Conveyor, ns: argparse.Namespace) -> int:
    command = ns.inspect_command
    replies = app.control.broadcast(command, {}, destination=_destination(ns), reply=True,
                                    timeout=ns.timeout, what=f"conveyor inspect {command}")
    return _report(replies, ns)


def cmd_control(app: Conveyor, ns: argparse.Namespace) -> int:
    what = f"conveyor control {ns.control_command}"
    if ns.control_command in ("revoke", "revoke_by_stamped_headers"):
        if ns.control_command == "revoke":
            arguments = {"task_id": ns.task_ids, "terminate": ns.terminate,
                         "signal": ns.signal}
        else:
            bad = [pair for pair in ns.headers if not pair.partition("=")[0]
                   or "=" not in pair]
            if bad:
                print(f"error: give stamps as NAME=VALUE, not {bad[0]!r}", file=sys.stderr)
                return 2
            # Celery's CLI sends the pairs as they are; the worker splits them.
            arguments = {"headers": ns.headers, "terminate": ns.terminate,
                         "signal": ns.signal}
        if ns.terminate:
            from ..worker.control import signum
            try:
                signum(ns.signal)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
    else:
        # Celery's argument names, as the subcommand's parser keeps them.
        arguments = {key: getattr(ns, key) for key in ARGUMENTS.get(ns.control_command, ())}
    replies = app.control.broadcast(ns.control_command, arguments,
                                    destination=_destination(ns), reply=True,
                                    timeout=ns.timeout, what=what)
    return _report(replies, ns)


def cmd_status(app: Conveyor, ns: argparse.Namespace) -> int:
    replies = app.control.broadcast("ping", {}, destination=_destination(ns), reply=True,
                                    timeout=ns.timeout, what="conveyor status")
    return _report(replies, ns, show=False)
