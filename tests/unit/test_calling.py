"""The calling API end to end on memory://, with a real worker thread."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import AsyncResult, Conveyor, chain, chord, group, signature
from conveyor.aio import AsyncUnsupportedError
from conveyor.exceptions import OperationalError, TaskRevokedError, TimeoutError
from conveyor.interfaces import Route

_n = iter(range(10**6))


@pytest.fixture
def app() -> Iterator[Conveyor]:
    name = f"memory://calling-{next(_n)}"
    app = Conveyor(f"calling{next(_n)}", broker=name, backend=name,
                   accept_content=["json", "pickle"])
    yield app
    app.close()


def tasks(app: Conveyor) -> Any:
    ns: dict[str, Any] = {"errors": [], "order": []}

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.boom")
    def boom(msg: str) -> None:
        raise ValueError(msg)

    @app.task(name="t.on_error")
    def on_error(request: Any, exc: BaseException, traceback: str) -> None:
        ns["errors"].append((request.id, repr(exc), "ValueError" in traceback))

    @app.task(name="t.headers", bind=True)
    def headers(self: Any) -> dict[str, Any]:
        return {k: self.request.headers.get(k) for k in ("x-tenant", "shadow", "timelimit")}

    @app.task(name="t.progress", bind=True)
    def progress(self: Any) -> str:
        self.update_state(state="PROGRESS", meta={"progress": 50})
        time.sleep(0.05)
        return "done"

    @app.task(name="t.flaky", bind=True, default_retry_delay=0.1)
    def flaky(self: Any) -> str:
        if self.request.retries < 2:
            self.retry(exc=KeyError("again"))
        return f"ok after {self.request.retries}"

    @app.task(name="t.record")
    def record(tag: Any) -> Any:
        ns["order"].append(tag)
        return tag

    @app.task(name="t.slow")
    def slow(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(name="t.aadd")
    async def aadd(x: int, y: int) -> int:
        await asyncio.sleep(0.01)
        return x + y

    ns.update(add=add, boom=boom, on_error=on_error, headers=headers, progress=progress,
              flaky=flaky, record=record, slow=slow, aadd=aadd)
    return type("Tasks", (), ns)


def test_call_runs_here_and_keeps_the_signature(app: Conveyor) -> None:
    t = tasks(app)
    assert t.add(2, 2) == 4
    assert inspect.signature(t.add) == inspect.signature(t.add.run)
    assert list(inspect.signature(t.headers).parameters) == []  # bind: self is not a parameter
    assert app.transport_factory().depth("celery") == 0


def test_delay_get_and_result_states(app: Conveyor) -> None:
    t = tasks(app)
    result = t.add.delay(2, 2)
    assert isinstance(result, AsyncResult) and result.state == "PENDING"
    assert not result.ready()
    with pytest.raises(TimeoutError, match="did not finish within 0.2s"):
        result.get(timeout=0.2)
    with app.Worker(pool="threads", concurrency=2).running():
        assert result.get(timeout=5) == 4
    assert (result.state, result.ready(), result.successful(), result.failed()) == (
        "SUCCESS", True, True, False)
    assert result.result == 4 and result.traceback is None


def test_failure_propagates_the_same_type_and_traceback(app: Conveyor) -> None:
    t = tasks(app)
    with app.Worker(pool="solo").running():
        result = t.boom.delay("bad value")
        with pytest.raises(ValueError, match="bad value"):
            result.get(timeout=5)
        exc = result.get(timeout=5, propagate=False)
    assert isinstance(exc, ValueError) and result.failed()
    assert "ValueError: bad value" in (result.traceback or "")


def test_link_prepends_the_result_and_children_are_recorded(app: Conveyor) -> None:
    t = tasks(app)
    with app.Worker(pool="threads").running():
        parent = t.add.apply_async((2, 8), link=t.add.signature((10,)))
        assert parent.get(timeout=5) == 10
        assert [c.get(timeout=5) for c in parent.children] == [20]
        many = t.add.apply_async((1, 1), link=[t.add.s(1).set(), t.record.si("fixed")])
        many.get(timeout=5)
        assert sorted(str(c.get(timeout=5)) for c in many.children) == ["3", "fixed"]


def test_link_error_calls_the_errback_directly(app: Conveyor) -> None:
    t = tasks(app)
    with app.Worker(pool="solo").running():
        result = t.boom.apply_async(("x",), link_error=t.on_error.s())
        with pytest.raises(ValueError):
            result.get(timeout=5)
    assert t.errors == [(result.id, "ValueError('x')", True)]
    assert app.transport_factory().depth("celery") == 0  # no message for the errback


def test_countdown_is_never_early_and_eta_naive_means_utc(app: Conveyor) -> None:
    t = tasks(app)
    with app.Worker(pool="threads").running():
        start = time.monotonic()
        assert t.add.apply_async((1, 1), countdown=0.5).get(timeout=5) == 2
        assert time.monotonic() - start >= 0.5
        naive = dt.datetime.utcnow() + dt.timedelta(seconds=0.4)  # noqa: DTZ003
        start = time.monotonic()
        assert t.add.apply_async((1, 2), eta=naive).get(timeout=5) == 3
        assert time.monotonic() - start >= 0.3


def test_far_eta_is_parked_broker_side_not_held(app: Conveyor) -> None:
    t = tasks(app)
    app.conf.worker_eta_horizon = 0.2
    worker = app.Worker(pool="threads")
    with worker.running():
        result = t.add.apply_async((5, 5), countdown=0.8)
        time.sleep(0.4)
        assert worker._held == [] and result.state == "PENDING"
        assert result.get(timeout=5) == 10


def test_broker_side_delayed_delivery_from_the_producer(app: Conveyor) -> None:
    t = tasks(app)
    app.conf.broker_transport_options = {"delayed_delivery": "broker"}
    result = t.add.apply_async((3, 4), countdown=0.5)
    transport = app.transport_factory()
    assert transport.depth("celery") == 0  # parked, not in the queue
    start = time.monotonic()
    with app.Worker(pool="solo").running():
        assert result.get(timeout=5) == 7
    assert time.monotonic() - start >= 0.3


def test_expires_marks_revoked_and_get_raises(app: Conveyor) -> None:
    t = tasks(app)
    result = t.add.apply_async((1, 1), expires=0.05)
    time.sleep(0.1)
    with app.Worker(pool="solo").running():
        with pytest.raises(TaskRevokedError, match="expired"):
            result.get(timeout=5)
    assert result.state == "REVOKED"
    later = t.add.apply_async((1, 1), expires=dt.datetime.now(dt.timezone.utc) +
                              dt.timedelta(hours=1))
    with app.Worker(pool="solo").running():
        assert later.get(timeout=5) == 2


def test_task_id_headers_shadow_and_time_limits_reach_the_worker(app: Conveyor) -> None:
    t = tasks(app)
    with app.Worker(pool="solo").running():
        result = t.headers.apply_async(task_id="my-id", headers={"x-tenant": "acme"},
                                       shadow="renamed", time_limit=60, soft_time_limit=30)
        assert result.id == "my-id"
        assert result.get(timeout=5) == {"x-tenant": "acme", "shadow": "renamed",
                                         "timelimit": [60, 30]}


def test_serializer_and_compression_travel_on_the_wire(app: Conveyor) -> None:
    t = tasks(app)
    app.send_task("t.add", (1, 2), serializer="pickle", compression="zlib", queue="peek")
    delivery = app.transport_factory().fetch(["peek"], limit=1, timeout=1)[0]
    assert delivery.message.content_type == "application/x-python-serialize"
    assert delivery.message.headers["compression"] == "application/x-gzip"
    with app.Worker(pool="solo").running():
        value = t.add.apply_async((2, 3), serializer="pickle", compression="bzip2")
        assert value.get(timeout=5) == 5


def test_unserializable_argument_fails_at_the_call_as_in_production(app: Conveyor) -> None:
    t = tasks(app)
    with pytest.raises(TypeError, match="not JSON serializable"):
        t.add.delay(object(), 1)


def test_queue_exchange_routing_key_and_send_task(app: Conveyor) -> None:
    t = tasks(app)
    message, route, _due, _opts = app.prepare("t.add", (1, 1), {},
                                              {"queue": "q1", "exchange": "ex",
                                               "routing_key": "rk"}, {}, t.add)
    assert route == Route("q1", "ex", "rk")
    with app.Worker(queues=["other"], pool="solo").running():
        assert app.send_task("t.add", (2, 2), queue="other").get(timeout=5) == 4
        assert signature("t.add", args=(3, 3), app=app).apply_async(
            queue="other").get(timeout=5) == 6


def test_priority_higher_runs_first_fifo_within(app: Conveyor) -> None:
    t = tasks(app)
    for tag, priority in [("a0", None), ("b5", 5), ("c9", 9), ("d5", 5), ("e0", 0),
                          ("f255", 255)]:
        t.record.apply_async((tag,), priority=priority)
    with app.Worker(pool="solo", prefetch_multiplier=1).running():
        deadline = time.monotonic() + 5
        while len(t.order) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert t.order == ["f255", "c9", "b5", "d5", "a0", "e0"]


def test_ignore_result_returns_none_at_once_and_stores_nothing(app: Conveyor) -> None:
    t = tasks(app)
    result = t.add.apply_async((1, 1), ignore_result=True)
    assert result.get(timeout=0.01) is None
    with app.Worker(pool="solo").running():
        t.add.delay(0, 0).get(timeout=5)  # after this the first one ran too (FIFO)
    assert app.backend.get(result.id) is None


def test_update_state_progress_seen_by_on_message(app: Conveyor) -> None:
    t = tasks(app)
    seen: list[tuple[str, Any]] = []
    with app.Worker(pool="threads").running():
        value = t.progress.delay().get(timeout=5, on_message=lambda m: seen.append(
            (m["status"], m["result"])))
    assert value == "done"
    assert seen == [("PROGRESS", {"progress": 50}), ("SUCCESS", "done")]
    assert set(seen and {"task_id", "status", "result", "traceback", "children"}) == {
        "task_id", "status", "result", "traceback", "children"}


def test_result_extended_stores_the_request(app: Conveyor) -> None:
    t = tasks(app)
    app.conf.result_extended = True
    with app.Worker(pool="solo", hostname="w1@test").running():
        result = t.add.apply_async((2, 2), queue="celery")
        result.get(timeout=5)
    meta = app.results.load(app.backend.get(result.id))
    assert (meta["name"], meta["args"], meta["kwargs"], meta["worker"], meta["retries"],
            meta["queue"]) == ("t.add", [2, 2], {}, "w1@test", 0, "celery")
    assert list(meta)[-1] == "task_id"


def test_task_retry_records_retry_then_succeeds(app: Conveyor) -> None:
    t = tasks(app)
    states: list[str] = []
    with app.Worker(pool="threads").running():
        value = t.flaky.delay().get(timeout=10, on_message=lambda m: states.append(m["status"]))
    assert value == "ok after 2"
    assert states[-1] == "SUCCESS" and "RETRY" in states


def test_publisher_reuses_one_connection(app: Conveyor) -> None:
    t = tasks(app)
    with app.pool.acquire(block=True) as conn, t.add.get_publisher(conn) as pub:
        results = [t.add.apply_async((i, i), publisher=pub) for i in range(20)]
    with app.Worker(pool="threads").running():
        assert [r.get(timeout=5) for r in results] == [2 * i for i in range(20)]


def test_group_and_chain(app: Conveyor) -> None:
    t = tasks(app)
    with app.Worker(pool="threads", concurrency=4).running():
        job = group(t.add.s(2, 2), t.add.s(4, 4), t.add.s(8, 8), t.add.s(16, 16))
        assert job.apply_async().get(timeout=5) == [4, 8, 16, 32]
        assert (t.add.s(1, 1) | t.add.s(2) | t.add.s(3)).apply_async().get(timeout=5) == 7
        assert chain(t.add.s(1, 1), t.add.si(5, 5)).delay().get(timeout=5) == 10


def test_signature_is_json_and_pickle_able(app: Conveyor) -> None:
    import json
    import pickle
    t = tasks(app)
    sig = t.add.s(2).set(queue="q", countdown=1)
    assert json.loads(json.dumps(sig)) == {"task": "t.add", "args": [2], "kwargs": {},
                                           "options": {"queue": "q", "countdown": 1},
                                           "subtask_type": None, "immutable": False}
    assert pickle.loads(pickle.dumps(sig)) == sig


def test_async_api_and_async_task(app: Conveyor) -> None:
    t = tasks(app)

    async def main() -> list[Any]:
        r1 = await t.aadd.adelay(2, 2)
        r2 = await t.add.aapply_async((3, 3), countdown=0.1)
        r3 = await app.asend_task("t.add", (4, 4))
        return [await r.aget(timeout=5) for r in (r1, r2, r3)]

    with app.Worker(pool="threads").running():
        assert asyncio.run(main()) == [4, 6, 8]


def test_a_broker_without_an_asyncio_path_says_so_instead_of_blocking(
        fake_plugins: Any) -> None:
    fake_plugins("conveyor-syncbroker", {"conveyor.transports": {"syncbroker": "sync_mod:T"}},
                 {"sync_mod.py": '''
                     from conveyor.interfaces import BaseTransport
                     class T(BaseTransport):
                         scheme = "syncbroker"
                 '''})
    app = Conveyor("sync", broker="syncbroker://127.0.0.1/0", backend="memory://sync")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    async def main() -> None:
        with pytest.raises(AsyncUnsupportedError,
                           match="'syncbroker' transport .* has no asyncio path"):
            await add.adelay(1, 1)

    asyncio.run(main())


def test_a_backend_twin_that_cannot_count_a_chord_says_so_before_anything_is_sent(
        fake_plugins: Any) -> None:
    fake_plugins("conveyor-halfbackend",
                 {"conveyor.backends": {"halfbackend": "half_mod:Blocking"},
                  "conveyor.async_backends": {"halfbackend": "half_mod:Twin"}},
                 {"half_mod.py": '''
                     from conveyor_std.memory_backend import AsyncMemoryBackend, MemoryBackend
                     class Blocking(MemoryBackend):
                         pass
                     class Twin(AsyncMemoryBackend):  # no join_size: no chords
                         pass
                 '''})
    app = Conveyor("half", broker="memory://half", backend="halfbackend://half")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    async def main() -> None:
        with pytest.raises(AsyncUnsupportedError,
                           match="'halfbackend' result backend's asyncio twin .* cannot "
                                 "count a chord's header results"):
            await chord([add.s(1, 1), add.s(2, 2)], add.s(0)).aapply_async()

    asyncio.run(main())
    assert app.transport_factory().depth("celery") == 0  # nothing was sent


def test_retry_policy_gives_up_with_operational_error(fake_plugins: Any) -> None:
    fake_plugins("conveyor-deadbroker", {"conveyor.transports": {"deadbroker": "dead_mod:T"}},
                 {"dead_mod.py": '''
                     from conveyor.interfaces import BaseTransport
                     class T(BaseTransport):
                         scheme = "deadbroker"
                         attempts = 0
                         def connect(self):
                             T.attempts += 1
                             raise ConnectionRefusedError(111, "Connection refused")
                 '''})
    app = Conveyor("dead", broker="deadbroker://user:s3cret@127.0.0.1:1/0",
                   backend="memory://dead")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    start = time.monotonic()
    with pytest.raises(add.OperationalError) as info:
        add.delay(1, 1)
    elapsed = time.monotonic() - start
    assert 0.35 <= elapsed < 1.5, elapsed  # sleeps 0 + 0.2 + 0.2
    text = str(info.value)
    assert "s3cret" not in text and "deadbroker://user:**@127.0.0.1:1/0" in text
    assert "ConnectionRefusedError" in text and isinstance(info.value, OperationalError)
    import dead_mod  # type: ignore[import-not-found]
    assert dead_mod.T.attempts == 4
    dead_mod.T.attempts = 0
    with pytest.raises(OperationalError):
        add.apply_async((1, 1), retry=False)
    assert dead_mod.T.attempts == 1


def test_worker_keeps_serving_after_garbage(app: Conveyor) -> None:
    from conveyor.interfaces import Message
    t = tasks(app)
    transport = app.transport_factory()
    transport.publish(Message({"task": "t.add", "id": "garbage-1"}, b"\x00\xffnot json"),
                      Route("celery"))
    transport.publish(Message({"no": "task"}, b"[]"), Route("celery"))
    transport.publish(Message({"task": "t.add", "id": "trunc-1"}, b'[[1, 2], {}'),
                      Route("celery"))
    with app.Worker(pool="solo").running():
        assert t.add.delay(1, 1).get(timeout=5) == 2
        with pytest.raises(Exception, match="Cannot decode"):
            app.AsyncResult("garbage-1").get(timeout=5)
    reasons = [d.reason for d in transport.dead_letters("celery")]
    assert len(reasons) == 3 and any("protocol v2" in r for r in reasons)


def test_delivery_limit_dead_letters_a_task_that_keeps_dying(app: Conveyor) -> None:
    t = tasks(app)
    app.conf.update(worker_max_deliveries=2,
                    broker_transport_options={"visibility_timeout": 0.1})
    t.add.apply_async((1, 1), task_id="dies")
    transport = app.transport_factory()
    for attempt in (1, 2):  # two deliveries never acked: their worker "died"
        got = transport.fetch(["celery"], limit=1, timeout=2)
        assert [d.deliveries for d in got] == [attempt]
        time.sleep(0.15)
    with app.Worker(pool="solo").running():
        with pytest.raises(Exception, match="Delivery limit reached"):
            app.AsyncResult("dies").get(timeout=5)
    assert "delivered 3 times" in transport.dead_letters()[0].reason


def test_warm_stop_gives_back_prefetched_messages(app: Conveyor) -> None:
    t = tasks(app)
    results = [t.slow.delay(0.3) for _ in range(4)]
    worker = app.Worker(pool="threads", concurrency=1, prefetch_multiplier=4)
    with worker.running():
        time.sleep(0.15)
    transport = app.transport_factory()
    assert results[0].get(timeout=5) == 0.3  # the running one finished
    assert transport.depth("celery") == 3  # the prefetched ones went back
    with app.Worker(pool="threads", concurrency=4).running():
        assert [r.get(timeout=5) for r in results[1:]] == [0.3] * 3


def test_process_pool_refuses_per_process_memory_broker(app: Conveyor) -> None:
    from conveyor.exceptions import ConfigurationError
    with pytest.raises(ConfigurationError, match="memory"):
        with app.Worker(pool="processes", concurrency=1).running():
            pass


def test_process_pool_enforces_time_limits(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'pp.sqlite3'}"
    app = Conveyor("pp", broker=url, backend=url)
    t = tasks(app)
    with app.Worker(pool="processes", concurrency=1).running():
        with pytest.raises(Exception, match="time_limit=0.3s exceeded"):
            t.slow.apply_async((5,), time_limit=0.3).get(timeout=10)
        assert t.add.delay(1, 2).get(timeout=10) == 3  # the replacement child works
        from conveyor.exceptions import SoftTimeLimitExceeded
        with pytest.raises(SoftTimeLimitExceeded):
            t.slow.apply_async((5,), soft_time_limit=0.2).get(timeout=10)
    app.close()


def test_worker_thread_count_is_bounded(app: Conveyor) -> None:
    before = threading.active_count()
    with app.Worker(pool="threads", concurrency=3).running():
        during = threading.active_count()
    assert during - before <= 3 + 3  # pool threads, consumer, lease keeper, asyncio
