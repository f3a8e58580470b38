"""Standard-library compressors with kombu's ``compression`` header values."""

from __future__ import annotations

import bz2
import lzma
import zlib
from types import ModuleType
from typing import Any


class _StdlibCompressor:
    """A compressor backed by a standard-library module's compress/decompress."""

    content_type: str
    module: ModuleType

    def __init__(self, app: Any = None) -> None:
        pass

    def compress(self, data: bytes) -> bytes:
        return self.module.compress(data)  # type: ignore[no-any-return]

    def decompress(self, data: bytes) -> bytes:
        return self.module.decompress(data)  # type: ignore[no-any-return]


class ZlibCompressor(_StdlibCompressor):
    """``zlib`` and ``gzip``: both are a zlib stream named ``application/x-gzip``."""

    content_type = "application/x-gzip"
    module = zlib


class Bzip2Compressor(_StdlibCompressor):
    """``bzip2``: a bzip2 stream named ``application/x-bz2``."""

    content_type = "application/x-bz2"
    module = bz2


class LzmaCompressor(_StdlibCompressor):
    """``lzma``: an xz container named ``application/x-lzma``, as kombu writes it."""

    content_type = "application/x-lzma"
    module = lzma
