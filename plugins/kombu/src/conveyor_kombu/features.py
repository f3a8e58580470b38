"""What the bridge does on each kombu transport it is tested on.

``tests/plugins/kombu/test_kombu_features.py`` probes every cell on the real
transport and fails when this table and what happened differ, and the plugin's
README carries :func:`render`'s output of it; ``conveyor plugins`` prints it too.
"""

from __future__ import annotations

FEATURES = ("priority", "delay", "dead letters", "acks_late")

#: A countdown or ETA on a transport without broker-side delays.
HELD = ("works: held by the worker up to worker_eta_horizon; beyond it CapabilityError: "
        "needs a transport with 'delays'")
NO_PRIORITY = ("not supported: CapabilityError: priority=5 needs a transport with "
               "'priorities' (Capabilities.priorities)")
LOST = "not supported: a killed worker's unacked message is never redelivered"
DEAD = "works: `<queue>.dead`"

#: kombu transport → feature → ``works`` (how, after a colon) or ``not supported``
#: with the error or loss a user meets.
TESTED: dict[str, dict[str, str]] = {
    "memory": {"priority": NO_PRIORITY, "delay": HELD, "dead letters": DEAD,
               "acks_late": LOST},
    "filesystem": {"priority": NO_PRIORITY, "delay": HELD, "dead letters": DEAD,
                   "acks_late": LOST},
    "redis": {"priority": "works: higher priority first", "delay": HELD,
              "dead letters": DEAD, "acks_late": "works: redelivered after visibility_timeout"},
}


def render(table: dict[str, dict[str, str]] = TESTED) -> str:
    """The table as Markdown (the README's copy)."""
    rows = ["| kombu transport | " + " | ".join(FEATURES) + " |",
            "|---" * (len(FEATURES) + 1) + "|"]
    for name, cells in table.items():
        rows.append(f"| `kombu+{name}://` | " + " | ".join(cells[f] for f in FEATURES) + " |")
    return "\n".join(rows)


def notes() -> list[str]:
    """One line per tested transport, for ``conveyor plugins``."""
    return [f"kombu+{name}://: " + "; ".join(f"{f} {cells[f].split(':')[0]}"
                                             for f in FEATURES)
            for name, cells in TESTED.items()]
