"""What Conveyor declares on RabbitMQ, named and shaped as Celery 5.7 declares it.

* A task queue is durable, not auto-deleted, bound to a durable direct exchange with
  the queue's name as routing key; the default queue's exchange is
  ``task_default_exchange`` (Celery's default: the queue's name, ``celery``). Its
  arguments are ``x-queue-type: quorum`` with ``task_default_queue_type="quorum"``
  and ``x-max-priority`` from ``task_queue_max_priority``, nothing else — so Celery
  and Conveyor declare the same queue without ``PRECONDITION_FAILED``.
* Delayed messages wait in kombu 5.5+'s native delayed-delivery layout (:class:`Delays`).
* Dead letters wait in a durable classic queue per source queue,
  ``<queue>.conveyor.dead`` (Conveyor's own; Celery never reads it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from conveyor.exceptions import ConfigurationError

#: How many bits of a delay (whole seconds) the layout spells out: up to ~8.5 years.
DELAY_BITS = 28
MAX_DELAY = 2 ** DELAY_BITS - 1
#: A routing key that already starts with a delay's bits (a parked message's).
_DELAY_PREFIX = re.compile(r"^(?:[01]\.){%d}" % DELAY_BITS)
DEAD_SUFFIX = ".conveyor.dead"


def dead_queue(queue: str) -> str:
    """The dead-letter queue of ``queue``."""
    return queue + DEAD_SUFFIX


@dataclass(frozen=True, slots=True)
class QueueShape:
    """The arguments task queues are declared with (from the app's settings).

    As in Celery: the default queue has ``task_default_queue_type``, every other
    queue ``task_create_missing_queue_type``; all get ``task_queue_max_priority``.
    """

    default_queue: str = "celery"
    default_type: str = "classic"
    missing_type: str = "classic"
    max_priority: int | None = None

    @classmethod
    def from_conf(cls, conf: Any) -> QueueShape:
        if conf is None:
            return cls()
        shape = cls(conf.task_default_queue, conf.task_default_queue_type,
                    conf.task_create_missing_queue_type, conf.task_queue_max_priority)
        if shape.max_priority is not None and "quorum" in (shape.default_type,
                                                           shape.missing_type):
            raise ConfigurationError(
                "task_queue_max_priority cannot be used with quorum queues "
                "(task_default_queue_type / task_create_missing_queue_type): RabbitMQ "
                "quorum queues take no x-max-priority. Use classic queues for priorities.")
        return shape

    def queue_type(self, queue: str) -> str:
        return self.default_type if queue == self.default_queue else self.missing_type

    def arguments(self, queue: str) -> dict[str, Any] | None:
        args: dict[str, Any] = {}
        if self.queue_type(queue) == "quorum":
            args["x-queue-type"] = "quorum"
        if self.max_priority is not None:
            args["x-max-priority"] = self.max_priority
        return args or None


class Delays:
    """kombu 5.5+'s native delayed-delivery layout (``celery_delayed_0…27``).

    Level ``L`` is a topic exchange and a queue of the same name whose messages expire
    after 2^L s and dead-letter to level ``L-1`` (level 0 to
    ``celery_delayed_delivery``). A message's routing key is its delay in whole
    seconds as 28 dot-separated binary digits, most significant first, then the
    original routing key: each level's queue takes it when its bit is 1, and its
    exchange passes it on down when the bit is 0. ``celery_delayed_delivery`` finally
    routes it by the original key (``#.<key>`` bindings) back to its queue. Celery
    workers with native delayed delivery declare the same names and arguments, so
    both kinds of worker share one layout.
    """

    #: Where a message leaves the layout, routed by its original key.
    delivery = "celery_delayed_delivery"
    #: Where a message enters it: the top level's exchange.
    entry = f"celery_delayed_{DELAY_BITS - 1}"

    def __init__(self, queue_type: str = "quorum") -> None:
        self.queue_type = queue_type

    @staticmethod
    def level(n: int) -> str:
        return f"celery_delayed_{n}"

    def queue_arguments(self, n: int) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-queue-type": self.queue_type,
            "x-overflow": "reject-publish",
            "x-message-ttl": 2 ** n * 1000,
            "x-dead-letter-exchange": self.level(n - 1) if n > 0 else self.delivery,
        }
        if self.queue_type == "quorum":
            args["x-dead-letter-strategy"] = "at-least-once"
        return args

    def bindings(self) -> list[tuple[str, str, str]]:
        """Every exchange-to-exchange binding as ``(destination, source, key)``."""
        out = []
        key = "0.#"
        for n in range(DELAY_BITS - 1, 0, -1):
            out.append((self.level(n - 1), self.level(n), key))
            key = "*." + key
        out.append((self.delivery, self.level(0), key))
        return out

    @staticmethod
    def queue_key(n: int) -> str:
        """The binding of level ``n``'s queue to its exchange: bit ``n`` is 1."""
        return "*." * (DELAY_BITS - 1 - n) + "1.#"

    @staticmethod
    def routing_key(delay: float, routing_key: str) -> str:
        """The routing key parking a message for ``delay`` seconds (rounded up, so a
        message never comes back early)."""
        seconds = min(MAX_DELAY, max(1, math.ceil(delay)))
        base = strip(routing_key)
        return ".".join(format(seconds, f"0{DELAY_BITS}b")) + "." + base

    @staticmethod
    def return_key(routing_key: str) -> str:
        """How a queue bound to ``routing_key`` is reached from the delivery exchange."""
        return routing_key if routing_key.startswith("#") else "#." + routing_key


def strip(routing_key: str) -> str:
    """The original routing key of a message that went through the delay layout."""
    return _DELAY_PREFIX.sub("", routing_key, count=1)
