"""Celery protocol v2 messages: build them and parse them (docs/architecture.md,
"Wire format": headers, body, serializers, compression, times).

This is the hot path of every publish and every delivery, so it builds plain dicts in
the order Celery writes them and does nothing twice.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .exceptions import DecodeError
from .interfaces import Message

if TYPE_CHECKING:
    from .codecs import Codecs

UTC = dt.timezone.utc
_REPR_LIMIT = 1024
ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"


def refresh_origin() -> None:
    """Recompute ``origin`` after a fork (the pid changed)."""
    global ORIGIN
    ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"


def _repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT - 3] + "..."


def to_iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 as Celery writes it; a naive datetime stays naive (it means UTC)."""
    return value.isoformat() if value is not None else None


def from_iso(value: Any, name: str = "time") -> dt.datetime | None:
    """Parse an ``eta``/``expires`` header; naive values are UTC, ``Z`` is accepted."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        try:
            parsed = dt.datetime.fromisoformat(str(value))
        except ValueError as exc:
            raise DecodeError(f"Bad {name} header {value!r}: not ISO 8601") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


EMPTY_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def build_message(
    *,
    name: str,
    task_id: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    codecs: Codecs,
    serializer: str,
    compression: str | None = None,
    embed: Mapping[str, Any] | None = None,
    eta: dt.datetime | None = None,
    expires: dt.datetime | None = None,
    now: dt.datetime | None = None,
    **options: Any,
) -> Message:
    """A protocol v2 task message with Celery 5.7's headers, in its order.

    ``options`` are the remaining resolved execution options that reach the wire:
    ``retries``, ``time_limit``, ``soft_time_limit``, ``root_id``, ``parent_id``,
    ``group_id``, ``group_index``, ``shadow``, ``ignore_result``, ``headers``,
    ``priority``, ``reply_to``.
    """
    options["serializer"] = serializer
    options["compression"] = compression
    options.setdefault("ignore_result", False)
    return message_from_options(name, task_id, args, kwargs, codecs, options, embed,
                                eta, expires, now)


def message_from_options(name: str, task_id: str, args: Sequence[Any],
                         kwargs: Mapping[str, Any], codecs: Codecs,
                         opts: Mapping[str, Any], embed: Mapping[str, Any] | None,
                         eta: dt.datetime | None, expires: dt.datetime | None,
                         now: dt.datetime | None) -> Message:
    """:func:`build_message` from an already resolved options dict."""
    return Template(name, codecs, opts).build(task_id, args, kwargs, embed, eta,
                                              expires, now, opts)


class Template:
    """What every message built from one set of resolved options shares.

    The headers and properties are laid out once, in Celery's order, with the
    serializer and compressor looked up; :meth:`build` copies them and fills in what
    differs per message (id, times, group, parent, reprs, origin). perf: the publish
    path keeps one template per distinct set of options (``PublishPath.plan``), so a
    batch of similar calls builds each message from a copy instead of from scratch.
    """

    __slots__ = ("headers", "properties", "extra", "serializer", "compressor",
                 "time_limit", "soft_time_limit")

    def __init__(self, name: str, codecs: Codecs, opts: Mapping[str, Any]) -> None:
        get = opts.get
        self.serializer = codecs.serializer(opts["serializer"])
        compression = get("compression")
        self.compressor = codecs.compressor(compression) if compression else None
        self.time_limit = get("time_limit")
        self.soft_time_limit = get("soft_time_limit")
        h: dict[str, Any] = {
            "lang": "py",
            "task": name,
            "id": None,
            "shadow": get("shadow"),
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": None,
            "root_id": None,
            "parent_id": None,
            "argsrepr": None,
            "kwargsrepr": None,
            "origin": None,
            "ignore_result": get("ignore_result"),
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": None,
        }
        if self.compressor is not None:
            h["compression"] = self.compressor.content_type
        #: The ``headers`` option: applied last, so it may override any header.
        self.extra: Mapping[str, Any] | None = get("headers") or None
        if self.extra:
            h.update(self.extra)
        self.headers = h
        self.properties: dict[str, Any] = {
            "correlation_id": None,
            "reply_to": get("reply_to"),
            "delivery_mode": 2,
            "priority": get("priority"),
        }

    def build(self, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              embed: Mapping[str, Any] | None, eta: dt.datetime | None,
              expires: dt.datetime | None, now: dt.datetime | None,
              per_call: Mapping[str, Any] | None) -> Message:
        """One message; ``per_call`` gives ``group_id``, ``group_index``, ``retries``,
        ``root_id`` and ``parent_id`` when the call has them."""
        if type(args) is not tuple and not isinstance(args, (list, tuple)):
            raise TypeError(f"Task args must be a list or tuple, not {type(args).__name__}")
        if type(kwargs) is not dict and not isinstance(kwargs, Mapping):
            raise TypeError(f"Task kwargs must be a mapping, not {type(kwargs).__name__}")
        ser = self.serializer
        data = ser.dumps((args if isinstance(args, list) else list(args), kwargs,
                          embed if embed is not None else EMPTY_EMBED))
        if self.compressor is not None:
            data = self.compressor.compress(data)
        h = self.headers.copy()  # keeps Celery's key order; values set below
        h["id"] = task_id
        if eta is not None:
            h["eta"] = eta.isoformat()
        if expires is not None:
            h["expires"] = expires.isoformat()
        root_id = None
        if per_call is not None:
            get = per_call.get
            h["group"] = get("group_id")
            h["group_index"] = get("group_index")
            h["retries"] = get("retries") or 0
            root_id = get("root_id")
            h["parent_id"] = get("parent_id")
        h["timelimit"] = [self.time_limit, self.soft_time_limit]
        h["root_id"] = root_id or task_id
        h["argsrepr"] = "()" if type(args) is tuple and not args else _repr(args)
        h["kwargsrepr"] = "{}" if type(kwargs) is dict and not kwargs else _repr(kwargs)
        h["origin"] = ORIGIN
        h["stamps"] = {}
        if self.extra:
            h.update(self.extra)
        props = self.properties.copy()
        props["correlation_id"] = task_id
        if expires is not None:
            current = now or dt.datetime.now(UTC)
            aware = expires if expires.tzinfo is not None else expires.replace(tzinfo=UTC)
            props["expiration"] = str(max(0, int((aware - current).total_seconds() * 1000)))
        return Message(h, data, ser.content_type, ser.content_encoding, props)


@dataclass(slots=True)
class Request:
    """A parsed task message: what the worker needs to run it."""

    id: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    headers: dict[str, Any]
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    eta: dt.datetime | None = None
    expires: dt.datetime | None = None
    retries: int = 0
    time_limit: float | None = None
    soft_time_limit: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    ignore_result: bool | None = None
    priority: int | None = None
    reply_to: str | None = None
    delivery_info: dict[str, Any] = field(default_factory=dict)
    hostname: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Picklable, JSON-able form (for process pools and errback requests)."""
        out = {k: getattr(self, k) for k in self.__slots__}
        out["eta"] = to_iso(self.eta)
        out["expires"] = to_iso(self.expires)
        return out


def peek_ids(message: Message) -> tuple[str | None, str | None]:
    """The task id and name, if the headers carry them (for dead-lettering)."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    return headers.get("id"), headers.get("task")


def parse_message(message: Message, codecs: Codecs, accept: Sequence[str]) -> Request:
    """Decode a delivered message into a :class:`Request`, or raise ``DecodeError``."""
    h = message.headers
    if not isinstance(h, dict) or "task" not in h:
        raise DecodeError(
            "Not a protocol v2 task message (no 'task' header); protocol 1 messages "
            "are not supported: set task_protocol=2 on the sending Celery app."
        )
    if not h.get("id"):
        raise DecodeError("Task message without an 'id' header.")
    payload = codecs.loads(message.body, message.content_type, h.get("compression"),
                           accept)
    if not isinstance(payload, (list, tuple)) or len(payload) != 3:
        raise DecodeError(
            f"Task body must be [args, kwargs, embed]; got "
            f"{type(payload).__name__} of length {len(payload) if hasattr(payload, '__len__') else '?'}."
        )
    args, kwargs, embed = payload
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise DecodeError("Task body args must be a list and kwargs an object.")
    embed = embed or {}
    if not isinstance(embed, dict):
        raise DecodeError("Task body embed must be an object.")
    timelimit = h.get("timelimit") or (None, None)
    props = message.properties
    eta = h.get("eta")
    expires = h.get("expires")
    return Request(
        h["id"], h["task"], args if isinstance(args, list) else list(args), kwargs, h,
        embed.get("callbacks"), embed.get("errbacks"), embed.get("chain"),
        embed.get("chord"),
        from_iso(eta, "eta") if eta else None,
        from_iso(expires, "expires") if expires else None,
        h.get("retries") or 0, timelimit[0], timelimit[1],
        h.get("root_id"), h.get("parent_id"), h.get("group"), h.get("group_index"),
        h.get("ignore_result"), props.get("priority"), props.get("reply_to"),
    )
