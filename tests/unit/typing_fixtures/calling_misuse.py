"""Misuses of the calling API that mypy --strict must report (see test_typing.py).

Each line ending in an ``E:`` comment must get exactly one error containing its text;
no other line may get one. ``calling_correct.py`` is the same code, put right.
"""

import datetime as dt

from conveyor import chain, group, signature

from typed_tasks import add, app, scale, shout

add.delay(1, "2")  # E: Argument 2 to "delay" of "Task" has incompatible type "str"
add.delay(1)  # E: Missing positional argument "y" in call to "delay" of "Task"
add.delay(1, 2, 3)  # E: Too many arguments for "delay" of "Task"
add.delay(1, y=2, z=3)  # E: Unexpected keyword argument "z" for "delay" of "Task"
scale.delay(2, 3)  # E: Too many positional arguments for "delay" of "Task"
scale.delay(2)  # E: Missing named argument "factor" for "delay" of "Task"
add.s(1, 2, 3)  # E: Too many arguments for "s" of "Task"
shout.si(5)  # E: Argument 1 to "si" of "Task" has incompatible type "int"
add.apply_async((1, 2), countdown="soon")  # E: Argument "countdown" to "apply_async" of "Task" has incompatible type "str"
add.apply_async((1, 2), countdwon=3)  # E: Unexpected keyword argument "countdwon" for "apply_async" of "Task"
add.apply_async((1, 2), priority="high")  # E: Argument "priority" to "apply_async" of "Task" has incompatible type "str"
add.apply_async((1, 2), eta=10)  # E: Argument "eta" to "apply_async" of "Task" has incompatible type "int"
add.apply_async((1, 2), link="tasks.add")  # E: Argument "link" to "apply_async" of "Task" has incompatible type "str"
add.apply_async((1, 2), retry_policy={"max_retry": 3})  # E: Argument "retry_policy" to "apply_async" of "Task" has incompatible type
add.s(1, 2).set(queu="math")  # E: Unexpected keyword argument "queu" for "set" of "Signature"
add.signature((1,), ignore_result="yes")  # E: Argument "ignore_result" to "signature" of "Task" has incompatible type "str"
signature("tasks.add", args=(1, 2), expires="1h")  # E: Argument "expires" to "signature" has incompatible type "str"
app.send_task("tasks.add", (1, 2), time_limit="30")  # E: Argument "time_limit" to "send_task" of "Conveyor" has incompatible type "str"
app.send_task("tasks.add", (1, 2), queues="math")  # E: Unexpected keyword argument "queues" for "send_task" of "Conveyor"
chain(add.s(1, 2), add.signature((3,))).apply_async(serialiser="json")  # E: Unexpected keyword argument "serialiser" for "apply_async" of "chain"
group(add.s(1, 2)).apply_async(headers=["x"])  # E: Argument "headers" to "apply_async" of "group" has incompatible type "list[str]"
total: str = add.delay(1, 2).get(timeout=1)  # E: Incompatible types in assignment (expression has type "int", variable has type "str")
add.delay(1, 2).get(timeout=1).upper()  # E: "int" has no attribute "upper"


async def main() -> None:
    await add.aapply_async((1, 2), countdown=dt.timedelta(seconds=3))  # E: Argument "countdown" to "aapply_async" of "Task" has incompatible type "timedelta"
    await add.aapply_async((1, 2), expire=5)  # E: Unexpected keyword argument "expire" for "aapply_async" of "Task"
    await add.adelay(1, "2")  # E: Argument 2 to "adelay" of "Task" has incompatible type "str"
    result = await add.adelay(1, 2)
    text: str = await result.aget(timeout=1)  # E: Incompatible types in assignment (expression has type "int", variable has type "str")
    await app.asend_task("tasks.add", (1, 2), priority=1.5)  # E: Argument "priority" to "asend_task" of "Conveyor" has incompatible type "float"
