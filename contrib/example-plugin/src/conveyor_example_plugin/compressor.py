"""``deflate``: a raw DEFLATE stream, without zlib's 2-byte header and 4-byte checksum.

Six bytes per message is little, but it shows the whole compressor interface. The
``content_type`` is the value of the message's ``compression`` header; a worker finds
the decompressor by that value, so it must be unique among installed compressors.
kombu has no decoder for it: Celery workers cannot read these messages.
"""

from __future__ import annotations

import zlib
from typing import Any

_RAW = -15  # wbits: negative means no zlib header or trailer


class RawDeflateCompressor:
    """A ``conveyor.compressors`` plugin: ``content_type``, ``compress``, ``decompress``."""

    content_type = "application/x-example-deflate"

    def __init__(self, app: Any = None, *, level: int = 6) -> None:
        self.level = level

    def compress(self, data: bytes) -> bytes:
        packer = zlib.compressobj(self.level, zlib.DEFLATED, _RAW)
        return packer.compress(data) + packer.flush()

    def decompress(self, data: bytes) -> bytes:
        unpacker = zlib.decompressobj(_RAW)
        out = unpacker.decompress(data) + unpacker.flush()
        if not unpacker.eof:
            raise ValueError("Truncated deflate body: the stream ends before its last block.")
        return out
