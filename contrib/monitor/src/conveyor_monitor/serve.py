"""Run the monitor: the sampler and event receiver threads, and uvicorn serving the
page (and, with ``--metrics-port``, ``/metrics`` on a port of its own)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from types import FrameType

import uvicorn
from conveyor import Conveyor
from conveyor.exceptions import ConveyorError

from .command import is_loopback
from .metrics import make_registry
from .sampler import Sampler
from .state import EventState
from .web import make_app, make_metrics_app

log = logging.getLogger("conveyor.monitor")


class Server(uvicorn.Server):
    """A uvicorn server that leaves signals to :func:`serve`: several servers stop
    together, and a SIGTERM is a clean stop (exit 0), not re-raised after it."""

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def listen(host: str, port: int, option: str) -> socket.socket:
    """A listening socket on ``host:port``, bound before anything starts, so a port
    in use is one clear error naming the option to change."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConveyorError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}. "
                            f"Choose another {option}.") from exc
    sock.listen(128)
    return sock


def serve(app: Conveyor, *, host: str, port: int, metrics_port: int | None,
          token: str | None, queues: Sequence[str], interval: float,
          events: bool) -> int:
    """Serve until interrupted (SIGINT/SIGTERM); returns the exit status."""
    sockets = [listen(host, port, "--port")]
    if metrics_port is not None:
        try:
            sockets.append(listen(host, metrics_port, "--metrics-port"))
        except ConveyorError:
            sockets[0].close()
            raise
    state = EventState()
    sampler = Sampler(app, queues, interval)
    registry = make_registry(sampler, state)
    loopback = is_loopback(host)
    receiver = None
    if events:
        from .events import start_receiver
        receiver = start_receiver(app, state)
    sampler.start()
    web = make_app(sampler, state, registry, token=token, loopback=loopback,
                   app_name=app.main or "__main__")
    apps = [web]
    if metrics_port is not None:
        apps.append(make_metrics_app(registry, token=token, loopback=loopback))
    servers = [Server(uvicorn.Config(asgi, log_level="warning", lifespan="off"))
               for asgi in apps]

    def announce() -> None:
        shown = f"[{host}]" if ":" in host else host
        print(f"conveyor monitor on http://{shown}:{port}/ (metrics: /metrics"
              + (f", and http://{shown}:{metrics_port}/metrics" if metrics_port else "")
              + f"); queues {', '.join(queues)} of {sampler.broker}", flush=True)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        for server in servers:
            server.force_exit = server.should_exit  # a second signal: do not wait
            server.should_exit = True

    async def run_all() -> None:
        tasks = [asyncio.create_task(s.serve(sockets=[sock]))
                 for s, sock in zip(servers, sockets)]
        while not all(s.started for s in servers) and not any(t.done() for t in tasks):
            await asyncio.sleep(0.02)
        if all(s.started for s in servers):
            announce()
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(run_all())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sampler.stop()
        if receiver is not None:
            receiver.stop()
        for sock in sockets:
            sock.close()
    return 0
