"""msgpack as kombu writes it: bin type on, ``bytes`` → bin, ``str`` → str.

kombu packs with ``use_bin_type=True`` and unpacks with ``raw=False``; doing the same
keeps bodies byte-identical with Celery's, so either side decodes the other's
messages (docs/architecture.md, "Serializers"). No extension types are registered:
a Celery peer could not read them, so a ``datetime`` or ``Decimal`` is refused at encode time with a hint
instead of arriving as something the worker cannot decode.
"""

from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped,unused-ignore]


class MsgpackSerializer:
    """``application/x-msgpack`` bodies; tuples travel as arrays and come back as lists."""

    content_type = "application/x-msgpack"
    content_encoding = "binary"

    def __init__(self, app: Any = None) -> None:
        self.app = app

    def dumps(self, obj: Any) -> bytes:
        try:
            data: bytes = msgpack.packb(obj, use_bin_type=True)
            return data
        except (TypeError, OverflowError, ValueError) as exc:
            raise TypeError(
                f"Cannot encode with msgpack: {exc}. msgpack carries str, bytes, int "
                "(64-bit), float, bool, None, list/tuple and dict only; convert other "
                "values (datetime, Decimal, UUID) to one of those, or use "
                "serializer='json', which tags them the way kombu does."
            ) from exc

    def loads(self, data: bytes) -> Any:
        # strict_map_key stays on, as in kombu: only str/bytes map keys, so a hostile
        # body cannot build dicts keyed by arbitrary hashable values.
        return msgpack.unpackb(data, raw=False)
