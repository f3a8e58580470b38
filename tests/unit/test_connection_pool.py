"""The publishing connection pool: its limit, its reuse, and borrowers who wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from itertools import count

import pytest

from conveyor import Conveyor
from conveyor.connection import Connection
from conveyor.exceptions import OperationalError

_n = count()


@pytest.fixture
def app() -> Iterator[Conveyor]:
    name = f"memory://pool-{next(_n)}"
    app = Conveyor(f"pool{next(_n)}", broker=name, backend=name, broker_pool_limit=2)
    yield app
    app.close()


def test_a_returned_connection_is_reused(app):
    with app.pool.acquire() as first:
        assert isinstance(first, Connection)
    with app.pool.acquire() as again:
        assert again is first


def test_the_limit_holds_and_the_error_says_what_to_do(app):
    with app.pool.acquire(), app.pool.acquire():
        with pytest.raises(OperationalError, match="broker_pool_limit"):
            app.pool.acquire(block=False).__enter__()  # the borrow itself refuses
        started = time.monotonic()
        with pytest.raises(OperationalError, match="All 2 broker connections"):
            app.pool.acquire(timeout=0.1).__enter__()
        assert 0.1 <= time.monotonic() - started < 2


def test_a_connection_given_back_on_an_error_is_reusable(app):
    with pytest.raises(RuntimeError), app.pool.acquire() as held:
        raise RuntimeError("the caller failed")
    with app.pool.acquire() as again:
        assert again is held


def test_waiting_borrowers_are_all_woken_in_time(app):
    """Many threads borrow the two connections over and over, most of them waiting
    at any moment: none waits out its timeout (a give-back that missed a waiter
    would leave it asleep), and no third connection is ever made."""
    seen, errors = set(), []

    def borrow() -> None:
        try:
            for _ in range(300):
                with app.pool.acquire(timeout=10) as conn:
                    seen.add(id(conn))
                    time.sleep(0)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=borrow) for _ in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(seen) == 2
    assert time.monotonic() - started < 10


class _LostConnection(OperationalError, ConnectionError):
    """A plugin's lost connection: one of Conveyor's errors and a connection error."""


def test_a_plugins_connection_error_is_retried_and_a_final_error_is_not(app):
    """A transport that raises a lost connection as one of Conveyor's errors (as
    the AMQP plugin does) gets the retry policy; Conveyor's other errors are final,
    even under a ``retry_errors`` that would match them."""
    with app.pool.acquire() as conn:
        conn.transport.connection_errors = (_LostConnection,)
        calls = []

        def lost_once(_transport):
            calls.append(1)
            if len(calls) == 1:
                raise _LostConnection("connection lost")
            return "sent"

        assert conn.ensure(lost_once, policy={"max_retries": 2, "interval_start": 0}) == "sent"
        assert len(calls) == 2

        def refused(_transport):
            calls.append(1)
            raise OperationalError("refused route")

        calls.clear()
        with pytest.raises(OperationalError, match="refused route"):
            conn.ensure(refused, policy={"max_retries": 2, "interval_start": 0,
                                         "retry_errors": (Exception,)})
        assert len(calls) == 1


def test_a_forked_child_makes_its_own_pool_and_backend_and_keeps_them(app):
    """Connections must not cross a fork: the child's first use makes new ones,
    its later uses keep them; the parent's are untouched."""
    import os
    pool, backend = app.pool, app.backend
    pid = os.fork()
    if pid == 0:  # the child reports through its exit status
        child_pool, child_backend = app.pool, app.backend
        os._exit(0 if child_pool is not pool and child_backend is not backend
                 and app.pool is child_pool and app.backend is child_backend else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert app.pool is pool and app.backend is backend
