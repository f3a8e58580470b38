"""Signatures and the canvas: ``signature``, ``chain``, ``group``.

A :class:`Signature` is a dict with Celery's six keys (``task``, ``args``, ``kwargs``,
``options``, ``subtask_type``, ``immutable``), so it is JSON-able and picklable as it
is, and travels inside messages (``link``, ``chain``) exactly as Celery writes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .options import check
from .result import AsyncResult, GroupResult

if TYPE_CHECKING:
    from .app import Conveyor

R = TypeVar("R")


class Signature(dict, Generic[R]):  # type: ignore[type-arg]
    """A call description: task name, partial args/kwargs and execution options."""

    def __init__(self, task: Any = None, args: Sequence[Any] | None = None,
                 kwargs: Mapping[str, Any] | None = None,
                 options: Mapping[str, Any] | None = None,
                 subtask_type: str | None = None, immutable: bool = False,
                 app: Conveyor | None = None, **extra_options: Any) -> None:
        if isinstance(task, Mapping):  # rebuilt from a message or dict
            data = dict(task)
            task, args, kwargs = data.get("task"), data.get("args"), data.get("kwargs")
            options = {**(data.get("options") or {}), **(options or {})}
            subtask_type = data.get("subtask_type")
            immutable = bool(data.get("immutable"))
        name = getattr(task, "name", task)
        if not isinstance(name, str):
            raise TypeError(f"signature() needs a task or a task name, not {task!r}")
        app = app or getattr(task, "app", None)
        opts = {**(options or {}), **extra_options}
        check(opts, "signature")
        super().__init__(task=name, args=list(args or ()), kwargs=dict(kwargs or {}),
                         options=opts, subtask_type=subtask_type,
                         immutable=bool(immutable))
        self._app = app

    def __reduce__(self) -> Any:
        return (_rebuild, (dict(self),))

    # ----------------------------------------------------------- fields
    @property
    def name(self) -> str:
        return self["task"]  # type: ignore[no-any-return]

    task = name

    @property
    def args(self) -> list[Any]:
        return self["args"]  # type: ignore[no-any-return]

    @property
    def kwargs(self) -> dict[str, Any]:
        return self["kwargs"]  # type: ignore[no-any-return]

    @property
    def options(self) -> dict[str, Any]:
        return self["options"]  # type: ignore[no-any-return]

    @property
    def immutable(self) -> bool:
        return bool(self["immutable"])

    @property
    def app(self) -> Conveyor:
        if self._app is None:
            from .app import current_app
            self._app = current_app()
        return self._app

    def bind(self, app: Conveyor) -> Signature[R]:
        self._app = app
        return self

    # ----------------------------------------------------------- building
    def clone(self, args: Sequence[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, **options: Any) -> Signature[R]:
        """A copy with args prepended-merged (unless immutable) and options added."""
        new_args, new_kwargs = self._merged(args, kwargs)
        sig: Signature[R] = Signature(self["task"], new_args, new_kwargs,
                                      {**self.options, **options}, self["subtask_type"],
                                      self.immutable, app=self._app)
        return sig

    def _merged(self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
                ) -> tuple[list[Any], dict[str, Any]]:
        if self.immutable:
            return list(self.args), dict(self.kwargs)
        return [*(args or ()), *self.args], {**self.kwargs, **(kwargs or {})}

    def set(self, **options: Any) -> Signature[R]:
        """Add execution options in place; returns the signature."""
        check(options, "set")
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> Signature[R]:
        self["immutable"] = bool(immutable)
        return self

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        """Apply ``callback`` with this task's return value after it succeeds."""
        # A new list: a clone shares its options' values with the original.
        self.options["link"] = [*sig_list(self.options.get("link")), callback]
        return callback

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        """Call ``errback`` after this task fails."""
        self.options["link_error"] = [*sig_list(self.options.get("link_error")), errback]
        return errback

    def __or__(self, other: Signature[Any]) -> chain:  # type: ignore[override]
        # Celery's canvas: ``a.s() | b.s()`` is a chain, not a dict union.
        return chain(self, other)

    # ----------------------------------------------------------- calling
    def apply_async(self, args: Sequence[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, **options: Any
                    ) -> AsyncResult[R]:
        """Publish the call; given args are prepended (partial application)."""
        new_args, new_kwargs = self._merged(args, kwargs)
        app = self.app
        return app.publish(self.name, new_args, new_kwargs, options, self.options,
                           app.tasks.get(self.name))

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        return self.apply_async(args, kwargs)

    async def adelay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        return await self.aapply_async(args, kwargs)

    async def aapply_async(self, args: Sequence[Any] | None = None,
                           kwargs: Mapping[str, Any] | None = None,
                           **options: Any) -> AsyncResult[R]:
        import asyncio
        return await asyncio.to_thread(self.apply_async, args, kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        """Run the task here, in this process (no message)."""
        new_args, new_kwargs = self._merged(args, kwargs)
        return self.app.tasks[self.name](*new_args, **new_kwargs)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}({', '.join(parts)})"


def sig_list(value: Any) -> list[Any]:
    """A ``link``/``link_error`` option as a list (it takes one signature or several)."""
    if not value:
        return []
    return [value] if isinstance(value, Mapping) else list(value)


def _rebuild(data: dict[str, Any]) -> Signature[Any]:
    return signature(data)


def signature(task: Any, args: Sequence[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, app: Conveyor | None = None,
              **options: Any) -> Signature[Any]:
    """A signature by task, name or dict: ``signature("tasks.add", args=(2, 2))``."""
    if isinstance(task, Mapping) and not isinstance(task, Signature):
        return Signature(task, app=app)
    if isinstance(task, Signature):
        return task.clone() if app is None else task.clone().bind(app)
    return Signature(task, args, kwargs, options, app=app)


def maybe_signature(value: Any, app: Conveyor | None = None) -> Signature[Any] | None:
    if value is None:
        return None
    sig = value if isinstance(value, Signature) else Signature(value, app=app)
    if app is not None:
        sig.bind(app)
    return sig


class chain(Signature[Any]):
    """Run signatures one after another, each getting the previous result first."""

    def __init__(self, *tasks: Any, app: Conveyor | None = None, **options: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], Mapping) and isinstance(tasks[0], Iterable):
            tasks = tuple(tasks[0])
        flat: list[Signature[Any]] = []
        for t in tasks:
            sig = maybe_signature(t, app)
            assert sig is not None
            if isinstance(sig, chain) or sig.get("subtask_type") == "chain":
                flat.extend(maybe_signature(s, app) for s in sig.kwargs["tasks"])  # type: ignore[misc]
            else:
                flat.append(sig)
        if not flat:
            raise ValueError("chain() needs at least one signature")
        app = app or next((s._app for s in flat if s._app is not None), None)
        super().__init__("celery.chain", (), {"tasks": flat}, options,
                         subtask_type="chain", app=app)

    @property
    def tasks(self) -> list[Signature[Any]]:
        return self.kwargs["tasks"]  # type: ignore[no-any-return]

    def __or__(self, other: Signature[Any]) -> chain:  # type: ignore[override]
        return chain(*self.tasks, other, app=self._app)

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        """Call ``callback`` with the chain's result: it links the last task."""
        return self.tasks[-1].link(callback)

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        """Call ``errback`` when any task of the chain fails (Celery's rule): a
        chain stops at its first failure, so it runs once, for the task that
        failed."""
        for task in self.tasks:
            task.link_error(errback)
        return errback

    def apply_async(self, args: Sequence[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, **options: Any
                    ) -> AsyncResult[Any]:
        """Publish the first task; the rest travel in its ``chain`` (reversed)."""
        tasks = [t.clone() for t in self.tasks]
        for sig in tasks:
            sig.options.setdefault("task_id", str(uuid.uuid4()))
        if options.get("task_id"):
            tasks[-1].options["task_id"] = options.pop("task_id")
        first_opts = {**self.options, **options}
        # ``link``/``link_error`` given to the chain itself go where they belong.
        for callback in sig_list(first_opts.pop("link", None)):
            tasks[-1].link(callback)
        for errback in sig_list(first_opts.pop("link_error", None)):
            for sig in tasks:
                sig.link_error(errback)
        first, rest = tasks[0], tasks[1:]
        results: list[AsyncResult[Any]] = [AsyncResult(s.options["task_id"], self.app)
                                           for s in tasks]
        for parent, child in zip(results, results[1:]):
            child.parent = parent
        if rest:
            first_opts["chain"] = [dict(s) for s in reversed(rest)]
        sent = first.apply_async(args, kwargs, **first_opts)
        for result in results:  # reading any of them flushes a buffering publisher
            result._publisher = sent._publisher
        return results[-1]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        value = self.tasks[0](*args, **kwargs)
        for sig in self.tasks[1:]:
            value = sig(value) if not sig.immutable else sig()
        return value


class group(Signature[Any]):
    """Run signatures in parallel; ``.get()`` returns their results in order."""

    def __init__(self, *tasks: Any, app: Conveyor | None = None, **options: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], Mapping) and isinstance(tasks[0], Iterable):
            tasks = tuple(tasks[0])
        sigs = [maybe_signature(t, app) for t in tasks]
        app = app or next((s._app for s in sigs if s is not None and s._app is not None), None)
        super().__init__("celery.group", (), {"tasks": sigs}, options,
                         subtask_type="group", app=app)

    @property
    def tasks(self) -> list[Signature[Any]]:
        return self.kwargs["tasks"]  # type: ignore[no-any-return]

    def apply_async(  # type: ignore[override]  # a group's result is a GroupResult
            self, args: Sequence[Any] | None = None,
            kwargs: Mapping[str, Any] | None = None, **options: Any) -> GroupResult[Any]:
        """Publish every member in one batch, tagged with the group id and index."""
        group_id = options.pop("task_id", None) or str(uuid.uuid4())
        calls = []
        for index, sig in enumerate(self.tasks):
            new_args, new_kwargs = sig._merged(args, kwargs)
            call = {**self.options, **options, "group_id": group_id, "group_index": index}
            calls.append((sig.name, new_args, new_kwargs, call, sig.options))
        results = self.app.publish_batch(calls)
        return GroupResult(group_id, results, self.app)

    def __call__(self, *args: Any, **kwargs: Any) -> list[Any]:
        return [sig(*args, **kwargs) for sig in self.tasks]
