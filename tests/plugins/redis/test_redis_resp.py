"""The lean RESP2 writer/reader of the hot paths, against a socket pair (no Redis)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import redis
from conveyor_redis.resp import Reader, error, pack
from redis.exceptions import NoScriptError


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, Reader]]:
    a, b = socket.socketpair()
    b.settimeout(2)
    yield a, Reader(b)
    a.close()
    b.close()


def test_pack_matches_redis_py() -> None:
    args = ("EVALSHA", "abc", 2, b"k\x00ey", "ké", 1.5, -3)
    conn = redis.Connection()
    assert pack(args) == b"".join(conn.pack_command(*args))


def test_reads_every_reply_type_across_split_chunks(pair: tuple[socket.socket, Reader]) -> None:
    sender, reader = pair
    wire = (b"+OK\r\n:42\r\n$-1\r\n*-1\r\n$5\r\nhe\r\nl\r\n"
            b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n$0\r\n\r\n-ERR inner\r\n"
            b"-NOSCRIPT No matching script\r\n$70000\r\n" + b"x" * 70000 + b"\r\n")

    def send() -> None:
        for i in range(0, 210, 7):  # dribble: every small reply is split somewhere
            sender.sendall(wire[i:i + 7])
        sender.sendall(wire[210:])

    threading.Thread(target=send).start()
    assert reader.read() == b"OK"
    assert reader.read() == 42
    assert reader.read() is None and reader.read() is None
    assert reader.read() == b"he\r\nl"
    nested = reader.read()
    assert nested[:2] == [1, [b"a", b""]] and isinstance(nested[2], redis.ResponseError)
    assert isinstance(reader.read(), NoScriptError)
    assert reader.read() == b"x" * 70000


def test_closed_or_silent_server_is_a_connection_error(
        pair: tuple[socket.socket, Reader]) -> None:
    sender, reader = pair
    reader.sock.settimeout(0.2)
    with pytest.raises(redis.TimeoutError):
        reader.read()
    sender.close()
    with pytest.raises(redis.ConnectionError):
        reader.read()


def test_error_classes() -> None:
    assert isinstance(error(b"LOADING Redis is loading"), redis.ConnectionError)
    assert type(error(b"WRONGTYPE Operation against a key")) is redis.ResponseError
    assert isinstance(error(b"NOSCRIPT x"), NoScriptError)
