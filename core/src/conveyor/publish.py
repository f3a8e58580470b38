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
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from .aio import HELD
from .canvas import sig_list
from .connection import Publisher
from .envelope import Template
from .exceptions import CapabilityError, MessageSizeExceeded
from .interfaces import LeaseTransport, Message, ReplyBackend, Route, Transport, unsupported
from .options import DEFAULTS, PER_CALL, due_times, eta_horizon, resolve, split
from .result import AsyncResult
from .settings import time_zone
from .task import Task

if TYPE_CHECKING:
    from .app import Conveyor


class PublishPath:
    """The publish path of one app (``app.publishing``); see the module docstring."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def _router(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
               task: Any) -> Callable[[Mapping[str, Any]], Mapping[str, Any] | None] | None:
        """The router layer for one call, or None when nothing could route it."""
        routers = self.enabled_routers()
        hook = self.app.hooks.route_task
        if not routers and not hook.get_hookimpls():
            return None  # perf: most apps route by queue option only

        def router(options: Mapping[str, Any]) -> Mapping[str, Any] | None:
            for r in routers:
                routed: Mapping[str, Any] | None = r.route(name, args, kwargs, options, task)
                if routed:
                    return routed
            found = hook(name=name, args=tuple(args), kwargs=dict(kwargs),
                         options=dict(options), task=task)
            return found if isinstance(found, Mapping) else None
        return router

    def enabled_routers(self) -> list[Any]:
        # A router's optional ``enabled`` is re-read whenever a setting changes.
        routers: list[Any] = self.app.conf.derived("routers.enabled", self._find_enabled)
        return routers

    def _find_enabled(self, _conf: Any) -> list[Any]:
        return [r for r in self.app.routers() if r.enabled]

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
        router = None
        if self.enabled_routers() or self.app.hooks.route_task.get_hookimpls():
            router = self._router(name, args, kwargs, task)
        if router is None and (task is None or isinstance(task, Task)):
            call_key, call_per = split(call)
            sig_key, sig_per = split(sig) if sig else ((), None)
            if call_key is not None and sig_key is not None:
                defaults = task.execution_defaults() if task is not None else None
                plans: dict[Any, Plan] = self.app.conf.derived("publish.plans", _no_plans)
                key = (name, call_key, sig_key)
                plan = plans.get(key)
                if plan is None or plan.task is not task or plan.defaults is not defaults:
                    plan = Plan(self.app, name, task, defaults,
                                 resolve(call, sig, task, None, self.app.conf))
                    if plan.cacheable:
                        if len(plans) >= _MAX_PLANS:
                            plans.clear()
                        plans[key] = plan
                if sig_per and call_per:
                    return plan, {**sig_per, **call_per}
                return plan, call_per or sig_per
        opts = resolve(call, sig, task, router, self.app.conf)
        per = {key: value for key in PER_CALL if (value := opts.get(key)) is not None}
        return Plan(self.app, name, task, None, opts), per or None

    def build(self, plan: Plan, per: Mapping[str, Any] | None, args: Sequence[Any],
               kwargs: Mapping[str, Any]) -> tuple[Message, str, float | None]:
        """The message of one call, its task id, and when the broker should hold it."""
        task_id = (per.get("task_id") if per else None) or new_id()
        now = eta = expires = None
        if plan.timed:
            now = dt.datetime.now(time_zone(self.app.conf))
            eta, expires = due_times(plan.opts, now)
            if eta is not None and plan.horizon is not None:
                plan.check_eta(eta, now)
        message = plan.template.build(task_id, args, kwargs, plan.embed, eta, expires, now,
                                      per)
        if plan.max_size is not None and len(message.body) > plan.max_size:
            raise MessageSizeExceeded(
                f"Task {message.headers['task']!r}: its message body is "
                f"{len(message.body):,} bytes, over task_message_max_size "
                f"({plan.max_size:,} bytes). Pass a reference to the data (a path, a key) "
                f"instead, or raise the setting on the client and the workers alike.")
        due = eta.timestamp() if eta is not None and plan.delays else None
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
        if self.app.hooks.after_task_publish.get_hookimpls():
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
        return its result handle."""
        plan, per = self.plan(name, args, kwargs, call, sig, task)
        message, task_id, due = self.build(plan, per, args, kwargs)
        route = plan.route
        hook = self.app.hooks.before_task_publish
        publisher, retry, policy, ignored = self._how(
            name, plan, per, message, task_id, hook if hook.get_hookimpls() else None)
        held = HELD.get()
        if held is not None:  # built for an asyncio caller, who sends it (aio.deferred)
            run = Run(publisher, retry, policy, 0)
            run.names.append(name)
            run.batch.append((message, route, due))
            held.append(run)
            return AsyncResult(task_id, self.app, ignored=ignored)
        if publisher is not None:
            pending = publisher.put(name, message, route, due, retry, policy)
            return AsyncResult(task_id, self.app, ignored=ignored,
                               publisher=publisher if pending else None)
        with self.app.pool.acquire() as conn:
            conn.publish(message, route, due, retry=retry, policy=policy)
        self.published((name,), ((message, route, due),))
        return AsyncResult(task_id, self.app, ignored=ignored)

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
        hooks = self.app.hooks
        before = hooks.before_task_publish if hooks.before_task_publish.get_hookimpls() \
            else None
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
            results.append(AsyncResult(task_id, self.app, ignored=ignored))
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


#: Random hex text for task ids, 32 digits each, drawn from ``os.urandom`` in blocks.
_random: list[str] = []
#: A hex digit → the digit with the RFC 4122 variant bits (``10xx``) set.
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}
os.register_at_fork(after_in_child=_random.clear)  # a child must not reuse the parent's


def new_id() -> str:
    """A random (version 4) UUID as text, without the cost of ``uuid.UUID``.

    perf: ``os.urandom`` is a system call; reading 256 ids' worth at once makes an id
    cost half as much. ``list.pop`` is atomic, so threads never share one; a forked
    child drops what it inherited.
    """
    try:
        h = _random.pop()
    except IndexError:
        block = os.urandom(16 * 256).hex()
        _random.extend([block[i:i + 32] for i in range(0, len(block), 32)])
        h = _random.pop()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


#: Plans kept per app (see :meth:`PublishPath.plan`); more distinct calls start afresh.
_MAX_PLANS = 512


def _no_plans(_conf: Any) -> dict[Any, Plan]:
    return {}


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
