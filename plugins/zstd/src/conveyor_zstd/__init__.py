"""Conveyor's zstd compressor (``zstd``/``zstandard``, header ``application/zstd``)."""

from .compressor import ZstdCompressor

__all__ = ["ZstdCompressor"]
