"""``app.control``: send Celery's remote control commands and collect the replies.

A command is kombu's pidbox message: the JSON object ``{"method", "arguments",
"destination", "pattern", "matcher"}`` (plus ``ticket`` and ``reply_to`` when replies
are wanted) broadcast on the ``celery.pidbox`` fanout with headers ``clock`` and
``expires``. Replies come back, as ``{hostname: reply}`` with the ``ticket`` header,
to this client's own queue on ``reply.celery.pidbox`` (subscribed before the
command is sent, so no fast reply is lost). Celery's workers answer exactly as
Conveyor's do.

The transport must have ``Capabilities.broadcast``; without it every call raises
:class:`~conveyor.exceptions.CapabilityError` naming the transport.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from ..interfaces import BroadcastTransport, Message, Subscription, require
from .exchanges import PIDBOX, QUEUE_EXPIRES, REPLIES, reply_queue

if TYPE_CHECKING:
    from ..app import Conveyor

#: One worker's reply: ``{hostname: reply}``.
Reply = dict[str, Any]


class Control:
    """Celery's ``app.control`` (the commands Conveyor's workers answer)."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        self._clock = 0

    def broadcast(self, command: str, arguments: dict[str, Any] | None = None, *,
                  destination: Sequence[str] | None = None, reply: bool = False,
                  timeout: float = 1.0, limit: int | None = None,
                  callback: Callable[[Reply], None] | None = None,
                  pattern: str | None = None, matcher: str | None = None,
                  what: str | None = None) -> list[Reply]:
        """Send ``command`` to every worker (or those named in ``destination``).

        With ``reply``, wait up to ``timeout`` seconds (or until ``limit`` replies
        came; ``limit`` defaults to the number of destinations) and return the
        replies in the order they came, calling ``callback`` on each as it comes.
        """
        transport = cast(BroadcastTransport, self.app.transport_factory())
        require(transport, "broadcast", what or f"remote control command {command!r}")
        if destination is not None and isinstance(destination, str):
            destination = [destination]
        if limit is None and destination:
            limit = len(destination)
        transport.connect()
        subscription: Subscription | None = None
        try:
            body: dict[str, Any] = {"method": command, "arguments": arguments or {},
                                    "destination": list(destination) if destination else None,
                                    "pattern": pattern, "matcher": matcher}
            ticket = None
            if reply:
                client_id = str(uuid.uuid4())
                subscription = transport.subscribe(REPLIES, client_id,
                                                   queue=reply_queue(client_id),
                                                   expires=QUEUE_EXPIRES)
                ticket = str(uuid.uuid4())
                body.update(ticket=ticket, reply_to={"exchange": REPLIES.name,
                                                     "routing_key": client_id})
            self._clock += 1
            headers = {"clock": self._clock, "expires": time.time() + timeout if timeout else 0}
            transport.broadcast(PIDBOX, "", Message(
                headers, json.dumps(body).encode(), "application/json", "utf-8",
                {"delivery_mode": 2}))
            if subscription is None:
                return []
            return self._collect(subscription, ticket, timeout, limit, callback)
        finally:
            if subscription is not None:
                subscription.close()
            transport.close()

    def _collect(self, subscription: Subscription, ticket: str | None, timeout: float,
                 limit: int | None, callback: Callable[[Reply], None] | None) -> list[Reply]:
        replies: list[Reply] = []
        deadline = time.monotonic() + timeout
        while limit is None or len(replies) < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for delivery in subscription.get(timeout=left):
                headers = delivery.message.headers if isinstance(
                    delivery.message.headers, dict) else {}
                if headers.get("ticket", ticket) != ticket:
                    continue  # a late reply to an earlier command
                try:
                    body = json.loads(delivery.message.body)
                except (ValueError, UnicodeDecodeError):
                    continue
                if isinstance(body, dict):
                    self._clock = max(self._clock, int(headers.get("clock") or 0)) + 1
                    replies.append(body)
                    if callback is not None:
                        callback(body)
        return replies

    def inspect(self, destination: Sequence[str] | None = None,
                timeout: float = 1.0) -> Inspect:
        """Celery's ``app.control.inspect()``."""
        return Inspect(self, destination, timeout)

    def ping(self, destination: Sequence[str] | None = None,
             timeout: float = 1.0) -> list[Reply]:
        return self.broadcast("ping", destination=destination, reply=True, timeout=timeout)

    def revoke(self, task_id: str | Sequence[str], *, terminate: bool = False,
               signal: str = "SIGTERM", destination: Sequence[str] | None = None,
               reply: bool = False, timeout: float = 1.0) -> list[Reply]:
        """Tell workers to skip ``task_id`` (and, with ``terminate``, to stop it
        where it runs, with ``signal`` for a process-pool child)."""
        return self.broadcast("revoke", {"task_id": task_id, "terminate": terminate,
                                         "signal": signal},
                              destination=destination, reply=reply, timeout=timeout)

    def revoke_by_stamped_headers(self, headers: Mapping[str, Any], *,
                                  terminate: bool = False, signal: str = "SIGTERM",
                                  destination: Sequence[str] | None = None,
                                  reply: bool = False, timeout: float = 1.0
                                  ) -> list[Reply]:
        """Tell workers to skip every task stamped with one of these values
        (``{"tenant": "acme"}`` or ``{"tenant": ["acme", "beta"]}``), from now on;
        with ``terminate``, also stop those running (Celery's command)."""
        return self.broadcast("revoke_by_stamped_headers",
                              {"headers": dict(headers), "terminate": terminate,
                               "signal": signal},
                              destination=destination, reply=reply, timeout=timeout)

    def terminate(self, task_id: str | Sequence[str], signal: str = "SIGTERM",
                  **options: Any) -> list[Reply]:
        return self.revoke(task_id, terminate=True, signal=signal, **options)

    def enable_events(self, destination: Sequence[str] | None = None,
                      reply: bool = False, timeout: float = 1.0) -> list[Reply]:
        """Workers send task events from now on (as ``worker -E``), as Flower asks."""
        return self.broadcast("enable_events", destination=destination, reply=reply,
                              timeout=timeout)

    def disable_events(self, destination: Sequence[str] | None = None,
                       reply: bool = False, timeout: float = 1.0) -> list[Reply]:
        """Workers stop sending task events (their heartbeats go on)."""
        return self.broadcast("disable_events", destination=destination, reply=reply,
                              timeout=timeout)

    def rate_limit(self, task_name: str, rate_limit: str | float | None,
                   destination: Sequence[str] | None = None, reply: bool = False,
                   timeout: float = 1.0) -> list[Reply]:
        """Workers start ``task_name`` at most this often (``"10/m"``; 0: no limit)."""
        return self.broadcast("rate_limit", {"task_name": task_name,
                                             "rate_limit": rate_limit},
                              destination=destination, reply=reply, timeout=timeout)

    def time_limit(self, task_name: str, soft: float | None = None,
                   hard: float | None = None, destination: Sequence[str] | None = None,
                   reply: bool = False, timeout: float = 1.0) -> list[Reply]:
        """Workers give ``task_name`` these time limits (seconds; None: none)."""
        return self.broadcast("time_limit", {"task_name": task_name, "soft": soft,
                                             "hard": hard},
                              destination=destination, reply=reply, timeout=timeout)

    def pool_grow(self, n: int = 1, destination: Sequence[str] | None = None,
                  reply: bool = False, timeout: float = 1.0) -> list[Reply]:
        """Workers run ``n`` more tasks at once (not autoscaled ones)."""
        return self.broadcast("pool_grow", {"n": n}, destination=destination,
                              reply=reply, timeout=timeout)

    def pool_shrink(self, n: int = 1, destination: Sequence[str] | None = None,
                    reply: bool = False, timeout: float = 1.0) -> list[Reply]:
        """Workers run ``n`` fewer tasks at once (not autoscaled ones)."""
        return self.broadcast("pool_shrink", {"n": n}, destination=destination,
                              reply=reply, timeout=timeout)

    def autoscale(self, max: int | None = None, min: int | None = None,  # noqa: A002
                  destination: Sequence[str] | None = None, reply: bool = False,
                  timeout: float = 1.0) -> list[Reply]:
        """New ``--autoscale`` bounds for autoscaled workers (Celery's names)."""
        return self.broadcast("autoscale", {"max": max, "min": min},
                              destination=destination, reply=reply, timeout=timeout)

    def add_consumer(self, queue: str, destination: Sequence[str] | None = None,
                     reply: bool = False, timeout: float = 1.0) -> list[Reply]:
        """Workers consume ``queue`` too (until they stop)."""
        return self.broadcast("add_consumer", {"queue": queue}, destination=destination,
                              reply=reply, timeout=timeout)

    def cancel_consumer(self, queue: str, destination: Sequence[str] | None = None,
                        reply: bool = False, timeout: float = 1.0) -> list[Reply]:
        """Workers stop consuming ``queue`` (tasks they fetched from it still run)."""
        return self.broadcast("cancel_consumer", {"queue": queue},
                              destination=destination, reply=reply, timeout=timeout)

    def pool_restart(self, modules: Sequence[str] | None = None, reload: bool = False,
                     destination: Sequence[str] | None = None, reply: bool = False,
                     timeout: float = 1.0) -> list[Reply]:
        """Workers import ``modules`` (reloading those they have, with ``reload``) and
        replace their pool children; only where ``worker_pool_restarts`` is on."""
        return self.broadcast("pool_restart", {"modules": list(modules or []),
                                               "reload": reload},
                              destination=destination, reply=reply, timeout=timeout)

    def shutdown(self, destination: Sequence[str] | None = None, reply: bool = False,
                 timeout: float = 1.0) -> list[Reply]:
        """Warm shutdown of workers (running tasks finish)."""
        return self.broadcast("shutdown", destination=destination, reply=reply,
                              timeout=timeout)


class Inspect:
    """Celery's ``Inspect``: each method returns ``{hostname: reply}``, or None when
    no worker answered in time."""

    def __init__(self, control: Control, destination: Sequence[str] | None,
                 timeout: float) -> None:
        self.control = control
        self.destination = destination
        self.timeout = timeout

    def _request(self, command: str, **arguments: Any) -> dict[str, Any] | None:
        replies = self.control.broadcast(command, arguments, destination=self.destination,
                                         reply=True, timeout=self.timeout,
                                         what=f"inspect {command}")
        merged: dict[str, Any] = {}
        for reply in replies:
            merged.update(reply)
        return merged or None

    def ping(self) -> dict[str, Any] | None:
        return self._request("ping")

    def active(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request("active", safe=safe)

    def reserved(self) -> dict[str, Any] | None:
        return self._request("reserved")

    def scheduled(self) -> dict[str, Any] | None:
        return self._request("scheduled")

    def registered(self, *taskinfoitems: str) -> dict[str, Any] | None:
        return self._request("registered", taskinfoitems=list(taskinfoitems))

    def stats(self) -> dict[str, Any] | None:
        return self._request("stats")

    def revoked(self) -> dict[str, Any] | None:
        return self._request("revoked")

    def active_queues(self) -> dict[str, Any] | None:
        return self._request("active_queues")

    def query_task(self, *ids: str) -> dict[str, Any] | None:
        return self._request("query_task", ids=list(ids))

    def conf(self, with_defaults: bool = False) -> dict[str, Any] | None:
        return self._request("conf", with_defaults=with_defaults)
