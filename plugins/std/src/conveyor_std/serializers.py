"""JSON (kombu-compatible extension tags) and pickle serializers."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import pickle
import uuid
from decimal import Decimal
from collections.abc import Callable
from json.encoder import c_make_encoder as _make_encoder  # type: ignore[attr-defined]
from json.encoder import encode_basestring as _encode_text
from typing import Any

from conveyor.envelope import EMPTY_EMBED
from conveyor.exceptions import DecodeError


def _tag(obj: Any) -> Any:
    """kombu ≥ 5.3's ``{"__type__": T, "__value__": V}`` form
    (docs/architecture.md, "Serializers")."""
    if isinstance(obj, dt.datetime):
        return {"__type__": "datetime", "__value__": obj.isoformat()}
    if isinstance(obj, dt.date):
        return {"__type__": "date", "__value__": obj.isoformat()}
    if isinstance(obj, dt.time):
        return {"__type__": "time", "__value__": obj.isoformat()}
    if isinstance(obj, Decimal):
        return {"__type__": "decimal", "__value__": str(obj)}
    if isinstance(obj, uuid.UUID):
        return {"__type__": "uuid", "__value__": {"hex": obj.hex}}
    if isinstance(obj, (bytes, bytearray, memoryview)):
        raw = bytes(obj)
        try:
            return {"__type__": "bytes", "__value__": raw.decode("utf-8")}
        except UnicodeDecodeError:
            return {"__type__": "base64", "__value__": base64.b64encode(raw).decode("ascii")}
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    to_json: Callable[[], Any] | None = getattr(obj, "__json__", None)
    if to_json is not None:
        return to_json()
    raise TypeError(
        f"Object of type {type(obj).__name__} is not JSON serializable: pass plain "
        "data (str, int, float, bool, None, list, dict, datetime, Decimal, UUID, bytes) "
        "or choose serializer='pickle' (and list it in accept_content)."
    )


_UNTAG: dict[str, Callable[[Any], Any]] = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "decimal": Decimal,
    "uuid": lambda v: uuid.UUID(hex=v["hex"]),
    "bytes": lambda v: v.encode("utf-8"),
    "base64": lambda v: base64.b64decode(v),
}


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) == 2 and "__type__" in obj and "__value__" in obj:
        try:
            return _UNTAG[obj["__type__"]](obj["__value__"])
        except KeyError:
            raise DecodeError(f"Unknown JSON extension type {obj['__type__']!r}") from None
    return obj


_encoder = json.JSONEncoder(default=_tag, ensure_ascii=False)
#: perf: the C encoder ``_encoder.encode`` builds on every call, built once; without
#: the circular-reference check (a circular structure is retried on ``_encoder``).
_encode = _make_encoder(None, _tag, _encode_text, None, ": ", ", ", False, False, True) \
    if _make_encoder is not None else _encoder.iterencode
_decoder = json.JSONDecoder(object_hook=_untag)
_plain_decoder = json.JSONDecoder()
_plain = _plain_decoder.decode
#: The decoder's own scanner (the C one where there is one): what ``decode`` runs
#: after two regular-expression matches for the whitespace around the value. Set by
#: ``JSONDecoder.__init__`` (json/decoder.py), not in typeshed's stub.
_scan: Callable[[str, int], tuple[Any, int]] = \
    _plain_decoder.scan_once  # type: ignore[attr-defined]
#: What follows ``[args, kwargs`` in the body of a task without callbacks, chain or
#: chord (the core's ``EMPTY_EMBED``), made once.
_EMPTY_EMBED_END = f", {json.dumps(EMPTY_EMBED, ensure_ascii=False)}]"
#: The body of a task called without arguments, callbacks, chain or chord (bytes
#: cannot change, so every such message may share it).
_NO_ARGUMENTS = f"[[], {{}}{_EMPTY_EMBED_END}".encode("utf-8")


class JSONSerializer:
    """``application/json``; Python's default separators, as kombu writes them."""

    content_type = "application/json"
    content_encoding = "utf-8"

    def __init__(self, app: Any = None) -> None:
        self.app = app

    def dumps(self, obj: Any) -> bytes:
        try:
            if type(obj) is tuple and len(obj) == 3 and obj[2] is EMPTY_EMBED:
                # perf: most task bodies end in the same empty embed, and encoding its
                # four keys costs more than the args and kwargs; the text is the same.
                args, kwargs = obj[0], obj[1]
                if not args and not kwargs and type(args) is list and type(kwargs) is dict:
                    return _NO_ARGUMENTS  # a call without arguments: always these bytes
                return ("".join(_encode((args, kwargs), False))[:-1]
                        + _EMPTY_EMBED_END).encode("utf-8")
            return "".join(_encode(obj, False)).encode("utf-8")
        except RecursionError:  # the checked encoder says "Circular reference"
            return _encoder.encode(obj).encode("utf-8")

    def loads(self, data: bytes | str) -> Any:
        text = data if isinstance(data, str) else (
            data.decode("utf-8") if isinstance(data, bytes) else bytes(data).decode("utf-8"))
        if "__type__" not in text:
            # perf: nothing tagged, so no object needs the hook; the plain decoder
            # builds the same objects several times faster. Text that is one value
            # from its first character to its last (what kombu and Conveyor write)
            # goes straight to the scanner; anything else (whitespace around it, an
            # error) through ``decode``, for its value or its error.
            try:
                obj, end = _scan(text, 0)
            except StopIteration:
                return _plain(text)
            return obj if end == len(text) else _plain(text)
        return _decoder.decode(text)


class PickleSerializer:
    """``application/x-python-serialize``; never accepted unless listed."""

    content_type = "application/x-python-serialize"
    content_encoding = "binary"

    def __init__(self, app: Any = None) -> None:
        self.protocol = int(os.environ.get("PICKLE_PROTOCOL", 4))

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=self.protocol)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)  # noqa: S301 - only reached when accept_content lists pickle
