"""The corrected twin of ``calling_misuse.py``: mypy --strict reports nothing."""

import datetime as dt

from conveyor import chain, group, signature

from typed_tasks import add, app, scale, shout

add.delay(1, 2)
add.delay(1, y=2)
add.delay(1, 2)
add.delay(x=1, y=2)
scale.delay(2, factor=3)
scale.delay(2, factor=1)
add.s(1, 2)
shout.si("five")
add.apply_async((1, 2), countdown=2.5)
add.apply_async((1, 2), countdown=3)
add.apply_async((1, 2), priority=9)
add.apply_async((1, 2), eta=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=10))
add.apply_async((1, 2), link=add.signature((10,)))
add.apply_async((1, 2), retry_policy={"max_retries": 3, "interval_start": 0.5})
add.s(1, 2).set(queue="math")
add.signature((1,), ignore_result=True)
signature("tasks.add", args=(1, 2), expires=3600)
app.send_task("tasks.add", (1, 2), time_limit=30)
app.send_task("tasks.add", (1, 2), queue="math")
chain(add.s(1, 2), add.signature((3,))).apply_async(serializer="json")
group(add.s(1, 2)).apply_async(headers={"x": "1"})
total: int = add.delay(1, 2).get(timeout=1)
add.delay(1, 2).get(timeout=1).bit_length()


async def main() -> None:
    await add.aapply_async((1, 2), countdown=dt.timedelta(seconds=3).total_seconds())
    await add.aapply_async((1, 2), expires=5)
    await add.adelay(1, 2)
    result = await add.adelay(1, 2)
    value: int = await result.aget(timeout=1)
    await app.asend_task("tasks.add", (1, 2), priority=1)
