"""Conveyor's lz4 compressor (frame format, header ``application/x-lz4``)."""

from .compressor import LZ4Compressor

__all__ = ["LZ4Compressor"]
