"""Publishers: buffering inside ``with``, when a buffer goes out, and the plan cache
that makes bulk publishing cheap. memory:// throughout (Redis: tests/integration)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor, chain, group, hookimpl
from conveyor.connection import Connection, Publisher
from conveyor.envelope import message_from_options
from conveyor.exceptions import ConfigurationError, OperationalError, UnknownOptionError
from conveyor.interfaces import Message
from conveyor.options import resolve

_n = iter(range(10**6))


@pytest.fixture
def app() -> Iterator[Conveyor]:
    url = f"memory://publisher-{next(_n)}"
    app = Conveyor(f"publisher{next(_n)}", broker=url, backend=url)

    @app.task(name="p.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="p.noop")
    def noop() -> None:
        return None

    yield app
    app.close()


def depth(app: Conveyor, queue: str = "celery") -> int:
    transport = app.transport_factory()
    transport.connect()
    try:
        return transport.depth(queue)
    finally:
        transport.close()


def drain(app: Conveyor, queue: str) -> list[Message]:
    transport = app.transport_factory()
    transport.connect()
    try:
        deliveries = transport.fetch([queue], limit=1000, timeout=0.05)
        transport.ack(deliveries)
        return [d.message for d in deliveries]
    finally:
        transport.close()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    @hookimpl
    def before_task_publish(self, message: Message) -> None:
        self.calls.append(("before", message.task_id))

    @hookimpl
    def after_task_publish(self, message: Message) -> None:
        self.calls.append(("after", message.task_id))


def failing(conn: Connection, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make ``conn`` fail every send as an exhausted retry policy would."""
    attempts: list[int] = []

    def fail(batch: Any, *args: Any, **kwargs: Any) -> None:
        attempts.append(len(batch) if isinstance(batch, list) else 1)
        raise OperationalError("Cannot publish to broker memory://: down (test)")

    monkeypatch.setattr(conn, "publish_many", fail)
    monkeypatch.setattr(conn, "publish", fail)
    return attempts


# ---------------------------------------------------------------------- buffering
def test_buffered_publisher_sends_nothing_until_its_block_exits(app: Conveyor) -> None:
    add = app.tasks["p.add"]
    with app.pool.acquire() as conn:
        with add.get_publisher(conn) as pub:
            results = [add.apply_async((i, i), publisher=pub) for i in range(25)]
            assert pub.buffering and pub.pending == 25
            assert depth(app) == 0
        assert depth(app) == 25 and pub.pending == 0
    assert len({r.id for r in results}) == 25


def test_one_publish_many_per_flush(app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    add = app.tasks["p.add"]
    with app.pool.acquire() as conn:
        sizes: list[int] = []
        real = conn.publish_many
        monkeypatch.setattr(conn, "publish", lambda *a, **k: pytest.fail("not pipelined"))
        monkeypatch.setattr(conn, "publish_many",
                            lambda batch, **kw: (sizes.append(len(batch)), real(batch, **kw)))
        with add.get_publisher(conn, buffer=10) as pub:
            for i in range(25):
                add.apply_async((i, i), publisher=pub)
                if i == 9:
                    assert depth(app) == 10 and pub.pending == 0  # the 10th flushed
            assert depth(app) == 20 and pub.pending == 5
    assert sizes == [10, 10, 5] and depth(app) == 25


def test_flush_sends_the_buffer_now(app: Conveyor) -> None:
    add = app.tasks["p.add"]
    with app.pool.acquire() as conn, add.get_publisher(conn) as pub:
        add.apply_async((1, 1), publisher=pub)
        add.apply_async((2, 2), publisher=pub)
        pub.flush()
        assert depth(app) == 2 and pub.pending == 0
        pub.flush()  # nothing waits: a no-op
        assert depth(app) == 2


def test_without_with_every_send_goes_at_once(app: Conveyor) -> None:
    add = app.tasks["p.add"]
    with app.pool.acquire() as conn:
        pub = add.get_publisher(conn)  # Celery style: never entered
        add.apply_async((1, 1), publisher=pub)
        assert depth(app) == 1 and not pub.buffering
        with pub:  # buffered inside …
            add.apply_async((2, 2), publisher=pub)
            assert depth(app) == 1
        add.apply_async((3, 3), publisher=pub)  # … and unbuffered again after
        assert depth(app) == 3 and pub.pending == 0


def test_an_exception_in_the_block_still_sends_what_was_handed_over(app: Conveyor) -> None:
    add = app.tasks["p.add"]
    with pytest.raises(KeyError, match="body"):
        with app.pool.acquire() as conn, add.get_publisher(conn) as pub:
            for i in range(5):
                add.apply_async((i, i), publisher=pub)
            raise KeyError("body")
    assert depth(app) == 5


def test_a_failing_flush_does_not_mask_the_body_exception(
        app: Conveyor, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    add = app.tasks["p.add"]
    with app.pool.acquire() as conn:
        attempts = failing(conn, monkeypatch)
        with pytest.raises(KeyError, match="body") as info:
            with add.get_publisher(conn) as pub:
                add.apply_async((1, 1), publisher=pub)
                add.apply_async((2, 2), publisher=pub)
                raise KeyError("body")
    assert attempts == [2]
    assert any("buffer could not be sent" in note and "OperationalError" in note
               for note in info.value.__notes__)
    assert any("could not send its buffer" in r.getMessage() and r.levelno == logging.ERROR
               for r in caplog.records)


def test_a_failing_flush_at_exit_raises_and_lost_results_say_so(
        app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    add = app.tasks["p.add"]
    with app.pool.acquire() as conn:
        failing(conn, monkeypatch)
        with pytest.raises(OperationalError) as info:
            with add.get_publisher(conn) as pub:
                lost = add.apply_async((1, 1), publisher=pub)
                add.apply_async((2, 2), publisher=pub)
        assert any("batch of 2 buffered messages failed" in n for n in info.value.__notes__)
        with pytest.raises(OperationalError, match=f"Task {lost.id} may never have reached"):
            lost.get(timeout=1)
        with pytest.raises(OperationalError, match="may never have reached"):
            lost.state  # noqa: B018 - every read says so, not just the first


def test_reading_a_result_flushes_its_publisher(app: Conveyor) -> None:
    add = app.tasks["p.add"]
    with app.Worker(pool="threads").running():
        with app.pool.acquire() as conn, add.get_publisher(conn) as pub:
            first = add.apply_async((1, 1), publisher=pub)
            second = add.apply_async((2, 2), publisher=pub)
            assert pub.pending == 2
            assert first.get(timeout=5) == 2  # would wait forever without the flush
            assert pub.pending == 0
            third = add.apply_async((3, 3), publisher=pub)
            assert third.ready() in (False, True) and pub.pending == 0
            fourth = add.apply_async((4, 4), publisher=pub)
            assert fourth.state in ("PENDING", "RECEIVED", "STARTED", "SUCCESS")
            assert pub.pending == 0
            fifth = add.apply_async((5, 5), publisher=pub)
            assert fifth.wait(timeout=5) == 10
            assert [r.get(timeout=5) for r in (second, third, fourth)] == [4, 6, 8]


def test_a_handle_from_a_publisher_knows_its_buffer_and_ignore_result(
        app: Conveyor) -> None:
    """A handle is tied to its publisher while its message waits in the buffer, not
    once the buffer went out with it; with ``ignore_result`` it has nothing to wait
    for (no worker runs here: waiting would time out)."""
    add = app.tasks["p.add"]
    with app.pool.acquire() as conn, add.get_publisher(conn, buffer=2) as pub:
        waiting = add.apply_async((1, 1), publisher=pub, ignore_result=True)
        assert waiting.publisher is pub and waiting.ignored
        filled = add.apply_async((2, 2), publisher=pub, ignore_result=True)
        assert filled.publisher is None and pub.pending == 0  # sent: buffer full
        assert waiting.get(timeout=0.5) is None and filled.get(timeout=0.5) is None
        kept = add.apply_async((3, 3), publisher=pub)
        assert kept.publisher is pub and not kept.ignored
        assert kept.state == "PENDING" and pub.pending == 0 and kept.publisher is None
    assert depth(app) == 3


def test_groups_and_chains_through_a_publisher(app: Conveyor,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    add = app.tasks["p.add"]
    with app.Worker(pool="threads", concurrency=4).running():
        with app.pool.acquire() as conn:
            sizes: list[int] = []
            real = conn.publish_many
            monkeypatch.setattr(conn, "publish_many",
                                lambda batch, **kw: (sizes.append(len(batch)), real(batch, **kw)))
            with add.get_publisher(conn) as pub:
                job = group(add.s(i, i) for i in range(6)).apply_async(publisher=pub)
                chained = (add.s(1, 1) | add.s(10)).apply_async(publisher=pub)
                assert pub.pending == 7 and sizes == []
                assert job.get(timeout=5) == [0, 2, 4, 6, 8, 10]
                assert sizes == [7]  # group and chain head went out together
                assert chained.get(timeout=5) == 12
            # Unbuffered, a group through a publisher is still one pipelined batch.
            pub2 = add.get_publisher(conn)
            assert group(add.s(i, 1) for i in range(4)).apply_async(
                publisher=pub2).get(timeout=5) == [1, 2, 3, 4]
            assert sizes[-1] == 4


def test_a_change_of_retry_options_flushes_first(app: Conveyor,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    add = app.tasks["p.add"]
    patient = {"max_retries": 5, "interval_start": 0, "interval_step": 0.1,
               "interval_max": 0.5}
    with app.pool.acquire() as conn:
        sent: list[tuple[int, Any, Any]] = []
        real = conn.publish_many
        real_one = conn.publish

        def many(batch: Any, *, retry: Any, policy: Any) -> None:
            sent.append((len(batch), retry, policy))
            real(batch, retry=retry, policy=policy)

        def one(message: Any, route: Any, due: Any, *, retry: Any, policy: Any) -> None:
            sent.append((1, retry, policy))
            real_one(message, route, due, retry=retry, policy=policy)

        monkeypatch.setattr(conn, "publish_many", many)
        monkeypatch.setattr(conn, "publish", one)
        with add.get_publisher(conn) as pub:
            add.apply_async((1, 1), publisher=pub)
            add.apply_async((2, 2), publisher=pub)
            add.apply_async((3, 3), publisher=pub, retry_policy=patient)
            add.apply_async((4, 4), publisher=pub, retry_policy=dict(patient))  # equal
            add.apply_async((5, 5), publisher=pub, retry=False)
    default = app.conf.task_publish_retry_policy
    assert [(n, r) for n, r, _p in sent] == [(2, True), (2, True), (1, False)]
    assert sent[0][2] == default and sent[1][2] == patient
    assert depth(app) == 5


def test_hooks_before_at_the_call_after_at_the_flush(app: Conveyor) -> None:
    rec = Recorder()
    app.register_plugin(rec)
    add = app.tasks["p.add"]
    with app.pool.acquire() as conn, add.get_publisher(conn) as pub:
        a = add.apply_async((1, 1), publisher=pub)
        b = add.apply_async((2, 2), publisher=pub)
        assert rec.calls == [("before", a.id), ("before", b.id)]
    assert rec.calls[2:] == [("after", a.id), ("after", b.id)]


def test_publisher_arguments_are_checked(app: Conveyor) -> None:
    add = app.tasks["p.add"]
    with app.pool.acquire() as conn:
        for bad in (0, -1, 1.5, True, "10"):
            with pytest.raises(ConfigurationError, match="buffer"):
                add.get_publisher(conn, buffer=bad)  # type: ignore[arg-type]
        assert isinstance(add.get_publisher(conn, buffer=1), Publisher)
        with pytest.raises(TypeError, match="get_publisher"):
            add.apply_async((1, 1), publisher=conn)
    assert depth(app) == 0


def test_the_publisher_is_where_it_was(app: Conveyor) -> None:
    from conveyor.task import Publisher as Old
    assert Old is Publisher


# ---------------------------------------------------------------------- plan cache
def sent_messages(app: Conveyor, *queues: str) -> dict[str, Message]:
    out: dict[str, Message] = {}
    for queue in queues:
        for message in drain(app, queue):
            assert message.task_id is not None
            out[message.task_id] = message
    return out


def test_one_batch_of_mixed_options_lands_where_each_says(app: Conveyor) -> None:
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any], dict[str, Any], dict[str, Any]]]
    calls = []
    for i in range(30):
        call: dict[str, Any] = {"queue": f"q{i % 3}"}
        if i % 2:
            call["priority"] = i
        if i % 5 == 0:
            call["countdown"] = 0.0
        if i % 7 == 0:
            call["time_limit"] = 1 if i % 14 else 1.0
        calls.append(("p.add", (i, i), {}, call, {}))
    results = app.publish_batch(calls)
    by_queue = {q: sent_messages(app, q) for q in ("q0", "q1", "q2")}
    assert sum(len(v) for v in by_queue.values()) == 30
    for i, result in enumerate(results):
        call = calls[i][3]
        message = by_queue[call["queue"]][result.id]
        assert message.properties["priority"] == call.get("priority")
        assert (message.headers["eta"] is not None) == ("countdown" in call)
        limit = call.get("time_limit")
        assert message.headers["timelimit"] == [limit, None]
        assert type(message.headers["timelimit"][0]) is type(limit)
        assert message.headers["argsrepr"] == f"({i}, {i})"
        assert message.headers["id"] == message.headers["root_id"] == result.id


def test_group_members_keep_their_own_index_and_options(app: Conveyor) -> None:
    add = app.tasks["p.add"]
    job = group(add.s(1, 1).set(queue="a"), add.s(2, 2), add.s(3, 3).set(priority=7),
                add.s(4, 4))
    result = job.apply_async()
    in_a, in_celery = sent_messages(app, "a"), sent_messages(app, "celery")
    assert list(in_a) == [result.results[0].id] and len(in_celery) == 3
    got = {**in_a, **in_celery}
    for index, member in enumerate(result.results):
        headers = got[member.id].headers
        assert (headers["group"], headers["group_index"]) == (result.id, index)
    assert got[result.results[2].id].properties["priority"] == 7
    assert got[result.results[3].id].properties["priority"] is None


def test_cached_and_fresh_messages_are_the_same(app: Conveyor) -> None:
    add = app.tasks["p.add"]
    call = {"queue": "q", "priority": 3, "shadow": "s", "soft_time_limit": 2.5,
            "ignore_result": True, "retries": 2, "parent_id": "p", "root_id": "r",
            "group_id": "g", "group_index": 0, "task_id": "t-1"}
    for _ in range(2):  # second time from the cache
        message, _route, _due, opts = app.prepare("p.add", (1, 2), {"k": "v"}, call, {},
                                                  add)
        fresh = message_from_options("p.add", "t-1", (1, 2), {"k": "v"}, app.codecs,
                                     resolve(call, {}, add, None, app.conf), None, None,
                                     None, None)
        assert list(message.headers.items()) == list(
            {**fresh.headers, "origin": message.headers["origin"]}.items())
        assert message.properties == fresh.properties and message.body == fresh.body
        assert opts["task_id"] == "t-1" and opts["group_index"] == 0
        assert opts["queue"] == "q" and opts["publisher"] is None


def test_per_call_options_do_not_leak_from_the_cache(app: Conveyor) -> None:
    add = app.tasks["p.add"]
    first, *_ = app.prepare("p.add", (), {}, {"queue": "q", "task_id": "one",
                                             "group_id": "g", "group_index": 3,
                                             "retries": 4, "parent_id": "p"}, {}, add)
    second, *_ = app.prepare("p.add", (), {}, {"queue": "q"}, {}, add)
    assert first.headers["id"] == "one" and first.headers["retries"] == 4
    assert second.headers["id"] != "one"
    assert (second.headers["group"], second.headers["group_index"],
            second.headers["retries"], second.headers["parent_id"]) == (None, None, 0, None)
    assert second.headers["root_id"] == second.headers["id"]


def test_headers_edited_by_a_hook_do_not_leak_into_the_next_message(app: Conveyor) -> None:
    class Stamper:
        @hookimpl
        def before_task_publish(self, message: Message) -> None:
            message.headers["stamps"]["x"] = message.task_id
            message.headers["timelimit"].append("x")
            message.properties["x-edited"] = True

    app.register_plugin(Stamper())
    noop = app.tasks["p.noop"]
    with app.pool.acquire() as conn, noop.get_publisher(conn) as pub:
        a, b = (noop.apply_async(publisher=pub) for _ in range(2))
    got = sent_messages(app, "celery")
    assert got[a.id].headers["stamps"] == {"x": a.id}
    assert got[b.id].headers["stamps"] == {"x": b.id}
    assert got[b.id].headers["timelimit"] == [None, None, "x"]
    message, *_ = app.prepare("p.noop", (), {}, {}, {}, noop)
    assert message.headers["stamps"] == {} and "x-edited" not in message.properties


def test_unknown_and_bad_options_raise_every_time(app: Conveyor) -> None:
    add = app.tasks["p.add"]
    add.apply_async((1, 1), priority=1)
    for _ in range(2):
        with pytest.raises(UnknownOptionError, match="qeue"):
            add.apply_async((1, 1), qeue="x")
        with pytest.raises(ConfigurationError, match="priority"):
            add.apply_async((1, 1), priority=True)  # equal to the cached 1, not the same
        with pytest.raises(ConfigurationError, match="priority"):
            add.apply_async((1, 1), priority=300)
        with pytest.raises(ConfigurationError, match="eta must be a datetime"):
            add.apply_async((1, 1), eta="tomorrow")
        with pytest.raises(UnknownOptionError, match="signature"):
            app.publish_batch([("p.add", (1, 1), {}, {}, {"bogus": 1})])


def test_the_cache_follows_settings_task_attributes_and_hooks(app: Conveyor) -> None:
    add = app.tasks["p.add"]
    route = lambda: app.prepare("p.add", (), {}, {}, {}, add)[1].queue  # noqa: E731
    assert route() == "celery"
    app.conf.task_default_queue = "from-settings"
    assert route() == "from-settings"
    add.queue = "from-task"
    assert route() == "from-task"

    class Router:
        @hookimpl
        def route_task(self, args: tuple[Any, ...]) -> dict[str, Any] | None:
            return {"queue": f"by-args-{args[0]}"} if args else None

    app.register_plugin(Router())
    add.queue = None
    assert [app.prepare("p.add", (i,), {}, {}, {}, add)[1].queue for i in (1, 2)] == [
        "by-args-1", "by-args-2"]
    assert route() == "from-settings"


def test_times_are_computed_per_message_from_a_cached_plan(app: Conveyor) -> None:
    add = app.tasks["p.add"]
    before = dt.datetime.now(dt.timezone.utc)
    first, *_ = app.prepare("p.add", (), {}, {"countdown": 60, "expires": 120}, {}, add)
    second, *_ = app.prepare("p.add", (), {}, {"countdown": 60, "expires": 120}, {}, add)
    for message in (first, second):
        eta = dt.datetime.fromisoformat(message.headers["eta"])
        assert dt.timedelta(seconds=59) < eta - before < dt.timedelta(seconds=61)
        assert 110_000 < int(message.properties["expiration"]) <= 120_000
    assert second.headers["eta"] >= first.headers["eta"]


def test_equal_values_that_print_apart_are_not_confused(app: Conveyor) -> None:
    add = app.tasks["p.add"]
    limits = [app.prepare("p.add", (), {}, {"time_limit": v}, {}, add)[0]
              .headers["timelimit"] for v in (1, 1.0, 0.0, -0.0, True)]
    assert [repr(t[0]) for t in limits] == ["1", "1.0", "0.0", "-0.0", "True"]


def test_a_bad_call_in_a_batch_sends_nothing(app: Conveyor) -> None:
    calls = [("p.add", (i, i), {}, {}, {}) for i in range(300)]
    app.publish_batch(calls)
    with pytest.raises(UnknownOptionError):
        app.publish_batch([*calls, ("p.add", (), {}, {"nope": 1}, {})])
    assert depth(app) == 300


def test_each_route_is_declared_once_per_connection(app: Conveyor,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.interfaces import Route
    from conveyor_std.memory import MemoryTransport
    declared: list[Route] = []
    real = MemoryTransport.declare

    def spy(self: MemoryTransport, route: Route) -> None:
        declared.append(route)
        real(self, route)

    monkeypatch.setattr(MemoryTransport, "declare", spy)
    add = app.tasks["p.add"]
    for i in range(5):
        add.apply_async((i, i))
    group(add.s(1, 1), add.s(2, 2)).apply_async(queue="other")
    add.apply_async((1, 1), queue="other")
    assert declared == [Route("celery"), Route("other")]
    with app.pool.acquire() as conn:
        conn._reset()  # a reconnect declares again
    add.apply_async((1, 1))
    assert declared[2:] == [Route("celery")]


def test_ids_made_n_at_once_are_uuid4_texts_never_given_twice() -> None:
    # A batch's delivery tags come from new_ids (perf); what its last block has over
    # is what new_id gives next, so neither gives an id twice.
    import uuid

    from conveyor.publish import new_id, new_ids

    assert new_ids(0) == []
    seen: list[str] = []
    for n in (1, 255, 256, 1000):
        ids = new_ids(n)
        assert len(ids) == n
        seen += ids
        seen += [new_id() for _ in range(300)]
    assert len(set(seen)) == len(seen)
    for text in seen:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and str(parsed) == text
