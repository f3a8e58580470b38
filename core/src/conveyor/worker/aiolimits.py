"""``soft_time_limit`` for ``async def`` tasks: the exception raised at the await
the coroutine is suspended in, so it can clean up as a blocking task does.

A blocking task gets ``SoftTimeLimitExceeded`` raised in its thread
(:mod:`.limits`). A coroutine has no thread of its own; it is woken the way
``asyncio.timeout()`` wakes one (its asyncio task is cancelled), and the
``CancelledError`` that would reach it is replaced, on its way in, by
``SoftTimeLimitExceeded`` (the cancellation is withdrawn: ``uncancel``). What the
coroutine does next is up to it: return, re-raise, or go on until ``time_limit``
cancels it for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

from ..exceptions import SoftTimeLimitExceeded


class SoftLimited:
    """Await ``coro`` with ``SoftTimeLimitExceeded`` thrown into it after ``seconds``."""

    __slots__ = ("coro", "seconds", "what", "_fired")

    def __init__(self, coro: Coroutine[Any, Any, Any], seconds: float, what: str) -> None:
        self.coro, self.seconds, self.what = coro, seconds, what
        self._fired: SoftTimeLimitExceeded | None = None

    def _fire(self, task: asyncio.Task[Any]) -> None:
        self._fired = SoftTimeLimitExceeded(
            f"{self.what} exceeded soft_time_limit={self.seconds}s")
        task.cancel()

    def __await__(self) -> Generator[Any, Any, Any]:
        task = asyncio.current_task()
        assert task is not None, "SoftLimited is awaited inside an asyncio task"
        timer = asyncio.get_running_loop().call_later(self.seconds, self._fire, task)
        coro, value = self.coro, None
        error: BaseException | None = None
        try:
            while True:
                try:
                    step = coro.send(value) if error is None else coro.throw(error)
                except StopIteration as stop:
                    return stop.value
                try:
                    value, error = (yield step), None
                except asyncio.CancelledError as exc:
                    value, error = None, exc
                    if self._fired is not None:  # our wake-up, not a cancellation
                        error, self._fired = self._fired, None
                        task.uncancel()
                except BaseException as exc:  # noqa: BLE001 - handed to the coroutine
                    value, error = None, exc
        finally:
            timer.cancel()
            coro.close()
