"""Conveyor brotli compressor."""
