"""Turns the worker's and the publisher's hooks into Celery's events (the fields
Celery's ``Request.send_event``, ``strategy`` and ``amqp.send_task_message`` give).

Registered on an app's plugin manager only when it sends events (:func:`enable`),
so apps without events pay nothing per task.
"""

from __future__ import annotations

import atexit
import os
import platform
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import pluggy

from .. import __version__
from ..hookspecs import hookimpl
from .dispatcher import EventDispatcher

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..envelope import Request
    from ..interfaces import Message, Route
    from ..worker.worker import Worker

#: The name the events plugin is registered under.
NAME = "conveyor.events"
#: Seconds between heartbeats (Celery's ``Heart`` default; monitors take a worker
#: as gone after missing about two).
HEARTBEAT_INTERVAL = 2.0
#: Longest ``result`` repr sent (Celery's ``resultrepr_maxsize``).
RESULT_REPR_MAX = 1024
SOFTWARE = {"sw_ident": "py-conveyor", "sw_ver": __version__, "sw_sys": platform.system()}


def wanted(app: Conveyor) -> bool:
    """Whether ``app`` sends any event (worker events or ``task-sent``)."""
    return bool(app.conf.worker_send_task_events or app.conf.task_send_sent_event)


def enable(app: Conveyor) -> None:
    """Register the events plugin on ``app`` unless it is (``worker -E``)."""
    enable_on(app.plugin_manager, app)


def enable_on(pm: pluggy.PluginManager, app: Conveyor) -> None:
    """Register the events plugin for ``app`` on ``pm`` unless it is."""
    if pm.get_plugin(NAME) is None:
        pm.register(EventsPlugin(app), NAME)


def switch(app: Conveyor, on: bool, worker: Worker | None = None) -> None:
    """Celery's ``enable_events``/``disable_events`` (Flower sends the first every
    few seconds): this process sends task events from now on, or stops. Turned on,
    ``worker`` announces itself and beats (once: its heartbeats go on after a
    ``disable_events``, as Celery's do)."""
    app.conf.worker_send_task_events = on
    if on:
        enable(app)
        plugin = app.plugin_manager.get_plugin(NAME)
        if worker is not None and isinstance(plugin, EventsPlugin):
            plugin.beat(worker)


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= RESULT_REPR_MAX else text[:RESULT_REPR_MAX - 3] + "..."


class EventsPlugin:
    """Hook implementations sending events; one dispatcher per process (a
    ``processes`` pool child runs task hooks and gets its own)."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._dispatchers: dict[tuple[int, str], EventDispatcher] = {}
        self._started: dict[str, float] = {}
        self._worker: Worker | None = None
        self._heart: threading.Event | None = None

    # ------------------------------------------------------------------ plumbing
    def _on(self) -> bool:
        return bool(self.app.conf.worker_send_task_events)

    def dispatcher(self, hostname: str) -> EventDispatcher:
        key = (os.getpid(), hostname)
        with self._lock:
            found = self._dispatchers.get(key)
            if found is None:
                found = self._dispatchers[key] = EventDispatcher(self.app, hostname)
                # A client's task-sent events still queued when it exits go out first.
                atexit.register(found.close, 2.0)
            return found

    def _task_event(self, request: Request, event_type: str, **fields: Any) -> None:
        hostname = request.hostname or f"gen{os.getpid()}@{socket.gethostname()}"
        self.dispatcher(hostname).send(event_type, uuid=request.id, **fields)

    # ------------------------------------------------------------------ worker
    def _worker_event(self, worker: Worker, event_type: str) -> None:
        self.dispatcher(worker.hostname).send(
            event_type, freq=HEARTBEAT_INTERVAL, active=len(worker.running_jobs()),
            processed=worker.processed, loadavg=_loadavg(), **SOFTWARE)

    @hookimpl
    def worker_ready(self, worker: Worker) -> None:
        if self._on():
            self.beat(worker)

    def beat(self, worker: Worker) -> None:
        """Announce ``worker`` (``worker-online``) and send its heartbeats, unless
        this already does."""
        if self._heart is not None:
            return
        self._worker = worker
        self._worker_event(worker, "worker-online")
        self._heart = stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_INTERVAL):
                self._worker_event(worker, "worker-heartbeat")

        threading.Thread(target=beat, name="conveyor-heartbeat", daemon=True).start()

    @hookimpl
    def worker_shutdown(self, worker: Worker) -> None:
        if self._heart is None:
            return  # never announced
        self._heart.set()
        self._worker_event(worker, "worker-offline")
        with self._lock:
            mine = [d for (pid, _), d in self._dispatchers.items() if pid == os.getpid()]
        for dispatcher in mine:
            dispatcher.close()

    @hookimpl
    def message_received(self, message: Message, queue: str) -> None:
        if not self._on() or self._worker is None:
            return
        headers = message.headers if isinstance(message.headers, dict) else {}
        if not headers.get("id"):
            return  # not a task message: dead-lettered, never a task
        self.dispatcher(self._worker.hostname).send(
            "task-received", uuid=headers["id"], name=headers.get("task"),
            args=headers.get("argsrepr"), kwargs=headers.get("kwargsrepr"),
            root_id=headers.get("root_id"), parent_id=headers.get("parent_id"),
            retries=headers.get("retries", 0), eta=headers.get("eta"),
            expires=headers.get("expires"))

    @hookimpl
    def task_prerun(self, task_id: str, request: Request) -> None:
        if not self._on():
            return
        self._started[task_id] = time.monotonic()
        self._task_event(request, "task-started")

    def _runtime(self, task_id: str) -> float | None:
        started = self._started.pop(task_id, None)
        return None if started is None else time.monotonic() - started

    @hookimpl
    def task_success(self, result: Any, request: Request) -> None:
        if not self._on():
            return
        self._task_event(request, "task-succeeded", result=_short_repr(result),
                         runtime=self._runtime(request.id))

    @hookimpl
    def task_failure(self, task_id: str, exception: BaseException, traceback: str,
                     request: Request) -> None:
        if not self._on():
            return
        self._runtime(task_id)
        self._task_event(request, "task-failed", exception=repr(exception),
                         traceback=traceback)

    @hookimpl
    def task_retry(self, request: Request, reason: BaseException) -> None:
        if not self._on():
            return
        from ..states import format_traceback
        self._runtime(request.id)
        self._task_event(request, "task-retried", exception=repr(reason),
                         traceback=format_traceback(reason))

    @hookimpl
    def task_revoked(self, request: Request, expired: bool) -> None:
        if not self._on():
            return
        self._task_event(request, "task-revoked", terminated=False, signum=None,
                         expired=expired)

    # ------------------------------------------------------------------ client
    @hookimpl
    def after_task_publish(self, name: str, message: Message, route: Route) -> None:
        if not self.app.conf.task_send_sent_event:
            return
        headers = message.headers if isinstance(message.headers, dict) else {}
        node = f"gen{os.getpid()}@{socket.gethostname()}"
        self.dispatcher(node).send(
            "task-sent", uuid=headers.get("id"), root_id=headers.get("root_id"),
            parent_id=headers.get("parent_id"), name=name,
            args=headers.get("argsrepr"), kwargs=headers.get("kwargsrepr"),
            retries=headers.get("retries", 0), eta=headers.get("eta"),
            expires=headers.get("expires"), queue=route.queue,
            exchange=route.exchange, routing_key=route.key)
