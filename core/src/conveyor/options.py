"""The execution-option resolution order: one function, one tuple of layers.

For every option: the call's own options → the signature's options → the task's
attributes → the router → app settings → built-in default. The first layer that
gives a value other than ``None`` wins. An unknown option name is an error naming it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from .utils import did_you_mean
from .exceptions import ConfigurationError, UnknownOptionError
from .settings import DEFAULT_RETRY_POLICY

if TYPE_CHECKING:
    from .canvas import Signature
    from .connection import Publisher


class RetryPolicy(TypedDict, total=False):
    """``retry_policy``: how often and how fast a publish is retried."""

    max_retries: int | None
    interval_start: float
    interval_step: float
    interval_max: float
    retry_errors: tuple[type[BaseException], ...] | None


class ExecutionOptions(TypedDict, total=False):
    """Every execution option of the calling API, typed.

    ``**options: Unpack[ExecutionOptions]`` on ``apply_async``, ``send_task``,
    ``signature``, ``.set()`` and their ``a…`` twins makes a misspelt option or a
    value of the wrong type a type-checker error; :func:`check` still raises
    :class:`UnknownOptionError` at run time for callers without one. ``None`` is
    accepted everywhere: it means "not given here", so the next layer of the
    resolution order decides. The keys are those of :data:`KNOWN`.
    """

    countdown: float | None
    eta: dt.datetime | None
    expires: float | dt.datetime | None
    task_id: str | None
    link: Signature[Any] | Sequence[Signature[Any]] | None
    link_error: Signature[Any] | Sequence[Signature[Any]] | None
    retry: bool | None
    retry_policy: RetryPolicy | None
    serializer: str | None
    compression: str | None
    queue: str | None
    exchange: str | None
    routing_key: str | None
    priority: int | None
    ignore_result: bool | None
    headers: Mapping[str, Any] | None
    publisher: Publisher | None
    shadow: str | None
    time_limit: float | None
    soft_time_limit: float | None
    # Set by canvas and the worker (a child's lineage, a group member's place, the
    # rest of a chain, a chord's body); accepted from callers as Celery accepts them.
    parent_id: str | None
    root_id: str | None
    group_id: str | None
    group_index: int | None
    chain: Sequence[Mapping[str, Any]] | None
    chord: Mapping[str, Any] | None
    reply_to: str | None
    retries: int | None
    replaced_task_nesting: int | None
    # Canvas stamping: the names of the stamps these options carry (each one's value
    # is the option of that name, as in Celery; see ``Signature.stamp``).
    stamped_headers: Sequence[str] | None


#: Public execution options (docs/architecture.md, "The core") and their built-in defaults.
DEFAULTS: dict[str, Any] = {
    "countdown": None,
    "eta": None,
    "expires": None,
    "task_id": None,
    "link": None,
    "link_error": None,
    "retry": True,
    "retry_policy": DEFAULT_RETRY_POLICY,
    "serializer": "json",
    "compression": None,
    "queue": "celery",
    "exchange": "",
    "routing_key": None,
    "priority": None,
    "ignore_result": False,
    "headers": None,
    "publisher": None,
    "shadow": None,
    "time_limit": None,
    "soft_time_limit": None,
    "stamped_headers": None,
}

#: Options set by canvas and the worker (children, retries); accepted, not documented.
INTERNAL = frozenset({
    "parent_id", "root_id", "group_id", "group_index", "chain", "chord", "reply_to",
    "retries", "replaced_task_nesting",
})

KNOWN = frozenset(DEFAULTS) | INTERNAL

#: Options only the call and the signature give, that no other option depends on and
#: that resolution passes through unchecked: they vary per call (a group's index, a
#: task id), so :func:`split` keeps them out of a cache key.
PER_CALL = frozenset({
    "task_id", "publisher", "parent_id", "root_id", "group_id", "group_index", "retries",
})

#: Value types a cache key may hold: immutable, and equal only to values that resolve
#: and serialize the same way once the type is part of the key (``1`` vs ``1.0``).
#: Floats are keyed by their repr: ``0.0 == -0.0``, but they print apart.
_KEYABLE = frozenset({str, int, bool, type(None)})

#: Options a task class may set as attributes (``Task.serializer`` …).
TASK_ATTRIBUTES = (
    "serializer", "compression", "queue", "exchange", "routing_key", "priority",
    "ignore_result", "time_limit", "soft_time_limit", "expires", "shadow",
    "retry_policy",
)

#: Option → app setting consulted when no earlier layer gives a value.
SETTINGS: dict[str, str] = {
    "serializer": "task_serializer",
    "compression": "task_compression",
    "queue": "task_default_queue",
    "exchange": "task_default_exchange",
    "routing_key": "task_default_routing_key",
    "priority": "task_default_priority",
    "ignore_result": "task_ignore_result",
    "retry": "task_publish_retry",
    "retry_policy": "task_publish_retry_policy",
    "time_limit": "task_time_limit",
    "soft_time_limit": "task_soft_time_limit",
}

RETRY_POLICY_KEYS = frozenset(DEFAULT_RETRY_POLICY)

Router = Callable[[Mapping[str, Any]], Mapping[str, Any] | None]


def stamp_names(options: Mapping[str, Any]) -> list[str]:
    """The names of the stamps ``options`` carry (its ``stamped_headers``), in order.

    A stamp's value is the option of its name (Celery's layout:
    ``apply_async(stamped_headers=["tenant"], tenant="acme")``), so those names are
    options too, for these options only.
    """
    stamped = options.get("stamped_headers")
    if not stamped:
        return []
    if isinstance(stamped, str) or not isinstance(stamped, Sequence):
        raise ConfigurationError(
            f"stamped_headers must be a list of stamp names, not {stamped!r}.")
    for name in stamped:
        if not isinstance(name, str):
            raise ConfigurationError(f"A stamp's name must be a str, not {name!r}.")
        if name in KNOWN:
            raise ConfigurationError(
                f"A stamp can't be named {name!r}: that is an execution option. "
                "Choose another name.")
    return list(dict.fromkeys(stamped))


def known(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` without the names that are neither options nor its stamps (a
    newer sender's options, read off the wire)."""
    stamped = options.get("stamped_headers")
    names = set(stamp_names(options)) if stamped else ()
    return {k: v for k, v in options.items() if k in KNOWN or k in names}


def check(options: Mapping[str, Any], where: str = "apply_async") -> None:
    """Raise :class:`UnknownOptionError` (a TypeError) for an unknown option name."""
    stamped: Any = None
    for name in options:
        if name not in KNOWN:
            if stamped is None:
                stamped = set(stamp_names(options))
            if name in stamped:
                continue
            raise UnknownOptionError(
                f"{where}() got an unknown execution option {name!r}."
                f"{did_you_mean(name, DEFAULTS)} Known options: "
                f"{', '.join(sorted(DEFAULTS))}."
            )


def split(options: Mapping[str, Any]
          ) -> tuple[tuple[Any, ...] | None, dict[str, Any] | None]:
    """A layer of options as a hashable key, and its :data:`PER_CALL` values.

    The key is None when a value cannot key a cache (a dict, a list, a datetime, a
    signature, any object): the caller then resolves those options from scratch.
    The per-call dict holds only the values that are not None (None when there are
    none), as :func:`resolve` would keep them.
    """
    if not options:
        return (), None
    key: list[Any] = []
    per: dict[str, Any] | None = None
    for name, value in options.items():
        if name in PER_CALL:
            if value is not None:
                if per is None:
                    per = {}
                per[name] = value
        elif type(value) in _KEYABLE:
            key += (name, type(value), value)
        elif type(value) is float:
            key += (name, float, repr(value))
        else:
            return None, None
    return tuple(key), per


def _settings_layer(conf: Mapping[str, Any]) -> dict[str, Any]:
    base = dict(DEFAULTS)
    for name, setting in SETTINGS.items():
        value = conf[setting]
        if value is not None:
            base[name] = value
    if base["retry_policy"] == DEFAULT_RETRY_POLICY:
        base["retry_policy"] = DEFAULT_RETRY_POLICY  # the identity skips validate()
    return base


def _base(conf: Mapping[str, Any]) -> dict[str, Any]:
    """Settings layer over built-in defaults, cached until a setting changes."""
    derived = getattr(conf, "derived", None)
    if derived is None:
        return _settings_layer(conf)
    return derived("options.base", _settings_layer)  # type: ignore[no-any-return]


def _given(layer: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in layer.items() if v is not None}


def resolve(
    call: Mapping[str, Any],
    signature: Mapping[str, Any],
    task: Any,
    router: Router | None,
    conf: Mapping[str, Any],
) -> dict[str, Any]:
    """Apply the layers in order and return every option with its value.

    ``router`` receives the options resolved so far (call, signature, task) and
    returns a dict of options, or None.
    """
    merged: dict[str, Any] = {}
    if task is not None:
        defaults = getattr(task, "execution_defaults", None)
        if defaults is not None:
            merged.update(defaults())
        else:
            for name in TASK_ATTRIBUTES:
                value = getattr(task, name, None)
                if value is not None:
                    merged[name] = value
    if signature:
        check(signature, "signature")
        merged.update(_given(signature))
    if call:
        check(call)
        merged.update(_given(call))
    out = dict(_base(conf))
    if router is not None:
        routed = router(merged)
        if routed:
            check(routed, "router")
            out.update(_given(routed))
    out.update(merged)
    if out["priority"] is not None or out["countdown"] is not None \
            or out["retry_policy"] is not DEFAULT_RETRY_POLICY:
        validate(out, conf["task_queue_max_priority"])
    return out


def validate(options: dict[str, Any], max_priority: int | None = None) -> None:
    """Check values that would otherwise fail later, far from the call;
    ``max_priority`` is ``task_queue_max_priority``."""
    priority = options.get("priority")
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ConfigurationError(f"priority must be an int 0–255, not {priority!r}.")
        if not 0 <= priority <= 255:
            raise ConfigurationError(f"priority {priority} is outside 0–255.")
        if max_priority is not None and priority > max_priority:
            # As on a RabbitMQ priority queue: above the maximum counts as the maximum,
            # on every transport (one meaning of priority everywhere).
            options["priority"] = max_priority
    if options.get("countdown") is not None and options.get("eta") is not None:
        raise ConfigurationError("Give countdown or eta, not both.")
    policy = options.get("retry_policy")
    if policy is not DEFAULT_RETRY_POLICY and isinstance(policy, Mapping):
        unknown = set(policy) - RETRY_POLICY_KEYS
        if unknown:
            name = sorted(unknown)[0]
            raise UnknownOptionError(
                f"Unknown retry_policy key {name!r}.{did_you_mean(name, RETRY_POLICY_KEYS)}"
            )


def due_times(options: Mapping[str, Any], now: dt.datetime
              ) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``eta`` and ``expires`` as datetimes (aware; a naive eta means UTC)."""
    eta = options.get("eta")
    countdown = options.get("countdown")
    if countdown is not None:
        eta = now + dt.timedelta(seconds=float(countdown))
    elif eta is not None:
        if not isinstance(eta, dt.datetime):
            raise ConfigurationError(f"eta must be a datetime, not {eta!r}.")
    expires = options.get("expires")
    if expires is not None and not isinstance(expires, dt.datetime):
        if isinstance(expires, bool) or not isinstance(expires, (int, float)):
            raise ConfigurationError(
                f"expires must be seconds or a datetime, not {expires!r}.")
        expires = now + dt.timedelta(seconds=float(expires))
    return eta, expires


def eta_horizon(conf: Any, visibility_timeout: float | None) -> float:
    """How far ahead a worker holds an ETA in memory (``worker_eta_horizon``).

    With a lease it is at most half the visibility timeout, so a held message is
    parked broker-side before its lease could lapse.
    """
    horizon = float(conf.worker_eta_horizon)
    if visibility_timeout:
        horizon = min(horizon, visibility_timeout / 2)
    return horizon

