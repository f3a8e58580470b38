"""The kombu envelope and priority layout, checked against captured Celery traffic."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from conveyor import Conveyor
from conveyor.exceptions import ConfigurationError
from conveyor.interfaces import Message, Route
from conveyor_redis.envelope import TRANSPORT_PROPERTIES, decode, encode
from conveyor_redis.layout import Layout, from_wire, to_wire
from redis_support import b64, client_samples
from wire_samples import sample

SEP = "\x06\x16"
SAMPLE_MESSAGES = list(client_samples())


# ----------------------------------------------------------------- priority mapping
@pytest.mark.parametrize(("conveyor", "wire", "list_key"), [
    (None, 9, f"q{SEP}9"), (0, 9, f"q{SEP}9"), (1, 8, f"q{SEP}6"), (3, 6, f"q{SEP}6"),
    (4, 5, f"q{SEP}3"), (6, 3, f"q{SEP}3"), (7, 2, "q"), (9, 0, "q"), (255, 0, "q"),
])
def test_conveyor_priority_maps_to_kombu_wire_and_step(conveyor: int | None, wire: int,
                                                       list_key: str) -> None:
    assert to_wire(conveyor) == wire
    assert Layout().list_for("q", wire) == list_key


@pytest.mark.parametrize(("wire", "conveyor"), [
    (0, 9), (3, 6), (9, 0), (200, 0), (-5, 9), (None, 9), ("x", 9)])
def test_wire_priority_maps_back_higher_first(wire: Any, conveyor: int) -> None:
    assert from_wire(wire) == conveyor


def test_celery_sample_lists_match_our_layout() -> None:
    """Each Celery priority landed in the list our layout computes for it."""
    data = sample("redis-priority-steps")
    layout = Layout()
    for m in data["messages"]:
        wire = m["envelope"]["properties"]["priority"]
        assert layout.list_for("celery", wire) == m["list_key"]
        # and a Conveyor message read back from it goes to the same list again
        assert layout.list_for("celery", to_wire(from_wire(wire))) == m["list_key"]


def test_poll_order_is_step_major_like_kombu() -> None:
    keys, names = Layout().poll_order(["a", "b"])
    assert keys == ["a", "b", f"a{SEP}3", f"b{SEP}3", f"a{SEP}6", f"b{SEP}6",
                    f"a{SEP}9", f"b{SEP}9"]
    assert names == ["a", "b"] * 4


def test_custom_steps_and_prefix() -> None:
    layout = Layout("pfx:", ":", list(range(10)))
    assert layout.list_for("q", 4) == "pfx:q:4"
    assert layout.lists("q")[0] == "pfx:q"
    assert layout.unacked == "pfx:unacked"


@pytest.mark.parametrize("steps", [[3, 6], [0, 6, 3], [0, 12], [], ["0"]])
def test_bad_priority_steps_say_what_is_expected(steps: Any) -> None:
    with pytest.raises(ConfigurationError, match="priority_steps"):
        Layout(steps=steps)


# ----------------------------------------------------------------- envelope
def _as_conveyor(envelope: dict[str, Any]) -> Message:
    props = {k: v for k, v in envelope["properties"].items() if k not in TRANSPORT_PROPERTIES}
    props["priority"] = from_wire(envelope["properties"].get("priority"))
    return Message(envelope["headers"], b64(envelope["body"]), envelope["content-type"],
                   envelope["content-encoding"], props)


def _shape(value: Any) -> Any:
    """Keys in order and value types, recursively: what field equality means."""
    if isinstance(value, dict):
        return [(k, _shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


@pytest.mark.parametrize(("name", "sample"), SAMPLE_MESSAGES,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(SAMPLE_MESSAGES)])
def test_encode_reproduces_celery_envelopes(name: str, sample: dict[str, Any]) -> None:
    """Same fields, same order, same types, same values; only the tag is new (and a
    wire priority above 9 is written as 9, the level it means)."""
    env = sample["envelope"]
    info = env["properties"]["delivery_info"]
    message = _as_conveyor(env)
    wire = to_wire(message.priority)
    raw = encode(message, info["exchange"], info["routing_key"], wire, "tag-1")
    ours = json.loads(raw)
    assert _shape(ours) == _shape(env)
    expected = json.loads(sample["raw"])
    expected["properties"]["delivery_tag"] = "tag-1"
    expected["properties"]["priority"] = min(expected["properties"]["priority"], 9)
    assert ours == expected
    if expected == json.loads(sample["raw"]):  # text too, byte for byte
        assert raw == sample["raw"].replace(env["properties"]["delivery_tag"], "tag-1")
    assert Layout().list_for(info["routing_key"], wire) == sample["list_key"] or \
        info["exchange"] not in ("", info["routing_key"])


@pytest.mark.parametrize(("name", "sample"), SAMPLE_MESSAGES[:12],
                         ids=[n for n, _ in SAMPLE_MESSAGES[:12]])
def test_decode_celery_envelopes(name: str, sample: dict[str, Any]) -> None:
    d = decode(sample["raw"].encode())
    env = sample["envelope"]
    assert d.valid and d.tag == env["properties"]["delivery_tag"]
    assert d.message.headers == env["headers"]
    assert d.message.body == b64(env["body"])
    assert d.message.content_type == env["content-type"]
    assert d.message.priority == from_wire(env["properties"]["priority"])
    assert "delivery_info" not in d.message.properties
    assert d.routing_key == env["properties"]["delivery_info"]["routing_key"]


def test_decode_handcrafted_envelopes_that_celery_accepts() -> None:
    data = sample("interop-handcrafted-redis")
    for case in data["cases"]:
        d = decode(case["pushed"].encode())
        assert d.valid, case["name"]
        assert d.message.headers["id"] == case["task_id"]
        if d.message.content_type == "application/json" and \
                "compression" not in d.message.headers:  # base64 or literal text
            assert isinstance(json.loads(d.message.body), list), case["name"]


@pytest.mark.parametrize(("raw", "why"), [
    (b"not json", "not JSON"), (b"[1, 2]", "JSON list, not an object"),
    (b'{"body": "x"}', "no 'properties' object"),
    (b'{"body": 1, "properties": {}, "headers": []}', "'headers' is list"),
    (b'{"body": 1, "properties": {}}', "unreadable 'body'")])
def test_garbage_decodes_to_an_undeliverable_message_not_an_exception(
        raw: bytes, why: str) -> None:
    d = decode(raw)
    assert not d.valid and d.error is not None and why in d.error
    assert d.message.headers == {} and d.message.body == raw


@pytest.mark.parametrize("raw", [
    b'{"body": "", "headers": {}, "properties": {}} \n',  # text after the object
    b'{"body": "", "headers": {}, "properties": {}} {}',  # a second value
    b'{"body": "", "headers": {"s": "\xed\xa0\x80"}, "properties": {}}',  # a surrogate
    b'{"body": "\xff", "headers": {}, "properties": {}}',  # not UTF-8
    b'\xef\xbb\xbf{"body": "", "headers": {}, "properties": {}}',  # a BOM first
    # an integer past 64 bits stays an integer (orjson alone would make it a float)
    b'{"body": "", "headers": {"n": 123456789012345678901234567890}, "properties": {}}',
    b'{"body": "", "headers": {"n": [-18446744073709551617]}, "properties": {}}',
    b'{"body": "", "headers": {"n": 18446744073709551615}, "properties": {}}',
    b'{"body": "", "headers": {"x": NaN, "y": -Infinity}, "properties": {}}',
    '{"body": "", "headers": {"s": "\u00e9"}, "properties": {}}'.encode("utf-16"),
])
def test_an_envelope_reads_as_json_loads_reads_it(raw: bytes) -> None:
    """The envelope is parsed by orjson where it reads as ``json.loads`` does, else
    by the standard library: what ``json.loads`` accepts or refuses, decode does
    too, with the same values of the same types."""
    try:
        expected: Any = json.loads(raw)
    except ValueError:
        expected = None
    d = decode(raw)
    if expected is None:
        assert d.error is not None and "not JSON" in d.error
    else:
        assert d.error is None
        assert repr(d.message.headers) == repr(expected["headers"])  # types, NaN too


def test_a_literal_body_with_a_lone_surrogate_is_undeliverable_not_raised() -> None:
    """JSON may spell a lone surrogate (``\\ud800``), which has no UTF-8 bytes: the
    envelope comes back undeliverable with its headers (the worker dead-letters it),
    it does not raise out of the consumer's fetch."""
    raw = b'{"body": "\\ud800", "headers": {"id": "t-9"}, "properties": {}}'
    d = decode(raw)
    assert d.error is not None and "unreadable 'body'" in d.error
    assert d.message.headers == {"id": "t-9"}


def test_an_envelope_without_properties_keeps_its_headers() -> None:
    d = decode(b'{"body": "", "headers": {"id": "t-1", "task": "x"}}')
    assert d.error is not None and "properties" in d.error
    assert d.message.headers == {"id": "t-1", "task": "x"}


def test_redelivered_flag_and_literal_body() -> None:
    raw = json.dumps({"body": "[[1], {}, {}]", "content-type": "application/json",
                      "headers": {"task": "t", "id": "i", "redelivered": True},
                      "properties": {"delivery_info": {"exchange": "", "routing_key": "q"},
                                     "delivery_tag": "x"}})
    d = decode(raw)
    assert d.redelivered and d.message.body == b"[[1], {}, {}]"
    assert d.message.content_encoding == "utf-8" and d.message.priority == 9


def test_envelope_through_the_transport_matches_sample(make_transport: Any,
                                                       r: Any) -> None:
    """End to end: what lands in Redis is Celery's envelope, in Celery's list."""
    captured = sample("redis-json-queue")["messages"][0]
    env = captured["envelope"]
    t = make_transport()
    t.publish(_as_conveyor(env), Route("proto.math"))
    (raw,) = r.lrange(captured["list_key"], 0, -1)
    ours = json.loads(raw)
    tag = ours["properties"]["delivery_tag"]
    assert raw.decode() == captured["raw"].replace(env["properties"]["delivery_tag"], tag)
    assert r.smembers("_kombu.binding.proto.math") == {f"proto.math{SEP}{SEP}proto.math".encode()}
    assert r.smembers("_kombu.binding_permanent.proto.math") == \
        {f"proto.math{SEP}{SEP}proto.math".encode()}


def _kombu_text(message: Message, exchange: str, routing_key: str, wire: int,
                tag: str) -> str:
    """The envelope as kombu lays it out: its dicts, encoded by ``json.dumps``."""
    props = {k: v for k, v in message.properties.items() if k not in TRANSPORT_PROPERTIES}
    props.update(delivery_info={"exchange": exchange, "routing_key": routing_key},
                 priority=wire, body_encoding="base64", delivery_tag=tag)
    return json.dumps({"body": base64.b64encode(message.body).decode("ascii"),
                       "content-encoding": message.content_encoding,
                       "content-type": message.content_type, "headers": message.headers,
                       "properties": props})


@pytest.mark.parametrize("call", [
    {}, {"priority": 7}, {"expires": 60}, {"countdown": 5, "queue": "other"},
    {"group_id": "g", "group_index": 2}, {"compression": "zlib"}, {"serializer": "pickle"},
    {"headers": {"x-tenant": "\u00e9"}}, {"reply_to": "replies", "ignore_result": True}])
def test_encode_writes_what_kombu_would_for_messages_we_build(call: dict[str, Any]) -> None:
    """The envelope put together from pieces is kombu's text exactly, before and
    after a hook edits the message's headers and properties."""
    app = Conveyor("envelope", broker="memory://envelope")
    for args in ((), (2, "\u00e9")):
        message, route, _due, _opts = app.prepare("t.add", args, {}, call, {}, None)
        wire = to_wire(message.priority)
        for _ in range(2):
            raw = encode(message, route.exchange, route.key, wire, "tag-1")
            assert raw == _kombu_text(message, route.exchange, route.key, wire, "tag-1")
            message.headers["retries"], message.properties["x-edited"] = 1, True


def test_a_batch_writes_each_message_as_it_would_alone(make_transport: Any) -> None:
    """``publish_many`` reuses a frame, wire priority and list for a run of messages
    of one template and route; a message that differs in any of them (another
    template or priority, properties a hook read, another content type, another
    route) still gets its own kombu text, on its own list."""
    app = Conveyor("envelope", broker="memory://envelope")

    def built(call: dict[str, Any], args: tuple[Any, ...] = (),
              kwargs: dict[str, Any] | None = None) -> Message:
        return app.prepare("t.add", args, kwargs or {}, call, {}, None)[0]

    edited_props, edited_headers, retyped = built({}), built({}), built({})
    edited_props.properties["x-edited"] = True
    edited_headers.headers["retries"] = 3
    retyped.content_type = "application/x-other"
    a, b = Route("qa"), Route("qb")
    batch = [(built({}), a), (built({}, (1,)), a), (built({"priority": 7}), a),
             (built({}), a), (edited_props, a), (built({}), a), (edited_headers, a),
             (retyped, a), (built({}), a), (built({}), b), (built({"priority": 7}), b),
             (built({"queue": "qa"}), b), (built({"queue": "qa"}), a),
             # A run of usual messages (written without framed()), with other
             # messages of the same template among them: reprs, an id JSON escapes,
             # a parent and a group (headers of their own).
             (built({}), a), (built({}), a), (built({}, (1, "\u00e9"), {"k": [2]}), a),
             (built({"task_id": 'we"ird\u00e9'}), a), (built({}), a),
             (built({"parent_id": "p", "root_id": "r"}), a), (built({}), a),
             (built({"group_id": "g", "group_index": 0}), a), (built({}, (), {"k": 1}), a)]
    t = make_transport()
    commands, _routes = t.commands([(m, route, None) for m, route in batch])
    pushed = {raw: cmd[1] for cmd in commands if cmd[0] == "LPUSH" for raw in cmd[2:]}
    by_id = {json.loads(raw)["headers"]["id"]: (raw, key) for raw, key in pushed.items()}
    assert len(by_id) == len(batch)
    for message, route in batch:
        raw, key = by_id[message.headers["id"]]
        wire = to_wire(message.priority)
        tag = json.loads(raw)["properties"]["delivery_tag"]
        assert raw == _kombu_text(message, route.exchange, route.key, wire, tag)
        assert key == Layout().list_for(route.queue, wire)
