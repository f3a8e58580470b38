"""Celery's task options in a real worker process on the embedded SQLite broker:
``rate_limit`` and ``autoretry_for`` with ``retry_backoff``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conveyor_pytest.fixtures import worker_process

from conveyor import Conveyor, states
from conveyor.exceptions import ConfigurationError

PROJECT = "opts_proj"
PROJ = '''
import time
from conveyor import Conveyor

app = Conveyor("opts_proj")

@app.task(name="opts.throttled", rate_limit="10/s")
def throttled(n):
    return time.time()

@app.task(name="opts.free")
def free(n):
    return time.time()

@app.task(name="opts.flaky", autoretry_for=(ConnectionError,), retry_backoff=True,
          retry_jitter=False, max_retries=2)
def flaky(path):
    with open(path, "a") as f:
        f.write(f"{time.time()}\\n")
    raise ConnectionError("the service is down")
'''


def test_rate_limit_spaces_its_task_and_leaves_others_unthrottled(
        tmp_path: Path, proj: dict[str, str], client: Conveyor) -> None:
    with worker_process("opts_proj", env=proj, cwd=str(tmp_path), pool="threads",
                        concurrency=2):
        limited = [client.send_task("opts.throttled", (i,)) for i in range(50)]
        sent = time.time()
        others = [client.send_task("opts.free", (i,)) for i in range(20)]
        free_done = [r.get(timeout=20) for r in others]
        started = sorted(r.get(timeout=30) for r in limited)
    assert started[-1] - started[0] >= 4.5  # 50 starts at 10/s: 4.9 s at least
    assert max(free_done) - sent < 3.0, "the unthrottled task waited behind the limit"
    assert max(free_done) < started[-1] - 1.0


def test_autoretry_backs_off_exponentially_and_fails_after_max_retries(
        tmp_path: Path, proj: dict[str, str], client: Conveyor) -> None:
    runs = tmp_path / "runs.txt"
    with worker_process("opts_proj", env=proj, cwd=str(tmp_path), pool="threads",
                        concurrency=2):
        result = client.send_task("opts.flaky", (str(runs),))
        with pytest.raises(ConnectionError, match="the service is down"):
            result.get(timeout=30)
    assert result.state == states.FAILURE
    times = [float(line) for line in runs.read_text().split()]
    assert len(times) == 3  # the first run and max_retries=2 retries
    first, second = times[1] - times[0], times[2] - times[1]
    assert 0.9 <= first < 1.9 and 1.9 <= second < 3.5  # countdowns 1 s, then 2 s


def test_bad_options_fail_at_declaration() -> None:
    app = Conveyor("opts-bad", broker="memory://opts-bad", backend="memory://opts-bad")
    with pytest.raises(ConfigurationError, match="'10/x'"):
        app.task(rate_limit="10/x")(lambda: None)
    with pytest.raises(ConfigurationError, match="tuple of exception classes"):
        app.task(autoretry_for=ValueError)(lambda: None)
