"""Stored state documents: ``date_done`` is the text Celery writes."""

from __future__ import annotations

import datetime as dt

import pytest
from conveyor import states


@pytest.mark.parametrize("ns", [
    1_700_000_000_000_000_000,  # on the second: no fraction, as isoformat writes it
    1_700_000_000_000_123_999,  # microseconds floored, as datetime.now does
    1_700_000_000_999_999_999,
    1_700_000_001_000_001_000,  # the next second laid out afresh
])
def test_now_iso_is_isoformat_of_now(monkeypatch: pytest.MonkeyPatch, ns: int) -> None:
    monkeypatch.setattr(states.time, "time_ns", lambda: ns)
    at = dt.datetime.fromtimestamp(ns // 1000 / 1e6, dt.timezone.utc)
    assert states.now_iso() == at.isoformat()


def test_now_iso_follows_the_clock() -> None:
    before = dt.datetime.now(dt.timezone.utc)
    stamp = dt.datetime.fromisoformat(states.now_iso())
    assert before <= stamp <= dt.datetime.now(dt.timezone.utc)
