"""The publish path: from a call and its options to messages the broker took.

Every caller goes through here — ``Task.apply_async``/``delay``, ``send_task``, a
group's members (:meth:`PublishPath.publish_batch`), a chain, a task's retry — via
the app's :class:`PublishPath` (``app.publishing``): options resolved (routers and
the ``route_task`` hook included), checked against what the broker's transport can
do, the message built, ``before_task_publish`` run, the message sent through a
pooled connection (:mod:`conveyor.connection`: declare once per route, the retry
policy) or handed to a :class:`Publisher`, then ``after_task_publish`` run. The
asyncio API shares all of it: only the I/O differs. A :class:`Publisher`
(:mod:`conveyor.connection`) sends through this path's public methods too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
import weakref
from operator import is_
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from .aio import HELD
from .canvas import sig_list
from .connection import Publisher
from .envelope import Template
from .maps import route_name
from .exceptions import CapabilityError, MessageSizeExceeded
from .interfaces import (LeaseTransport, Message, PreparingBackend, ReplyBackend, Route,
                         Transport, unsupported)
from .options import DEFAULTS, PER_CALL, due_times, eta_horizon, resolve, split
from .result import AsyncResult, sent
from .settings import time_zone
from .task import Task

if TYPE_CHECKING:
    from .app import Conveyor


class PublishPath:
    """The publish path of one app (``app.publishing``); see the module docstring."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        #: See :meth:`listening`; None until asked and after a plugin came or went.
        self._listening: tuple[Any, Any, Any] | None = None
        self._listening_lock = threading.Lock()
        #: The plugin manager :meth:`listening` watches (the app's, once made).
        self._watched: Any = None
        #: ``(settings version, enabled routers, kept plans)``: see :meth:`plan`.
        self._state: tuple[int, list[Any], dict[Any, Plan]] = (-1, [], {})
        #: The last call :meth:`plan` kept a plan for: ``(task, option names, option
        #: values, task name, token (see :attr:`_fresh`), plan, per-call values)``.
        self._last: tuple[Any, ...] = (_NO_TASK,)
        #: Task's id → the plan :meth:`plan` kept for its last call without options
        #: (``delay()``): ``(task, token, task name, plan, hook callers, the app's
        #: connection pool)``, good while :attr:`_fresh` is that token; see
        #: :meth:`publish`.
        self._plain: dict[int, tuple[Any, ...]] = {}
        #: Replaced whenever a setting changes, a plugin comes or goes, a task's
        #: attribute is set, the app drops its connections (:meth:`forget`) or the
        #: process forks: what :attr:`_plain` was worked out under, when it is the
        #: same object.
        self._fresh = object()
        app.conf.on_change(self._changed)
        _paths.add(self)

    def listening(self) -> tuple[Any, Any, Any]:
        """The ``route_task``, ``before_task_publish`` and ``after_task_publish`` hook
        callers, each None while no plugin implements it.

        perf: asked for every message, and pluggy's ``get_hookimpls()`` copies a list
        each time (two a buffered ``apply_async``, three a ``delay()``; with this
        path's other cuts a buffered ``apply_async`` went 63.3k -> 61.3k
        instructions, callgrind, 22,000 - 2,000 messages); the answer is kept until the
        app's plugin manager registers or unregisters a plugin, which it says
        (:class:`~conveyor.hookplugins.Manager`). Worked out under a lock the
        manager's signal takes too, so an answer read before a registration is
        never kept after it.
        """
        pm = self.app.plugin_manager
        with self._listening_lock:
            if self._watched is not pm:
                pm.watch(self._forget)
                self._watched = pm
            found = self._listening
            if found is None:
                route, before, after = (
                    caller if caller.get_hookimpls() else None
                    for caller in (pm.hook.route_task, pm.hook.before_task_publish,
                                   pm.hook.after_task_publish))
                found = self._listening = (route, before, after)
        return found

    def _forget(self) -> None:
        """A plugin came or went: :meth:`listening` looks again."""
        with self._listening_lock:
            self._listening = None
            self._fresh = object()

    def _changed(self, _name: str) -> None:
        """A setting changed (after its new value and version are in)."""
        self.forget()

    def forget(self) -> None:
        """Stop using what :meth:`publish` kept for calls without options: the app
        calls this after it dropped its connection pool (closed, or a setting
        changed), a task when one of its attributes is set, and a forked child for
        every app (its parent's pool must not be used)."""
        self._fresh = object()

    def _router(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
               task: Any) -> Callable[[Mapping[str, Any]], Mapping[str, Any] | None] | None:
        """The router layer for one call, or None when nothing could route it. A
        map's call is routed by its task's name (:func:`maps.route_name`)."""
        routers = self.enabled_routers()
        hook = self.listening()[0]
        if not routers and hook is None:
            return None  # perf: most apps route by queue option only
        name = route_name(name, kwargs)

        def router(options: Mapping[str, Any]) -> Mapping[str, Any] | None:
            for r in routers:
                routed: Mapping[str, Any] | None = r.route(name, args, kwargs, options, task)
                if routed:
                    return routed
            if hook is None:
                return None
            found = hook(name=name, args=tuple(args), kwargs=dict(kwargs),
                         options=dict(options), task=task)
            return found if isinstance(found, Mapping) else None
        return router

    def enabled_routers(self) -> list[Any]:
        """The ``task_routers`` whose optional ``enabled`` is true, re-read whenever a
        setting changes."""
        return self._current()[1]

    def _current(self) -> tuple[int, list[Any], dict[Any, Plan]]:
        state = self._state
        version = self.app.conf.version
        if state[0] != version:
            state = self._state = (version, [r for r in self.app.routers() if r.enabled], {})
        return state

    def plan(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              call: Mapping[str, Any], sig: Mapping[str, Any], task: Any
              ) -> tuple[Plan, dict[str, Any] | None]:
        """The resolved options for a call, and its per-call values (task id, group
        index, publisher, …; see ``options.PER_CALL``).

        perf: resolving options and laying out headers cost as much as the rest of a
        publish, and a batch mostly repeats one call. So when nothing routes by
        arguments (no router, no ``route_task`` hook) and every option value is a
        plain immutable one (str, int, float, bool, None), the plan is kept, keyed by
        task name and the call's and signature's options (value types included). It
        is dropped when any setting changes or the task's attributes change; anything
        else (dicts, lists, datetimes, signatures, routers) resolves afresh.
        """
        fresh = self._fresh  # read first: a change after it makes what is kept stale
        state = self._state
        if state[0] != self.app.conf.version:
            state = self._current()
        version, routers, plans = state
        router = None
        listening = self._listening or self.listening()
        if routers or listening[0] is not None:
            router = self._router(name, args, kwargs, task)
        elif (last := self._last)[0] is task and not sig and last[4] is fresh \
                and last[3] == name and call.keys() == last[1] \
                and all(map(is_, call.values(), last[2])) and last[5].defaults is (
                    task.execution_defaults() if task is not None else None):
            # perf: the options of the last call, again (its task a Task or None: kept
            # below). ``last`` is one tuple: threads see a call and its plan together.
            # It was kept under ``fresh``: what a call without options needs is kept
            # too (below), or the token changed since and ``last`` is not used.
            return last[5], last[6]
        elif task is None or isinstance(task, Task):
            call_key, call_per = split(call) if call else _NOTHING
            sig_key, sig_per = split(sig) if sig else _NOTHING
            if call_key is not None and sig_key is not None:
                defaults = task.execution_defaults() if task is not None else None
                key = (name, call_key, sig_key)
                plan = plans.get(key)
                if plan is None or plan.task is not task or plan.defaults is not defaults:
                    plan = Plan(self.app, name, task, defaults,
                                 resolve(call, sig, task, None, self.app.conf))
                    if plan.cacheable and self.app.conf.version == version:
                        if len(plans) >= _MAX_PLANS:
                            plans.clear()
                        plans[key] = plan
                if sig_per and call_per:
                    return plan, {**sig_per, **call_per}
                if not sig and plan.cacheable:
                    # Keyable values are immutable, and per-call ones are only passed
                    # on, so the same objects again mean the same plan and values.
                    self._last = (task, frozenset(call), tuple(call.values()), name,
                                  fresh, plan, call_per)
                    if not call and task is not None and not plan.timed \
                            and self._plain.get(id(task), _NO_PLAIN)[1] is not fresh:
                        self._keep_plain(task, fresh, plan, listening)
                return plan, call_per or sig_per
        opts = resolve(call, sig, task, router, self.app.conf)
        per = {key: value for key in PER_CALL if (value := opts.get(key)) is not None}
        return Plan(self.app, name, task, None, opts), per or None

    def _keep_plain(self, task: Any, fresh: object, plan: Plan,
                    listening: tuple[Any, Any, Any]) -> None:
        """Keep ``plan`` for ``task``'s calls without options (see :meth:`publish`),
        worked out while :attr:`_fresh` was ``fresh``."""
        if task.app is not self.app or type(task).execution_defaults \
                is not Task.execution_defaults:
            return  # its attributes would not tell this path they changed
        plains = self._plain
        if id(task) not in plains and len(plains) >= _MAX_PLANS:
            plains.clear()
        # It holds the task: the id is not reused meanwhile.
        plains[id(task)] = (task, fresh, plan.template.name, plan, listening,
                            self.app.pool)

    def build(self, plan: Plan, per: Mapping[str, Any] | None, args: Sequence[Any],
               kwargs: Mapping[str, Any]) -> tuple[Message, str, float | None]:
        """The message of one call, its task id, and when the broker should hold it."""
        task_id = (per.get("task_id") if per else None) or new_id()
        if not plan.timed:
            message = plan.template.build(task_id, args, kwargs, plan.embed, None, None,
                                          None, per)
            due = None
        else:
            now = dt.datetime.now(time_zone(self.app.conf))
            eta, expires = due_times(plan.opts, now)
            if eta is not None and plan.horizon is not None:
                plan.check_eta(eta, now)
            message = plan.template.build(task_id, args, kwargs, plan.embed, eta, expires,
                                          now, per)
            due = eta.timestamp() if eta is not None and plan.delays else None
        if plan.max_size is not None and len(message.body) > plan.max_size:
            plan.too_big(message)
        return message, task_id, due

    def prepare(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                call: Mapping[str, Any], sig: Mapping[str, Any], task: Any
                ) -> tuple[Message, Route, float | None, dict[str, Any]]:
        """Resolve options and build the message: what publishing sends."""
        plan, per = self.plan(name, args, kwargs, call, sig, task)
        message, task_id, due = self.build(plan, per, args, kwargs)
        return message, plan.route, due, plan.options(per, task_id)

    def reply_to(self) -> str | None:
        """The queue results come back to, with a result backend that sends them to
        the caller (``BackendCapabilities.replies``, ``rpc://``); else None."""
        backend = self.app.backend
        if backend.capabilities.replies:
            if HELD.get() is not None:  # an asyncio caller: its loop's backend's queue
                from .aio import reply_to
                return reply_to(self.app)
            return cast(ReplyBackend, backend).reply_to
        return None

    def broker_probe(self) -> Transport:
        """An unconnected transport for the broker URL, kept until a setting changes:
        what the publish path reads ``capabilities`` and ``visibility_timeout`` from."""
        probe: Transport = self.app.conf.derived("broker.probe",
                                             lambda _conf: self.app.transport_factory())
        return probe

    def published(self, names: Sequence[str],
                   batch: Sequence[tuple[Message, Route, float | None]]) -> None:
        """Run ``after_task_publish`` for messages the broker took (an observer: a
        raising one is logged, the publish stands)."""
        if (self._listening or self.listening())[2] is not None:
            for name, (message, route, _due) in zip(names, batch):
                self.app.notify("after_task_publish", app=self.app, name=name, message=message,
                            route=route)

    def _how(self, name: str, plan: Plan, per: Mapping[str, Any] | None,
             message: Message, task_id: str, before: Any
             ) -> tuple[Publisher | None, Any, Any, bool]:
        """Run ``before_task_publish`` (when given), then say how the message goes
        out: its publisher, ``retry``, ``retry_policy`` and whether its result is
        ignored (a hook may have changed the options it sees)."""
        if before is not None:
            opts = plan.options(per, task_id)
            before(app=self.app, name=name, message=message, route=plan.route, options=opts)
            publisher, retry = opts.get("publisher"), opts["retry"]
            policy, ignored = opts["retry_policy"], bool(opts["ignore_result"])
        else:
            publisher = per.get("publisher") if per else None
            retry, policy, ignored = plan.retry, plan.policy, plan.ignored
        if publisher is not None and not isinstance(publisher, Publisher):
            raise TypeError(f"publisher= takes what task.get_publisher(conn) returns, "
                            f"not {type(publisher).__name__}.")
        return publisher, retry, policy, ignored

    def publish(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                call: Mapping[str, Any], sig: Mapping[str, Any], task: Any
                ) -> AsyncResult[Any]:
        """Resolve, build and send one task message (or hand it to its ``publisher``);
        return its result handle.

        perf: a call without options (``delay()``) of a task whose plan was kept
        takes that plan as it is, as long as :attr:`_fresh` is the token it was
        kept under (no setting changed, no plugin came or went, no task attribute
        was set, the app kept its connection pool, no fork). The message is built
        straight from the plan's template (no options: no ETA, expiry or per-call
        value) and goes out through the kept pool in one call. ``delay()`` on
        SQLite, callgrind, difference of 10,000 and 2,000 calls: 116.7k -> 92.5k
        instructions; the core alone (the transport's publish stubbed) 44.1k ->
        19.9k.
        """
        plain = self._plain.get(id(task), _NO_PLAIN)  # any task, hashable or not
        if plain[0] is task and plain[1] is self._fresh and not call and not sig \
                and plain[2] == name:
            plan: Plan = plain[3]
            hooks: tuple[Any, Any, Any] = plain[4]
            try:
                task_id = _ids.pop()  # new_id(), inline
            except IndexError:
                task_id = new_id()
            message = plan.template.build(task_id, args, kwargs, None, None, None, None,
                                          None)
            if plan.max_size is not None and len(message.body) > plan.max_size:
                plan.too_big(message)
            if hooks[1] is None and HELD.get() is None:
                ignored = plan.ignored
                if not ignored:
                    self._prepare_wait(task_id)
                plain[5].publish(message, plan.route, None, plan.retry, plan.policy)
                if hooks[2] is not None:
                    self.published((name,), ((message, plan.route, None),))
                return sent(task_id, self.app, ignored)
            return self._send(name, plan, None, message, task_id, None)
        plan, per = self.plan(name, args, kwargs, call, sig, task)
        message, task_id, due = self.build(plan, per, args, kwargs)
        return self._send(name, plan, per, message, task_id, due)

    def _send(self, name: str, plan: Plan, per: Mapping[str, Any] | None,
              message: Message, task_id: str, due: float | None) -> AsyncResult[Any]:
        """:meth:`publish` once the message is built: the hooks, then the message
        handed to the asyncio caller, to its publisher or to the broker."""
        route = plan.route
        listening = self._listening or self.listening()
        if listening[1] is not None:
            publisher, retry, policy, ignored = self._how(name, plan, per, message,
                                                          task_id, listening[1])
        else:  # perf: the usual call, _how without a hook
            publisher = per.get("publisher") if per else None
            if publisher is not None and type(publisher) is not Publisher:
                self._how(name, plan, per, message, task_id, None)  # checks its type
            retry, policy, ignored = plan.retry, plan.policy, plan.ignored
        result = sent(task_id, self.app, ignored)
        held = HELD.get()
        if held is not None:  # built for an asyncio caller, who sends it (aio.deferred)
            run = Run(publisher, retry, policy, 0)
            run.names.append(name)
            run.batch.append((message, route, due))
            held.append(run)
            return result
        if publisher is not None:
            if publisher.put(name, message, route, due, retry, policy):
                result.publisher = publisher  # it waits in the buffer
            return result
        if not ignored:
            self._prepare_wait(task_id)
        self.app.pool.publish(message, route, due, retry, policy)
        if listening[2] is not None:
            self.published((name,), ((message, route, due),))
        return result

    def _prepare_wait(self, task_id: str) -> None:
        """Tell a backend that wants it of a result to wait for, before the worker
        can store it (``BackendCapabilities.prepared_waits``)."""
        backend = self.app.backend
        if backend.capabilities.prepared_waits:
            cast(PreparingBackend, backend).prepare_wait(task_id)

    def publish_batch(self, calls: Sequence[tuple[str, Sequence[Any], Mapping[str, Any],
                                                  Mapping[str, Any], Mapping[str, Any]]]
                      ) -> list[AsyncResult[Any]]:
        """Send several calls pipelined (a group's members): ``(name, args, kwargs,
        call options, signature options)`` each.

        Every message is built before any is sent, so a bad call sends nothing. They
        go in one transport batch (``publish_many``: all or error) for each run of
        members with the same ``retry``/``retry_policy`` and ``publisher`` (usually
        one run); members with a ``publisher`` are handed to it, and wait in its
        buffer inside its ``with`` block.
        """
        before = self.listening()[1]
        runs: list[Run] = []
        run: Run | None = None
        results: list[AsyncResult[Any]] = []
        tasks = self.app.tasks
        for name, args, kwargs, call, sig in calls:
            plan, per = self.plan(name, args, kwargs, call, sig, tasks.get(name))
            message, task_id, due = self.build(plan, per, args, kwargs)
            publisher, retry, policy, ignored = self._how(name, plan, per, message,
                                                          task_id, before)
            if run is None or not run.takes(publisher, retry, policy):
                run = Run(publisher, retry, policy, len(results))
                runs.append(run)
            run.names.append(name)
            run.batch.append((message, plan.route, due))
            results.append(sent(task_id, self.app, ignored))
        held = HELD.get()
        if held is not None:  # built for an asyncio caller, who sends it (aio.deferred)
            held.extend(runs)
            return results
        with contextlib.ExitStack() as stack:
            conn = None
            for run in runs:
                if run.publisher is not None:
                    waiting = run.publisher.put_many(run.names, run.batch, run.retry,
                                                      run.policy)
                    end = run.start + len(run.batch)
                    for result in results[end - waiting:end]:
                        result.publisher = run.publisher
                    continue
                if conn is None:
                    conn = stack.enter_context(self.app.pool.acquire())
                conn.publish_many(run.batch, retry=run.retry, policy=run.policy)
                self.published(run.names, run.batch)
        return results


#: Task ids made ahead, from ``os.urandom`` in blocks (see :func:`new_id`).
_ids: list[str] = []
#: Every app's publish path, to tell in a forked child (see :func:`_forked`).
_paths: weakref.WeakSet[PublishPath] = weakref.WeakSet()


def _forked() -> None:
    """In a forked child: new ids (not the parent's) and no parent's pool."""
    _ids.clear()
    for path in list(_paths):
        path.forget()


os.register_at_fork(after_in_child=_forked)
#: Ids made per block.
_BLOCK = 256
#: A block's text is its random bytes as hex digits in groups of four, each
#: followed by a dash: eight groups an id, 40 characters. Laid out as ids, these
#: characters of each id's 40 change: the dashes after its 1st, 6th and 7th groups
#: go (marked with :data:`_CUT`, then deleted), the one after its 8th becomes a
#: space (what ``str.split`` cuts at), its 13th digit is the version (4) and its
#: 17th the variant (8, 9, a or b: the bits ``10xx``, through :data:`_AS_VARIANT`).
_CUTS, _ENDS, _VERSION, _VARIANT = (4, 29, 34), 39, 15, 20
_CUT = b"%"
_AS_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")


def new_id() -> str:
    """A random (version 4) UUID as text, without the cost of ``uuid.UUID``.

    perf: ``os.urandom`` is a system call, and laying out one id's text is most of
    ``str(uuid.uuid4())``; a block of 256 ids is read at once and written as hex
    digits with dashes by ``bytes.hex``, then laid out as ids by six strided slice
    assignments (each one position of every id at once) and cut by ``split``: 190-207
    ns an id, 255-285 with the version and variant bits set on the block as one
    integer and each of the 32 digit positions written apart (best of 7, loaded
    machine). ``list.pop`` is atomic, so threads never share one; a forked child
    drops what it inherited.
    """
    try:
        return _ids.pop()
    except IndexError:
        pass
    _ids.extend(_block())
    return _ids.pop()


def new_ids(n: int) -> list[str]:
    """``n`` ids as :func:`new_id` makes them, in one call: for a batch (a transport's
    delivery tags), where a call per id costs more than making it. Blocks of their
    own, so threads never share one; what the last block has over goes to
    :func:`new_id`."""
    ids: list[str] = []
    while len(ids) < n:
        ids += _block()
    if len(ids) > n:
        _ids.extend(ids[n:])
        del ids[n:]
    return ids


def _block() -> list[str]:
    """A block of :data:`_BLOCK` new ids (see :func:`new_id`)."""
    text = bytearray(os.urandom(16 * _BLOCK).hex("-", 2), "ascii")
    for at in _CUTS:
        text[at::40] = _CUT * _BLOCK
    text[_ENDS::40] = b" " * (_BLOCK - 1)  # the last id has no dash after it
    text[_VERSION::40] = b"4" * _BLOCK
    text[_VARIANT::40] = text[_VARIANT::40].translate(_AS_VARIANT)
    return text.translate(None, _CUT).decode("ascii").split()


#: Plans kept per app (see :meth:`PublishPath.plan`); more distinct calls start afresh.
_MAX_PLANS = 512
#: What no task is (the last call of a new publish path).
_NO_TASK = object()
#: No plain call kept for a task (see ``PublishPath.publish``).
_NO_PLAIN = (_NO_TASK, _NO_TASK)
#: :func:`~conveyor.options.split` of no options.
_NOTHING: tuple[tuple[Any, ...], None] = ((), None)


class Plan:
    """Resolved options of one kind of call, and what they make of its messages.

    ``opts`` holds every option with the per-call ones (``PER_CALL``) at their
    defaults; :meth:`options` gives the full dict of one call.
    """

    __slots__ = ("task", "defaults", "opts", "template", "route", "embed", "timed",
                 "delays", "horizon", "broker", "retry", "policy", "ignored", "cacheable",
                 "max_size")

    def __init__(self, app: Conveyor, name: str, task: Any,
                 defaults: Mapping[str, Any] | None, opts: dict[str, Any]) -> None:
        self.task = task
        self.defaults = defaults
        base = dict(opts)
        for key in PER_CALL:
            if key in DEFAULTS:
                base[key] = DEFAULTS[key]
            else:
                base.pop(key, None)
        self.opts = base
        link, link_error = opts.get("link"), opts.get("link_error")
        chain, chord = opts.get("chain"), opts.get("chord")
        self.embed: dict[str, Any] | None = None
        if link or link_error or chain or chord:
            self.embed = {"callbacks": _embedded(link), "errbacks": _embedded(link_error),
                          "chain": chain, "chord": chord}
        if opts.get("reply_to") is None and not opts["ignore_result"]:
            reply_to = app.publishing.reply_to()
            if reply_to is not None:
                opts = {**opts, "reply_to": reply_to}
        self.template = Template(name, app.codecs, opts)
        self.max_size: int | None = app.conf.task_message_max_size
        self.route = Route(opts["queue"], opts["exchange"] or "", opts["routing_key"])
        self.timed = opts["countdown"] is not None or opts["eta"] is not None \
            or opts["expires"] is not None
        #: Whether the broker parks the message (``due``), and, for a transport
        #: without delays, how far ahead an ETA may be (the worker's horizon).
        self.delays = False
        self.horizon: float | None = None
        self.broker: Transport | None = None
        if opts["priority"] is not None or self.timed:
            self._check_broker(app, opts)
        self.retry, self.policy = opts["retry"], opts["retry_policy"]
        self.ignored = bool(opts["ignore_result"])
        #: Only plans of plain values are kept: embedded signatures and ``headers``
        #: are mutable, so they are read afresh for every call.
        self.cacheable = self.embed is None and not opts.get("headers")

    def _check_broker(self, app: Conveyor, opts: Mapping[str, Any]) -> None:
        """Fail now, naming option and transport, for what the transport cannot do."""
        broker = self.broker = app.publishing.broker_probe()
        caps = broker.capabilities
        if opts["priority"] is not None and not caps.priorities:
            raise CapabilityError(unsupported(broker, "priorities",
                                              f"priority={opts['priority']!r}"))
        if not self.timed:
            return
        parked = dict(app.conf.broker_transport_options).get("delayed_delivery") == "broker"
        if caps.delays:
            self.delays = parked
        elif parked:
            raise CapabilityError(unsupported(
                broker, "delays", "broker_transport_options delayed_delivery='broker'"))
        else:
            vt = cast(LeaseTransport, broker).visibility_timeout if caps.leases else None
            self.horizon = eta_horizon(app.conf, vt)

    def check_eta(self, eta: dt.datetime, now: dt.datetime) -> None:
        """An ETA beyond the worker's horizon needs a transport that parks messages."""
        if self.horizon is not None and (eta - now).total_seconds() > self.horizon:
            raise CapabilityError(unsupported(
                self.broker, "delays",
                f"countdown/eta {(eta - now).total_seconds():.0f}s ahead (beyond the "
                f"worker's horizon of {self.horizon:g}s, worker_eta_horizon)"))

    def too_big(self, message: Message) -> None:
        """Raise for a message whose body is over ``task_message_max_size``."""
        raise MessageSizeExceeded(
            f"Task {message.headers['task']!r}: its message body is "
            f"{len(message.body):,} bytes, over task_message_max_size "
            f"({self.max_size:,} bytes). Pass a reference to the data (a path, a key) "
            f"instead, or raise the setting on the client and the workers alike.")

    def options(self, per: Mapping[str, Any] | None, task_id: str) -> dict[str, Any]:
        """Every resolved option of one call (what ``before_task_publish`` sees)."""
        opts = dict(self.opts)
        if per:
            opts.update(per)
        opts["task_id"] = task_id
        return opts


class Run:
    """Consecutive members of a batch that go out the same way."""

    __slots__ = ("publisher", "retry", "policy", "start", "names", "batch")

    def __init__(self, publisher: Publisher | None, retry: Any,
                 policy: Mapping[str, Any] | None, start: int) -> None:
        self.publisher, self.retry, self.policy, self.start = publisher, retry, policy, start
        self.names: list[str] = []
        self.batch: list[tuple[Message, Route, float | None]] = []

    def takes(self, publisher: Any, retry: Any, policy: Any) -> bool:
        return publisher is self.publisher and retry == self.retry \
            and (policy is self.policy or policy == self.policy)


def _embedded(value: Any) -> list[dict[str, Any]] | None:
    """``link``/``link_error`` as the plain dicts the message embeds."""
    return [dict(v) for v in sig_list(value)] or None
