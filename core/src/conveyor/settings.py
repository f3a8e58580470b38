"""App settings: Celery's names, strict keys, defaults in one table.

A misspelt setting is an error at configuration time ("did you mean …"), never a
silently ignored key: :class:`Settings` raises on construction, ``update`` and
assignment alike.
"""

from __future__ import annotations

import datetime as dt
import os
import zoneinfo
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from .exceptions import ConfigurationError, UnknownOptionError
from .utils import did_you_mean, mask_secrets

#: The embedded default used when no broker or backend is configured.
DEFAULT_URL = "sqlite:///conveyor.sqlite3"

DEFAULT_RETRY_POLICY: dict[str, Any] = {
    "max_retries": 3,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
    "retry_errors": None,
}

#: Every known setting and its default; docs/settings.md is rendered from this table.
DEFAULTS: dict[str, Any] = {
    "broker_url": None,
    "result_backend": None,
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": None,
    "task_compression": None,
    "result_compression": None,
    "task_routes": None,
    "task_routers": ["routes"],
    "task_default_queue": "celery",
    "task_default_exchange": "",
    "task_default_routing_key": None,
    "task_default_priority": None,
    "task_queue_max_priority": None,
    "task_default_queue_type": "classic",
    "task_create_missing_queue_type": "classic",
    "task_ignore_result": False,
    "task_track_started": False,
    "task_send_sent_event": False,
    "worker_send_task_events": False,
    "task_acks_late": False,
    "task_time_limit": None,
    "task_soft_time_limit": None,
    "task_default_rate_limit": None,
    "task_publish_retry": True,
    "task_publish_retry_policy": DEFAULT_RETRY_POLICY,
    "result_extended": False,
    "result_expires": 86400,
    "result_chord_expires": None,
    "task_chain_embed": "message",
    "broker_pool_limit": 10,
    "broker_transport_options": {},
    "broker_connection_timeout": 4.0,
    "worker_concurrency": None,
    "worker_prefetch_multiplier": 4,
    "worker_max_deliveries": 5,
    "task_message_max_size": 4 * 1024 * 1024,
    "worker_eta_horizon": 30.0,
    "worker_disable_rate_limits": False,
    "worker_max_tasks_per_child": None,
    "worker_max_memory_per_child": None,
    "worker_pool_restarts": False,
    "security_key": None,
    "security_key_password": None,
    "security_certificate": None,
    "security_cert_store": None,
    "security_digest": "sha256",
    "timezone": "UTC",
}

ENVIRONMENT = {
    "broker_url": "CONVEYOR_BROKER_URL",
    "result_backend": "CONVEYOR_RESULT_BACKEND",
}

#: What each setting does, for docs/settings.md (rendered by
#: :mod:`conveyor.settings_reference`); a test keeps its keys equal to DEFAULTS'.
DESCRIPTIONS: dict[str, str] = {
    "broker_url": "Where task messages go: a URL whose scheme names the transport plugin "
                  "(`redis://`, `sqlite:///`, `memory://`). Unset: "
                  f"`{DEFAULT_URL}` in the working directory.",
    "result_backend": "Where task states are stored: a URL whose scheme names the backend "
                      "plugin. Unset: the broker's URL when that scheme has a backend, "
                      "else the SQLite default.",
    "task_serializer": "The serializer of task bodies (`json`, `pickle`, `msgpack`, "
                       "`yaml`, `auth`, …).",
    "result_serializer": "The serializer of stored results; independent of the task's.",
    "accept_content": "Serializer names or content types a worker decodes; any other "
                      "message is dead-lettered.",
    "result_accept_content": "Content types accepted when reading results. Unset: "
                             "`accept_content`.",
    "task_compression": "Compression of task bodies (`zlib`, `bzip2`, `lzma`, `zstd`, "
                        "`brotli`, `lz4`); unset: none.",
    "result_compression": "Compression of stored results; unset: none.",
    "task_routes": "Celery's routes for the `routes` router: a dict of task name or glob "
                   "to options, a callable, or a list of them.",
    "task_routers": "The router plugins asked for options, in order "
                    "(entry-point group `conveyor.routers`).",
    "task_default_queue": "The queue of a task nothing routes elsewhere.",
    "task_default_exchange": "The exchange of a task nothing routes elsewhere "
                             "(`\"\"`: the queue name is the routing key).",
    "task_default_routing_key": "The routing key of a task nothing routes elsewhere. "
                                "Unset: the queue name.",
    "task_default_priority": "The priority of a task that sets none "
                             "(0–255, larger runs first; unset: lowest).",
    "task_queue_max_priority": "The highest priority level (an int 1–255): a larger "
                               "priority counts as this one on every transport, as on "
                               "a RabbitMQ priority queue, which is declared with it "
                               "(`x-max-priority`).",
    "task_default_queue_type": "RabbitMQ: 'classic' or 'quorum' (replicated) for the "
                               "default queue, as in Celery.",
    "task_create_missing_queue_type": "RabbitMQ: 'classic' or 'quorum' for every other "
                                      "queue, as in Celery.",
    "task_ignore_result": "Store no result unless a task or call asks for one.",
    "task_track_started": "Store STARTED when a worker begins a task.",
    "task_send_sent_event": "Send Celery's `task-sent` event when a task is published "
                            "(events go to the `celeryev` exchange, as Celery's).",
    "worker_send_task_events": "Workers send Celery's task and worker events "
                               "(`task-received` … `task-succeeded`, `worker-heartbeat`; "
                               "`conveyor worker -E`), for `conveyor monitor` and Flower.",
    "task_acks_late": "Acknowledge a message after its task ran instead of before, so a "
                      "worker that dies mid-task leaves it to be redelivered.",
    "task_time_limit": "Seconds after which a running task is killed "
                       "(`time_limit` of a task or call overrides it). On every pool: "
                       "`threads` and `solo` run such a task in a child process.",
    "task_soft_time_limit": "Seconds after which `SoftTimeLimitExceeded` is raised inside "
                            "a running task, on every pool.",
    "task_default_rate_limit": "The `rate_limit` of tasks that set none: `\"10/s\"`, "
                               "`\"100/m\"`, `\"1000/h\"` or a number per second, "
                               "per worker. Unset: none.",
    "task_publish_retry": "Retry a publish that fails with a connection error.",
    "task_publish_retry_policy": "How publishes are retried: `max_retries`, "
                                 "`interval_start`, `interval_step`, `interval_max` "
                                 "(seconds), `retry_errors`.",
    "result_extended": "Also store the task's name, args, kwargs, worker, retries and "
                       "queue with its result.",
    "result_expires": "Seconds a stored result is kept; `0` or `None`: for ever.",
    "result_chord_expires": "Seconds a chord's join counters are kept after their last "
                            "write. Unset: `result_expires`.",
    "task_chain_embed": "How a chain's later steps travel: `message` (Celery's format: "
                        "each message carries the rest of the chain, O(N²) bytes for "
                        "N steps) or `backend` (each step stored once in the result "
                        "backend, messages name the next: O(N); Conveyor workers only).",
    "broker_pool_limit": "Most publishing connections an app keeps open.",
    "broker_transport_options": "Options of the transport plugin (its README lists them); "
                                "an unknown one is an error naming the plugin's.",
    "broker_connection_timeout": "Seconds to wait for a broker or backend connection "
                                 "(on SQLite: for the write lock, per attempt).",
    "worker_concurrency": "Tasks a worker runs at once (`-c`). Unset: the number of CPUs.",
    "worker_prefetch_multiplier": "A worker holds up to this times its concurrency of "
                                  "messages it has not started.",
    "worker_max_deliveries": "A message delivered this many times without being "
                             "acknowledged is dead-lettered.",
    "task_message_max_size": "Most bytes of an encoded message body (serialized and "
                             "compressed): `apply_async` refuses a larger one, a worker "
                             "dead-letters it. `None`: no limit. Bulk data belongs in "
                             "storage, its key in the task.",
    "worker_eta_horizon": "Seconds ahead a worker holds an ETA task in memory; later ones "
                          "are parked on the broker (at most half the visibility timeout).",
    "worker_disable_rate_limits": "Ignore every `rate_limit` (a worker starts tasks as "
                                  "fast as its pool frees).",
    "worker_max_tasks_per_child": "Replace a `processes` pool child after it ran this "
                                  "many tasks (`--max-tasks-per-child`). Unset: never.",
    "worker_max_memory_per_child": "Replace a `processes` pool child once its resident "
                                   "memory passed this many KiB, checked after each task "
                                   "(`--max-memory-per-child`). Unset: never.",
    "worker_pool_restarts": "Let the `pool_restart` remote control command import or "
                            "reload task modules in a worker and replace its `processes` "
                            "pool children (Celery's name and default: off).",
    "security_key": "Path of the PEM RSA private key the `auth` serializer signs with.",
    "security_key_password": "Password of an encrypted `security_key`.",
    "security_certificate": "Path of the PEM certificate of `security_key`.",
    "security_cert_store": "Directory or glob of the PEM certificates the `auth` "
                           "serializer trusts.",
    "security_digest": "The digest of `auth` signatures (`sha256`, `sha512`, …).",
    "timezone": "The IANA zone (`Europe/Paris`) in which Conveyor writes the times it "
                "computes for `countdown` and numeric `expires` (the same instant, that "
                "zone's offset, as Celery writes them); a naive `eta` means UTC. "
                "Checked when set.",
}


def _check_timezone(value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"timezone must be a time zone name such as "
                                 f"'Europe/Paris', not {value!r}.")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            f"timezone={value!r} is not a time zone the zoneinfo database knows."
            f"{did_you_mean(value, zoneinfo.available_timezones())} Use an IANA name "
            "such as 'Europe/Paris' (install the tzdata package where the system has no "
            "zone database)."
        ) from exc


def _check_max_priority(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        raise ConfigurationError(
            f"task_queue_max_priority must be None or an int 1–255, not {value!r}.")


def _check_chain_embed(value: Any) -> None:
    if value not in ("message", "backend"):
        raise ConfigurationError(
            f"task_chain_embed must be 'message' (Celery's format, the default) or "
            f"'backend' (small messages, Conveyor workers only), not {value!r}.")


def _queue_type(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value not in ("classic", "quorum"):
            raise ConfigurationError(f"{name} must be 'classic' or 'quorum', not {value!r}.")
    return check


#: Values checked when they are set (a wrong one is an error at configuration time).
CHECKS: dict[str, Callable[[Any], None]] = {
    "timezone": _check_timezone,
    "task_chain_embed": _check_chain_embed,
    "task_queue_max_priority": _check_max_priority,
    "task_default_queue_type": _queue_type("task_default_queue_type"),
    "task_create_missing_queue_type": _queue_type("task_create_missing_queue_type"),
}


def time_zone(conf: Settings) -> dt.tzinfo:
    """The zone of ``timezone``, in which the times Conveyor computes (``countdown``,
    ``expires`` in seconds) are written, as Celery writes them: the same instant, the
    app's offset. A naive ``eta`` you pass still means UTC."""
    zone: dt.tzinfo = conf.derived("timezone", _zone)
    return zone


def _zone(conf: Settings) -> dt.tzinfo:
    name = conf.timezone
    return dt.timezone.utc if name == "UTC" else zoneinfo.ZoneInfo(name)


def check_name(name: str) -> None:
    """Raise :class:`UnknownOptionError` for a setting name that does not exist."""
    if name not in DEFAULTS:
        raise UnknownOptionError(
            f"Unknown setting {name!r}.{did_you_mean(name, DEFAULTS)} "
            "Known settings are listed in docs/settings.md."
        )


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


class Settings(MutableMapping[str, Any]):
    """The app's configuration; read as ``conf.name`` or ``conf["name"]``."""

    __slots__ = ("_values", "_frozen_listeners", "version", "_derived")

    def __init__(self, values: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        object.__setattr__(self, "_values", {k: _copy(v) for k, v in DEFAULTS.items()})
        object.__setattr__(self, "_frozen_listeners", [])
        #: Bumped on every change, so derived caches know when to recompute.
        object.__setattr__(self, "version", 0)
        object.__setattr__(self, "_derived", {})
        for name, env in ENVIRONMENT.items():
            if os.environ.get(env):
                self._values[name] = os.environ[env]
        self.update(values or {}, **kwargs)

    # Mapping protocol -------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            check_name(name)
            raise

    def __setitem__(self, name: str, value: Any) -> None:
        check_name(name)
        check_value = CHECKS.get(name)
        if check_value is not None:
            check_value(value)
        self._values[name] = value
        object.__setattr__(self, "version", self.version + 1)
        self._derived.clear()
        for listener in self._frozen_listeners:
            listener(name)

    def __delitem__(self, name: str) -> None:
        self[name] = _copy(DEFAULTS[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    # Attribute access -------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(
                f"Unknown setting {name!r}.{did_you_mean(name, DEFAULTS)}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Set several settings; every name is checked before any is applied."""
        merged: dict[str, Any] = {}
        for arg in args:
            merged.update(arg)
        merged.update(kwargs)
        for name in merged:
            check_name(name)
        for name, value in merged.items():
            self[name] = value

    def derived(self, key: str, compute: Any) -> Any:
        """``compute(self)``, memoized until the next change of any setting."""
        try:
            return self._derived[key]
        except KeyError:
            value = self._derived[key] = compute(self)
            return value

    def on_change(self, listener: Any) -> None:
        """Call ``listener(name)`` after every assignment (used to drop caches)."""
        self._frozen_listeners.append(listener)

    def __repr__(self) -> str:
        changed = {k: mask_secrets(v, k) for k, v in self._values.items()
                   if v != DEFAULTS[k]}
        return f"<Settings {changed!r}>"
