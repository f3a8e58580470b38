"""``conveyor monitor`` seen by a user: the page in headless Chromium (Debian's
``chromium``) against Redis and real worker processes shows a worker, a queue's
depth and a dead letter; its requeue button puts the dead letter back on its queue;
the page logs no JavaScript error. ``/metrics`` says the same numbers, and binding
beyond 127.0.0.1 takes a token."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path
from typing import Any

import pytest
from conveyor import Conveyor
from monitor_lab import (
    chromium, free_port, get_json, get_text, javascript_errors, keep_screenshot,
    monitor_process, wait_for,
)
from redis_dbs import flush_dbs
from workers import conveyor_worker, run_cli, write_project

pytestmark = [pytest.mark.redis, pytest.mark.slow]

#: The redis db this module owns (broker and results).
DB = 1
WORKER = "mon-worker@page-test"


def cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    proc = run_cli("proj_mon", cwd, env, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    (url,) = flush_dbs(DB)
    write_project(tmp_path, "proj_mon", ["add", "boom"])
    return tmp_path, {"CONVEYOR_BROKER_URL": url, "CONVEYOR_RESULT_BACKEND": url,
                      "PYTHONPATH": str(tmp_path)}


def _cell(driver: Any, selector: str) -> str:
    """The text of the first element ``selector`` finds; "" when there is none, or
    when the page re-rendered it between finding and reading (the waits ask again)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    found = driver.find_elements(By.CSS_SELECTOR, selector)
    try:
        return str(found[0].text) if found else ""
    except StaleElementReferenceException:
        return ""


def test_the_page_shows_workers_queues_and_dead_letters_and_requeues(
        project: tuple[Path, dict[str, str]], tmp_path: Path,
        record_property: Any) -> None:
    from selenium.webdriver.common.by import By

    cwd, env = project
    client = Conveyor("proj_mon-client", broker=env["CONVEYOR_BROKER_URL"],
                      backend=env["CONVEYOR_RESULT_BACKEND"])
    try:
        # A dead letter, made by a worker that meets a task it does not know.
        with conveyor_worker("proj_mon", cwd, env, queues=["mon.dead"]):
            missing = client.send_task("proj_mon.missing", queue="mon.dead")
            wait_for(lambda: missing.id in cli(env, cwd, "dead", "list"), 20,
                     what="the unknown task in the dead letters")
        # A queue nobody consumes, three deep.
        for n in range(3):
            client.send_task("proj_mon.add", (n, n), queue="mon.idle")

        queues = "mon.work,mon.idle,mon.dead"
        with conveyor_worker("proj_mon", cwd, env, queues=["mon.work"], name=WORKER,
                             events=True), \
                monitor_process("proj_mon", cwd, env, "-Q", queues) as (_mon, base):
            assert client.send_task("proj_mon.add", (2, 2), queue="mon.work") \
                .get(timeout=20) == 4
            client.send_task("proj_mon.boom", queue="mon.work").get(timeout=20,
                                                                     propagate=False)
            with chromium() as driver:
                driver.get(base + "/")
                wait_for(lambda: "online" in _cell(driver, f'tr[data-hostname="{WORKER}"]'),
                         30, what=f"worker {WORKER} online on the page")
                wait_for(lambda: _cell(driver, 'tr[data-queue="mon.idle"] .depth') == "3",
                         20, what="mon.idle's depth 3 on the page")
                wait_for(lambda: driver.find_elements(
                    By.CSS_SELECTOR, f'#dead tr[data-task-id="{missing.id}"]'), 20,
                    what="the dead letter on the page")
                wait_for(lambda: "ValueError" in _cell(driver, "#failures"), 20,
                         what="the failed task on the page")
                failure = driver.find_element(By.CSS_SELECTOR, "#failures details summary")
                failure.click()  # open the traceback
                wait_for(lambda: "boom: the monitor shows this traceback" in _cell(
                    driver, "#failures pre"), 10, what="the traceback on the page")
                shot = keep_screenshot(driver, tmp_path, "monitor-page.png")
                record_property("screenshot", str(shot))
                print(f"screenshot of the monitor page: {shot}")

                driver.find_element(
                    By.CSS_SELECTOR, f'#dead tr[data-task-id="{missing.id}"] button.requeue'
                ).click()
                wait_for(lambda: "requeued 1 message(s)" in _cell(driver, "#notice"), 20,
                         what="the requeue notice")
                wait_for(lambda: "no dead letters" in _cell(driver, "#dead"), 20,
                         what="the dead letter gone from the page")
                wait_for(lambda: _cell(driver, 'tr[data-queue="mon.dead"] .depth') == "1",
                         20, what="mon.dead's depth 1 on the page")
                keep_screenshot(driver, tmp_path, "monitor-page-requeued.png")
                errors = javascript_errors(driver)
                assert not errors, f"the page logged JavaScript errors: {errors}"

            # What the CLI says: the message is waiting on its queue, no dead letter.
            assert cli(env, cwd, "dead", "list") == ""
            row = json.loads(cli(env, cwd, "inspect", "queues", "-Q", "mon.dead", "--json"))
            assert (row["ready"], row["dead"]) == (1, 0), row

            metrics = get_text(base + "/metrics")
            assert 'conveyor_queue_messages{queue="mon.idle",state="ready"} 3.0' in metrics
            assert "conveyor_workers 1.0" in metrics
            assert 'conveyor_tasks_total{state="SUCCESS",task="proj_mon.add"} 1.0' \
                in metrics, metrics
            assert 'conveyor_tasks_total{state="FAILURE",task="proj_mon.boom"} 1.0' \
                in metrics, metrics
            assert 'conveyor_task_runtime_seconds_count{state="SUCCESS",task="proj_mon.add"}' \
                in metrics, metrics
    finally:
        client.close()


def test_binding_beyond_loopback_needs_a_token(project: tuple[Path, dict[str, str]]) -> None:
    cwd, env = project
    refused = run_cli("proj_mon", cwd, env, "monitor", "--host", "0.0.0.0")
    assert refused.returncode == 2
    assert "give a token" in refused.stderr, refused.stderr

    port = free_port()
    secret = "s3cret-token"
    with monitor_process("proj_mon", cwd, {**env, "CONVEYOR_MONITOR_TOKEN": secret},
                         "--host", "0.0.0.0", "--no-events", port=port) as (_mon, base):
        with pytest.raises(urllib.error.HTTPError) as refused_http:
            get_json(base + "/api/state")
        assert refused_http.value.code == 401
        assert get_json(base + "/api/state", token=secret)["queues"][0]["queue"] == "celery"
        assert "conveyor_queue_messages" in get_text(base + "/metrics", token=secret)
