"""The ``conveyor monitor`` subcommand (entry point ``conveyor.commands:monitor``).

Imported whenever ``conveyor`` parses its arguments: the web stack is imported only
when the command runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor import Conveyor

#: The environment variable a token may come from (kept out of ``ps`` output).
TOKEN_ENV = "CONVEYOR_MONITOR_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MonitorCommand:
    """``conveyor -A proj monitor``: see :mod:`conveyor_monitor`."""

    help = "serve a live page and Prometheus metrics of queues, workers and tasks"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1",
                            help="address to bind (default 127.0.0.1; any other needs "
                                 f"a token: --token or ${TOKEN_ENV})")
        parser.add_argument("--port", type=int, default=5580, help="default 5580")
        parser.add_argument("--metrics-port", type=int, metavar="PORT",
                            help="also serve /metrics alone on this port (it is always "
                                 "on the page's port too)")
        parser.add_argument("--token", help=f"required from clients (default: ${TOKEN_ENV})")
        parser.add_argument("-Q", "--queues",
                            help="comma-separated queues to watch (default: the default "
                                 "queue)")
        parser.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                            help="how often to read the queues (default 2)")
        parser.add_argument("--no-events", action="store_true",
                            help="do not listen to worker events (workers, throughput "
                                 "and failures stay empty)")

    def run(self, app: Conveyor, ns: argparse.Namespace) -> int:
        token = ns.token or os.environ.get(TOKEN_ENV) or None
        if not is_loopback(ns.host) and not token:
            print(f"error: --host {ns.host} lets other machines in; give a token "
                  f"(--token or ${TOKEN_ENV}) that clients must send, or bind "
                  "127.0.0.1.", file=sys.stderr)
            return 2
        if ns.interval <= 0:
            print("error: --interval must be more than 0 seconds", file=sys.stderr)
            return 2
        from .serve import serve
        queues = [q for q in (ns.queues or app.conf.task_default_queue).split(",") if q]
        return serve(app, host=ns.host, port=ns.port, metrics_port=ns.metrics_port,
                     token=token, queues=queues, interval=ns.interval,
                     events=not ns.no_events)


#: The entry point's object.
command = MonitorCommand()
