"""The SQLite result backend: SUCCESS is final, expiry, and waits that do not spin."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from importlib.metadata import entry_points

import pytest

from conveyor.interfaces import Backend
from conveyor_sqlite import SQLiteBackend


def test_entry_point_and_protocol(backend):
    found = entry_points(group="conveyor.backends", name="sqlite")
    assert [ep.load() for ep in found] == [SQLiteBackend]
    assert isinstance(backend, Backend)


def test_store_get_forget(backend):
    assert backend.get("t1") is None
    backend.store("t1", "STARTED", b"started", expires=None)
    assert backend.get("t1") == b"started"
    backend.store("t1", "FAILURE", b"\x00failed\xff", expires=None)
    assert backend.get("t1") == b"\x00failed\xff"
    backend.forget("t1")
    assert backend.get("t1") is None


def test_success_is_never_overwritten(backend, tmp_path):
    backend.store("t1", "SUCCESS", b"done", expires=None)
    for state in ("STARTED", "RETRY", "FAILURE", "SUCCESS"):
        backend.store("t1", state, b"late " + state.encode(), expires=None)
    assert backend.get("t1") == b"done"
    other = SQLiteBackend(f"sqlite:///{tmp_path}/results.db")  # another connection
    other.store("t1", "FAILURE", b"late", expires=None)
    assert other.get("t1") == b"done"
    other.close()


def test_expired_rows_are_invisible_then_swept(backend):
    backend.store("short", "SUCCESS", b"gone soon", expires=0.2)
    backend.store("long", "SUCCESS", b"stays", expires=60)
    assert backend.get("short") == b"gone soon"
    time.sleep(0.3)
    assert backend.get("short") is None
    assert backend.get("long") == b"stays"
    backend.store("short", "SUCCESS", b"again", expires=None)  # expired SUCCESS is gone
    assert backend.get("short") == b"again"
    backend.store("old", "FAILURE", b"x", expires=0.05)
    time.sleep(0.1)
    backend._next_sweep = 0  # the next store sweeps
    backend.store("other", "STARTED", b"y", expires=None)
    rows = backend._conn().execute("SELECT task_id FROM conveyor_results").fetchall()
    assert sorted(rows) == [("long",), ("other",), ("short",)]


def test_wait_returns_changes_and_times_out(backend):
    start = time.monotonic()
    assert backend.wait("t1", timeout=0.3, previous=None) is None
    assert 0.3 <= time.monotonic() - start < 0.5
    backend.store("t1", "STARTED", b"a", expires=None)
    assert backend.wait("t1", timeout=1, previous=None) == b"a"
    start = time.monotonic()
    assert backend.wait("t1", timeout=0.2, previous=b"a") is None
    assert time.monotonic() - start < 0.4


def test_wait_wakes_at_once_on_a_store_in_this_process(backend):
    stored_at = []

    def later():
        time.sleep(0.4)
        stored_at.append(time.monotonic())
        backend.store("t1", "SUCCESS", b"done", expires=None)

    threading.Thread(target=later).start()
    assert backend.wait("t1", timeout=5, previous=None) == b"done"
    assert time.monotonic() - stored_at[0] < 0.03


def test_wait_sees_another_process_promptly_without_spinning(backend, tmp_path):
    calls = 0
    real_get = backend.get

    def counting_get(task_id):
        nonlocal calls
        calls += 1
        return real_get(task_id)

    backend.get = counting_get
    script = (
        "import sys, time; from conveyor_sqlite import SQLiteBackend\n"
        "b = SQLiteBackend(sys.argv[1]); b.get('warm'); time.sleep(0.8)\n"
        "print(time.time(), flush=True); b.store('t1', 'SUCCESS', b'done', expires=None)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, f"sqlite:///{tmp_path}/results.db"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert backend.wait("t1", timeout=10, previous=None) == b"done"
        seen = time.time()
        stored = float(proc.communicate(timeout=10)[0])
    finally:
        proc.kill()
    assert seen - stored < 0.15  # polls are at most 50 ms apart
    assert calls < 60  # ~1 s of waiting: backs off to 50 ms polls, never spins


def test_many_threads_share_one_backend(backend):
    errors = []

    def work(i):
        try:
            for j in range(50):
                backend.store(f"t{i}-{j}", "SUCCESS", b"%d" % j, expires=None)
                assert backend.get(f"t{i}-{j}") == b"%d" % j
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert backend._conn().execute("SELECT count(*) FROM conveyor_results").fetchone() == (400,)


def test_close_then_use_again(backend):
    backend.store("t1", "SUCCESS", b"done", expires=None)
    backend.close()
    assert backend.get("t1") == b"done"


def test_bad_url(tmp_path):
    with pytest.raises(ValueError, match="no database path"):
        SQLiteBackend("sqlite://")
