"""Worker events for the page and the metrics (workers, throughput, failures).

Conveyor's core has no way to receive Celery's ``celeryev`` events yet (the
broadcast capability comes with remote control): until then the monitor shows
queues and dead letters, and the event-fed parts stay empty.
"""

from __future__ import annotations

import logging
from typing import Protocol

from conveyor import Conveyor

from .state import EventState

log = logging.getLogger("conveyor.monitor")


class Receiver(Protocol):
    def stop(self) -> None: ...


def start_receiver(app: Conveyor, state: EventState) -> Receiver | None:
    """Start receiving events; None (logged) while none can be received."""
    log.warning("Worker events cannot be received by this version: workers, "
                "throughput and failures stay empty.")
    return None
