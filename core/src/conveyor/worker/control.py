"""The worker's control consumer: Celery's remote control commands (kombu's pidbox).

When the transport has ``Capabilities.broadcast``, every worker runs one more thread
with a connection of its own: it subscribes to the ``celery.pidbox`` fanout as queue
``<hostname>.celery.pidbox`` (kombu's names), runs each command meant for it and
broadcasts the reply to the asking client's reply queue (``reply.celery.pidbox``,
routing key = the client's id) as ``{hostname: reply}`` with the command's
``ticket``. So ``celery -A proj inspect ping`` reaches a Conveyor worker and
``conveyor -A proj inspect ping`` a Celery worker. A busy pool does not delay an
answer: the thread only reads the worker's state.

The command panel (:class:`Panel`) answers Celery's commands with Celery's reply
shapes: ``ping``, ``active``, ``reserved``, ``scheduled``, ``registered``, ``stats``,
``revoke`` (and ``terminate``), ``revoked``, ``query_task``, ``active_queues``,
``clock``, ``conf``, ``hello`` (mingle), ``enable_events``/``disable_events`` and
``shutdown``; and those of :mod:`.tuning` (``rate_limit``, ``time_limit``,
``pool_grow``/``pool_shrink``, ``autoscale``).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import resource
import signal as signals
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from .. import states
from ..control.exchanges import PIDBOX, QUEUE_EXPIRES, REPLIES, pidbox_queue
from ..interfaces import (
    DIRECT, BroadcastTransport, Capabilities, Delivery, Exchange, HeartbeatTransport,
    Message,
)
from ..utils import mask_url
from . import tuning
from .beats import expect_heartbeats
from .revoked import REVOKED, RUNNING

if TYPE_CHECKING:
    from .pool import Job
    from .worker import Worker

log = logging.getLogger("conveyor.worker")

#: Settings ``conf`` leaves out (they may hold secrets beyond a URL's password).
_SECRET = re.compile(r"password|secret|token|key$", re.I)


class Clock:
    """kombu's Lamport clock: forwarded on every send, moved past what is received."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def adjust(self, other: Any) -> None:
        try:
            seen = int(other or 0)
        except (TypeError, ValueError):
            return
        with self._lock:
            self.value = max(self.value, seen) + 1

    def forward(self) -> int:
        with self._lock:
            self.value += 1
            return self.value


def signum(name: Any) -> int:
    """A signal given as Celery's CLI gives it: ``TERM``, ``SIGKILL``, ``9``."""
    if name is None or name == "":
        return int(signals.SIGTERM)
    if isinstance(name, int) or str(name).isdigit():
        return int(name)
    text = str(name).upper()
    found = getattr(signals, text if text.startswith("SIG") else f"SIG{text}", None)
    if not isinstance(found, signals.Signals):
        raise ValueError(f"Unknown signal name {name!r}; use a name such as TERM or KILL.")
    return int(found)


def _matches(hostname: str, body: dict[str, Any]) -> bool:
    """kombu's rule: a ``destination`` list, else a ``pattern`` with its ``matcher``
    (``glob`` or ``pcre``), else every node."""
    destination = body.get("destination")
    if destination:
        return hostname in destination
    pattern, matcher = body.get("pattern"), body.get("matcher")
    if pattern and matcher:
        if matcher == "pcre":
            return re.search(pattern, hostname) is not None
        return fnmatch.fnmatchcase(hostname, pattern)
    return True


class Panel:
    """Celery's control commands, answered from a Conveyor worker's state."""

    def __init__(self, worker: Worker, clock: Clock) -> None:
        self.worker = worker
        self.clock = clock
        self.started = time.monotonic()
        self.commands: dict[str, Callable[..., Any]] = {
            "ping": self.ping, "active": self.active, "dump_active": self.active,
            "reserved": self.reserved, "dump_reserved": self.reserved,
            "scheduled": self.scheduled, "dump_schedule": self.scheduled,
            "registered": self.registered, "dump_tasks": self.registered,
            "stats": self.stats, "revoke": self.revoke, "terminate": self.terminate,
            "revoke_by_stamped_headers": self.revoke_by_stamped_headers,
            "revoked": self.revoked, "dump_revoked": self.revoked,
            "query_task": self.query_task, "active_queues": self.active_queues,
            "clock": self.clock_value, "conf": self.conf, "hello": self.hello,
            "enable_events": self.enable_events, "disable_events": self.disable_events,
            "shutdown": self.shutdown,
            **{name: partial(command, worker) for name, command in tuning.COMMANDS.items()},
        }

    def handle(self, method: str, arguments: dict[str, Any]) -> Any:
        command = self.commands.get(method)
        if command is None:
            return {"error": f"No such control command: {method}"}
        return command(**arguments)

    # ------------------------------------------------------------- state
    def info(self, job: Job, *, running: bool = False, safe: bool = False) -> dict[str, Any]:
        """Celery's ``Request.info()``."""
        request = job.request
        started = None
        if running and job.started:
            started = time.time() - (time.monotonic() - job.started)
        args: Any = request.args
        kwargs: Any = request.kwargs
        if safe:
            args = request.headers.get("argsrepr") or repr(request.args)
            kwargs = request.headers.get("kwargsrepr") or repr(request.kwargs)
        info = request.delivery_info or {}
        pid = self.worker.pool.pid_of(request.id) if running else None
        return {
            "id": request.id, "name": request.name, "args": args, "kwargs": kwargs,
            "type": request.name, "hostname": self.worker.hostname, "time_start": started,
            "acknowledged": running and not job.acks_late,
            "delivery_info": {"exchange": info.get("exchange", ""),
                              "routing_key": info.get("routing_key"),
                              "priority": info.get("priority"),
                              "redelivered": info.get("redelivered", False)},
            "worker_pid": pid or (os.getpid() if running else None),
        }

    def _started(self) -> list[Job]:
        """Jobs running now (a processes-pool job waiting in a child's pipe is not)."""
        return [job for job in self.worker.running_jobs() if job.started]

    def _waiting(self) -> list[Job]:
        """Jobs received and not started: ready, throttled, or handed to the pool."""
        return [*self.worker.waiting_jobs(),
                *(job for job in self.worker.running_jobs() if not job.started)]

    # ------------------------------------------------------------- inspect
    def ping(self, **_: Any) -> dict[str, str]:
        return {"ok": "pong"}

    def active(self, safe: bool = False, **_: Any) -> list[dict[str, Any]]:
        return [self.info(job, running=True, safe=bool(safe)) for job in self._started()]

    def reserved(self, **_: Any) -> list[dict[str, Any]]:
        return [self.info(job) for job in self._waiting()]

    def scheduled(self, **_: Any) -> list[dict[str, Any]]:
        out = []
        for job in self.worker.scheduled_jobs():
            eta = job.request.eta
            out.append({"eta": eta.isoformat() if eta is not None else None,
                        "priority": job.request.priority or 0, "request": self.info(job)})
        return out

    def registered(self, taskinfoitems: list[str] | None = None, builtins: bool = False,
                   **_: Any) -> list[str]:
        """Task names, with the attributes Celery shows (``exchange``,
        ``routing_key``, ``rate_limit``) that a task sets."""
        items = [i for i in (taskinfoitems or ("exchange", "routing_key", "rate_limit"))
                 if isinstance(i, str) and not i.startswith("_")]
        out = []
        for name in sorted(self.worker.app.tasks):
            if name.startswith("celery.") and not builtins:
                continue
            task = self.worker.app.tasks[name]
            fields = [f"{item}={getattr(task, item)}" for item in items
                      if getattr(task, item, None) is not None]
            out.append(f"{name} [{' '.join(fields)}]" if fields else name)
        return out

    def stats(self, **_: Any) -> dict[str, Any]:
        """Celery's ``stats`` shape (what Flower reads)."""
        worker, conf = self.worker, self.worker.app.conf
        processes = worker.pool.child_pids() or [os.getpid()]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        url = urlsplit(worker.app.broker_url)
        return {
            "total": dict(getattr(worker, "total", {})),
            "pid": os.getpid(), "clock": str(self.clock.value),
            "uptime": round(time.monotonic() - self.started),
            "pool": {"implementation": f"conveyor.worker.pool:{type(worker.pool).__name__}",
                     "max-concurrency": worker.concurrency, "processes": processes,
                     "max-tasks-per-child": worker.pool.max_tasks_per_child or "N/A",
                     "put-guarded-by-semaphore": False,
                     "timeouts": [conf.task_soft_time_limit or 0, conf.task_time_limit or 0]},
            "broker": {"hostname": url.hostname, "port": url.port,
                       "userid": url.username, "virtual_host": url.path.lstrip("/") or "/",
                       "transport": url.scheme, "ssl": url.scheme in ("rediss", "amqps"),
                       "uri": mask_url(worker.app.broker_url)},
            "prefetch_count": worker.prefetch,
            "rusage": {"utime": usage.ru_utime, "stime": usage.ru_stime,
                       "maxrss": usage.ru_maxrss, "minflt": usage.ru_minflt,
                       "majflt": usage.ru_majflt, "nvcsw": usage.ru_nvcsw,
                       "nivcsw": usage.ru_nivcsw},
        }

    def revoked(self, **_: Any) -> list[str]:
        return REVOKED.ids()

    def query_task(self, ids: Any = None, **_: Any) -> dict[str, Any]:
        wanted = {ids} if isinstance(ids, str) else set(ids or ())
        found: dict[str, Any] = {}
        for kind, jobs, running in (("active", self._started(), True),
                                    ("reserved", self._waiting(), False),
                                    ("scheduled", self.worker.scheduled_jobs(), False)):
            for job in jobs:
                if job.request.id in wanted:
                    found[job.request.id] = [kind, self.info(job, running=running)]
        return found

    def active_queues(self, **_: Any) -> list[dict[str, Any]]:
        """The queues consumed, in kombu's ``Queue.as_dict()`` shape."""
        return [{"name": q, "exchange": {"name": q, "type": "direct", "durable": True,
                                         "auto_delete": False, "arguments": None},
                 "routing_key": q, "durable": True, "exclusive": False,
                 "auto_delete": False, "no_ack": False, "alias": None,
                 "queue_arguments": None, "binding_arguments": None,
                 "consumer_arguments": None, "bindings": [], "no_declare": None,
                 "expires": None, "message_ttl": None, "max_length": None,
                 "max_length_bytes": None, "max_priority": None}
                for q in self.worker.queues]

    def clock_value(self, **_: Any) -> dict[str, int]:
        return {"clock": self.clock.value}

    def conf(self, with_defaults: bool = False, **_: Any) -> dict[str, Any]:
        """The app's settings, URLs masked and secret-looking keys left out."""
        out: dict[str, Any] = {}
        for key, value in self.worker.app.conf.items():
            if _SECRET.search(key):
                continue
            if isinstance(value, str) and "://" in value:
                value = mask_url(value)
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                value = repr(value)
            out[key] = value
        return out

    def hello(self, from_node: str = "", revoked: list[str] | None = None,
              **_: Any) -> dict[str, Any] | None:
        """Celery's mingle at a worker's start: take its revoked ids, give ours."""
        if from_node == self.worker.hostname:
            return None
        if revoked:
            REVOKED.add(list(revoked), self._keep())
        return {"revoked": REVOKED.ids(), "clock": self.clock.forward()}

    # ------------------------------------------------------------- control
    def _keep(self) -> float | None:
        expires = self.worker.app.conf.result_expires
        return float(expires) if expires else None

    def revoke(self, task_id: Any = None, terminate: bool = False, signal: Any = None,
               **_: Any) -> dict[str, str]:
        """Skip ``task_id`` (one id or a list) wherever it has not run yet; with
        ``terminate``, also stop it where it runs here (recorded REVOKED)."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id or ())
        REVOKED.add(ids, self._keep())
        self.worker.pool.skip(ids)
        running = {job.request.id for job in self._started()}
        app = self.worker.app
        for tid in ids:
            if tid in running:
                continue
            try:  # Celery's rule: only a task nobody has started or finished
                if app.AsyncResult(tid).state in (states.PENDING, states.RECEIVED,
                                                  states.RETRY):
                    app.results.store(tid, states.REVOKED, states.revoked_dict("revoked"),
                                      hostname=self.worker.hostname)
            except Exception as exc:  # noqa: BLE001 - the id is revoked regardless
                log.warning("Could not record %s REVOKED: %s", tid, exc)
        if terminate:
            sig = signum(signal)
            stopped = [tid for tid in ids if tid in running and self._terminate(tid, sig)]
            if not stopped:
                return {"ok": "terminate: tasks unknown"}
            return {"ok": f"terminate: {', '.join(stopped)}"}
        log.info("Tasks flagged as revoked: %s", ", ".join(ids))
        return {"ok": f"tasks {set(ids)} flagged as revoked"}

    def revoke_by_stamped_headers(self, headers: Any = None, terminate: bool = False,
                                  signal: Any = None, **_: Any) -> dict[str, str]:
        """Skip every task stamped with one of these values (``{name: value or
        [values]}``, or Celery's CLI form ``["name=value", …]``) wherever it has not
        run yet, from now on; with ``terminate``, also stop those running here."""
        if isinstance(headers, (list, tuple)):
            pairs = [str(item).partition("=") for item in headers]
            if any(not sep or not name for name, sep, _value in pairs):
                return {"error": f"revoke_by_stamped_headers: give NAME=VALUE pairs, "
                                 f"not {list(headers)!r}"}
            headers = {name: value for name, _sep, value in pairs}
        if not isinstance(headers, dict) or not headers:
            return {"error": "revoke_by_stamped_headers needs stamps: {name: value}"}
        REVOKED.add_stamps(headers)
        held = [job.request.id for job in (*self._waiting(), *self._started(),
                                           *self.worker.scheduled_jobs())
                if REVOKED.stamped(job.request)]
        if held:
            reply = self.revoke(held, terminate, signal)
            if terminate:
                return reply
        elif terminate:
            return {"ok": f"headers {headers} were not terminated"}
        log.info("Tasks stamped %s flagged as revoked", headers)
        return {"ok": f"headers {headers} flagged as revoked, but not terminated"}

    def terminate(self, signal: Any = None, task_id: Any = None, **_: Any) -> dict[str, str]:
        return self.revoke(task_id, terminate=True, signal=signal)

    def _terminate(self, task_id: str, sig: int) -> bool:
        """Stop a running task: signal the child process running it, else raise
        :class:`~.revoked.Terminated` in its thread."""
        REVOKED.terminating(task_id)
        log.info("Terminating %s (%s)", task_id, signals.Signals(sig).name
                 if sig in signals.Signals._value2member_map_ else sig)
        if self.worker.pool.signal_task(task_id, sig) or RUNNING.interrupt(task_id):
            return True
        REVOKED.terminated(task_id)  # nothing to stop here: forget the mark
        return False

    def enable_events(self, **_: Any) -> dict[str, str]:
        return self._task_events(True)

    def disable_events(self, **_: Any) -> dict[str, str]:
        return self._task_events(False)

    def _task_events(self, on: bool) -> dict[str, str]:
        """Task events on or off in this worker and its pool's children (Celery's
        replies). Flower turns them on this way, so a worker started without
        ``-E`` shows up in it."""
        from ..events.plugin import switch
        word = "enabled" if on else "disabled"
        if bool(self.worker.app.conf.worker_send_task_events) == on:
            return {"ok": f"task events already {word}"}
        self.worker.pool.task_events(on)  # children first: they run the tasks
        switch(self.worker.app, on, self.worker)
        log.info("Task events %s (remote control)", word)
        return {"ok": f"task events {word}"}

    def shutdown(self, msg: str = "Got shutdown from remote", **_: Any) -> dict[str, str]:
        log.warning("%s", msg)
        self.worker.stop(warm=True)
        return {"ok": "shutting down"}


class ControlConsumer:
    """The thread that receives control commands and sends the replies."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.clock = Clock()
        self.panel = Panel(worker, self.clock)
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="conveyor-control",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        app, hostname = self.worker.app, self.worker.hostname
        pause = 0.1
        while not self._stop.is_set():
            transport = subscription = None
            broken = False
            try:
                transport = cast(BroadcastTransport, app.transport_factory())
                expect_heartbeats(transport)
                transport.connect()
                subscription = transport.subscribe(PIDBOX, "", queue=pidbox_queue(hostname),
                                                   expires=QUEUE_EXPIRES)
                self.ready.set()
                pause = 0.1
                # the replies' connection is written to only when a command comes: a
                # broker that wants heartbeats would close it meanwhile, losing a reply
                beats = cast(HeartbeatTransport, transport).heartbeat \
                    if transport.capabilities.heartbeats else None
                while not self._stop.is_set():
                    for delivery in subscription.get(timeout=0.5):
                        self._handle(transport, delivery)
                    if beats is not None:
                        beats()
            except Exception as exc:  # noqa: BLE001 - the control thread must live on
                broken = True
                if not self._stop.is_set():
                    log.warning("Remote control: %s; subscribing again in %.1fs",
                                mask_url(str(exc)), pause)
            finally:
                self._release(subscription, transport, broken)
            if broken:
                self._stop.wait(pause)
                pause = min(pause * 2, 5.0)

    @staticmethod
    def _release(subscription: Any, transport: Any, broken: bool) -> None:
        """Close the subscription and the transport; a broken transport is abandoned
        where it can be (``Capabilities.abandon``), as the consumer does: on Redis a
        new connection takes over the acks the worker's lost one still owed, and
        closing it broken would drop them instead of handing them on."""
        for closing in (subscription, transport):
            if closing is None:
                continue
            try:
                if closing is transport and broken and transport.capabilities.abandon:
                    transport.abandon()
                else:
                    closing.close()
            except Exception:  # noqa: BLE001 - already broken
                pass

    def _handle(self, transport: BroadcastTransport, delivery: Delivery) -> None:
        message = delivery.message
        try:
            body = json.loads(message.body)
        except (ValueError, UnicodeDecodeError):
            log.warning("Remote control: ignored a %s message that is not JSON",
                        message.content_type)
            return
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            return
        self.clock.adjust(message.headers.get("clock") if isinstance(
            message.headers, dict) else None)
        if not _matches(self.worker.hostname, body):
            return
        method = body["method"]
        arguments = body.get("arguments") or {}
        log.debug("Remote control: %s %r", method, arguments)
        try:
            reply = self.panel.handle(method, dict(arguments))
        except Exception as exc:  # noqa: BLE001 - Celery replies with the error
            log.error("Remote control command %s failed: %r", method, exc)
            reply = {"error": repr(exc)}
        reply_to = body.get("reply_to")
        if not isinstance(reply_to, dict):
            return
        name = reply_to.get("exchange") or REPLIES.name
        exchange = REPLIES if name == REPLIES.name else Exchange(name, DIRECT)
        headers = {"ticket": body.get("ticket"), "clock": self.clock.forward()}
        payload = json.dumps({self.worker.hostname: reply}, default=repr).encode()
        transport.broadcast(exchange, str(reply_to.get("routing_key") or ""), Message(
            headers, payload, "application/json", "utf-8", {"delivery_mode": 1}))


def start(worker: Worker, capabilities: Capabilities, scheme: str,
          wait: float = 5.0) -> ControlConsumer | None:
    """Start the control consumer when the transport can broadcast (None otherwise),
    and give it up to ``wait`` seconds to subscribe, so a worker that says it is
    ready also answers ``inspect ping``."""
    if not capabilities.broadcast:
        log.info("The %s transport has no broadcasts: this worker takes no remote "
                 "control commands", scheme)
        return None
    consumer = ControlConsumer(worker)
    consumer.start()
    if not consumer.ready.wait(wait):
        log.warning("Remote control is not subscribed yet; commands sent now may get "
                    "no answer")
    return consumer
