"""Canvas stamping: what ``stamp()`` puts on each signature of a workflow, the
headers a stamped message carries (against Celery's captures), and what the worker's
request reads back."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from wire_samples import sample

from conveyor import Conveyor, StampingVisitor, chain, chord, group
from conveyor.canvas import from_dict
from conveyor.envelope import parse_message
from conveyor.exceptions import ConfigurationError, UnknownOptionError
from conveyor.interfaces import Message


@pytest.fixture(scope="module")
def app() -> Conveyor:
    app = Conveyor("stamping", broker="memory://stamping")

    @app.task(name="st.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def _headers(app: Conveyor, options: dict[str, Any]) -> dict[str, Any]:
    message, *_ = app.prepare("st.add", (1, 1), {}, {"task_id": "cap-stamp"}, options,
                              None)
    return message.headers


def test_a_stamped_call_carries_the_headers_celery_writes(app: Conveyor) -> None:
    """Celery's capture of ``apply_async((1, 1), stamped_headers=['mystamp'],
    mystamp='v1')``, on both brokers: the same two headers, the stamp nowhere else."""
    for name in ("redis-json-stamped", "amqp-json-stamped"):
        captured = sample(name)["messages"][0]
        theirs = (captured["envelope"]["headers"] if "envelope" in captured
                  else captured["properties"]["headers"])
        ours = _headers(app, {"stamped_headers": ["mystamp"], "mystamp": "v1"})
        assert list(ours) == list(theirs)
        assert (ours["stamped_headers"], ours["stamps"]) == (["mystamp"], {"mystamp": "v1"})
        assert (theirs["stamped_headers"], theirs["stamps"]) == (["mystamp"],
                                                                {"mystamp": "v1"})
        sig = app.tasks["st.add"].s(1, 1).stamp(mystamp="v1")
        assert _headers(app, sig.options) == ours


def test_an_unstamped_call_carries_celerys_empty_stamps(app: Conveyor) -> None:
    headers = _headers(app, {})
    assert headers["stamped_headers"] is None and headers["stamps"] == {}


def test_the_worker_reads_the_stamps_of_celerys_message(app: Conveyor) -> None:
    captured = sample("amqp-json-stamped")["messages"][0]
    props = dict(captured["properties"])
    headers = props.pop("headers")
    message = Message(headers, base64.b64decode(captured["body_b64"]),
                      props.pop("content_type"), props.pop("content_encoding"), props)
    request = parse_message(message, app.codecs, ["json"])
    assert request.stamped_headers == ["mystamp"]
    assert request.stamps == {"mystamp": "v1"}
    plain = parse_message(Message({**headers, "stamped_headers": None, "stamps": {}},
                                  message.body, "application/json", "utf-8", props),
                          app.codecs, ["json"])
    assert (plain.stamped_headers, plain.stamps) == ([], {})


def test_a_stamp_again_replaces_or_appends(app: Conveyor) -> None:
    sig = app.tasks["st.add"].s(1, 2).stamp(tenant="acme", wave=1)
    assert sig.options == {"tenant": "acme", "wave": 1, "stamped_headers": ["tenant", "wave"]}
    sig.stamp(tenant="beta")
    assert sig.options["tenant"] == "beta"
    sig.stamp(append_stamps=True, tenant="gamma", extra="x")
    assert sig.options["tenant"] == ["beta", "gamma"]
    assert sig.options["stamped_headers"] == ["tenant", "wave", "extra"]


class Recorder(StampingVisitor):
    """Stamps each task with its name and its place, and records the walk."""

    def __init__(self) -> None:
        self.walk: list[str] = []

    def on_signature(self, sig: Any, **stamps: Any) -> dict[str, Any]:
        self.walk.append(f"sig {sig.name} {sig.args}")
        return {"name": sig.name}

    def on_group_start(self, group: Any, **stamps: Any) -> dict[str, Any]:
        self.walk.append("group start")
        return {"in_group": True}

    def on_group_end(self, group: Any, **stamps: Any) -> None:
        self.walk.append("group end")

    def on_chain_start(self, chain: Any, **stamps: Any) -> dict[str, Any]:
        self.walk.append("chain start")
        return {"in_chain": True}

    def on_chain_end(self, chain: Any, **stamps: Any) -> None:
        self.walk.append("chain end")

    def on_chord_header_start(self, chord: Any, **stamps: Any) -> dict[str, Any]:
        return {"part": "header"}

    def on_chord_body(self, chord: Any, **stamps: Any) -> dict[str, Any]:
        return {"part": "body"}

    def on_callback(self, callback: Any, **stamps: Any) -> dict[str, Any]:
        return {"via": "callback"}

    def on_errback(self, errback: Any, **stamps: Any) -> dict[str, Any]:
        return {"via": "errback"}


def _stamps(sig: Any) -> dict[str, Any]:
    return {name: sig.options[name] for name in sig.options.get("stamped_headers", ())}


def test_a_visitor_stamps_every_task_of_a_workflow_and_its_links(app: Conveyor) -> None:
    add = app.tasks["st.add"]
    first = add.s(1, 1)
    first.link(add.si(9, 9))
    last = add.s(4).on_error(add.si(0, 0))
    workflow = chain(first, group(add.s(2), add.s(3)), last)
    visitor = Recorder()
    assert workflow.stamp(visitor, flow="w1") is workflow
    assert visitor.walk == ["chain start", "sig st.add [9, 9]", "sig st.add [1, 1]",
                            "group start", "sig st.add [2]", "sig st.add [3]", "group end",
                            "sig st.add [0, 0]", "sig st.add [4]", "chain end"]
    step_one, middle, step_three = workflow.tasks
    assert _stamps(step_one) == {"flow": "w1", "in_chain": True, "name": "st.add"}
    assert [_stamps(m) for m in middle.tasks] == [
        {"flow": "w1", "in_chain": True, "in_group": True, "name": "st.add"}] * 2
    callback = step_one.options["link"][0]
    errback = step_three.options["link_error"][0]
    # A link gets the stamps given to the signature it hangs on, with the visitor's
    # on_callback/on_errback ones, and on_signature's as any task does.
    assert _stamps(callback) == {"flow": "w1", "in_chain": True, "via": "callback",
                                 "name": "st.add"}
    assert _stamps(errback)["via"] == "errback"


def test_a_chord_stamps_its_header_and_body_apart(app: Conveyor) -> None:
    add = app.tasks["st.add"]
    workflow = chord([add.s(1, 1), add.s(2, 2)], add.s(5))
    workflow.stamp(Recorder(), flow="c1")
    assert [_stamps(t)["part"] for t in workflow.header.tasks] == ["header", "header"]
    assert _stamps(workflow.body) == {"flow": "c1", "part": "body", "name": "st.add"}


def test_stamps_travel_inside_a_workflow_as_celery_writes_them(app: Conveyor) -> None:
    """A chain's later steps travel as dicts in the first message; rebuilt by the
    worker, they keep their stamps (the stamp names are options of theirs)."""
    add = app.tasks["st.add"]
    step = add.s(3).stamp(tenant="acme")
    rebuilt = from_dict(dict(step), app)
    assert _stamps(rebuilt) == {"tenant": "acme"}
    # A name that is neither an option nor a stamp of this dict is dropped.
    odd = {**dict(step), "options": {**step.options, "newer_celery_option": 1}}
    assert "newer_celery_option" not in from_dict(odd, app).options


def test_stamping_mistakes_say_what_is_wrong(app: Conveyor) -> None:
    add = app.tasks["st.add"]
    with pytest.raises(ConfigurationError, match="can't be named 'queue'"):
        add.s(1, 1).stamp(queue="x")
    with pytest.raises(ConfigurationError, match="list of stamp names"):
        add.apply_async((1, 1), stamped_headers="mystamp")  # type: ignore[arg-type]
    with pytest.raises(UnknownOptionError, match="mystamp"):
        add.apply_async((1, 1), mystamp="v1")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="dict of stamps"):
        class Bad(StampingVisitor):
            def on_signature(self, sig: Any, **stamps: Any) -> Any:
                return ["not", "a", "dict"]
        add.s(1, 1).stamp(Bad())


def test_a_worker_revokes_by_any_of_a_stamps_values() -> None:
    """What ``revoke_by_stamped_headers`` matches: a task whose stamp (a value or a
    list of them) shares a value with the revoked ones, by stamp name."""
    from conveyor.worker.revoked import Revoked

    def request(**stamps: Any) -> Any:
        message = Message({"task": "st.add", "id": f"id-{sorted(stamps.items())}",
                           "stamped_headers": list(stamps), "stamps": stamps},
                          b"[[], {}, {}]", "application/json", "utf-8", {})
        return parse_message(message, Conveyor("r", broker="memory://r").codecs, ["json"])

    revoked = Revoked()
    assert not revoked and not revoked.covers(request(tenant="acme"))
    revoked.add_stamps({"tenant": "acme", "wave": [1, 2]})
    assert revoked
    assert revoked.covers(request(tenant="acme"))
    assert revoked.covers(request(tenant=["beta", "acme"]))
    assert revoked.covers(request(wave=2))
    assert not revoked.covers(request(tenant="beta", wave=3))
    assert not revoked.covers(request(other="acme"))  # the name counts, not the value
    assert not revoked.covers(request())
