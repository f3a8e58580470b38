"""Time limits on every pool, in real worker processes: ``time_limit`` kills what runs
the task (a child process, also under ``threads`` and ``solo``), ``soft_time_limit``
raises ``SoftTimeLimitExceeded`` inside it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conveyor_pytest.fixtures import worker_process

from conveyor import Conveyor

PROJECT = "limits_proj"
PROJ = '''
import time
from conveyor import Conveyor
from conveyor.exceptions import SoftTimeLimitExceeded

app = Conveyor("limits_proj")

@app.task(name="limits.sleepy", time_limit=1)
def sleepy():
    time.sleep(3)
    return "finished"

@app.task(name="limits.soft", soft_time_limit=0.5)
def soft():
    try:
        for _ in range(300):
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "finished"

@app.task(name="limits.quick", time_limit=5)
def quick(x):
    return x * 2
'''


@pytest.mark.parametrize("pool", ["processes", "threads", "solo"])
def test_time_limits_hold_on_every_pool(pool: str, tmp_path: Path, proj: dict[str, str],
                                        client: Conveyor) -> None:
    with worker_process("limits_proj", env=proj, cwd=str(tmp_path), pool=pool,
                        concurrency=2) as proc:
        start = time.monotonic()
        hard = client.send_task("limits.sleepy")
        with pytest.raises(Exception, match=r"time_limit=1s? exceeded"):
            hard.get(timeout=20)
        assert time.monotonic() - start < 2.8, "the 3 s task ran to its end"
        assert hard.state == "FAILURE"
        assert client.send_task("limits.soft").get(timeout=20) == "cleaned up"
        assert client.send_task("limits.quick", (21,)).get(timeout=20) == 42
        assert client.send_task("limits.sleepy").get(timeout=20, propagate=False)
    assert proc.returncode == 0, "the worker did not stop on SIGTERM"


def test_a_memory_broker_worker_raises_time_limit_inside_the_task() -> None:
    """memory:// cannot cross processes, so no child can run the task: the limit is
    raised inside it instead (and said so in the log), never ignored."""
    from conveyor.exceptions import TimeLimitExceeded

    app = Conveyor("limits-memory", broker="memory://limits-memory",
                   backend="memory://limits-memory")
    seen: list[str] = []

    @app.task(time_limit=0.5)
    def busy() -> str:
        try:
            for _ in range(300):
                time.sleep(0.01)
        except TimeLimitExceeded:
            seen.append("interrupted")
            raise
        return "finished"

    try:
        with app.Worker(pool="threads", concurrency=2).running():
            start = time.monotonic()
            with pytest.raises(TimeLimitExceeded, match="time_limit=0.5s exceeded"):
                busy.delay().get(timeout=10)
            assert time.monotonic() - start < 2.5 and seen == ["interrupted"]
    finally:
        app.close()
