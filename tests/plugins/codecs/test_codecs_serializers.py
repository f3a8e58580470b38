"""msgpack and yaml serializers: round trips, and byte-for-byte agreement with kombu.

kombu 5.7 is what Celery uses to encode and decode bodies, so "kombu reads what we
write, and we read what kombu and Celery wrote" is the wire-compatibility contract.
"""

from __future__ import annotations

import datetime as dt
import lzma
from decimal import Decimal

import kombu.serialization
import pytest
import yaml
from codec_support import PLAIN_VALUES, TASK_BODY, listify, sample_body, serializer

NAMES = ["msgpack", "yaml"]
WIRE = {
    "msgpack": ("application/x-msgpack", "binary"),
    "yaml": ("application/x-yaml", "utf-8"),
}


@pytest.mark.parametrize("name", NAMES)
def test_content_type_and_encoding_match_kombu(name: str) -> None:
    ser = serializer(name)
    assert (ser.content_type, ser.content_encoding) == WIRE[name]
    assert kombu.serialization.registry.type_to_name[ser.content_type] == name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", PLAIN_VALUES, ids=repr)
def test_round_trip_plain_values(name: str, value: object) -> None:
    ser = serializer(name)
    data = ser.dumps(value)
    assert isinstance(data, bytes)
    assert ser.loads(data) == listify(value)


@pytest.mark.parametrize("name", NAMES)
def test_task_body_is_byte_identical_to_kombu(name: str) -> None:
    ser = serializer(name)
    content_type, encoding, theirs = kombu.serialization.dumps(TASK_BODY, serializer=name)
    ours = ser.dumps(TASK_BODY)
    assert (ser.content_type, ser.content_encoding) == (content_type, encoding)
    assert ours == (theirs if isinstance(theirs, bytes) else theirs.encode(encoding))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", [*PLAIN_VALUES, TASK_BODY], ids=repr)
def test_kombu_decodes_ours_and_we_decode_kombus(name: str, value: object) -> None:
    ser = serializer(name)
    ours = ser.dumps(value)
    decoded = kombu.serialization.loads(
        ours, ser.content_type, ser.content_encoding, accept=[ser.content_type])
    assert decoded == listify(value)
    _, _, theirs = kombu.serialization.dumps(value, serializer=name)
    assert ser.loads(theirs if isinstance(theirs, bytes) else theirs.encode()) == listify(value)


@pytest.mark.parametrize("sample_name, name", [
    ("redis-msgpack-plain", "msgpack"), ("amqp-msgpack-plain", "msgpack"),
    ("redis-yaml-plain", "yaml"), ("amqp-yaml-plain", "yaml"),
])
def test_decodes_celery_wire_samples(sample_name: str, name: str) -> None:
    body, meta = sample_body(sample_name)
    ser = serializer(name)
    assert meta["content_type"] == ser.content_type
    assert ser.loads(body) == listify(TASK_BODY)
    assert ser.dumps(TASK_BODY) == body  # and we would have written the same bytes


def test_decodes_celery_msgpack_lzma_body_with_link() -> None:
    body, meta = sample_body("redis-msgpack-lzma-link")
    raw = serializer("msgpack").loads(lzma.decompress(body))  # lzma: conveyor-std's job
    args, kwargs, embed = raw
    assert (args, kwargs) == ([2, 2], {})
    assert embed["callbacks"][0]["task"] == "capapp.add"
    assert embed["callbacks"][0]["args"] == [5]
    assert meta["headers"]["compression"] == "application/x-lzma"


def test_msgpack_keeps_bytes_and_str_apart() -> None:
    ser = serializer("msgpack")
    value = {"raw": b"\x00\xff\x10", "text": "\x00é", "empty": b""}
    data = ser.dumps(value)
    assert ser.loads(data) == value
    assert type(ser.loads(data)["raw"]) is bytes
    # bin 8 marker (0xc4) for bytes, str marker for text: the bin type is on
    assert b"\xc4\x03\x00\xff\x10" in data
    assert kombu.serialization.loads(data, ser.content_type, "binary",
                                     accept=[ser.content_type]) == value


@pytest.mark.parametrize("value", [dt.datetime(2030, 1, 1), Decimal("1.5"), object(), 2**64])
def test_msgpack_refuses_what_celery_could_not_read(value: object) -> None:
    with pytest.raises(TypeError, match="serializer='json'"):
        serializer("msgpack").dumps([value])


def test_msgpack_refuses_non_string_map_keys_on_decode() -> None:
    import msgpack
    with pytest.raises(ValueError):
        serializer("msgpack").loads(msgpack.packb({1: "a"}))


def test_yaml_carries_datetimes_and_bytes_like_kombu() -> None:
    ser = serializer("yaml")
    value = {"when": dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
             "day": dt.date(2030, 1, 2), "blob": b"\xff\x00"}
    data = ser.dumps(value)
    assert ser.loads(data) == value
    assert kombu.serialization.loads(data, ser.content_type, "utf-8",
                                     accept=[ser.content_type]) == value


def test_yaml_long_non_ascii_text_reads_back_in_kombu() -> None:
    # libyaml may fold such lines differently from kombu's emitter: same value, though.
    value = {"text": "héllo wörld ✓ " * 40, "lines": "a\nb\n" * 50}
    data = serializer("yaml").dumps(value)
    assert kombu.serialization.loads(data, "application/x-yaml", "utf-8",
                                     accept=["application/x-yaml"]) == value
    _, _, theirs = kombu.serialization.dumps(value, serializer="yaml")
    assert serializer("yaml").loads(theirs) == value


def test_yaml_loads_only_safely() -> None:
    hostile = b"!!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(yaml.constructor.ConstructorError):
        serializer("yaml").loads(hostile)


def test_yaml_refuses_objects_with_a_hint() -> None:
    with pytest.raises(TypeError, match="serializer='json'"):
        serializer("yaml").dumps({"x": Decimal("1.5")})


def test_yaml_accepts_text_and_memoryview() -> None:
    ser = serializer("yaml")
    data = ser.dumps(TASK_BODY)
    assert ser.loads(memoryview(data)) == ser.loads(data.decode()) == listify(TASK_BODY)



@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("args", [(), [2, "\u00e9"], ({"a": [1.5, None]},)], ids=repr)
def test_body_without_embeds_is_byte_identical_to_kombu(name: str, args: object) -> None:
    """The body the core builds for a call without callbacks (its shared empty embed,
    which the JSON serializer writes from text made once) is kombu's, byte for byte."""
    from conveyor.envelope import EMPTY_EMBED
    body = (args, {"k": "\u2603"}, EMPTY_EMBED)
    ser = serializer(name)
    content_type, encoding, theirs = kombu.serialization.dumps(body, serializer=name)
    assert ser.dumps(body) == (theirs if isinstance(theirs, bytes) else theirs.encode(encoding))
