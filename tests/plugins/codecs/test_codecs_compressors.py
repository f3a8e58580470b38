"""zstd, lz4 and brotli compressors: round trips, header values, and kombu agreement."""

from __future__ import annotations

import os
import threading

import kombu.compression
import lz4.frame
import pytest
import zstandard
from codec_support import compressor, sample_body
from wire_samples import sample

HEADERS = {
    "zstd": "application/zstd",
    "zstandard": "application/zstd",
    "lz4": "application/x-lz4",
    "brotli": "application/x-brotli",
}
NAMES = list(HEADERS)
PAYLOADS = {
    "empty": b"",
    "one": b"x",
    "task-body": b'[[2, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, '
                 b'"chord": null}]',
    "text-100k": (b"conveyor speaks the celery protocol " * 3000)[:100_000],
    "random-64k": os.urandom(65_536),
}


@pytest.mark.parametrize("name", NAMES)
def test_header_value(name: str) -> None:
    assert compressor(name).content_type == HEADERS[name]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_round_trip(name: str, payload: str) -> None:
    comp = compressor(name)
    data = PAYLOADS[payload]
    packed = comp.compress(data)
    assert isinstance(packed, bytes)
    assert comp.decompress(packed) == data
    if payload == "text-100k":
        assert len(packed) < len(data) // 10


@pytest.mark.parametrize("name", ["zstd", "brotli"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_kombu_reads_ours_and_we_read_kombus(name: str, payload: str) -> None:
    comp = compressor(name)
    data = PAYLOADS[payload]
    if comp.content_type not in kombu.compression._decoders:
        # kombu 5.7 registers zstd only with compression.zstd / backports.zstd; without
        # them, check with what kombu <= 5.5 used: the zstandard package's one-shot API.
        assert name == "zstd"
        assert zstandard.decompress(comp.compress(data)) == data
        assert comp.decompress(zstandard.compress(data)) == data
        return
    assert kombu.compression.decompress(comp.compress(data), comp.content_type) == data
    theirs, header = kombu.compression.compress(data, name)
    assert header == comp.content_type
    assert comp.decompress(theirs) == data


@pytest.mark.parametrize("sample_name, name", [
    ("redis-json-zstd", "zstd"), ("amqp-json-zstd", "zstandard"),
    ("redis-json-brotli", "brotli"), ("amqp-json-brotli", "brotli"),
])
def test_decompresses_celery_wire_samples(sample_name: str, name: str) -> None:
    body, meta = sample_body(sample_name)
    comp = compressor(name)
    assert meta["headers"]["compression"] == comp.content_type
    expected = sample(sample_name)["messages"][0]["body"]["serialized_text"].encode()
    assert comp.decompress(body) == expected


def test_zstd_writes_a_standard_frame_with_its_size() -> None:
    packed = compressor("zstd").compress(PAYLOADS["task-body"])
    assert packed[:4] == b"\x28\xb5\x2f\xfd"
    params = zstandard.get_frame_parameters(packed)
    assert params.content_size == len(PAYLOADS["task-body"])  # kombu <= 5.5 needs it


def test_zstd_reads_streamed_and_concatenated_frames() -> None:
    comp = compressor("zstd")
    streamed = zstandard.ZstdCompressor(write_content_size=False).compress(b"a" * 1000)
    assert comp.decompress(streamed) == b"a" * 1000
    assert comp.decompress(zstandard.compress(b"first") + streamed) == b"first" + b"a" * 1000


def test_zstd_refuses_a_truncated_body() -> None:
    packed = compressor("zstd").compress(PAYLOADS["text-100k"])
    with pytest.raises(ValueError, match="Truncated"):
        compressor("zstd").decompress(packed[:-8])


def test_zstd_is_safe_across_threads() -> None:
    comp = compressor("zstd")
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(50):
                data = f"{seed}-{i}-".encode() * (seed * 37 + i)
                assert comp.decompress(comp.compress(data)) == data
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert not any(thread.is_alive() for thread in threads)


def test_lz4_is_a_self_describing_frame_kombu_cannot_read() -> None:
    packed = compressor("lz4").compress(PAYLOADS["task-body"])
    assert packed[:4] == b"\x04\x22\x4d\x18"  # lz4 frame magic
    assert lz4.frame.decompress(packed) == PAYLOADS["task-body"]
    assert "application/x-lz4" not in kombu.compression._decoders  # Conveyor-only
