"""zstd frames named ``application/zstd``, as kombu names them.

kombu 5.7 compresses with ``compression.zstd`` (``backports.zstd`` before Python 3.14)
and kombu ≤ 5.5 with the ``zstandard`` package; all write the standard zstd frame
(magic ``28 b5 2f fd``), so this plugin reads and writes bodies any Celery peer with
zstd support understands (docs/architecture.md, "Compression"). Frames carry their
content size, which the one-shot ``zstandard.decompress`` of kombu ≤ 5.5 requires.

Decompression reads every frame and does not need the content size in the frame
header: a one-shot ``ZstdDecompressor.decompress`` would refuse frames written in
streaming mode and silently drop a second frame, which ``compression.zstd`` reads.
A truncated frame is an error, never a short body.
zstandard's (de)compressor objects must not be shared between threads, and a worker
with a thread pool shares this plugin, so each thread gets its own.
"""

from __future__ import annotations

import threading
from typing import Any

import zstandard

#: zstd's own default; level 3 is fast and still compresses task bodies well.
DEFAULT_LEVEL = 3


class ZstdCompressor:
    """Compress with zstd at level 3; decompress any zstd stream (one or more frames)."""

    content_type = "application/zstd"

    def __init__(self, app: Any = None, *, level: int = DEFAULT_LEVEL) -> None:
        self.level = level
        self._local = threading.local()

    def _contexts(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        local = self._local
        try:
            return local.cctx, local.dctx
        except AttributeError:
            local.cctx = zstandard.ZstdCompressor(level=self.level)
            local.dctx = zstandard.ZstdDecompressor()
            return local.cctx, local.dctx

    def compress(self, data: bytes) -> bytes:
        return self._contexts()[0].compress(data)

    def decompress(self, data: bytes) -> bytes:
        dctx = self._contexts()[1]
        parts = []
        rest = bytes(data)
        while True:  # one frame per turn, as compression.zstd reads concatenated frames
            frame = dctx.decompressobj()
            parts.append(frame.decompress(rest))
            if not frame.eof:
                raise ValueError(
                    "Truncated zstd body: a frame ends before its last block. The "
                    "message was cut in transit or was not written by a zstd compressor."
                )
            rest = frame.unused_data
            if not rest:
                return b"".join(parts)
