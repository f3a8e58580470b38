"""Key names and priority mapping: kombu's Redis layout
(docs/architecture.md, "Redis broker").

Conveyor's priority means "higher runs first" (0–255, ``None`` = lowest); kombu's
Redis lists mean the opposite (wire 0 is served first). The mapping lives here and
nowhere else:

* level = min(priority, 9), ``None`` → 0; **wire = 9 − level**;
* the wire value is clamped to 0–9 and rounded *down* to a step of
  ``priority_steps`` (default ``[0, 3, 6, 9]``); step 0 is the plain list ``q``,
  step *s* is ``q + sep + str(s)`` (default sep ``"\\x06\\x16"``);
* lists are polled step by step (all queues at step 0, then at step 3, …), so an
  unprioritised Conveyor message (wire 9) waits behind everything, as it would for a
  Celery worker, and a Celery client's priority 0 is the most urgent on both.

Reading maps back: Conveyor priority = 9 − clamp(wire), a missing wire value being 0.
Every key, including Conveyor's own, carries ``global_keyprefix``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from conveyor.exceptions import ConfigurationError

MAX_WIRE = 9


def to_wire(priority: int | None) -> int:
    """kombu's wire priority for a Conveyor priority."""
    if priority is None:
        return MAX_WIRE
    return MAX_WIRE - min(int(priority), MAX_WIRE)


def clamp_wire(value: Any) -> int:
    """A wire priority as kombu reads it: an int in 0–9, 0 when missing or bad."""
    try:
        return max(0, min(int(value), MAX_WIRE))
    except (TypeError, ValueError):
        return 0


def from_wire(value: Any) -> int:
    """The Conveyor priority (higher first) of a message read with wire ``value``."""
    return MAX_WIRE - clamp_wire(value)


class Layout:
    """Every key name Conveyor and kombu share, for one prefix/sep/steps setting."""

    def __init__(self, prefix: str = "", sep: str = "\x06\x16",
                 steps: Sequence[int] = (0, 3, 6, 9)) -> None:
        steps = list(steps)
        if (not steps or any(not isinstance(s, int) or isinstance(s, bool) for s in steps)
                or steps != sorted(set(steps)) or steps[0] != 0 or steps[-1] > MAX_WIRE):
            raise ConfigurationError(
                f"broker_transport_options['priority_steps'] must be sorted distinct "
                f"ints from 0 to 9 starting at 0 (kombu's default is [0, 3, 6, 9]); "
                f"got {steps!r}. Use the same value as your Celery workers."
            )
        if not isinstance(sep, str) or not sep:
            raise ConfigurationError(
                f"broker_transport_options['sep'] must be a non-empty string; got {sep!r}."
            )
        self.prefix, self.sep, self.steps = prefix or "", sep, steps
        p = self.prefix
        self.unacked = p + "unacked"
        self.unacked_index = p + "unacked_index"
        self.unacked_mutex = p + "unacked_mutex"
        self.delayed = p + "_conveyor.delayed"
        self.deliveries = p + "_conveyor.deliveries"
        self.dead_queues = p + "_conveyor.dead"

    def step_of(self, wire: Any) -> int:
        """The step list a wire priority lands in (kombu rounds down)."""
        return self.steps[max(0, bisect_right(self.steps, clamp_wire(wire)) - 1)]

    def list_for(self, queue: str, wire: Any) -> str:
        """The (prefixed) list key of ``queue`` for a wire priority."""
        step = self.step_of(wire)
        return f"{self.prefix}{queue}{self.sep}{step}" if step else self.prefix + queue

    def lists(self, queue: str) -> list[str]:
        """All step lists of a queue, most urgent first."""
        return [f"{self.prefix}{queue}{self.sep}{s}" if s else self.prefix + queue
                for s in self.steps]

    def poll_order(self, queues: Sequence[str]) -> tuple[list[str], list[str]]:
        """Keys in kombu's BRPOP order and the queue each key belongs to."""
        keys: list[str] = []
        names: list[str] = []
        for step in self.steps:
            for q in queues:
                keys.append(f"{self.prefix}{q}{self.sep}{step}" if step else self.prefix + q)
                names.append(q)
        return keys, names

    def binding(self, exchange: str) -> str:
        return f"{self.prefix}_kombu.binding.{exchange}"

    def binding_permanent(self, exchange: str) -> str:
        return f"{self.prefix}_kombu.binding_permanent.{exchange}"

    def binding_member(self, routing_key: str, queue: str, pattern: str = "") -> str:
        return f"{routing_key}{self.sep}{pattern}{self.sep}{queue}"

    def dead(self, queue: str) -> str:
        return f"{self.prefix}_conveyor.dead.{queue}"
