"""Standard-library compressors with kombu's ``compression`` header values."""

from __future__ import annotations

import bz2
import lzma
import zlib
from typing import Any


class ZlibCompressor:
    """``zlib`` and ``gzip``: both are a zlib stream named ``application/x-gzip``."""

    content_type = "application/x-gzip"

    def __init__(self, app: Any = None) -> None:
        pass

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decompress(self, data: bytes) -> bytes:
        return zlib.decompress(data)


class Bzip2Compressor:
    """``bzip2``: a bzip2 stream named ``application/x-bz2``."""

    content_type = "application/x-bz2"

    def __init__(self, app: Any = None) -> None:
        pass

    def compress(self, data: bytes) -> bytes:
        return bz2.compress(data)

    def decompress(self, data: bytes) -> bytes:
        return bz2.decompress(data)


class LzmaCompressor:
    """``lzma``: an xz container named ``application/x-lzma``, as kombu writes it."""

    content_type = "application/x-lzma"

    def __init__(self, app: Any = None) -> None:
        pass

    def compress(self, data: bytes) -> bytes:
        return lzma.compress(data)

    def decompress(self, data: bytes) -> bytes:
        return lzma.decompress(data)
