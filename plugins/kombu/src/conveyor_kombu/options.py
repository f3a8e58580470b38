"""Which ``broker_transport_options`` keys a kombu transport reads.

kombu accepts any dict and silently ignores what it does not read, so a misspelt
``visiblity_timeout`` would change nothing. The bridge asks kombu itself which keys
the chosen transport knows: the channel's ``from_transport_options`` (kombu's own
declaration), the keys its module reads by name from ``transport_options``, the
connection's retry keys, and ``polling_interval`` for kombu's virtual transports.

Values are type-checked as every Conveyor transport checks them, where kombu's
default says what a key takes: a number where kombu's default is a number (kombu
would otherwise fail deep in its driver, or compare text with a number at the first
poll). kombu's flags are left alone: several take a flag or a text (Redis's
``fanout_prefix``).
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Mapping
from functools import cache
from typing import Any

from kombu.transport import virtual

from conveyor.exceptions import UnknownOptionError
from conveyor.interfaces import COMMON_OPTIONS, check_option_type
from conveyor.utils import did_you_mean

#: Read by ``kombu.Connection`` itself (its retry policy), whatever the transport.
CONNECTION_KEYS = frozenset({"max_retries", "interval_start", "interval_step",
                             "interval_max", "connect_retries_timeout"})
#: Numbers kombu's connection takes (its ``ensure_connection`` defaults, 1 where it
#: has none: only the kind matters).
CONNECTION_NUMBERS: Mapping[str, float] = {
    "max_retries": 1, "interval_start": 2, "interval_step": 2, "interval_max": 30,
    "connect_retries_timeout": 1}

_READ_BY_NAME = re.compile(r"transport_options(?:\.get\(|\[)\s*['\"]([\w-]+)['\"]")


@cache
def known_keys(transport_cls: type) -> frozenset[str]:
    """Every ``transport_options`` key kombu's ``transport_cls`` reads."""
    keys = set(CONNECTION_KEYS)
    keys.update(getattr(getattr(transport_cls, "Channel", None),
                        "from_transport_options", ()))
    if issubclass(transport_cls, virtual.Transport):
        keys.add("polling_interval")
    for klass in transport_cls.__mro__:
        module = sys.modules.get(klass.__module__)
        if module is None or not klass.__module__.startswith("kombu.transport"):
            continue
        try:
            keys.update(_READ_BY_NAME.findall(inspect.getsource(module)))
        except (OSError, TypeError):  # no source shipped: the declared keys stand
            pass
    return frozenset(keys)


def number_defaults(transport_cls: type) -> dict[str, float]:
    """Keys of ``transport_cls`` whose kombu default is a number, with it."""
    found: dict[str, float] = dict(CONNECTION_NUMBERS)
    channel = getattr(transport_cls, "Channel", None)
    for key in getattr(channel, "from_transport_options", ()):
        default = getattr(channel, key, None)
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            found[key] = default
    if issubclass(transport_cls, virtual.Transport):
        found["polling_interval"] = transport_cls.polling_interval or 1.0
    return found


def check(given: Mapping[str, Any], transport_cls: type, name: str) -> dict[str, Any]:
    """The options for kombu (``given`` without the core's own keys); an unknown key
    is an error naming the closest known one, a value of the wrong kind a
    ``ConfigurationError`` naming the key."""
    known = known_keys(transport_cls)
    for key in given:
        if key not in known and key not in COMMON_OPTIONS:
            raise UnknownOptionError(
                f"Unknown broker_transport_options key {key!r} for kombu's {name!r} "
                f"transport (conveyor-kombu passes only keys kombu reads)."
                f"{did_you_mean(key, known)} Known keys: {', '.join(sorted(known))}.")
    numbers = number_defaults(transport_cls)
    out = {}
    for key, value in given.items():
        if key in COMMON_OPTIONS:
            continue
        if key in numbers:
            check_option_type(f"kombu {name!r}", key, value, numbers[key])
            if isinstance(value, str):  # numeric text: kombu does arithmetic with it
                value = float(value)
                value = int(value) if value.is_integer() else value
        out[key] = value
    return out
