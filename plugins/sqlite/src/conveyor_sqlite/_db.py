"""Opening SQLite databases the way both the transport and the backend need them.

Shared rules, so the two plugins cannot drift apart:

* URLs are Celery/SQLAlchemy style: ``sqlite:///relative.db`` (three slashes) or
  ``sqlite:////absolute.db`` (four). The path is made absolute at parse time so every
  process and thread of one app opens the same file whatever its working directory.
* WAL journal (readers never block the writer, and many processes share one file),
  ``synchronous=NORMAL`` (a commit survives any process crash; only an OS crash or
  power loss can lose the last commits, never corrupt the file — SQLite's documented
  recommendation for WAL; it keeps a commit in the tens of microseconds instead of
  an fsync each),
  and a busy timeout so writers queue instead of failing.
* The transport's commits are checkpointed from a thread (:class:`Checkpointer`), so
  the fsyncs ``synchronous=NORMAL`` leaves for checkpoints are not waited for by
  a publish, claim or ack.
* A connection never crosses ``fork()``: SQLite forbids it, so a child process drops
  (and deliberately does not close) what its parent opened, then opens its own.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from conveyor.exceptions import ConfigurationError, OperationalError

log = logging.getLogger(__name__)

#: Seconds a writer waits for the lock before SQLite reports "database is locked",
#: unless the caller bounds it (the transport: ``broker_connection_timeout``).
BUSY_TIMEOUT = 10.0

#: OperationalError texts that mean "cannot reach the database right now" (retry),
#: as opposed to a broken schema or a file that is not a database (do not retry).
_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o", "interrupted")

#: Connections inherited across fork() are parked here so the garbage collector never
#: closes them in the child (closing would touch the parent's locks).
_inherited: list[sqlite3.Connection] = []


class Connection(sqlite3.Connection):
    """A plain connection that can be weakly referenced (the base class cannot), so
    the backend can close every thread's connection without keeping dead threads'
    connections alive."""


def database_path(url: str) -> str:
    """The absolute file path in a ``sqlite:///…`` URL; a clear error when it has none."""
    scheme, sep, rest = url.partition("://")
    example = ("Write it as 'sqlite:///relative/path.db' (three slashes) or "
               "'sqlite:////absolute/path.db' (four).")
    if not sep or scheme.split("+", 1)[0].lower() != "sqlite":
        raise ConfigurationError(f"{url!r} is not a SQLite URL. {example}")
    if "?" in rest or "#" in rest:
        raise ConfigurationError(
            f"SQLite URL {url!r} has a query or fragment, which conveyor-sqlite does not "
            f"read; put settings in broker_transport_options instead. {example}")
    if rest in ("", "/"):
        raise ConfigurationError(f"SQLite URL {url!r} has no database path. {example}")
    if not rest.startswith("/"):
        host = rest.split("/", 1)[0]
        raise ConfigurationError(
            f"SQLite URL {url!r} names a host ({host!r}), but SQLite is a local file. "
            f"{example}")
    path = rest[1:]
    if path == ":memory:" or path.startswith("file:"):
        raise ConfigurationError(
            f"SQLite URL {url!r} is not a file path; an in-memory database cannot be "
            f"shared between processes. Use 'memory://' for in-process work. {example}")
    return os.path.abspath(path)


def is_transient(exc: BaseException) -> bool:
    """True when a sqlite3 error means the database is locked or cannot be opened."""
    return (isinstance(exc, sqlite3.OperationalError)
            and any(word in str(exc).lower() for word in _TRANSIENT))


class mapped_errors:  # noqa: N801 - used like a function: ``with mapped_errors(...)``
    """Let transient errors through (callers retry them); wrap the rest in ours.

    A transient ``sqlite3.OperationalError`` is one of the transport's
    ``connection_errors``, so the core's retry policy handles it. Anything else
    (corrupt file, not a database, foreign schema) will not get better by retrying.
    A class, not ``@contextmanager``: it wraps every call on the hot path.
    """

    __slots__ = ("path", "what")

    def __init__(self, path: str, what: str) -> None:
        self.path, self.what = path, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if exc is not None:
            self.check(exc)

    def check(self, exc: BaseException) -> None:
        """What ``with`` does with ``exc``, for a hot path that catches it itself
        (a ``try`` costs nothing until it raises, a ``with`` two calls): raise ours
        in its place, or return, and the caller re-raises ``exc``."""
        if not isinstance(exc, sqlite3.Error) or is_transient(exc):
            return
        if "readonly" in str(exc).lower():
            raise OperationalError(
                f"SQLite {self.what} at {self.path!r} failed: {exc}. The file (or its "
                f"directory) is read-only for this process; make both writable by the "
                f"user running Conveyor.") from exc
        raise OperationalError(
            f"SQLite {self.what} at {self.path!r} failed: {exc}. Check that the URL "
            f"points at a database Conveyor created (or a new file) and that it is not "
            f"damaged.") from exc


def open_connection(path: str, schema: Sequence[str],
                    busy_timeout: float = BUSY_TIMEOUT, *,
                    background_checkpoints: bool = False) -> Connection:
    """A connection to ``path`` in WAL mode with ``schema`` created if missing.

    Autocommit (``isolation_level=None``): every statement commits on its own unless
    wrapped in :func:`transaction`, which takes the write lock up front. A writer
    waits up to ``busy_timeout`` seconds for the lock.

    ``background_checkpoints``: its owner reports its commits to the path's
    :class:`Checkpointer`, which checkpoints in a thread of its own; the connection
    then checkpoints by itself only past :data:`FALLBACK_CHECKPOINT` WAL pages (the
    thread starved or stopped), not SQLite's 1,000.
    """
    _check_writable(path)
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                           check_same_thread=False, factory=Connection)
    try:
        _enable_wal(conn, busy_timeout)
        conn.execute("PRAGMA synchronous=NORMAL")
        if background_checkpoints:
            conn.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_CHECKPOINT}")
        with transaction(conn):  # not executescript: it would commit first
            for statement in schema:
                conn.execute(statement)
    except BaseException:
        conn.close()
        raise
    return conn


def _check_writable(path: str) -> None:
    """A clear, final error for a database this process cannot write.

    SQLite reports these as "unable to open database file" or "attempt to write a
    readonly database", which read like a passing problem; retrying cannot help, so
    they are configuration errors (the worker exits non-zero saying so). WAL mode
    needs to create files beside the database, so its directory must be writable too.
    """
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ConfigurationError(
            f"Cannot open SQLite database {path!r}: directory {directory!r} does not "
            f"exist. Create it, or point the URL at an existing directory.")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"Cannot open SQLite database {path!r}: directory {directory!r} is not "
            f"writable by this process (SQLite keeps its -wal and -shm files beside "
            f"the database). Make it writable, or point the URL elsewhere.")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ConfigurationError(
            f"Cannot open SQLite database {path!r}: the file is read-only for this "
            f"process. Make it writable by the user running Conveyor.")


def _enable_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch to WAL (persistent in the file), retrying while another process holds it.

    Turning a fresh database to WAL needs a moment of exclusive access, which the busy
    handler does not cover, so several processes starting at once retry here.
    """
    deadline = time.monotonic() + busy_timeout
    delay = 0.005
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        else:
            if str(mode).lower() != "wal":
                raise OperationalError(
                    f"SQLite refused WAL mode (journal_mode is {mode!r}); the file "
                    f"system may not support shared memory. Use a local disk.")
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``: the write lock is taken before any read, so a
    read-then-write never fails on a stale snapshot, and two claimers serialize."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


#: How many times this process's line has forked: each child counts one more than
#: its parent (moved by the at-fork hook below, before the child runs anything else).
_forks = 0


class ForkSafe:
    """Holds connections for one process; after ``fork()`` the child starts afresh."""

    def __init__(self) -> None:
        self.forks = _forks

    def forked(self) -> bool:
        """True (once) in a child process; the caller then drops its connections.

        perf: a counter the at-fork hook moves, not ``os.getpid()``: a system call
        (315 ns here, timeit) on every transport and backend call.
        """
        if self.forks == _forks:
            return False
        self.forks = _forks
        return True

    @staticmethod
    def abandon(conn: sqlite3.Connection | None) -> None:
        """Forget a connection inherited from the parent without closing it."""
        if conn is not None:
            _inherited.append(conn)


class Notifier:
    """Wakes waiters in *this* process at once when a writer here changes the file.

    Writers in other processes are noticed by polling, so this only shortens waits;
    correctness never depends on it. One per database path.
    """

    _all: dict[str, Notifier] = {}
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.version = 0
        self.waiting = 0  # threads inside wait(), counted under ``cond``
        self._ticks = itertools.count(1)

    @classmethod
    def for_path(cls, path: str) -> Notifier:
        with cls._lock:
            found = cls._all.get(path)
            if found is None:
                found = cls._all[path] = cls()
            return found

    def notify(self) -> None:
        """perf: without a waiter (a producer's every publish) no lock is taken.

        The version moves first, then the waiters are counted; a waiter counts itself
        before it compares the version. So either it sees the new version and does not
        sleep, or this call sees it and wakes it.
        """
        self.version = next(self._ticks)
        if self.waiting:
            with self.cond:
                self.cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """Sleep up to ``timeout`` unless the version moved past ``seen``; new version."""
        with self.cond:
            self.waiting += 1
            try:
                if self.version == seen and timeout > 0:
                    self.cond.wait(timeout)
            finally:
                self.waiting -= 1
            return self.version


#: Commits reported to a :class:`Checkpointer` between two background checkpoints: a
#: commit of the transport writes 2.5 (a publish) to 3.3 (a claim of 4, an ack) WAL
#: pages of 4 KiB, so about the 1,000 pages at which SQLite checkpoints by itself.
CHECKPOINT_EVERY = 300
#: WAL pages past which a connection whose commits a :class:`Checkpointer` follows
#: checkpoints by itself after all (SQLite's default is 1,000); also a bound on the
#: WAL file (16 MiB) should the thread fall behind or stop. perf: 2,000 (with a
#: background checkpoint every 150 commits) left two fsyncs in the commits for every
#: one 4,000 does; sqlite_queue enqueue vs huey_sync_normal, 4 interleaved pairs
#: 2,000/4,000: 1.40/1.67, 1.45/1.44, 1.57/1.69, 1.57/1.62.
FALLBACK_CHECKPOINT = 4000
#: Seconds a checkpoint thread waits for more commits before it ends.
CHECKPOINT_IDLE = 2.0


class Checkpointer:
    """Copies a database's WAL back into its file from a thread of its own, so a
    publish, claim or ack seldom waits for that copy and its fsyncs.

    SQLite checkpoints inside the commit that takes the WAL past 1,000 pages, and
    with ``synchronous=NORMAL`` a checkpoint is when the WAL and the database file
    are fsynced (commits in between are not): that commit waits for two fsyncs (0.6
    ms each with 100 pages dirty on the development VM), and the next one for a
    third, of the WAL's header as it starts the WAL over. Here, every
    :data:`CHECKPOINT_EVERY` commits this process reports, the thread runs a
    ``PASSIVE`` checkpoint (it neither waits for nor blocks readers and writers;
    ``synchronous=NORMAL`` as every connection, so durability is unchanged: commits
    survive any process crash, and only an OS crash or power loss can lose those
    since the last checkpoint). While commits keep coming the WAL is never wholly
    copied at the start of one, so it only starts over after a committer's own
    checkpoint at :data:`FALLBACK_CHECKPOINT` pages: three fsyncs in the commits
    every 4,000 pages, not every 1,000. One per database path and process, started
    on demand, ending after :data:`CHECKPOINT_IDLE` seconds without commits.

    perf: in-process transport, 10,000 tasks (strace -T, the committing thread):
    fdatasync calls a publish 0.008 -> 0.002 and time in them 11.7 -> 2.2 us (5.9 on
    a second run); fetch 4 + ack each 0.013 -> 0.003 a task, 22.4 -> 4.2 us (12.4).
    The cost is CPU: a longer WAL makes longer chains in its index's hash tables,
    which every written page walks (callgrind, all threads, difference of 4,000
    and 1,000 tasks: a publish 103.6k -> 108.2k instructions, fetch + ack 179.5k ->
    199.7k a task). sqlite_queue, 6 interleaved pairs main/this, enqueue vs
    huey_sync_normal: 1.18/1.51, 1.18/1.55, 1.11/1.39, 1.20/1.43, 1.24/1.11,
    1.20/1.48; Conveyor's drain rate did not move beyond the noise (worker CPU a
    task 56-60 -> 61-64 us).
    """

    _all: dict[str, Checkpointer] = {}
    _lock = threading.Lock()

    def __init__(self, path: str) -> None:
        self.path = path
        self._reset()

    def _reset(self) -> None:
        """No thread, nothing counted: as made (and in a child process, whose
        parent's thread does not exist there)."""
        self.commits = 0
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_path(cls, path: str) -> Checkpointer:
        with cls._lock:
            found = cls._all.get(path)
            if found is None:
                found = cls._all[path] = cls(path)
            return found

    def committed(self, count: int = 1) -> None:
        """Count ``count`` commits; wake (or start) the thread every
        :data:`CHECKPOINT_EVERY`. perf: an addition and a comparison otherwise."""
        self.commits += count
        if self.commits >= CHECKPOINT_EVERY:
            self.commits = 0
            self._kick()

    def _kick(self) -> None:
        with self._guard:
            self._wake.set()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="conveyor-sqlite-checkpoint", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                if not self._wake.wait(CHECKPOINT_IDLE):
                    with self._guard:
                        if not self._wake.is_set():
                            self._thread = None
                            return
                self._wake.clear()
                if conn is None:
                    # mode=rw: a file removed meanwhile is not created again, empty.
                    conn = sqlite3.connect(
                        f"file:{urllib.parse.quote(self.path)}?mode=rw", uri=True,
                        timeout=0, isolation_level=None, check_same_thread=False)
                    conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception as exc:  # noqa: BLE001 - the committers' own checkpoints
            # (FALLBACK_CHECKPOINT) take over; the next kick starts a thread again.
            log.debug("Background checkpoint of %s failed: %s", self.path, exc)
            with self._guard:
                self._thread = None
        finally:
            if conn is not None:
                conn.close()


def _after_fork_in_child() -> None:
    """Fresh locks in a child: one held by another parent thread at fork() time would
    stay held for ever in the child, where that thread does not exist; and one
    more fork counted, so every :class:`ForkSafe` drops its parent's connections."""
    global _forks
    _forks += 1
    Notifier._lock = threading.Lock()
    for notifier in Notifier._all.values():
        notifier.cond = threading.Condition()
        notifier.waiting = 0  # the parent's waiting threads do not exist here
    Checkpointer._lock = threading.Lock()
    for checkpointer in Checkpointer._all.values():  # its thread is the parent's
        checkpointer._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)
