"""``compactjson``: JSON without spaces, with sorted keys.

Sorted keys make a body deterministic (same arguments, same bytes), which helps
de-duplication and caching; dropping the spaces saves a few bytes per message. The
content type is its own, so a worker picks this serializer only when its
``accept_content`` lists ``compactjson``. Celery does not know this content type: use
it only between Conveyor processes that all have this plugin installed.
"""

from __future__ import annotations

import json
from typing import Any


class CompactJSONSerializer:
    """A ``conveyor.serializers`` plugin: ``content_type``, ``content_encoding``,
    ``dumps`` and ``loads``. Conveyor calls the class as ``CompactJSONSerializer(app)``
    once per app; ``app`` may be ``None`` when used outside an app."""

    content_type = "application/x-compact-json"
    content_encoding = "utf-8"

    def __init__(self, app: Any = None) -> None:
        self.app = app
        self._encoder = json.JSONEncoder(separators=(",", ":"), sort_keys=True,
                                         ensure_ascii=False)

    def dumps(self, obj: Any) -> bytes:
        try:
            return self._encoder.encode(obj).encode("utf-8")
        except TypeError as exc:
            raise TypeError(
                f"compactjson carries plain JSON data only: {exc}. Convert the value, "
                "or use serializer='json', which also encodes datetime, Decimal and UUID."
            ) from exc

    def loads(self, data: bytes) -> Any:
        return json.loads(bytes(data).decode("utf-8"))
