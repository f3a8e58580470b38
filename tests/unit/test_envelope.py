"""Protocol v2 both ways: decode every captured Celery message, and build messages
that Celery's and kombu's own functions read back identically."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from wire_samples import samples

from conveyor import Conveyor
from conveyor.envelope import JSONStyle, build_message, from_iso, headers_json, parse_message
from conveyor.exceptions import ContentDisallowed, DecodeError
from conveyor.interfaces import Message

ACCEPT = ["json", "msgpack", "yaml", "pickle"]


def _captured() -> list[tuple[str, int, dict[str, Any]]]:
    return [(name, index, message)
            for name, data in samples()
            for index, message in enumerate(data.get("messages") or [])
            if "envelope" in message or "properties" in message]


CAPTURED = _captured()


def _as_message(captured: dict[str, Any]) -> Message:
    if "envelope" in captured:  # Redis: the kombu JSON envelope
        env = captured["envelope"]
        props = dict(env["properties"])
        body = base64.b64decode(env["body"]) if props.get("body_encoding") == "base64" \
            else env["body"].encode()
        return Message(env["headers"], body, env["content-type"],
                       env.get("content-encoding", "utf-8"), props)
    props = dict(captured["properties"])  # AMQP: basic properties + raw body
    headers = props.pop("headers")
    return Message(headers, base64.b64decode(captured["body_b64"]),
                   props.pop("content_type"), props.pop("content_encoding", "utf-8"), props)


@pytest.fixture(scope="module")
def app() -> Conveyor:
    return Conveyor("envelope", broker="memory://envelope", accept_content=ACCEPT)


def test_the_samples_are_there() -> None:
    assert len(CAPTURED) > 60


@pytest.mark.parametrize(("case", "index", "captured"), CAPTURED,
                         ids=[f"{c}-{i}" for c, i, _ in CAPTURED])
def test_decode_every_captured_celery_message(app: Conveyor, case: str, index: int,
                                              captured: dict[str, Any]) -> None:
    message = _as_message(captured)
    if "protocol1" in case:
        with pytest.raises(DecodeError, match="protocol 1"):
            parse_message(message, app.codecs, ACCEPT)
        return
    if "auth" in case:  # signed: needs the capture's certificate (tests/plugins/codecs)
        with pytest.raises(ContentDisallowed, match="application/data"):
            parse_message(message, app.codecs, ACCEPT)
        return
    request = parse_message(message, app.codecs, ACCEPT)
    assert request.id == message.headers["id"]
    assert request.name == message.headers["task"]
    decoded = captured["body"]["decoded"]
    assert len(request.args) == len(decoded[0])
    assert set(request.kwargs) == set(decoded[1])
    if "serialized_text" in captured["body"] and captured["body"]["serialized_text"].startswith("[["):
        assert request.args == decoded[0]
    if message.headers.get("eta"):
        assert request.eta is not None and request.eta.tzinfo is not None
    if captured["body"].get("decoded") and decoded[2].get("callbacks"):
        assert request.callbacks and request.callbacks[0]["task"]


def test_decoding_refuses_content_types_not_accepted(app: Conveyor) -> None:
    message = build_message(name="t.x", task_id="a", args=[1], kwargs={}, codecs=app.codecs,
                            serializer="pickle")
    with pytest.raises(ContentDisallowed, match="application/x-python-serialize.*accept_content"):
        parse_message(message, app.codecs, ["json"])


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'{"a": 1}', b"[[1], 2, {}]"])
def test_bad_bodies_are_decode_errors(app: Conveyor, body: bytes) -> None:
    message = Message({"task": "t.x", "id": "bad"}, body)
    with pytest.raises(DecodeError):
        parse_message(message, app.codecs, ["json"])


@pytest.mark.parametrize("text,expected", [
    ("2030-01-01T12:00:00+00:00", dt.datetime(2030, 1, 1, 12, tzinfo=dt.timezone.utc)),
    ("2030-01-01T12:00:00Z", dt.datetime(2030, 1, 1, 12, tzinfo=dt.timezone.utc)),
    ("2030-01-01T12:00:00", dt.datetime(2030, 1, 1, 12, tzinfo=dt.timezone.utc)),
    ("2030-01-01T13:00:00+01:00", dt.datetime(2030, 1, 1, 12, tzinfo=dt.timezone.utc)),
])
def test_times_in_every_form_celery_sends(text: str, expected: dt.datetime) -> None:
    assert from_iso(text) == expected


# ---------------------------------------------------------------- against Celery itself
CALLS: list[dict[str, Any]] = [
    {},
    {"countdown": 30},
    {"eta": dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.timezone.utc)},
    {"expires": dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.timezone.utc)},
    {"time_limit": 60, "soft_time_limit": 30, "shadow": "renamed.add"},
    {"parent_id": "cap-parent", "root_id": "cap-root", "group_id": "g", "group_index": 3},
    {"ignore_result": True},
    {"retries": 2},
    {"stamped_headers": ["mystamp", "tenant"], "mystamp": "v1", "tenant": ["a", "b"]},
]


@pytest.mark.parametrize("call", CALLS)
def test_headers_match_what_celery_builds(app: Conveyor, call: dict[str, Any]) -> None:
    celery = pytest.importorskip("celery")
    capp = celery.Celery("cmp", broker="memory://", set_as_current=False)
    now = dt.datetime.now(dt.timezone.utc)
    celery_call = {k: v for k, v in call.items() if k != "countdown"}
    if "countdown" in call:
        celery_call["eta"] = now + dt.timedelta(seconds=call["countdown"])
    if "group_id" in call:
        celery_call["group_id"] = call["group_id"]
    theirs = capp.amqp.as_task_v2("cap-1", "proj.add", args=(2, 2), kwargs={"k": 1},
                                  now=now, **celery_call)
    ours, _route, _due, _opts = app.prepare("proj.add", (2, 2), {"k": 1},
                                            {"task_id": "cap-1", **celery_call}, {}, None)
    assert list(ours.headers) == list(theirs.headers)  # same keys, same order
    for key, value in theirs.headers.items():
        if key != "origin":
            assert ours.headers[key] == value, key
    body = json.loads(ours.body)
    assert body == json.loads(json.dumps(list(theirs.body)))


@pytest.mark.parametrize("compression", [None, "zlib", "gzip", "bzip2", "lzma"])
def test_kombu_decodes_what_we_build(app: Conveyor, compression: str | None) -> None:
    kombu_compression = pytest.importorskip("kombu.compression")
    from kombu.serialization import loads
    message = build_message(name="proj.add", task_id="x", args=[2, 2], kwargs={"a": [1]},
                            codecs=app.codecs, serializer="json", compression=compression)
    body = message.body
    if compression:
        assert message.headers["compression"] == {
            "zlib": "application/x-gzip", "gzip": "application/x-gzip",
            "bzip2": "application/x-bz2", "lzma": "application/x-lzma"}[compression]
        body = kombu_compression.decompress(body, message.headers["compression"])
    decoded = loads(body, message.content_type, message.content_encoding, accept=["application/json"])
    assert decoded == [[2, 2], {"a": [1]}, {"callbacks": None, "errbacks": None,
                                            "chain": None, "chord": None}]


def test_kombu_json_extension_types_round_trip(app: Conveyor) -> None:
    pytest.importorskip("kombu")
    import decimal
    import uuid

    from kombu.serialization import dumps, loads
    values = {"dt": dt.datetime(2030, 1, 2, 3, 4, 5, 6000, tzinfo=dt.timezone.utc),
              "d": dt.date(2030, 1, 2), "t": dt.time(12, 30), "dec": decimal.Decimal("10.25"),
              "u": uuid.UUID("12345678123456781234567812345678"), "b": b"text",
              "raw": b"\xff\x00"}
    ours = app.codecs.serializer("json")
    assert loads(ours.dumps(values), "application/json", "utf-8", accept=["application/json"]) == values
    _ctype, _enc, theirs = dumps(values, serializer="json")
    assert ours.loads(theirs.encode() if isinstance(theirs, str) else theirs) == values


@pytest.mark.parametrize(("args", "kwargs"), [((), {}), ([], {}), ((1,), {}), ((), {"k": 1})])
def test_json_body_is_what_kombu_writes_with_or_without_arguments(
        app: Conveyor, args: Any, kwargs: dict[str, Any]) -> None:
    serialization = pytest.importorskip("kombu.serialization")
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    _ctype, _enc, theirs = serialization.dumps([list(args), kwargs, embed], serializer="json")
    for _ in range(2):  # an argument-less body is shared: the second one is the same
        ours, _route, _due, _opts = app.prepare("proj.add", args, kwargs, {}, {}, None)
        assert ours.body == (theirs.encode() if isinstance(theirs, str) else theirs)


@pytest.mark.parametrize("text", [
    '[[2, 2], {}, null]', ' [[2, 2], {}, null]\n', '[[2, 2], {}, null] ', '{"a": 1}',
    '"x"', '12', ' ', '', '[1] [2]', '[1, ', '[[2, 2], {}, null] x', '\ufeff[1]',
    '{"a": Infinity}', '[1]\t',
])
def test_json_body_reads_as_json_loads_reads_it(app: Conveyor, text: str) -> None:
    # The body is scanned straight when it is one value from end to end; whitespace
    # around it, text after it and errors still read (or fail) as json.loads says.
    try:
        expected: Any = json.loads(text)
    except ValueError:
        with pytest.raises(DecodeError):
            app.codecs.loads(text.encode(), "application/json", None, ["json"])
        return
    assert app.codecs.loads(text.encode(), "application/json", None, ["json"]) == expected


def test_priority_and_expiration_properties(app: Conveyor) -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    message = build_message(name="a", task_id="i", args=[], kwargs={}, codecs=app.codecs,
                            serializer="json", priority=7, now=now,
                            expires=now + dt.timedelta(seconds=60))
    assert message.properties["priority"] == 7
    assert message.properties["expiration"] == "60000"
    assert message.headers["expires"] == "2030-01-01T00:01:00+00:00"


# ---------------------------------------------------------------- headers as JSON text
#: What a hook or a caller may do to a built message's headers before it is sent.
EDITS: dict[str, Any] = {
    "none": lambda h: None,
    "added": lambda h: h.update({"x-trace": "t\u00e9"}),
    "task": lambda h: h.update({"task": "other.task"}),
    "retries false": lambda h: h.update({"retries": False}),  # equal to 0, printed apart
    "ignore 0": lambda h: h.update({"ignore_result": 0}),
    "limit float": lambda h: h["timelimit"].__setitem__(0, 0.0),
    "eta": lambda h: h.update({"eta": "2030-01-01T00:00:00+00:00"}),
    "stamped": lambda h: h["stamps"].update({"s": [1, "\u00e9"]}),
    "id not text": lambda h: h.update({"id": 7}),
    "deleted": lambda h: h.pop("origin"),
    "deleted and added": lambda h: (h.pop("origin"), h.update({"x": 1})),
}
STYLES = [(JSONStyle(), {}), (JSONStyle(",", ":", ascii=False),
                              {"separators": (",", ":"), "ensure_ascii": False})]


@pytest.mark.parametrize("edit", EDITS)
@pytest.mark.parametrize("call", [*CALLS, {"compression": "zlib"}, {"headers": {"x": [1]}},
                                  {"task_id": 'odd "id" \u2603', "shadow": "\u00fcber"}])
def test_headers_json_writes_what_json_dumps_writes(app: Conveyor, call: dict[str, Any],
                                                    edit: str) -> None:
    """Headers laid out from a template's text pieces are the encoder's text exactly,
    whatever was done to them after the message was built (before the template was
    laid out, and after)."""
    for args, kwargs in (((), {}), ((2, "\u00e9"), {"k": [1]})):
        for edited in ("none", edit, "none", edit):
            message, *_ = app.prepare("proj.add", args, kwargs, call, {}, None)
            EDITS[edited](message.headers)
            for style, options in STYLES:
                assert headers_json(message, style) == json.dumps(message.headers, **options)


@pytest.mark.parametrize("call", [*CALLS, {"priority": 4}, {"headers": {"x": [1]}},
                                  {"reply_to": "r\u00e9plies", "priority": 0},
                                  {"task_id": 'odd "id" \u2603'}])
def test_properties_json_writes_what_json_dumps_writes(app: Conveyor,
                                                       call: dict[str, Any]) -> None:
    """Properties written from the text laid out per template are the encoder's text
    exactly, less the keys a transport leaves out and with its own members last;
    before anything reads them and after a hook edits them."""
    from conveyor.envelope import properties_json

    def expected(message: Message, style: JSONStyle, options: dict[str, Any],
                 omit: frozenset[str], more: str) -> str:
        kept = {k: v for k, v in message.properties.items() if k not in omit}
        return json.dumps({**kept, "more": 1} if more else kept, **options).replace(
            f'"more"{style.key}1', more)

    edits = (lambda p: None, lambda p: p.update({"x-trace": "t\u00e9"}), dict.clear)
    for omit in (frozenset(), frozenset({"priority", "delivery_tag"}),
                 frozenset({"correlation_id"})):
        for more in ("", '"more": 2'):
            for style, options in STYLES:
                for edit in edits:
                    message, *_ = app.prepare("proj.add", (), {}, call, {}, None)
                    unread = getattr(message, "props", "read") is None
                    text = properties_json(message, style, omit=omit, more=more)
                    still = getattr(message, "props", "read") is None  # no dict made
                    assert still == (unread and "correlation_id" not in omit)
                    assert text == expected(message, style, options, omit, more)
                    edit(message.properties)
                    assert properties_json(message, style, omit=omit, more=more) \
                        == expected(message, style, options, omit, more)


def test_a_built_message_is_a_message_whose_headers_are_laid_out_when_read(
        app: Conveyor) -> None:
    """Its headers are built on first read (and kept, so edits stick), it equals a
    plain Message with the same fields, and pickles and copies as one."""
    import copy
    import dataclasses
    import pickle

    from conveyor.envelope import BuiltMessage
    message, *_ = app.prepare("proj.add", (2,), {}, {}, {}, None)
    assert isinstance(message, BuiltMessage) and isinstance(message, Message)
    text = headers_json(message)
    assert message.laid is None  # written without building the dict
    assert message.priority is None and message.props is None  # nor its properties
    assert message.properties == {"correlation_id": message.headers["id"],
                                  "reply_to": None, "delivery_mode": 2, "priority": None}
    message.properties["priority"] = 3
    assert message.priority == 3 and message.properties["priority"] == 3
    message.headers["x-edited"] = 1
    assert message.headers["x-edited"] == 1
    assert headers_json(message) == json.dumps(message.headers) != text
    plain = Message(dict(message.headers), message.body, message.content_type,
                    message.content_encoding, dict(message.properties))
    assert plain == message and message == plain
    for again in (pickle.loads(pickle.dumps(message)), copy.deepcopy(message),
                  dataclasses.replace(message)):
        assert again == message and again.headers["x-edited"] == 1
        assert again.properties["priority"] == 3
