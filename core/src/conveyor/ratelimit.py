"""Celery's ``rate_limit``: how often one worker may start a task.

``"10/s"``, ``"100/m"``, ``"1000/h"`` or a bare number (per second), as Celery writes
them. A worker keeps one :class:`Throttle` per rate-limited task and gives each
message the next free start time; a message whose time has not come waits in the
worker's memory, not in a pool slot, so other tasks run meanwhile.
"""

from __future__ import annotations

from typing import Any

from .exceptions import ConfigurationError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(value: Any) -> float | None:
    """Starts per second for a rate limit, or None for none (``None``, ``0``, ``""``)."""
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str):
        count, _, unit = value.strip().partition("/")
        try:
            number = float(count)
        except ValueError:
            number = -1.0
        if number == 0:
            return None
        if number > 0 and (unit or "s") in _UNITS:
            return number / _UNITS[unit or "s"]
    raise ConfigurationError(
        f"Bad rate_limit {value!r}: write it as Celery does, '10/s', '100/m', '1000/h' "
        "or a number of tasks per second.")


class Throttle:
    """Start times spaced ``1/rate`` apart, handed out in order (no burst)."""

    __slots__ = ("interval", "next_free")

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_free = 0.0

    def reserve(self, now: float) -> float:
        """The start time of the next message (``now`` when one is due)."""
        slot = max(now, self.next_free)
        self.next_free = slot + self.interval
        return slot

    def give_back(self, slot: float) -> None:
        """Undo the latest :meth:`reserve` (its message went elsewhere)."""
        if self.next_free == slot + self.interval:
            self.next_free = slot
