"""The pytest plugin's async fixtures, used as a project's own tests would use them."""

from __future__ import annotations

import asyncio

import pytest
from conveyor import Conveyor, group
from conveyor.worker import Worker


@pytest.fixture
def conveyor_worker_options() -> dict[str, object]:
    return {"concurrency": 4, "pool": "threads"}


@pytest.fixture
def tasks(conveyor_app: Conveyor) -> object:
    """Registered before the worker starts, as a project's tasks module would be."""

    @conveyor_app.task(name="t.double")
    async def double(x: int) -> int:
        await asyncio.sleep(0.01)
        return 2 * x

    return double


@pytest.mark.asyncio
async def test_an_async_test_awaits_an_async_task_through_a_real_worker(
        tasks: object, async_conveyor_app: Conveyor, conveyor_worker: Worker) -> None:
    double = async_conveyor_app.tasks["t.double"]
    assert await (await double.adelay(21)).aget(timeout=10) == 42
    members = await group(double.s(i) for i in range(5)).aapply_async()
    assert await members.aget(timeout=10) == [0, 2, 4, 6, 8]
