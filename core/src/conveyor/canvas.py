"""Signatures and the canvas: ``signature``, ``chain``, ``group``, ``chord``.

A :class:`Signature` is a dict with Celery's six keys (``task``, ``args``, ``kwargs``,
``options``, ``subtask_type``, ``immutable``), so it is JSON-able and picklable as it
is, and travels inside messages (``link``, ``chain``, ``chord``) exactly as Celery
writes it; :func:`from_dict` turns one back into a chain, group or chord by its
``subtask_type`` (``map``/``starmap``/``chunks``: :mod:`conveyor.maps`).

``freeze()`` fixes a canvas's task ids before anything is sent, so the result a
call returns (and its ``parent`` links) can be waited on at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Unpack, cast

from . import aio, chainstore, stamping
from .options import check, known
from .result import AsyncResult, GroupResult

if TYPE_CHECKING:
    from .app import Conveyor
    from .options import ExecutionOptions
    from .stamping import StampingVisitor

R = TypeVar("R")


class Signature(dict, Generic[R]):  # type: ignore[type-arg]
    """A call description: task name, partial args/kwargs and execution options."""

    def __init__(self, task: Any = None, args: Sequence[Any] | None = None,
                 kwargs: Mapping[str, Any] | None = None,
                 options: Mapping[str, Any] | None = None,
                 subtask_type: str | None = None, immutable: bool = False,
                 app: Conveyor | None = None,
                 **extra_options: Unpack[ExecutionOptions]) -> None:
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
    def id(self) -> str | None:
        """The task id given or frozen (``freeze()``), else None."""
        return self.options.get("task_id")

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
              kwargs: Mapping[str, Any] | None = None,
              **options: Unpack[ExecutionOptions]) -> Signature[R]:
        """A copy with args prepended-merged (unless immutable) and options added."""
        new_args, new_kwargs = self._merged(args, kwargs)
        sig: Signature[R] = Signature(self["task"], new_args, new_kwargs,
                                      {**self.options, **options}, self["subtask_type"],
                                      self.immutable, app=self._app)
        return sig

    def replace(self, args: Sequence[Any] | None = None,
                kwargs: Mapping[str, Any] | None = None,
                options: Mapping[str, Any] | None = None) -> Signature[R]:
        """A copy whose args, kwargs or options are the given ones (those given as
        None stay), Celery's ``Signature.replace``."""
        sig = self.clone()
        if args is not None:
            sig["args"] = list(args)
        if kwargs is not None:
            sig["kwargs"] = dict(kwargs)
        if options is not None:
            check(options, "replace")
            sig["options"] = dict(options)
        return sig

    def _merged(self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
                ) -> tuple[list[Any], dict[str, Any]]:
        if self.immutable:
            return list(self.args), dict(self.kwargs)
        return [*(args or ()), *self.args], {**self.kwargs, **(kwargs or {})}

    def freeze(self, task_id: str | None = None) -> AsyncResult[R]:
        """Fix this call's task id (``task_id``, the one set, or a new one) and
        return its result, before it is sent."""
        fixed = task_id or self.options.get("task_id") or new_id()
        self.options["task_id"] = fixed
        return AsyncResult(fixed, self._app)

    def set(self, **options: Unpack[ExecutionOptions]) -> Signature[R]:
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

    def on_error(self, errback: Signature[Any]) -> Signature[R]:
        """:meth:`link_error` that returns this signature, for one expression
        (Celery's ``add.s(2, 2).on_error(log_error.s()).delay()``)."""
        self.link_error(errback)
        return self

    def __or__(self, other: Signature[Any]) -> chain:  # type: ignore[override]
        # Celery's canvas: ``a.s() | b.s()`` is a chain, not a dict union.
        return chain(self, other)

    def stamp(self, visitor: StampingVisitor | None = None, append_stamps: bool = False,
              **stamps: Any) -> Signature[R]:
        """Stamp this task, its callbacks and errbacks (see :mod:`conveyor.stamping`):
        ``sig.stamp(tenant="acme")``; the worker reads ``self.request.stamps``.
        A chain, group or chord stamps each of its tasks. Returns the signature."""
        self._stamp_links(visitor, append_stamps, stamps)
        if visitor is not None:
            stamps = stamping.merged(stamps, visitor.on_signature(self, **stamps))
        stamping.put(self.options, stamps, append_stamps)
        return self

    def _stamp_links(self, visitor: StampingVisitor | None, append_stamps: bool,
                     stamps: Mapping[str, Any]) -> None:
        """Stamp the ``link`` and ``link_error`` signatures in this one's options
        with ``stamps`` (and what the visitor adds for each)."""
        for key in ("link", "link_error"):
            links = sig_list(self.options.get(key))
            if not links:
                continue
            stamped = []
            for link in links:
                sig = maybe_signature(link, self._app)
                assert sig is not None
                given: Mapping[str, Any] = stamps
                if visitor is not None:
                    ask = visitor.on_callback if key == "link" else visitor.on_errback
                    given = stamping.merged(stamps, ask(sig, **stamps))
                stamped.append(sig.stamp(visitor, append_stamps, **given))
            self.options[key] = stamped

    # ----------------------------------------------------------- calling
    def apply_async(self, args: Sequence[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None,
                    **options: Unpack[ExecutionOptions]) -> AsyncResult[R]:
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
                           **options: Unpack[ExecutionOptions]) -> AsyncResult[R]:
        """``apply_async`` for asyncio code, for any canvas: the same steps run, and
        the messages they build are sent on the running loop (:func:`aio.deferred`)."""
        return await aio.deferred(self.app, lambda: self.apply_async(args, kwargs,
                                                                     **options))

    def __invert__(self) -> R:
        """``~sig``: send it and wait for its result (Celery's shorthand for
        ``sig.apply_async().get()``)."""
        return self.apply_async().get()

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        """Run the task here, in this process (no message)."""
        new_args, new_kwargs = self._merged(args, kwargs)
        return self.app.tasks[self.name](*new_args, **new_kwargs)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}({', '.join(parts)})"


def new_id() -> str:
    from .publish import new_id as make
    return make()


def sig_list(value: Any) -> list[Any]:
    """A ``link``/``link_error`` option as a list (it takes one signature or several)."""
    if not value:
        return []
    return [value] if isinstance(value, Mapping) else list(value)


def _rebuild(data: dict[str, Any]) -> Signature[Any]:
    return from_dict(data)


def signature(task: Any, args: Sequence[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, app: Conveyor | None = None,
              **options: Unpack[ExecutionOptions]) -> Signature[Any]:
    """A signature by task, name or dict: ``signature("tasks.add", args=(2, 2))``."""
    if isinstance(task, Mapping) and not isinstance(task, Signature):
        return from_dict(task, app)
    if isinstance(task, Signature):
        return task.clone() if app is None else task.clone().bind(app)
    return Signature(task, args, kwargs, options, app=app)


def maybe_signature(value: Any, app: Conveyor | None = None) -> Signature[Any] | None:
    """``value`` as a signature of the right kind (a dict from a message becomes a
    chain, group or chord by its ``subtask_type``), or None."""
    if value is None:
        return None
    sig = value if isinstance(value, Signature) else from_dict(value, app)
    if app is not None:
        sig.bind(app)
    return sig


def from_dict(data: Mapping[str, Any], app: Conveyor | None = None) -> Signature[Any]:
    """Rebuild a signature written by Conveyor or Celery, of the class its
    ``subtask_type`` names.

    Options Conveyor does not know (a newer Celery's) are dropped rather than refused:
    the dict came off the wire, where the sender's options are not the user's typo.
    """
    options = known(data.get("options") or {})
    kind = data.get("subtask_type")
    kwargs = data.get("kwargs") or {}
    if kind == "chain":
        return chain(*kwargs.get("tasks") or (), app=app, **options)
    if kind == "group":
        return group(*kwargs.get("tasks") or (), app=app, **options)
    if kind == "chord":
        return chord(kwargs.get("header") or (), kwargs.get("body"), app=app, **options)
    if kind in ("xmap", "xstarmap", "chunks") and isinstance(kwargs.get("task"), Mapping):
        from . import maps
        if kind == "chunks":
            return maps.chunks(kwargs["task"], kwargs.get("it") or (), kwargs.get("n", 0),
                               app=app, **options)
        made: Signature[Any] = (maps.xmap if kind == "xmap" else maps.xstarmap)(
            kwargs["task"], kwargs.get("it") or (), app=app, **options)
        return made
    return Signature(data.get("task"), data.get("args"), kwargs, options,
                     immutable=bool(data.get("immutable")), app=app)


def _members(tasks: tuple[Any, ...]) -> tuple[Any, ...]:
    """``chain(a, b)`` and ``chain([a, b])`` both mean the same tasks."""
    if len(tasks) == 1 and not isinstance(tasks[0], Mapping) and isinstance(tasks[0], Iterable):
        return tuple(tasks[0])
    return tasks


def app_of(sigs: Iterable[Signature[Any] | None]) -> Conveyor | None:
    """The app the first of ``sigs`` bound to one is bound to (None: none is)."""
    return next((s._app for s in sigs if s is not None and s._app is not None), None)


#: Options that place a task inside an enclosing group or chord: a chain gives them
#: to its last task, a chord to its body (what reports to the enclosing join).
_MEMBERSHIP = ("group_id", "group_index", "chord")


class chain(Signature[Any]):
    """Run signatures one after another, each getting the previous result first.

    As in Celery, a group followed by another step is a chord (the step gets the
    list of the group's results), and a chord followed by steps runs them after its
    body.
    """

    def __init__(self, *tasks: Any, app: Conveyor | None = None, **options: Any) -> None:
        flat: list[Signature[Any]] = []
        for t in _members(tasks):
            sig = maybe_signature(t, app)
            assert sig is not None
            if isinstance(sig, chain):
                flat.extend(sig.tasks)
            else:
                flat.append(sig)
        if not flat:
            raise ValueError("chain() needs at least one signature")
        super().__init__("celery.chain", (), {"tasks": flat}, options,
                         subtask_type="chain", app=app or app_of(flat))

    @property
    def tasks(self) -> list[Signature[Any]]:
        return self.kwargs["tasks"]  # type: ignore[no-any-return]

    def clone(self, args: Sequence[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, **options: Any) -> chain:
        """A copy with its own copies of the steps (partial args go to the first)."""
        tasks = [t.clone() for t in self.tasks]
        if args or kwargs:
            tasks[0] = tasks[0].clone(args, kwargs)
        return chain(*tasks, app=self._app, **{**self.options, **options})

    def __or__(self, other: Signature[Any]) -> chain:  # type: ignore[override]
        return chain(*self.tasks, other, app=self._app, **self.options)

    def steps(self) -> list[Signature[Any]]:
        """Copies of the steps as they are sent: a group followed by a step becomes a
        chord with that step as its body; a chord whose body is a chain keeps only
        the chain's first task as its body and the rest become steps after it (so
        the rest is not copied into every header message)."""
        pending = [t.clone() for t in self.tasks]
        out: list[Signature[Any]] = []
        while pending:
            step = pending.pop(0)
            if isinstance(step, group) and pending:
                nxt = pending.pop(0)
                step = chord(step, nxt, app=self._app)
            if isinstance(step, chord) and isinstance(step.body, chain):
                body_steps = step.body.tasks
                step.kwargs["body"] = body_steps[0]
                pending[:0] = body_steps[1:]
            out.append(step)
        return out

    def freeze(self, task_id: str | None = None) -> Any:
        """Fix the ids of every step (``task_id``: the last one's) and return the
        result of the last step, its ``parent`` chain leading back to the first."""
        if task_id:
            self.tasks[-1].options["task_id"] = task_id
        results = [t.freeze() for t in self.tasks]
        for parent, child in zip(results, results[1:]):
            _set_parent(child, parent)
        return results[-1]

    def stamp(self, visitor: StampingVisitor | None = None, append_stamps: bool = False,
              **stamps: Any) -> chain:
        """Stamp every step (the visitor's ``on_chain_start`` adds to the stamps)."""
        if visitor is not None:
            stamps = stamping.merged(stamps, visitor.on_chain_start(self, **stamps))
        self._stamp_links(visitor, append_stamps, stamps)
        for task in self.tasks:
            task.stamp(visitor, append_stamps, **stamps)
        if visitor is not None:
            visitor.on_chain_end(self, **stamps)
        return self

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
                    kwargs: Mapping[str, Any] | None = None,
                    **options: Unpack[ExecutionOptions]) -> Any:
        """Publish the first step; the rest travel in its ``chain`` (reversed).

        Returns the last step's result (an :class:`AsyncResult`, or a
        :class:`GroupResult` when the chain ends with a group).
        """
        opts: dict[str, Any] = {**self.options, **options}
        steps = self.steps()
        last = steps[-1]
        task_id = opts.pop("task_id", None)
        if task_id:
            last.options["task_id"] = task_id
        for key in _MEMBERSHIP:  # the last step is what an enclosing join counts
            if opts.get(key) is not None:
                last.options[key] = opts.pop(key)
        for callback in sig_list(opts.pop("link", None)):
            last.link(callback)
        for errback in sig_list(opts.pop("link_error", None)):
            for step in steps:
                step.link_error(errback)
        results = [s.freeze() for s in steps]
        for parent, child in zip(results, results[1:]):
            _set_parent(child, parent)
        first, rest = steps[0], steps[1:]
        if rest and chainstore.in_backend(self.app, steps):
            headers = opts.get("headers") or {}
            opts["headers"] = {**headers, chainstore.HEADER: chainstore.park(self.app, rest)}
        elif rest:
            opts["chain"] = [dict(s) for s in reversed(rest)]
        sent = first.apply_async(args, kwargs, **opts)
        publisher = getattr(sent, "publisher", None)
        for result in results:  # reading any of them flushes a buffering publisher
            if isinstance(result, AsyncResult) and result.publisher is None:
                result.publisher = publisher
        return results[-1]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        value = self.tasks[0](*args, **kwargs)
        for sig in self.tasks[1:]:
            value = sig(value) if not sig.immutable else sig()
        return value


def _set_parent(result: Any, parent: Any) -> None:
    """Point the first result of ``result``'s own lineage at ``parent``."""
    node = result
    while getattr(node, "parent", None) is not None:
        node = node.parent
    node.parent = parent


def _unrolled(inner: group) -> list[Signature[Any]]:
    """The members of a group inside a group, to stand in its place: as Celery
    does, a group in a group runs its tasks as members of the outer one (one
    group id, one flat list of results). Options set on the inner group (a
    ``queue``, say) apply to its members where they set none of their own; its id
    is not theirs."""
    extra = {k: v for k, v in inner.options.items() if k != "task_id"}
    if not extra:
        return list(inner.tasks)
    members = []
    for member in inner.tasks:
        copy = member.clone()
        copy["options"] = {**extra, **copy.options}
        members.append(copy)
    return members


class group(Signature[Any]):
    """Run signatures in parallel; ``.get()`` returns their results in order.

    ``group(...) | task`` is a chord: ``task`` gets the list of results.
    """

    def __init__(self, *tasks: Any, app: Conveyor | None = None, **options: Any) -> None:
        sigs: list[Signature[Any]] = []
        for t in _members(tasks):
            sig = maybe_signature(t, app)
            assert sig is not None
            if isinstance(sig, group):
                sigs.extend(_unrolled(sig))
            else:
                sigs.append(sig)
        super().__init__("celery.group", (), {"tasks": sigs}, options,
                         subtask_type="group", app=app or app_of(sigs))

    @property
    def tasks(self) -> list[Signature[Any]]:
        return self.kwargs["tasks"]  # type: ignore[no-any-return]

    def clone(self, args: Sequence[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, **options: Any) -> group:
        """A copy with copies of the members (partial args go to every member)."""
        return group(*[t.clone(args, kwargs) for t in self.tasks], app=self._app,
                     **{**self.options, **options})

    def __or__(self, other: Signature[Any]) -> Any:  # type: ignore[override]
        if isinstance(other, group):
            return chain(self, other, app=self._app)
        return chord(self, other, app=self._app)

    def skew(self, start: float = 1.0, stop: float | None = None,
             step: float = 1.0) -> group:
        """Spread the members' start, as Celery's ``group.skew``: the first gets
        ``countdown=start``, each next one ``step`` seconds more, up to ``stop``
        (the members after that keep the last countdown). Returns the group."""
        countdown = float(start)
        for task in self.tasks:
            task.set(countdown=countdown)
            if not stop or countdown + step <= stop:
                countdown += step
        return self

    def stamp(self, visitor: StampingVisitor | None = None, append_stamps: bool = False,
              **stamps: Any) -> group:
        """Stamp every member (the visitor's ``on_group_start`` adds to the stamps)."""
        if visitor is not None:
            stamps = stamping.merged(stamps, visitor.on_group_start(self, **stamps))
        for task in self.tasks:
            task.stamp(visitor, append_stamps, **stamps)
        if visitor is not None:
            visitor.on_group_end(self, **stamps)
        return self

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        raise TypeError("A group cannot be linked (its members finish apart): "
                        "use a chord, `group(...) | callback`, to run a task after all.")

    def freeze(self, task_id: str | None = None  # type: ignore[override]
               ) -> GroupResult[Any]:
        """Fix the group id and every member's id; return the group's result."""
        group_id = task_id or self.options.get("task_id") or new_id()
        self.options["task_id"] = group_id
        return GroupResult(group_id, [t.freeze() for t in self.tasks], self._app)

    def apply_async(  # type: ignore[override]  # a group's result is a GroupResult
            self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
            **options: Unpack[ExecutionOptions]) -> GroupResult[Any]:
        """Publish every member, tagged with the group id and its index.

        Plain members go out in one batch; a chain or chord member is sent on its
        own and reports to the group through its last task (or body).
        """
        opts: dict[str, Any] = {**self.options, **options}
        if opts.pop("link", None):
            self.link(None)  # type: ignore[arg-type]  # raises, naming the chord
        group_id = opts.pop("task_id", None) or new_id()
        opts.pop("chain", None)  # nothing follows a group: a following step made a chord
        calls = []
        nested: list[tuple[int, Signature[Any]]] = []
        for index, sig in enumerate(self.tasks):
            if isinstance(sig, (chain, chord)):
                nested.append((index, sig))
                continue
            new_args, new_kwargs = sig._merged(args, kwargs)
            call = {**opts, "group_id": group_id, "group_index": index}
            calls.append((sig.name, new_args, new_kwargs, call, sig.options))
        sent = iter(self.app.publish_batch(calls) if calls else ())
        results: list[Any] = []
        nested_at = dict(nested)
        for index in range(len(self.tasks)):
            member = nested_at.get(index)
            if member is None:
                results.append(next(sent))
            else:
                results.append(member.apply_async(
                    args, kwargs, **{**opts, "group_id": group_id, "group_index": index}))
        return GroupResult(group_id, results, self.app)

    async def aapply_async(  # type: ignore[override]  # a group's result is a GroupResult
            self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
            **options: Unpack[ExecutionOptions]) -> GroupResult[Any]:
        """``apply_async`` for asyncio code (see :meth:`Signature.aapply_async`)."""
        return await aio.deferred(self.app, lambda: self.apply_async(args, kwargs,
                                                                     **options))

    def __call__(self, *args: Any, **kwargs: Any) -> list[Any]:
        return [sig(*args, **kwargs) for sig in self.tasks]


class chord(Signature[Any]):
    """A group (the header) whose results, in order, feed one task (the body).

    Each header task reports to a counter in the result backend; the one that
    completes the count sends the body (no polling ``chord_unlock`` task). A failed
    header task fails the chord: the body is stored FAILURE with a
    :class:`~conveyor.exceptions.ChordError` naming the task, and the body's
    ``link_error`` callbacks run.
    """

    def __init__(self, header: Any, body: Any = None, app: Conveyor | None = None,
                 **options: Any) -> None:
        head = maybe_signature(header, app) if isinstance(header, Mapping) else header
        if not isinstance(head, group):  # Celery writes a header as a list of tasks
            members = [head] if isinstance(head, Signature) else list(cast(Iterable[Any], head))
            head = group(*members, app=app)
        body_sig = maybe_signature(body, app)
        super().__init__("celery.chord", (),
                         {"kwargs": {}, "header": head, "body": body_sig}, options,
                         subtask_type="chord",
                         app=app or head._app or (body_sig._app if body_sig else None))

    @property
    def header(self) -> group:
        return self.kwargs["header"]  # type: ignore[no-any-return]

    tasks = header

    @property
    def body(self) -> Signature[Any] | None:
        return self.kwargs["body"]  # type: ignore[no-any-return]

    def clone(self, args: Sequence[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, **options: Any) -> chord:
        """A copy with copies of header and body (partial args go to the header)."""
        body = self.body.clone() if self.body is not None else None
        return chord(self.header.clone(args, kwargs), body, app=self._app,
                     **{**self.options, **options})

    def __or__(self, other: Signature[Any]) -> Any:  # type: ignore[override]
        if isinstance(other, (group, chord)) or self.body is None:
            return chain(self, other, app=self._app)
        new = self.clone()
        new.kwargs["body"] = new.body | other  # type: ignore[operator]
        return new

    def stamp(self, visitor: StampingVisitor | None = None, append_stamps: bool = False,
              **stamps: Any) -> chord:
        """Stamp the header's tasks (with what the visitor's ``on_chord_header_start``
        adds) and the body (with what its ``on_chord_body`` adds)."""
        self._stamp_links(visitor, append_stamps, stamps)
        given = stamps
        if visitor is not None:
            given = stamping.merged(stamps, visitor.on_chord_header_start(self, **stamps))
        for task in self.header.tasks:
            task.stamp(visitor, append_stamps, **given)
        if visitor is not None:
            visitor.on_chord_header_end(self, **given)
        if self.body is not None:
            given = stamps
            if visitor is not None:
                given = stamping.merged(stamps, visitor.on_chord_body(self, **stamps))
            self.body.stamp(visitor, append_stamps, **given)
        return self

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        """Run ``callback`` with the body's result."""
        assert self.body is not None
        return self.body.link(callback)

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        """Call ``errback`` when the body fails, or a header task fails the chord."""
        assert self.body is not None
        return self.body.link_error(errback)

    def freeze(self, task_id: str | None = None) -> Any:
        """Fix the header's ids and the body's (``task_id``); return the body's
        result, whose parent is the header's :class:`GroupResult`."""
        if self.body is None:
            raise TypeError("chord() needs a body: chord(header, body) or "
                            "chord(header)(body)")
        header = self.header.freeze()
        result = self.body.freeze(task_id or self.options.get("task_id"))
        # A chord's own task_id is its body's (Celery's rule): a worker that applies
        # this chord from a chain passes it back, so the frozen result is the one sent.
        self.options["task_id"] = result.id
        _set_parent(result, header)
        return result

    def __call__(self, body: Signature[Any] | None = None, **options: Any) -> Any:
        """Celery's ``chord(header)(body)``: send it now."""
        if body is not None:
            return chord(self.header, body, app=self._app, **self.options).apply_async(
                **options)
        return self.apply_async(**options)

    def apply_async(self, args: Sequence[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None,
                    **options: Unpack[ExecutionOptions]) -> Any:
        """Set the join's size in the backend, then publish the header tasks, each
        carrying the body; return the body's result (``.parent``: the header's).

        Raises :class:`~conveyor.exceptions.ConfigurationError` when the result
        backend cannot count a chord's results (it names one that can).
        """
        from .chords import check_backend, set_size
        if self.body is None:
            raise TypeError("chord() needs a body: chord(header, body)")
        app = self.app
        check_backend(app)
        opts: dict[str, Any] = {**self.options, **options}
        header = self.header.clone()
        body = self.body.clone()
        group_id = header.options.get("task_id") or new_id()
        body_id = opts.pop("task_id", None) or body.options.get("task_id") or new_id()
        for callback in sig_list(opts.pop("link", None)):
            body.link(callback)
        for errback in sig_list(opts.pop("link_error", None)):
            body.link_error(errback)
        for key in (*_MEMBERSHIP, "chain"):  # they belong to what the body reports to
            if opts.get(key) is not None:
                body.options[key] = opts.pop(key)
        body.options.setdefault("group_id", group_id)
        result = body.freeze(body_id)
        header_result = header.freeze(group_id)
        _set_parent(result, header_result)
        if not header.tasks:
            body.apply_async(([],), **{k: v for k, v in opts.items()
                                       if k in ("root_id", "parent_id")})
            return result
        set_size(app, group_id, len(header.tasks))
        sent = header.apply_async(args, kwargs, task_id=group_id, chord=dict(body), **opts)
        for member, frozen in zip(sent.results, header_result.results):
            if isinstance(frozen, AsyncResult):
                frozen.publisher = getattr(member, "publisher", None)
        return result
