"""A lean RESP2 writer and reader for the hot paths (claim, ack, publish, store).

perf: for every reply redis-py's pure-Python parser reads line by line through a
buffer object, about 6 µs per bulk string on a small VM; a claim reply carries four
per message. This reader takes whole ``recv`` chunks and slices them. It only has to
know RESP2 (the pools are opened with ``protocol=2``, as kombu's are) and only ever
reads replies to commands sent through :class:`~.connection.Line`; connection setup,
health checks and pub/sub stay with redis-py. With ``hiredis`` installed redis-py's
own parser would be as fast, but it is not a dependency.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

#: Error codes redis-py turns into their own classes, as far as callers here care.
_ERRORS: dict[bytes, type[Exception]] = {
    b"NOSCRIPT": NoScriptError, b"LOADING": redis.exceptions.BusyLoadingError,
    b"READONLY": redis.exceptions.ReadOnlyError, b"NOPERM": redis.exceptions.NoPermissionError,
    b"WRONGPASS": redis.AuthenticationError, b"NOAUTH": redis.AuthenticationError}


def pack_items(args: Sequence[Any]) -> bytes:
    """RESP bulk strings for ``args`` (str, bytes, int or float), without the header.

    perf: redis-py's packer checks every argument against half a dozen types; the
    hot paths only ever pass these four, and precompute the constant parts.
    """
    out = []
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8")
        elif not isinstance(arg, bytes):
            arg = repr(arg).encode("ascii")  # int, float: as redis-py writes them
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def pack(args: Sequence[Any]) -> bytes:
    """One RESP command."""
    return b"*%d\r\n%s" % (len(args), pack_items(args))


def error(message: bytes) -> Exception:
    """The redis-py exception for an error reply (NOSCRIPT, LOADING, … by prefix)."""
    code = message.split(b" ", 1)[0]
    return _ERRORS.get(code, redis.ResponseError)(message.decode("utf-8", "replace"))


class Reader:
    """Reads RESP2 replies from one socket; error replies come back as exceptions."""

    __slots__ = ("sock", "buf", "pos")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0

    def _fill(self) -> None:
        try:
            data = self.sock.recv(65536)
        except socket.timeout as exc:
            raise redis.TimeoutError("Timeout reading from Redis") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"Error reading from Redis: {exc}") from exc
        if not data:
            raise redis.ConnectionError("Connection closed by the Redis server.")
        if self.pos:
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += data

    def _line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                line = bytes(self.buf[self.pos:end])
                self.pos = end + 2
                return line
            self._fill()

    def read(self) -> Any:
        """One reply: bytes, int, None, a list, or a ResponseError instance."""
        line = self._line()
        kind = line[:1]
        if kind == b"$":
            n = int(line[1:])
            if n < 0:
                return None
            while len(self.buf) - self.pos < n + 2:
                self._fill()
            data = bytes(self.buf[self.pos:self.pos + n])
            self.pos += n + 2
            return data
        if kind == b"*":
            n = int(line[1:])
            return None if n < 0 else [self.read() for _ in range(n)]
        if kind == b":":
            return int(line[1:])
        if kind == b"+":
            return line[1:]
        if kind == b"-":
            return error(line[1:])
        raise redis.exceptions.InvalidResponse(f"Unexpected RESP reply {line[:40]!r}")
