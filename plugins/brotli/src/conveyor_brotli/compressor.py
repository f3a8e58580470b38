"""Brotli streams named ``application/x-brotli``, as kombu names them.

kombu calls ``brotli.compress`` with the library's defaults (quality 11, the
slowest and densest); Conveyor defaults to quality 5, which compresses a task body
almost as well at a fraction of the cost. The stream format does not depend on the
quality, so Celery peers read either (docs/architecture.md, "Compression").
"""

from __future__ import annotations

from typing import Any

import brotli  # type: ignore[import-untyped,unused-ignore]

#: Quality 0-11; 11 is brotli's (and kombu's) default, and far slower per message.
DEFAULT_QUALITY = 5


class BrotliCompressor:
    """Compress with brotli at quality 5; decompress any brotli stream."""

    content_type = "application/x-brotli"

    def __init__(self, app: Any = None, *, quality: int = DEFAULT_QUALITY) -> None:
        self.quality = quality

    def compress(self, data: bytes) -> bytes:
        packed: bytes = brotli.compress(data, quality=self.quality)
        return packed

    def decompress(self, data: bytes) -> bytes:
        raw: bytes = brotli.decompress(data)
        return raw
