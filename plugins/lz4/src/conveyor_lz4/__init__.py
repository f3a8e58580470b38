"""Conveyor lz4 (frame format) compressor."""
