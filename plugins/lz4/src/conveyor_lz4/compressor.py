"""lz4 frames named ``application/x-lz4``: fast, but Conveyor-only.

kombu registers no lz4 compressor (docs/architecture.md, "Compression"), so a
Celery worker cannot read these bodies: use lz4 only where every consumer is a Conveyor worker with this plugin
installed, and ``zstd``, ``brotli`` or ``zlib`` where Celery peers read the queue.
There is no header value to be compatible with, so the name follows the MIME-like
ids kombu uses for the others. The frame format (not raw blocks) is used because it
is self-describing: it carries its own magic number, content checksum and size.
"""

from __future__ import annotations

from typing import Any

import lz4.frame  # type: ignore[import-untyped,unused-ignore]


class LZ4Compressor:
    """Compress into one lz4 frame; decompress any lz4 frame stream."""

    content_type = "application/x-lz4"

    def __init__(self, app: Any = None) -> None:
        self.app = app

    def compress(self, data: bytes) -> bytes:
        packed: bytes = lz4.frame.compress(data, store_size=True)
        return packed

    def decompress(self, data: bytes) -> bytes:
        raw: bytes = lz4.frame.decompress(data)
        return raw
