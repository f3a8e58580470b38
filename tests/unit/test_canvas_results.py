"""Retry limits, chain callbacks and what a result read gives back (issue 13)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, chain, states
from conveyor.exceptions import MaxRetriesExceededError


def test_retry_past_max_retries_without_exc_fails_the_task() -> None:
    app = Conveyor("retries", broker="memory://canvas-retry")

    @app.task(bind=True, name="r.again", max_retries=1, default_retry_delay=0)
    def again(self: Any) -> None:
        self.retry()

    with app.Worker(pool="solo").running():
        result = again.delay()
        with pytest.raises(MaxRetriesExceededError, match="max_retries=1"):
            result.get(timeout=10)
    assert result.state == states.FAILURE


def test_chain_link_and_link_error_reach_the_right_task() -> None:
    app = Conveyor("chains", broker="memory://canvas-link")
    seen: list[Any] = []

    @app.task(name="c.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="c.fail")
    def fail(x: int) -> int:
        raise ValueError(f"no {x}")

    @app.task(name="c.record")
    def record(value: Any) -> None:
        seen.append(value)

    @app.task(name="c.on_error")
    def on_error(request: Any, exc: BaseException, traceback: str) -> None:
        seen.append(f"errback:{exc}")

    with app.Worker(pool="solo").running():
        ok = chain(add.s(1, 1), add.s(10))
        ok.link(record.s())
        assert ok.apply_async().get(timeout=10) == 12
        given = chain(add.s(2, 2), add.s(10)).apply_async(link=record.s())
        assert given.get(timeout=10) == 14
        broken = chain(add.s(1, 1), fail.s(), add.s(10))
        broken.link_error(on_error.s())
        with pytest.raises(ValueError, match="no 2"):
            broken.apply_async().parent.get(timeout=10)  # type: ignore[union-attr]
        add.s(0, 0).delay().get(timeout=10)  # every callback before it has run
    assert sorted(map(str, seen)) == ["12", "14", "errback:no 2"]


class LocalError(Exception):
    """Imported already (this module): rebuilt as itself."""


def test_reading_a_result_never_imports_the_named_module(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "planted_exc_mod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Planted(Exception): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Conveyor("unsafe", broker="memory://canvas-exc")
    app.results.store("t-planted", states.FAILURE, {
        "exc_type": "Planted", "exc_message": ["from elsewhere"],
        "exc_module": "planted_exc_mod"})
    app.results.store("t-local", states.FAILURE, {
        "exc_type": "LocalError", "exc_message": ["known"], "exc_module": __name__})
    with pytest.raises(Exception, match="from elsewhere") as info:
        app.AsyncResult("t-planted").get(timeout=1)
    assert type(info.value).__name__ == "Planted"
    assert not marker.exists() and "planted_exc_mod" not in sys.modules
    with pytest.raises(LocalError, match="known"):
        app.AsyncResult("t-local").get(timeout=1)


@pytest.mark.parametrize("extended", [True, False])
def test_extended_result_properties(extended: bool) -> None:
    app = Conveyor("extended", broker=f"memory://canvas-ext-{extended}",
                   result_extended=extended)

    @app.task(name="e.mul")
    def mul(x: int, *, by: int) -> int:
        return x * by

    worker = app.Worker(pool="solo", queues=["ext"], hostname="ext@here")
    with worker.running():
        result = mul.apply_async((3,), {"by": 4}, queue="ext")
        assert result.get(timeout=10) == 12
    got = (result.name, result.args, result.kwargs, result.worker, result.queue,
           result.retries)
    if extended:
        assert got == ("e.mul", [3], {"by": 4}, "ext@here", "ext", 0)
    else:
        assert got == (None,) * 6
