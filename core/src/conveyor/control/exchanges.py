"""The exchanges Celery broadcasts on, declared exactly as Celery 5 declares them.

Every client of an AMQP broker must declare an exchange with the same flags
(RabbitMQ refuses a redeclaration that differs), so these are the one place the
flags are written. On Redis only the names matter (see
:class:`conveyor.interfaces.BroadcastTransport`).

How events use them (Celery's ``EventDispatcher``): an event is a JSON object with
at least ``type``, ``timestamp``, ``hostname``, ``utcoffset``, ``pid`` and
``clock``, broadcast to :data:`EVENTS` with the type's dashes turned into dots as
routing key (``task-succeeded`` → ``task.succeeded``, ``worker-heartbeat`` →
``worker.heartbeat``, see :func:`event_routing_key`), headers ``{"hostname":
<node name>}`` and ``delivery_mode`` 1 (transient)::

    transport.broadcast(EVENTS, event_routing_key("task-succeeded"), Message(
        {"hostname": "w1@host"}, json.dumps(event).encode(), "application/json",
        "utf-8", {"delivery_mode": 1}))

A monitor receives every event with ``transport.subscribe(EVENTS, "#")``.
"""

from __future__ import annotations

from ..interfaces import DIRECT, FANOUT, TOPIC, Exchange

#: Celery's ``control_exchange`` default; the exchanges below derive from it.
CONTROL_NAMESPACE = "celery"

#: Control commands (kombu's ``Mailbox(type="fanout")``): routing key ``""``.
PIDBOX = Exchange(f"{CONTROL_NAMESPACE}.pidbox", FANOUT)
#: Replies to control commands: routing key = the asking client's id.
REPLIES = Exchange(f"reply.{CONTROL_NAMESPACE}.pidbox", DIRECT)
#: Celery's task and worker events (``event_exchange``, durable as kombu's default).
EVENTS = Exchange("celeryev", TOPIC, durable=True)

#: Seconds an abandoned control or reply queue outlives its consumer (Celery's
#: ``control_queue_expires``).
QUEUE_EXPIRES = 10.0


def event_routing_key(event_type: str) -> str:
    """The routing key Celery publishes an event of ``event_type`` with."""
    return event_type.replace("-", ".")


def pidbox_queue(hostname: str) -> str:
    """A worker's control queue, as kombu names it (``<hostname>.celery.pidbox``)."""
    return f"{hostname}.{PIDBOX.name}"


def reply_queue(client_id: str) -> str:
    """A client's reply queue, as kombu names it (``<id>.reply.celery.pidbox``)."""
    return f"{client_id}.{REPLIES.name}"
