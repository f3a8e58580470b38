"""Conveyor transport bridge: a kombu transport behind Conveyor's transport interface.

``broker="kombu+<kombu URL>"`` (``kombu+memory://``, ``kombu+filesystem://``,
``kombu+redis://host:6379/0``, ``kombu+sqs://…``) publishes and consumes through
kombu's Connection, Producer and Consumer, so every broker kombu speaks is a Conveyor
broker without a Conveyor transport of its own.
"""

from .transport import KombuTransport, PriorityKombuTransport

__all__ = ["KombuTransport", "PriorityKombuTransport"]
