"""Celery protocol v2 messages: build them and parse them (docs/architecture.md,
"Wire format": headers, body, serializers, compression, times).

This is the hot path of every publish and every delivery, so it builds plain dicts in
the order Celery writes them and does nothing twice.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .exceptions import DecodeError
from .interfaces import Message
from .options import stamp_names

if TYPE_CHECKING:
    from .codecs import Codecs

UTC = dt.timezone.utc
_REPR_LIMIT = 1024
ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
#: The ``lang`` header, and ``argsrepr``/``kwargsrepr`` of a call without arguments:
#: one object each, so a template can tell them apart from other values by identity.
LANG = "py"
NO_ARGS = "()"
NO_KWARGS = "{}"


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


class JSONStyle:
    """How a transport writes JSON: its separators and whether it escapes non-ASCII
    text. :data:`KOMBU_JSON` is ``json.dumps``' defaults, as kombu writes envelopes.

    perf: ``json.dumps`` makes a new C encoder object for every call, a fifth of the
    cost of encoding a message's headers; :meth:`encode` uses one made once. The
    output is identical. It skips the circular-reference check and falls back to the
    checked encoder only when a structure turns out to nest too deeply (which then
    raises ``ValueError: Circular reference detected`` as ``json.dumps`` would).
    """

    __slots__ = ("item", "key", "ascii", "string", "_encode", "_checked")

    def __init__(self, item: str = ", ", key: str = ": ", *, ascii: bool = True) -> None:
        self.item, self.key, self.ascii = item, key, ascii
        #: One string as JSON text, quotes included.
        self.string: Callable[[str], str] = (
            json.encoder.encode_basestring_ascii if ascii
            else json.encoder.encode_basestring)
        checked = json.JSONEncoder(separators=(item, key), ensure_ascii=ascii)
        self._checked = checked.encode
        make = getattr(json.encoder, "c_make_encoder", None)
        self._encode: Callable[[Any], str] | None = None
        if make is not None:
            encoder = make(None, checked.default, self.string, None, key, item, False,
                           False, True)
            join = "".join
            self._encode = lambda obj: join(encoder(obj, 0))

    def encode(self, obj: Any) -> str:
        """``obj`` as JSON text in this style."""
        if self._encode is None:  # no C accelerator (PyPy)
            return self._checked(obj)
        try:
            return self._encode(obj)
        except RecursionError:
            return self._checked(obj)


#: ``json.dumps`` with its defaults: how kombu writes its Redis envelopes.
KOMBU_JSON = JSONStyle()


def headers_json(message: Message, style: JSONStyle = KOMBU_JSON,
                 ident: str | None = None) -> str:
    """``message.headers`` as JSON text, the same text ``style.encode`` writes;
    ``ident``: the task id's text in ``style``, when the caller has it already.

    perf: a message the core built whose headers nobody has read yet (a
    :class:`BuiltMessage`: they are laid out when first read, so they are still as
    built) is written from text pieces laid out once per template and style, around
    its own values: a few string joins instead of building and encoding twenty keys.
    Anything else (headers a hook has read or edited, a message read from a broker)
    is encoded as it is.
    """
    if type(message) is BuiltMessage and message.laid is None:
        template = message.template
        laid: _HeadersText = template.texts.get(style) or template.lay_out(style)
        return laid.write(message.values, ident)
    return style.encode(message.headers)


def usual(message: Message) -> tuple[Any, ...] | None:
    """The values of a core-built *usual* message whose headers nobody has read
    (its id, ``argsrepr``, ``kwargsrepr`` and ``origin``: no eta, expiry, group,
    retries or parent), for :func:`headers_layout`; None for any other message."""
    if type(message) is BuiltMessage and message.laid is None \
            and len(values := message.values) == 4:
        return values
    return None


def headers_layout(template: Template, style: JSONStyle = KOMBU_JSON,
                   origin: str = "") -> tuple[str, str, str, str, str, str, str]:
    """The headers text of a usual message (:func:`usual`) built from ``template``
    with ``origin``, in ``style``, as the text around its own values: ``(head,
    between, before_args, between_reprs, tail, no_args, no_kwargs)``, where
    ``head + ident + between + ident + before_args + args + between_reprs + kwargs
    + tail`` is what :func:`headers_json` writes (``ident``: the id's text in
    ``style``; ``args``/``kwargs``: its reprs' texts, or ``no_args``/``no_kwargs``
    when they are :data:`NO_ARGS`/:data:`NO_KWARGS`).

    Why here: the headers' layout is the core's; a transport writing many messages
    of one template puts its own envelope around these once per batch, and then
    writes each message with one string join and no call (perf: see the Redis
    transport's ``commands``).
    """
    laid: _HeadersText = template.texts.get(style) or template.lay_out(style)
    p = laid.pieces
    return (p[0], laid.calm, laid.calm_parent, p[9], f"{p[10]}{style.string(origin)}{p[11]}",
            laid.no_args, laid.no_kwargs)


_NO_KEYS: frozenset[str] = frozenset()


def properties_json(message: Message, style: JSONStyle = KOMBU_JSON,
                    ident: str | None = None, *, omit: frozenset[str] = _NO_KEYS,
                    more: str = "") -> str:
    """``message.properties`` as JSON text in ``style``: the same text
    ``style.encode`` writes for them, less the keys in ``omit`` (those a transport
    writes itself, such as its own ``priority``), with ``more`` last: further members
    the caller has as text in ``style`` already (``'"a": 1, "b": 2'``).
    ``ident``: the task id's text in ``style``, when the caller has it already.

    Why here: the properties' layout is the core's (see :attr:`BuiltMessage.props`),
    so a transport that writes them as text asks for it rather than spelling it out.
    perf: a core-built message whose properties nobody has read is written from text
    laid out once per template, style and ``omit`` (:func:`properties_layout`)
    around its id, without making the dict.
    """
    if type(message) is BuiltMessage and message.props is None \
            and "correlation_id" not in omit:
        template = message.template
        laid = template.props_texts.get((style, omit)) \
            or properties_layout(template, style, omit)
        if ident is None:
            cid = message.values[0]
            ident = style.string(cid) if type(cid) is str else style.encode(cid)
        if more:
            return f"{laid[0]}{ident}{laid[1]}{style.item}{more}}}"
        return f"{laid[0]}{ident}{laid[1]}}}"
    props = message.properties
    if omit and not omit.isdisjoint(props):
        props = {k: v for k, v in props.items() if k not in omit}
    text = style.encode(props)
    if not more:
        return text
    return f"{text[:-1]}{style.item}{more}}}" if props else f"{{{more}}}"


def properties_layout(template: Template, style: JSONStyle = KOMBU_JSON,
                      omit: frozenset[str] = _NO_KEYS) -> tuple[str, str]:
    """The properties text of a message built from ``template`` whose properties
    nobody has read, in ``style`` and less the keys in ``omit``, as the text before
    its task id's and the text after it, open: ``head + ident + tail + "}"`` is the
    whole (what :func:`properties_json` writes). Laid out once per template, style
    and ``omit``; a transport may put the two around its own text (its own members
    after ``tail``, each preceded by ``style.item``).

    ``omit`` cannot hold ``correlation_id`` (there would be no id to write around):
    :func:`properties_json` encodes such a message's properties as they are.
    """
    if "correlation_id" in omit:
        raise ValueError("properties_layout lays the properties out around the task "
                         "id: omit cannot hold 'correlation_id'; use properties_json.")
    # As BuiltMessage.properties lays them out: the id first, then the template's.
    values = {"reply_to": template.reply_to, "delivery_mode": 2,
              "priority": template.priority}
    head = f"{{{style.string('correlation_id')}{style.key}"
    tail = "".join(f"{style.item}{style.string(key)}{style.key}{style.encode(value)}"
                   for key, value in values.items() if key not in omit)
    laid = template.props_texts[(style, omit)] = (head, tail)
    return laid


#: The values :meth:`Template.build` gives each message (:attr:`BuiltMessage.values`):
#: the headers they go in, in Celery's order.
_VALUES = ("id", "eta", "expires", "group", "group_index", "retries", "root_id",
           "parent_id", "argsrepr", "kwargsrepr", "origin")
#: Per-call options that put a message in a family (group, parent, retry).
_FAMILY = frozenset({"group_id", "group_index", "retries", "root_id", "parent_id"})


def _all_values(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """``values`` as ``_VALUES`` lists them: the usual message's four (id, argsrepr,
    kwargsrepr, origin; see :meth:`Template.build`) spelled out."""
    if len(values) != 4:
        return values
    id_, args, kwargs, origin = values
    return (id_, None, None, None, None, 0, id_, None, args, kwargs, origin)


class _HeadersText:
    """A template's headers as text pieces in one JSON style (see :func:`headers_json`).

    ``pieces[i]`` is everything between the value of ``_VALUES[i - 1]`` and that of
    ``_VALUES[i]`` (the template's own headers and the key names); ``pieces[-1]``
    closes the object. The usual message (no eta, expiry, group, retries or parent)
    needs only ``calm`` and ``calm_parent`` between its five texts.
    """

    __slots__ = ("pieces", "calm", "calm_parent", "string", "encode", "no_args",
                 "no_kwargs", "origin")

    def __init__(self, headers: dict[str, Any], style: JSONStyle) -> None:
        self.string, self.encode = style.string, style.encode
        pieces, text = [], "{"
        for key, value in headers.items():
            if text != "{":
                text += style.item
            text += style.string(key) + style.key
            if key in _VALUES:
                pieces.append(text)
                text = ""
            else:
                text += style.encode(value)
        pieces.append(text + "}")
        self.pieces = p = pieces
        usual = (None, None, None, None, 0)  # eta, expires, group, group_index, retries
        #: From after ``id`` to the value of ``root_id``, for the usual message.
        self.calm = "".join(f"{p[i]}{style.encode(v)}" for i, v in enumerate(usual, 1)) \
            + p[6]
        #: From after ``root_id`` to the value of ``argsrepr`` (no parent).
        self.calm_parent = f"{p[7]}null{p[8]}"
        self.no_args, self.no_kwargs = style.string(NO_ARGS), style.string(NO_KWARGS)
        #: The last ``origin`` written, and its text (one tuple: threads see both).
        self.origin = (ORIGIN, style.string(ORIGIN))

    def write(self, values: tuple[Any, ...], ident: str | None = None) -> str:
        """The text of the headers of a message built with these values (``ident``:
        the id's text, when known)."""
        if len(values) != 4:
            return self.spelled(values)
        id_, args, kwargs, origin = values  # the usual message: see Template.build
        if ident is None:
            ident = self.string(id_) if type(id_) is str else self.encode(id_)
        known = self.origin
        if origin is not known[0]:  # once per process (and after a fork)
            known = self.origin = (origin, self.string(origin))
        p = self.pieces
        return (f"{p[0]}{ident}{self.calm}{ident}{self.calm_parent}"
                f"{self.no_args if args is NO_ARGS else self.string(args)}{p[9]}"
                f"{self.no_kwargs if kwargs is NO_KWARGS else self.string(kwargs)}{p[10]}"
                f"{known[1]}{p[11]}")

    def spelled(self, values: tuple[Any, ...]) -> str:
        """The text with every value encoded (the unusual message)."""
        string, encode = self.string, self.encode
        parts = []
        for piece, value in zip(self.pieces, _all_values(values)):
            parts.append(piece)
            parts.append(string(value) if type(value) is str else encode(value))
        parts.append(self.pieces[-1])
        return "".join(parts)


class BuiltMessage(Message):
    """A message the core built from a :class:`Template`.

    Its headers and properties are laid out the first time they are read, so a
    transport that writes them as text (:func:`headers_json`, the template's
    ``reply_to`` and ``priority``) never builds the dicts. It is a
    :class:`Message` in every other way, and equal to a ``Message`` with the same
    fields.
    """

    __slots__ = ("values", "laid", "props")

    #: The values :meth:`Template.build` gave this message (see ``_VALUES``).
    values: tuple[Any, ...]
    #: Its headers, once read (None before).
    laid: dict[str, Any] | None
    #: Its properties, once read (None before: they are still as built, the task id
    #: as ``correlation_id``, the template's ``reply_to`` and ``priority``, and
    #: ``delivery_mode`` 2; a transport writes them with :func:`properties_json`).
    props: dict[str, Any] | None

    @property
    def properties(self) -> dict[str, Any]:
        props = self.props
        if props is None:
            template = self.template
            props = self.props = {"correlation_id": self.values[0],
                                  "reply_to": template.reply_to, "delivery_mode": 2,
                                  "priority": template.priority}
        return props

    @properties.setter
    def properties(self, value: dict[str, Any]) -> None:
        self.props = value

    @property
    def priority(self) -> int | None:
        props = self.props
        return self.template.priority if props is None else props.get("priority")

    @property
    def headers(self) -> dict[str, Any]:
        laid = self.laid
        if laid is None:
            laid = self.laid = self.template.headers_of(self.values)
        return laid

    @headers.setter
    def headers(self, value: dict[str, Any]) -> None:
        self.laid = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.headers, self.body, self.content_type, self.content_encoding,
                self.properties) == (other.headers, other.body, other.content_type,
                                     other.content_encoding, other.properties)

    __hash__ = None  # type: ignore[assignment]


_new = object.__new__


class Template:
    """What every message built from one set of resolved options shares.

    The headers and properties are laid out once, in Celery's order, with the
    serializer and compressor looked up; :meth:`build` fills in what differs per
    message (id, times, group, parent, reprs, origin). perf: the publish path keeps
    one template per distinct set of options (``PublishPath.plan``), so a batch of
    similar calls builds each message from the same template, and a transport writes
    its headers from text laid out once (:func:`headers_json`).
    """

    __slots__ = ("extra", "serializer", "compressor",
                 "time_limit", "soft_time_limit", "name", "shadow", "ignore_result",
                 "reply_to", "priority", "stamped", "stamps", "nesting", "texts",
                 "props_texts")

    def __init__(self, name: str, codecs: Codecs, opts: Mapping[str, Any]) -> None:
        get = opts.get
        self.serializer = codecs.serializer(opts["serializer"])
        compression = get("compression")
        self.compressor = codecs.compressor(compression) if compression else None
        self.time_limit = get("time_limit")
        self.soft_time_limit = get("soft_time_limit")
        self.name, self.shadow = name, get("shadow")
        self.ignore_result = get("ignore_result")
        self.reply_to, self.priority = get("reply_to"), get("priority")
        #: The ``headers`` option: applied last, so it may override any header.
        self.extra: Mapping[str, Any] | None = get("headers") or None
        #: Canvas stamps: their names (None: not stamped) and values, as Celery
        #: writes them (``stamped_headers`` and ``stamps`` headers).
        stamped = stamp_names(opts)
        self.stamped = stamped or None
        self.stamps = {name: get(name) for name in stamped}
        #: How many ``Task.replace`` calls led to this task (Celery's header).
        self.nesting = get("replaced_task_nesting") or 0
        #: JSON style → the headers' text pieces in it (:func:`headers_json`).
        self.texts: dict[JSONStyle, _HeadersText] = {}
        #: (JSON style, keys left out) → the properties' text around the task id's
        #: (:func:`properties_layout`).
        self.props_texts: dict[tuple[JSONStyle, frozenset[str]], tuple[str, str]] = {}

    def __reduce__(self) -> Any:
        # A pickled message (a test's, a tool's) travels without its template.
        return (_no_template, ())

    def lay_out(self, style: JSONStyle) -> _HeadersText:
        """This template's headers as text pieces in ``style`` (made once)."""
        laid = self.texts[style] = _HeadersText(
            self.headers_of(("", "", "", ORIGIN)),
            style)
        return laid

    def headers_of(self, values: tuple[Any, ...]) -> dict[str, Any]:
        """The headers of a message built with these values (``_VALUES``), in
        Celery's order; the ``headers`` option last (it may override any header)."""
        (task_id, eta, expires, group, group_index, retries, root_id, parent_id,
         argsrepr, kwargsrepr, origin) = _all_values(values)
        h: dict[str, Any] = {
            "lang": LANG,
            "task": self.name,
            "id": task_id,
            "shadow": self.shadow,
            "eta": eta,
            "expires": expires,
            "group": group,
            "group_index": group_index,
            "retries": retries,
            "timelimit": [self.time_limit, self.soft_time_limit],
            "root_id": root_id,
            "parent_id": parent_id,
            "argsrepr": argsrepr,
            "kwargsrepr": kwargsrepr,
            "origin": origin,
            "ignore_result": self.ignore_result,
            "replaced_task_nesting": self.nesting,
            "stamped_headers": list(self.stamped) if self.stamped else None,
            "stamps": dict(self.stamps) if self.stamps else {},
        }
        if self.compressor is not None:
            h["compression"] = self.compressor.content_type
        if self.extra:
            h.update(self.extra)
        return h

    def build(self, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              embed: Mapping[str, Any] | None, eta: dt.datetime | None,
              expires: dt.datetime | None, now: dt.datetime | None,
              per_call: Mapping[str, Any] | None) -> Message:
        """One message; ``per_call`` gives ``group_id``, ``group_index``, ``retries``,
        ``root_id`` and ``parent_id`` when the call has them."""
        # perf: the body's args are a list, made from the usual tuple without the
        # isinstance() calls a list or another sequence needs (an empty one as a
        # literal): with the stores below, Template.build 8.0k -> 6.6k instructions
        # (callgrind, no arguments).
        listed: list[Any]
        if type(args) is tuple:
            listed = list(args) if args else []
        elif isinstance(args, list):
            listed = args
        elif isinstance(args, tuple):
            listed = list(args)
        else:
            raise TypeError(f"Task args must be a list or tuple, not {type(args).__name__}")
        if type(kwargs) is not dict and not isinstance(kwargs, Mapping):
            raise TypeError(f"Task kwargs must be a mapping, not {type(kwargs).__name__}")
        ser = self.serializer
        # Serialized for every message, arguments or not: a serializer may write
        # different bytes for the same input (the auth plugin's signatures are
        # salted and stop with their certificate), so a body is never reused.
        data = ser.dumps((listed, kwargs, embed if embed is not None else EMPTY_EMBED))
        if self.compressor is not None:
            data = self.compressor.compress(data)
        argsrepr = NO_ARGS if type(args) is tuple and not args else _repr(args)
        kwargsrepr = NO_KWARGS if type(kwargs) is dict and not kwargs else _repr(kwargs)
        values: tuple[Any, ...]
        if eta is None and expires is None and (
                per_call is None or _FAMILY.isdisjoint(per_call)):
            values = (task_id, argsrepr, kwargsrepr, ORIGIN)  # the usual message
        else:
            group = group_index = root_id = parent_id = None
            retries = 0
            if per_call is not None:
                get = per_call.get
                group, group_index = get("group_id"), get("group_index")
                retries = get("retries") or 0
                root_id, parent_id = get("root_id"), get("parent_id")
            values = (task_id, eta.isoformat() if eta is not None else None,
                      expires.isoformat() if expires is not None else None, group,
                      group_index, retries, root_id or task_id, parent_id, argsrepr,
                      kwargsrepr, ORIGIN)
        props: dict[str, Any] | None = None
        if expires is not None or self.extra:
            props = {"correlation_id": task_id, "reply_to": self.reply_to,
                     "delivery_mode": 2, "priority": self.priority}
            if expires is not None:
                current = now or dt.datetime.now(UTC)
                aware = expires if expires.tzinfo is not None else expires.replace(tzinfo=UTC)
                props["expiration"] = str(max(0, int((aware - current).total_seconds()
                                                     * 1000)))
            if self.extra:  # its values may change between messages: laid out now
                return Message(self.headers_of(values), data, ser.content_type,
                               ser.content_encoding, props, self)
        message = _new(BuiltMessage)
        message.values = values
        message.laid = None
        message.props = props
        message.body = data
        message.content_type = ser.content_type
        message.content_encoding = ser.content_encoding
        message.template = self  # perf: one store a statement, no tuple to unpack
        return message


def _no_template() -> None:
    return None


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

    @property
    def replaced_task_nesting(self) -> int:
        """How many ``Task.replace`` calls led to this task (0: none)."""
        return int(self.headers.get("replaced_task_nesting") or 0)

    @property
    def stamped_headers(self) -> list[str]:
        """The names of the stamps the message carries (canvas stamping)."""
        return list(self.headers.get("stamped_headers") or ())

    @property
    def stamps(self) -> dict[str, Any]:
        """The stamps the message carries, by name (``Signature.stamp``)."""
        stamps = self.headers.get("stamps") or {}
        return {name: stamps.get(name) for name in self.stamped_headers}

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
