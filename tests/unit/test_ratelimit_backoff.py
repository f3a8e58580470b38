"""Celery's spellings of rate limits and its exponential retry countdown."""

from __future__ import annotations

import pytest

from conveyor.exceptions import ConfigurationError
from conveyor.ratelimit import Throttle, parse_rate
from conveyor.task import backoff


@pytest.mark.parametrize(("text", "per_second"), [
    ("10/s", 10.0), ("100/m", 100 / 60), ("1000/h", 1000 / 3600), ("5", 5.0), (2.5, 2.5),
    (None, None), (0, None), ("0/s", None),
])
def test_rates_are_read_as_celery_writes_them(text: object, per_second: float | None
                                              ) -> None:
    assert parse_rate(text) == per_second


@pytest.mark.parametrize("text", ["10/d", "ten/s", -1, True, "/s"])
def test_a_bad_rate_names_itself(text: object) -> None:
    with pytest.raises(ConfigurationError, match="Bad rate_limit"):
        parse_rate(text)


def test_a_throttle_spaces_starts_and_takes_back_the_last_slot() -> None:
    throttle = Throttle(10.0)
    slots = [throttle.reserve(100.0) for _ in range(3)]
    assert [round(slot, 3) for slot in slots] == [100.0, 100.1, 100.2]
    throttle.give_back(slots[0])  # not the latest: nothing to take back
    assert round(throttle.reserve(100.0), 3) == 100.3
    throttle.give_back(throttle.reserve(100.0))
    assert round(throttle.reserve(100.0), 3) == 100.4


def test_backoff_doubles_up_to_its_maximum_and_jitters_below_it() -> None:
    assert [backoff(True, n, 600, False) for n in range(5)] == [1, 2, 4, 8, 16]
    assert [backoff(3, n, 20, False) for n in range(4)] == [3, 6, 12, 20]
    assert all(0 <= backoff(True, 4, 600, True) <= 16 for _ in range(50))
