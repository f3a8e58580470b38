"""Conveyor's standard-library plugins: json, pickle, zlib/gzip/bzip2/lzma, the default router, the memory transport and backend."""
