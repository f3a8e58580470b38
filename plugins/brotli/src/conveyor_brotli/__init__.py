"""Conveyor's brotli compressor (header ``application/x-brotli``), kombu-compatible."""

from .compressor import BrotliCompressor

__all__ = ["BrotliCompressor"]
