"""The application: settings, task registry, plugins and the publish path.

Creating or configuring an app loads no plugin; each is imported the first time it
is needed to connect, encode or decode. There is no process-global app that import
order could capture: tasks belong to the app that declared them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import (
    TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, cast, overload,
)

import pluggy

from . import hookplugins
from .utils import mask_url
from .canvas import Signature, sig_list
from .codecs import Codecs
from .connection import ConnectionPool, Publisher, scheme_of
from .discovery import Packages, TaskRegistry, bind_shared, import_tasks
from .envelope import Template
from .exceptions import CapabilityError, ConfigurationError, PluginError
from .interfaces import (
    Backend, LeaseTransport, Message, Route, Router, Transport, unsupported,
)
from .options import DEFAULTS, PER_CALL, due_times, eta_horizon, resolve, split
from .plugins import Loader, find
from .result import AsyncResult
from .result import AsyncResult as _AsyncResult
from .result import GroupResult as _GroupResult
from .resultstore import ResultStore
from .settings import DEFAULT_URL, Settings, time_zone
from .task import Task

if TYPE_CHECKING:
    from .worker.worker import Worker

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

_apps: weakref.WeakValueDictionary[str, Conveyor] = weakref.WeakValueDictionary()
_default: list[Conveyor] = []
_loader = Loader()


def current_app() -> Conveyor:
    """The most recently created app (for signatures/results built without one)."""
    if not _default:
        raise ConfigurationError("No Conveyor app exists yet: create Conveyor(...) first.")
    return _default[-1]


def app_by_main(main: str | None) -> Conveyor:
    if main is not None and main in _apps:
        return _apps[main]
    return current_app()


class Conveyor:
    """A Conveyor application: ``Conveyor("proj", broker=..., backend=...)``."""

    def __init__(self, main: str | None = None, *, broker: str | None = None,
                 backend: str | None = None, plugins: Sequence[Any] = (),
                 config: Mapping[str, Any] | None = None, **settings: Any) -> None:
        self.main = main
        self.conf = Settings(config or {}, **settings)
        if broker is not None:
            self.conf.broker_url = broker
        if backend is not None:
            self.conf.result_backend = backend
        self.tasks = TaskRegistry(self)
        self._discover: list[tuple[Packages, str]] = []
        self.loader = _loader
        self.codecs = Codecs(self)
        self.results = ResultStore(self)
        self._plugins = list(plugins)
        for plugin in self._plugins:  # the caller's own mistake: say so here and now
            hookplugins.validate(plugin, _plugin_name(plugin))
        #: Inner serializer of the ``auth`` serializer (set by ``setup_security``).
        self.security_inner_serializer = "json"
        self._hooks: pluggy.PluginManager | None = None
        self._pool: ConnectionPool | None = None
        self._backend: Backend | None = None
        self._routers: list[Router] | None = None
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self.conf.on_change(self._setting_changed)
        if main:
            _apps[main] = self
        _default.append(self)
        if len(_default) > 64:
            del _default[:-64]

    def __repr__(self) -> str:
        return f"<Conveyor {self.main or '__main__'} broker={mask_url(self.broker_url)}>"

    def _setting_changed(self, name: str) -> None:
        if name.startswith(("broker_", "result_backend")):
            self._close_connections()
        if name.startswith(("security_", "task_serializer", "accept_content")):
            self.codecs.reset()
        if name == "task_routers":
            self._routers = None

    # ------------------------------------------------------------------ URLs
    @property
    def broker_url(self) -> str:
        return self.conf.broker_url or DEFAULT_URL

    @property
    def backend_url(self) -> str:
        """``result_backend``; unset, the broker's URL where that scheme has a
        backend plugin, else the embedded default."""
        if self.conf.result_backend:
            return str(self.conf.result_backend)
        if self.conf.broker_url:
            scheme = scheme_of(self.broker_url)
            if any(p.name == scheme for p in find("conveyor.backends")):
                return self.broker_url
        return DEFAULT_URL

    # ------------------------------------------------------------------ plugins
    @property
    def hooks(self) -> Any:
        """The pluggy hook relay; finalizes the app (registers hook plugins) once."""
        if self._hooks is None:
            with self._lock:
                if self._hooks is None:
                    self._hooks = self._make_plugin_manager()
                    try:
                        self._hooks.hook.app_configured.call_historic(
                            kwargs={"app": self})
                    except Exception:  # noqa: BLE001 - an observer (see hookplugins)
                        log.exception("Hook app_configured raised; ignored")
        return self._hooks.hook

    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        self.hooks  # noqa: B018 - finalize
        assert self._hooks is not None
        return self._hooks

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call the observer hook ``hook``: an implementation that raises is logged
        with its plugin's name and ignored (see :mod:`conveyor.hookplugins`)."""
        hookplugins.notify(self.plugin_manager, hook, kwargs)

    def _make_plugin_manager(self) -> pluggy.PluginManager:
        pm = hookplugins.new_manager()
        for plugin in self._plugins:
            pm.register(plugin)  # validated when given
        if os.environ.get("CONVEYOR_DISABLE_PLUGIN_AUTOLOAD") != "1":
            for info in find("conveyor.hooks"):
                try:
                    plugin = self.loader.load("conveyor.hooks", info.name)
                    if pm.is_registered(plugin):
                        continue  # also passed explicitly
                    hookplugins.register(pm, plugin, info.name)
                except (PluginError, ValueError) as exc:  # ValueError: name taken
                    log.error("Hook plugin %s not registered: %s", info.display_name, exc)
        pm.check_pending()
        return pm

    def register_plugin(self, plugin: Any, name: str | None = None) -> None:
        """Register a hook implementation object/module on this app (raises
        :class:`PluginError` when it does not fit the hook specs)."""
        hookplugins.validate(plugin, name or _plugin_name(plugin))
        self._plugins.append(plugin)
        if self._hooks is not None:
            self._hooks.register(plugin, name)

    def transport_factory(self, url: str | None = None) -> Transport:
        """A new, unconnected transport for ``url`` (default: the broker URL)."""
        url = url or self.broker_url
        factory = self.loader.load("conveyor.transports", scheme_of(url))
        return factory(url, self)  # type: ignore[no-any-return]

    @property
    def pool(self) -> ConnectionPool:
        """Publishing connections (``with app.pool.acquire() as conn``)."""
        self._check_fork()
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ConnectionPool(self, self.broker_url,
                                                self.conf.broker_pool_limit)
        return self._pool

    @property
    def backend(self) -> Backend:
        """The result backend (one instance per process; must be thread-safe)."""
        self._check_fork()
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    url = self.backend_url
                    factory = self.loader.load("conveyor.backends", scheme_of(url))
                    self._backend = factory(url, self)
        return self._backend

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # connections must not cross a fork
            self._pid = os.getpid()
            self._pool = None
            self._backend = None

    def _close_connections(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
            if self._backend is not None:
                try:
                    self._backend.close()
                except Exception:  # noqa: BLE001
                    log.debug("error closing backend", exc_info=True)
                self._backend = None

    def close(self) -> None:
        """Close publishing connections and the backend."""
        self._close_connections()

    def routers(self) -> list[Router]:
        """The ``task_routers`` plugins, each checked against :class:`Router`."""
        if self._routers is None:
            routers = []
            for name in self.conf.task_routers:
                router = self.loader.load("conveyor.routers", name)(self)
                if not isinstance(router, Router):
                    raise PluginError(
                        f"Router plugin {name!r} ({type(router).__name__}) does not "
                        "satisfy conveyor.interfaces.Router: it needs an 'enabled' "
                        "property and a 'route(name, args, kwargs, options, task)' method.")
                routers.append(router)
            self._routers = routers
        return self._routers

    # ------------------------------------------------------------------ tasks
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(self, *, bind: Literal[True], name: str | None = None, **options: Any
             ) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...

    @overload
    def task(self, *, bind: Literal[False] = False, name: str | None = None,
             **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, fn: Callable[..., Any] | None = None, /,  # type: ignore[misc]
             **options: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(queue=...)``."""
        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            name = options.pop("name", None) or f"{func.__module__}.{func.__qualname__}"
            task: Task[Any, Any] = Task(self, func, name=name, **options)
            self.tasks[name] = task
            return task
        if fn is not None:
            return register(fn)
        return register

    def config_from_object(self, obj: Any, namespace: str | None = None) -> None:
        """Read settings from a module, an object, a mapping or a text naming one
        (``"django.conf:settings"``, ``"proj.celeryconfig"``), as Celery does.

        With ``namespace="CELERY"`` only ``CELERY_``-prefixed keys are read
        (``CELERY_BROKER_URL`` → ``broker_url``); the framework's other keys are
        ignored. Without one, the lower-case names are read. A key that names no
        setting raises :class:`~conveyor.exceptions.UnknownOptionError` ("did you
        mean …") and nothing is applied. The settings found replace current values.
        """
        from .configsource import settings_from
        self.conf.update(settings_from(obj, namespace))

    def autodiscover_tasks(self, packages: Packages = None, related_name: str = "tasks",
                           force: bool = False) -> None:
        """Import ``<package>.tasks`` of each package when the app is finalized.

        ``packages`` is a list, a callable returning one (Django's
        ``lambda: settings.INSTALLED_APPS``), or None for Django's installed apps.
        Discovery is lazy, as in Celery: the modules are imported when a worker
        starts or a task name is first looked up and not found (``force=True``: now).
        """
        self._discover.append((packages, related_name))
        if force:
            self.finalize()

    def finalize(self) -> None:
        """Import the modules ``autodiscover_tasks`` noted and register the shared
        tasks this app lacks; a worker does this before it consumes."""
        with self._lock:
            pending, self._discover = self._discover, []
            for packages, related_name in pending:
                import_tasks(packages, related_name)
            bind_shared(self)

    # ------------------------------------------------------------------ publishing
    def send_task(self, name: str, args: Sequence[Any] | None = None,
                  kwargs: Mapping[str, Any] | None = None, **options: Any
                  ) -> AsyncResult[Any]:
        """Send a task by name; it need not be registered in this process."""
        return self.publish(name, args or (), kwargs or {}, options, {},
                            self.tasks.get(name))

    async def asend_task(self, name: str, args: Sequence[Any] | None = None,
                         kwargs: Mapping[str, Any] | None = None, **options: Any
                         ) -> AsyncResult[Any]:
        import asyncio
        return await asyncio.to_thread(self.send_task, name, args, kwargs, **options)

    def signature(self, name: str, args: Sequence[Any] | None = None,
                  kwargs: Mapping[str, Any] | None = None, **options: Any
                  ) -> Signature[Any]:
        """A signature of a task by name, registered here or not (Celery's
        ``app.signature``): for canvases of tasks another process defines."""
        return Signature(name, args, kwargs, options, app=self)

    def _route(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
               task: Any) -> Callable[[Mapping[str, Any]], Mapping[str, Any] | None] | None:
        """The router layer for one call, or None when nothing could route it."""
        routers = self._enabled_routers()
        hook = self.hooks.route_task
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

    def _enabled_routers(self) -> list[Any]:
        # A router's optional ``enabled`` is re-read whenever a setting changes.
        routers: list[Any] = self.conf.derived("routers.enabled", self._find_enabled)
        return routers

    def _find_enabled(self, _conf: Any) -> list[Any]:
        return [r for r in self.routers() if r.enabled]

    def _plan(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              call: Mapping[str, Any], sig: Mapping[str, Any], task: Any
              ) -> tuple[_Plan, dict[str, Any] | None]:
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
        if self._enabled_routers() or self.hooks.route_task.get_hookimpls():
            router = self._route(name, args, kwargs, task)
        if router is None and (task is None or isinstance(task, Task)):
            call_key, call_per = split(call)
            sig_key, sig_per = split(sig) if sig else ((), None)
            if call_key is not None and sig_key is not None:
                defaults = task.execution_defaults() if task is not None else None
                plans: dict[Any, _Plan] = self.conf.derived("publish.plans", _no_plans)
                key = (name, call_key, sig_key)
                plan = plans.get(key)
                if plan is None or plan.task is not task or plan.defaults is not defaults:
                    plan = _Plan(self, name, task, defaults,
                                 resolve(call, sig, task, None, self.conf))
                    if plan.cacheable:
                        if len(plans) >= _MAX_PLANS:
                            plans.clear()
                        plans[key] = plan
                if sig_per and call_per:
                    return plan, {**sig_per, **call_per}
                return plan, call_per or sig_per
        opts = resolve(call, sig, task, router, self.conf)
        per = {key: value for key in PER_CALL if (value := opts.get(key)) is not None}
        return _Plan(self, name, task, None, opts), per or None

    def _build(self, plan: _Plan, per: Mapping[str, Any] | None, args: Sequence[Any],
               kwargs: Mapping[str, Any]) -> tuple[Message, str, float | None]:
        """The message of one call, its task id, and when the broker should hold it."""
        task_id = (per.get("task_id") if per else None) or new_id()
        now = eta = expires = None
        if plan.timed:
            now = dt.datetime.now(time_zone(self.conf))
            eta, expires = due_times(plan.opts, now)
            if eta is not None and plan.horizon is not None:
                plan.check_eta(eta, now)
        message = plan.template.build(task_id, args, kwargs, plan.embed, eta, expires, now,
                                      per)
        due = eta.timestamp() if eta is not None and plan.delays else None
        return message, task_id, due

    def prepare(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                call: Mapping[str, Any], sig: Mapping[str, Any], task: Any
                ) -> tuple[Message, Route, float | None, dict[str, Any]]:
        """Resolve options and build the message: what publishing sends."""
        plan, per = self._plan(name, args, kwargs, call, sig, task)
        message, task_id, due = self._build(plan, per, args, kwargs)
        return message, plan.route, due, plan.options(per, task_id)

    def broker_probe(self) -> Transport:
        """An unconnected transport for the broker URL, kept until a setting changes:
        what the publish path reads ``capabilities`` and ``visibility_timeout`` from."""
        probe: Transport = self.conf.derived("broker.probe",
                                             lambda _conf: self.transport_factory())
        return probe

    def _published(self, names: Sequence[str],
                   batch: Sequence[tuple[Message, Route, float | None]]) -> None:
        """Run ``after_task_publish`` for messages the broker took (an observer: a
        raising one is logged, the publish stands)."""
        if self.hooks.after_task_publish.get_hookimpls():
            for name, (message, route, _due) in zip(names, batch):
                self.notify("after_task_publish", app=self, name=name, message=message,
                            route=route)

    def _how(self, name: str, plan: _Plan, per: Mapping[str, Any] | None,
             message: Message, task_id: str, before: Any
             ) -> tuple[Publisher | None, Any, Any, bool]:
        """Run ``before_task_publish`` (when given), then say how the message goes
        out: its publisher, ``retry``, ``retry_policy`` and whether its result is
        ignored (a hook may have changed the options it sees)."""
        if before is not None:
            opts = plan.options(per, task_id)
            before(app=self, name=name, message=message, route=plan.route, options=opts)
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
        plan, per = self._plan(name, args, kwargs, call, sig, task)
        message, task_id, due = self._build(plan, per, args, kwargs)
        route = plan.route
        hook = self.hooks.before_task_publish
        publisher, retry, policy, ignored = self._how(
            name, plan, per, message, task_id, hook if hook.get_hookimpls() else None)
        if publisher is not None:
            pending = publisher._put(name, message, route, due, retry, policy)
            return AsyncResult(task_id, self, ignored=ignored,
                               publisher=publisher if pending else None)
        with self.pool.acquire() as conn:
            conn.publish(message, route, due, retry=retry, policy=policy)
        self._published((name,), ((message, route, due),))
        return AsyncResult(task_id, self, ignored=ignored)

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
        hooks = self.hooks
        before = hooks.before_task_publish if hooks.before_task_publish.get_hookimpls() \
            else None
        runs: list[_Run] = []
        run: _Run | None = None
        results: list[AsyncResult[Any]] = []
        tasks = self.tasks
        for name, args, kwargs, call, sig in calls:
            plan, per = self._plan(name, args, kwargs, call, sig, tasks.get(name))
            message, task_id, due = self._build(plan, per, args, kwargs)
            publisher, retry, policy, ignored = self._how(name, plan, per, message,
                                                          task_id, before)
            if run is None or not run.takes(publisher, retry, policy):
                run = _Run(publisher, retry, policy, len(results))
                runs.append(run)
            run.names.append(name)
            run.batch.append((message, plan.route, due))
            results.append(AsyncResult(task_id, self, ignored=ignored))
        with contextlib.ExitStack() as stack:
            conn = None
            for run in runs:
                if run.publisher is not None:
                    waiting = run.publisher._put_many(run.names, run.batch, run.retry,
                                                      run.policy)
                    end = run.start + len(run.batch)
                    for result in results[end - waiting:end]:
                        result._publisher = run.publisher
                    continue
                if conn is None:
                    conn = stack.enter_context(self.pool.acquire())
                conn.publish_many(run.batch, retry=run.retry, policy=run.policy)
                self._published(run.names, run.batch)
        return results

    # ------------------------------------------------------------------ results
    def AsyncResult(self, task_id: str) -> _AsyncResult[Any]:  # noqa: N802 - Celery's name
        return _AsyncResult(task_id, self)

    def GroupResult(self, group_id: str, results: Sequence[_AsyncResult[Any]]  # noqa: N802
                    ) -> _GroupResult[Any]:
        return _GroupResult(group_id, results, self)

    # ------------------------------------------------------------------ worker
    def Worker(self, **options: Any) -> Worker:  # noqa: N802 - Celery's spelling
        """A worker for this app (``queues``, ``concurrency``, ``pool``, …)."""
        from .worker.worker import Worker
        return Worker(self, **options)

    # ------------------------------------------------------------------ security
    def setup_security(self, serializer: str = "json", **settings: Any) -> None:
        """Switch to signed messages: ``task_serializer="auth"``, accept only ``auth``.

        Results stay unsigned (as in Celery): when ``result_accept_content`` is unset
        it becomes ``[result_serializer]``. Key, certificate and store are checked
        now, so a missing or unreadable file is reported here, naming the setting.
        """
        if settings:
            self.conf.update(settings)
        self.security_inner_serializer = serializer
        self.conf.task_serializer = "auth"
        self.conf.accept_content = ["auth"]
        if not self.conf.result_accept_content:
            self.conf.result_accept_content = [self.conf.result_serializer]
        self.codecs.reset()
        self.codecs.serializer("auth")  # load now: bad keys fail here, not at publish


def _plugin_name(plugin: Any) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__name__


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


#: Plans kept per app (see ``Conveyor._plan``); more distinct calls start afresh.
_MAX_PLANS = 512


def _no_plans(_conf: Any) -> dict[Any, _Plan]:
    return {}


class _Plan:
    """Resolved options of one kind of call, and what they make of its messages.

    ``opts`` holds every option with the per-call ones (``PER_CALL``) at their
    defaults; :meth:`options` gives the full dict of one call.
    """

    __slots__ = ("task", "defaults", "opts", "template", "route", "embed", "timed",
                 "delays", "horizon", "broker", "retry", "policy", "ignored", "cacheable")

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
        self.template = Template(name, app.codecs, opts)
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
        broker = self.broker = app.broker_probe()
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


class _Run:
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
