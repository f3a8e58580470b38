"""The command line against the embedded SQLite default, with real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conveyor import Conveyor
from conveyor.interfaces import Message, Route
from conveyor_pytest.fixtures import worker_process

PROJ = '''
from conveyor import Conveyor
app = Conveyor("proj_cli")

@app.task(name="proj_cli.add")
def add(x, y):
    return x + y
'''


@pytest.fixture
def proj(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "proj_cli.py").write_text(textwrap.dedent(PROJ))
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    return {"CONVEYOR_BROKER_URL": url, "CONVEYOR_RESULT_BACKEND": url,
            "PYTHONPATH": str(tmp_path), "cwd": str(tmp_path)}


def conveyor(proj: dict[str, str], *args: str, timeout: float = 60,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **{k: v for k, v in proj.items() if k != "cwd"}}
    return subprocess.run([sys.executable, "-m", "conveyor.cli", *args], env=env,
                          cwd=proj["cwd"], capture_output=True, text=True, timeout=timeout,
                          input=stdin)


def test_version_and_help(proj: dict[str, str]) -> None:
    assert conveyor(proj, "--version").stdout.startswith("conveyor ")
    out = conveyor(proj, "--help")
    assert out.returncode == 0 and "examples:" in out.stdout and "dead list" in out.stdout


def test_call_worker_result(proj: dict[str, str]) -> None:
    env = {k: v for k, v in proj.items() if k != "cwd"}
    with worker_process("proj_cli", env=env, cwd=proj["cwd"], pool="threads", concurrency=2):
        out = conveyor(proj, "-A", "proj_cli", "call", "proj_cli.add", "--args", "[2, 2]",
                       "--wait", "20")
        assert out.returncode == 0, out.stderr
        task_id, value = out.stdout.splitlines()
        assert value == "4"
    result = json.loads(conveyor(proj, "-A", "proj_cli", "result", task_id).stdout)
    assert (result["status"], result["result"]) == ("SUCCESS", 4)


def test_dead_letters_list_requeue_purge(proj: dict[str, str]) -> None:
    env = {k: v for k, v in proj.items() if k != "cwd"}
    sent = conveyor(proj, "-A", "proj_cli", "call", "proj_cli.nope", "--args", "[1]")
    bad_id = sent.stdout.strip()
    with worker_process("proj_cli", env=env, cwd=proj["cwd"]):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            listed = conveyor(proj, "-A", "proj_cli", "dead", "list", "--json").stdout
            if listed.strip():
                break
            time.sleep(0.2)
    rows = [json.loads(line) for line in listed.splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert (row["task_id"], row["task"], row["queue"]) == (bad_id, "proj_cli.nope", "celery")
    assert "NotRegistered" in row["reason"] and row["time"].endswith("Z")
    human = conveyor(proj, "-A", "proj_cli", "dead", "list").stdout
    assert "proj_cli.nope" in human and "NotRegistered" in human
    failed = json.loads(conveyor(proj, "-A", "proj_cli", "result", bad_id).stdout)
    assert failed["status"] == "FAILURE"

    assert "requeued 1" in conveyor(proj, "-A", "proj_cli", "dead", "requeue", "--all").stdout
    assert conveyor(proj, "-A", "proj_cli", "dead", "list").stdout == ""
    purged = conveyor(proj, "-A", "proj_cli", "purge", "-Q", "celery", "-f")
    assert "purged 1" in purged.stdout


@pytest.mark.parametrize(("answer", "deleted"), [("y\n", True), ("yes\n", True),
                                                 ("n\n", False), ("", False)])
def test_purge_reads_its_answer_from_a_pipe(proj: dict[str, str], answer: str,
                                            deleted: bool) -> None:
    """``echo y | conveyor -A proj purge``: the answer comes from the pipe; end of
    input is no."""
    conveyor(proj, "-A", "proj_cli", "call", "proj_cli.add", "--args", "[1, 1]")
    out = conveyor(proj, "-A", "proj_cli", "purge", "-Q", "celery", stdin=answer)
    assert "Delete every waiting message of celery? [y/N]" in out.stderr
    if deleted:
        assert out.returncode == 0 and "celery: purged 1 message(s)" in out.stdout
    else:
        assert out.returncode == 1 and out.stdout == "" and "Nothing deleted" in out.stderr
        again = conveyor(proj, "-A", "proj_cli", "purge", "-Q", "celery", "-f")
        assert "purged 1" in again.stdout  # the message was still there


def test_loglevel_is_taken_after_the_subcommand_as_well(proj: dict[str, str]) -> None:
    before = conveyor(proj, "-l", "DEBUG", "-A", "proj_cli", "purge", "-f")
    after = conveyor(proj, "-A", "proj_cli", "purge", "-l", "debug", "-f")
    nested = conveyor(proj, "-A", "proj_cli", "dead", "list", "-l", "DEBUG")
    quiet = conveyor(proj, "-A", "proj_cli", "purge", "-f")
    for out in (before, after, nested):
        assert out.returncode == 0 and " DEBUG " in out.stderr, out.stderr
    assert " DEBUG " not in quiet.stderr
    bad = conveyor(proj, "-A", "proj_cli", "purge", "-l", "LOUD", "-f")
    assert bad.returncode == 2 and "LOUD" in bad.stderr and "INFO" in bad.stderr


def _dead_rows(proj: dict[str, str], count: int, queue: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        out = conveyor(proj, "-A", "proj_cli", "dead", "list", "-Q", queue, "--json")
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_dead_list_lines_and_requeue_by_task_id(proj: dict[str, str]) -> None:
    env = {k: v for k, v in proj.items() if k != "cwd"}
    task_ids = [conveyor(proj, "-A", "proj_cli", "call", "proj_cli.nope", "--queue",
                         "byid").stdout.strip() for _ in range(2)]
    with worker_process("proj_cli", env=env, cwd=proj["cwd"], queues=["byid"]):
        rows = _dead_rows(proj, 2, "byid")
    assert sorted(r["task_id"] for r in rows) == sorted(task_ids)
    assert all(set(r) == {"id", "task_id", "task", "queue", "time", "reason"} for r in rows)
    human = conveyor(proj, "-A", "proj_cli", "dead", "list", "-Q", "byid").stdout
    lines = human.splitlines()
    assert [line.split("  ")[:4] for line in lines] == \
        [[r["id"], r["task_id"], "proj_cli.nope", "byid"] for r in rows]
    assert all(line.split("  ")[4] == r["time"] and r["reason"] in line
               for line, r in zip(lines, rows))

    unknown = conveyor(proj, "-A", "proj_cli", "dead", "requeue", task_ids[0], "no-such-id")
    assert unknown.returncode == 1 and "no-such-id" in unknown.stderr
    assert len(_dead_rows(proj, 2, "byid")) == 2  # all or nothing
    by_task = conveyor(proj, "-A", "proj_cli", "dead", "requeue", task_ids[0])
    assert by_task.returncode == 0 and "requeued 1" in by_task.stdout
    (left,) = _dead_rows(proj, 1, "byid")
    assert left["task_id"] == task_ids[1]
    by_dead_id = conveyor(proj, "-A", "proj_cli", "dead", "requeue", left["id"])
    assert "requeued 1" in by_dead_id.stdout
    assert conveyor(proj, "-A", "proj_cli", "dead", "list", "-Q", "byid").stdout == ""
    both = conveyor(proj, "-A", "proj_cli", "dead", "requeue", "--all", task_ids[0])
    assert both.returncode == 2


def test_dead_list_shows_a_dash_for_a_message_without_task_id(proj: dict[str, str]) -> None:
    app = Conveyor("garbage", broker=proj["CONVEYOR_BROKER_URL"])
    transport = app.transport_factory()
    transport.connect()
    try:
        transport.publish_many([(Message({}, b"not a task message"), Route("unread"), None)])
    finally:
        transport.close()
    env = {k: v for k, v in proj.items() if k != "cwd"}
    with worker_process("proj_cli", env=env, cwd=proj["cwd"], queues=["unread"]):
        (row,) = _dead_rows(proj, 1, "unread")
    assert (row["task_id"], row["task"], row["queue"]) == (None, None, "unread")
    listed = conveyor(proj, "-A", "proj_cli", "dead", "list", "-Q", "unread").stdout
    (line,) = listed.splitlines()
    assert line.split("  ")[:4] == [row["id"], "-", "-", "unread"]


def test_dead_purge_asks_and_reads_a_piped_answer(proj: dict[str, str]) -> None:
    env = {k: v for k, v in proj.items() if k != "cwd"}
    conveyor(proj, "-A", "proj_cli", "call", "proj_cli.nope", "--queue", "dpurge")
    with worker_process("proj_cli", env=env, cwd=proj["cwd"], queues=["dpurge"]):
        assert len(_dead_rows(proj, 1, "dpurge")) == 1
    kept = conveyor(proj, "-A", "proj_cli", "dead", "purge", "-Q", "dpurge", stdin="")
    assert kept.returncode == 1 and len(_dead_rows(proj, 1, "dpurge")) == 1
    gone = conveyor(proj, "-A", "proj_cli", "dead", "purge", "-Q", "dpurge", stdin="y\n")
    assert gone.returncode == 0 and "purged 1 dead letter(s)" in gone.stdout


def test_dead_requeue_by_id_and_purge_by_queue(proj: dict[str, str]) -> None:
    env = {k: v for k, v in proj.items() if k != "cwd"}
    for _ in range(2):
        conveyor(proj, "-A", "proj_cli", "call", "proj_cli.nope", "--queue", "side")
    with worker_process("proj_cli", env=env, cwd=proj["cwd"], queues=["side"]):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rows = conveyor(proj, "-A", "proj_cli", "dead", "list", "-Q", "side",
                            "--json").stdout.splitlines()
            if len(rows) == 2:
                break
            time.sleep(0.2)
    first = json.loads(rows[0])["id"]
    assert "requeued 1" in conveyor(proj, "-A", "proj_cli", "dead", "requeue", first).stdout
    assert "purged 1" in conveyor(proj, "-A", "proj_cli", "dead", "purge", "-Q", "side",
                                  "-f").stdout


def test_worker_with_a_bad_setting_exits_non_zero_naming_it(proj: dict[str, str],
                                                            tmp_path: Path) -> None:
    (tmp_path / "badconf.py").write_text(
        "from conveyor import Conveyor\napp = Conveyor('bad', task_serialiser='json')\n")
    out = conveyor(proj, "-A", "badconf", "worker")
    assert out.returncode != 0
    assert "task_serialiser" in out.stderr and "task_serializer" in out.stderr


def test_worker_with_an_unknown_transport_option_exits_non_zero(proj: dict[str, str],
                                                                tmp_path: Path) -> None:
    (tmp_path / "badopt.py").write_text(
        "from conveyor import Conveyor\n"
        "app = Conveyor('badopt', broker_transport_options={'visibilty_timeout': 5})\n")
    out = conveyor(proj, "-A", "badopt", "worker", timeout=30)
    assert out.returncode != 0
    assert "visibilty_timeout" in out.stderr and "visibility_timeout" in out.stderr
