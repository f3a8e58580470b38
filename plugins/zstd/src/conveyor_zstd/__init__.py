"""Conveyor zstd compressor."""
