"""Celery's ``map``, ``starmap`` and ``chunks``: one task over many arguments.

``add.map([1, 2, 3])`` (an :class:`xmap`) is one message for the built-in task
``celery.map``: the worker that takes it calls ``add`` once per item, one after
another in that task, and its result is the list of their results.
``add.starmap([(1, 2), (3, 4)])`` (:class:`xstarmap`, ``celery.starmap``) spreads
each item as arguments. ``add.chunks(items, 10)`` (:class:`chunks`) cuts the items
into parts of 10 and sends a group of ``celery.starmap`` messages, one a part: many
small calls at the price of a few messages, run in parallel by part.

The messages are Celery's (task names, ``kwargs`` ``task``/``it``/``n`` and
``subtask_type`` ``xmap``/``xstarmap``/``chunks`` when nested in a canvas), so a
Celery worker runs what Conveyor sends and the other way round. As in Celery, a map
message is routed as its task would be (``task_routes`` and routers see the task's
name, not ``celery.map``), and the items' task runs inside the map task: its own
options (``queue``, ``rate_limit``, ``acks_late``, …), partial arguments and links
do not apply to each item.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any, Unpack

from .canvas import Signature, app_of, group, maybe_signature, signature
from .result import GroupResult

if TYPE_CHECKING:
    from .app import Conveyor
    from .options import ExecutionOptions

#: The built-in task each kind runs as, by ``subtask_type``.
TASK_NAMES = {"xmap": "celery.map", "xstarmap": "celery.starmap", "chunks": "celery.chunks"}
_BY_TASK = {task: kind for kind, task in TASK_NAMES.items()}


def route_name(name: str, kwargs: Mapping[str, Any]) -> str:
    """The name routers and ``task_routes`` see for a call: a map's task's own
    (Celery's ``route_name``), any other call's ``name``."""
    if name in _BY_TASK:
        inner = kwargs.get("task")
        if isinstance(inner, Mapping) and isinstance(inner.get("task"), str):
            return inner["task"]  # type: ignore[no-any-return]
    return name


def _task_sig(task: Any, app: Conveyor | None) -> Signature[Any]:
    if isinstance(task, Mapping):
        found = maybe_signature(task, app)
        assert found is not None
        return found
    return signature(task, app=app)


class _Map(Signature[list[Any]]):
    """A built-in map task's call over ``it``; sent with ``apply_async``."""

    kind = ""

    def __init__(self, task: Any, it: Iterable[Any], app: Conveyor | None = None,
                 **options: Any) -> None:
        sig = _task_sig(task, app)
        super().__init__(TASK_NAMES[self.kind], (), {"task": sig, "it": list(it)}, options,
                         subtask_type=self.kind, immutable=True, app=app or app_of([sig]))

    def clone(self, args: Sequence[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, **options: Any) -> _Map:
        return type(self)(self.kwargs["task"].clone(), self.kwargs["it"],
                          app=app_of([self]), **{**self.options, **options})


class xmap(_Map):  # noqa: N801 - Celery's name
    """``task(item)`` for each item, in one ``celery.map`` task; its result is the
    list of theirs (``add.map(items)``)."""

    kind = "xmap"


class xstarmap(_Map):  # noqa: N801 - Celery's name
    """``task(*item)`` for each item, in one ``celery.starmap`` task
    (``add.starmap(pairs)``)."""

    kind = "xstarmap"


def _parts(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    items = iter(it)
    while part := list(islice(items, n)):
        yield part


class chunks(Signature[Any]):  # noqa: N801 - Celery's name
    """``task(*item)`` for each item, the items cut into parts of ``n``: a group of
    :class:`xstarmap` tasks, one a part (``add.chunks(pairs, 10)``). ``apply_async``
    sends the group and returns its :class:`~conveyor.result.GroupResult`, whose
    ``get()`` is one list of results a part."""

    def __init__(self, task: Any, it: Iterable[Any], n: int, app: Conveyor | None = None,
                 **options: Any) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"chunks() needs a part size n >= 1, not {n!r}")
        sig = _task_sig(task, app)
        super().__init__(TASK_NAMES["chunks"], (), {"task": sig, "it": list(it), "n": n},
                         options, subtask_type="chunks", immutable=True,
                         app=app or app_of([sig]))

    def clone(self, args: Sequence[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, **options: Any) -> chunks:
        return chunks(self.kwargs["task"].clone(), self.kwargs["it"], self.kwargs["n"],
                      app=app_of([self]), **{**self.options, **options})

    def group(self) -> group:
        """The group this sends: one :class:`xstarmap` a part."""
        task, app = self.kwargs["task"], app_of([self])
        return group(*(xstarmap(task, part, app=app)
                       for part in _parts(self.kwargs["it"], self.kwargs["n"])),
                     app=app)

    def apply_async(  # type: ignore[override]  # a group's result
            self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
            **options: Unpack[ExecutionOptions]) -> GroupResult[Any]:
        return self.group().apply_async(args, kwargs, **{**self.options, **options})

    async def aapply_async(  # type: ignore[override]  # a group's result
            self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
            **options: Unpack[ExecutionOptions]) -> GroupResult[Any]:
        return await self.group().aapply_async(args, kwargs, **{**self.options, **options})

    def __call__(self, **options: Any) -> GroupResult[Any]:
        """Celery's ``chunks(...)()``: send it now."""
        return self.apply_async(**options)


def register(app: Conveyor) -> None:
    """Register the built-in ``celery.map``, ``celery.starmap`` and
    ``celery.chunks`` tasks on ``app`` (every app has them, so every worker runs
    what a Celery or Conveyor client sends)."""

    def run(task: Mapping[str, Any]) -> Any:
        return app.tasks[_task_sig(task, app).name]

    @app.task(name="celery.map")
    def celery_map(task: Mapping[str, Any], it: Iterable[Any]) -> list[Any]:
        fn = run(task)
        return [fn(item) for item in it]

    @app.task(name="celery.starmap")
    def celery_starmap(task: Mapping[str, Any], it: Iterable[Any]) -> list[Any]:
        fn = run(task)
        return [fn(*item) for item in it]

    @app.task(name="celery.chunks")
    def celery_chunks(task: Mapping[str, Any], it: Iterable[Any], n: int) -> list[str]:
        """Sends the parts; returns their task ids (Celery returns the group's
        result object, which no result serializer writes)."""
        sent = chunks(task, it, n, app=app).apply_async()
        return [result.id for result in sent.results]
