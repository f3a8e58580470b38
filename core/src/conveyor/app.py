"""The application: settings, task registry, plugins and the publish path.

Creating or configuring an app loads no plugin; each is imported the first time it
is needed to connect, encode or decode. There is no process-global app that import
order could capture: tasks belong to the app that declared them.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload

import pluggy

from . import hookspecs
from ._suggest import mask_url
from .codecs import Codecs
from .connection import ConnectionPool, scheme_of
from .envelope import UTC, message_from_options
from .exceptions import ConfigurationError, PluginError
from .interfaces import Backend, Message, Route, Transport
from .options import due_times, resolve
from .plugins import Loader, find
from .result import AsyncResult
from .result import AsyncResult as _AsyncResult
from .result import GroupResult as _GroupResult
from .resultstore import ResultStore
from .settings import DEFAULT_URL, Settings
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
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.loader = _loader
        self.codecs = Codecs(self)
        self.results = ResultStore(self)
        self._plugins = list(plugins)
        #: Inner serializer of the ``auth`` serializer (set by ``setup_security``).
        self.security_inner_serializer = "json"
        self._hooks: pluggy.PluginManager | None = None
        self._pool: ConnectionPool | None = None
        self._backend: Backend | None = None
        self._routers: list[Any] | None = None
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
                    self._hooks.hook.app_configured.call_historic(kwargs={"app": self})
        return self._hooks.hook

    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        self.hooks  # noqa: B018 - finalize
        assert self._hooks is not None
        return self._hooks

    def _make_plugin_manager(self) -> pluggy.PluginManager:
        pm = pluggy.PluginManager("conveyor")
        pm.add_hookspecs(hookspecs)
        for plugin in self._plugins:
            pm.register(plugin)
        if os.environ.get("CONVEYOR_DISABLE_PLUGIN_AUTOLOAD") != "1":
            for info in find("conveyor.hooks"):
                try:
                    pm.register(self.loader.load("conveyor.hooks", info.name), info.name)
                except PluginError as exc:
                    log.error("Hook plugin %s not registered: %s", info.display_name, exc)
                except ValueError:
                    pass  # already registered explicitly
        return pm

    def register_plugin(self, plugin: Any, name: str | None = None) -> None:
        """Register a hook implementation object/module on this app."""
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

    def routers(self) -> list[Any]:
        if self._routers is None:
            self._routers = [self.loader.load("conveyor.routers", name)(self)
                             for name in self.conf.task_routers]
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

    def _route(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
               task: Any) -> Callable[[Mapping[str, Any]], Mapping[str, Any] | None] | None:
        """The router layer for one call, or None when nothing could route it."""
        # A router's optional ``enabled`` is re-read whenever a setting changes.
        routers: list[Any] = self.conf.derived(
            "routers.enabled",
            lambda _conf: [r for r in self.routers() if getattr(r, "enabled", True)])
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

    def prepare(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                call: Mapping[str, Any], sig: Mapping[str, Any], task: Any
                ) -> tuple[Message, Route, float | None, dict[str, Any]]:
        """Resolve options and build the message: what publishing sends."""
        opts = resolve(call, sig, task, self._route(name, args, kwargs, task), self.conf)
        task_id = opts.get("task_id") or new_id()
        now = eta = expires = None
        if opts["countdown"] is not None or opts["eta"] is not None \
                or opts["expires"] is not None:
            now = dt.datetime.now(UTC)
            eta, expires = due_times(opts, now)
        embed = None
        link, link_error = opts.get("link"), opts.get("link_error")
        chain, chord = opts.get("chain"), opts.get("chord")
        if link or link_error or chain or chord:
            embed = {"callbacks": _sig_list(link), "errbacks": _sig_list(link_error),
                     "chain": chain, "chord": chord}
        message = message_from_options(name, task_id, args, kwargs, self.codecs, opts,
                                       embed, eta, expires, now)
        route = Route(opts["queue"], opts["exchange"] or "", opts["routing_key"])
        due = None
        if eta is not None and self._broker_delays():
            due = eta.timestamp()
        opts["task_id"] = task_id
        return message, route, due, opts

    def _broker_delays(self) -> bool:
        return dict(self.conf.broker_transport_options).get("delayed_delivery") == "broker"

    def publish(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                call: Mapping[str, Any], sig: Mapping[str, Any], task: Any
                ) -> AsyncResult[Any]:
        """Resolve, build and send one task message; return its result handle."""
        hooks = self.hooks
        message, route, due, opts = self.prepare(name, args, kwargs, call, sig, task)
        if hooks.before_task_publish.get_hookimpls():
            hooks.before_task_publish(app=self, name=name, message=message, route=route,
                                      options=opts)
        publisher = opts.get("publisher")
        retry, policy = opts["retry"], opts["retry_policy"]
        if publisher is not None:
            publisher.connection.publish(message, route, due, retry=retry, policy=policy)
        else:
            with self.pool.acquire() as conn:
                conn.publish(message, route, due, retry=retry, policy=policy)
        if hooks.after_task_publish.get_hookimpls():
            hooks.after_task_publish(app=self, name=name, message=message, route=route)
        return AsyncResult(opts["task_id"], self, ignored=bool(opts["ignore_result"]))

    def publish_batch(self, calls: Sequence[tuple[str, Sequence[Any], Mapping[str, Any],
                                                  Mapping[str, Any], Mapping[str, Any]]]
                      ) -> list[AsyncResult[Any]]:
        """Send several calls in one transport batch (groups); all or error."""
        hooks = self.hooks
        batch: list[tuple[Message, Route, float | None]] = []
        results: list[AsyncResult[Any]] = []
        retry, policy = True, None
        for name, args, kwargs, call, sig in calls:
            task = self.tasks.get(name)
            message, route, due, opts = self.prepare(name, args, kwargs, call, sig, task)
            if hooks.before_task_publish.get_hookimpls():
                hooks.before_task_publish(app=self, name=name, message=message,
                                          route=route, options=opts)
            batch.append((message, route, due))
            retry, policy = opts["retry"], opts["retry_policy"]
            results.append(AsyncResult(opts["task_id"], self,
                                       ignored=bool(opts["ignore_result"])))
        with self.pool.acquire() as conn:
            conn.publish_many(batch, retry=retry, policy=policy)
        if hooks.after_task_publish.get_hookimpls():
            for (message, route, _due), (name, *_rest) in zip(batch, calls):
                hooks.after_task_publish(app=self, name=name, message=message, route=route)
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


def new_id() -> str:
    """A random (version 4) UUID as text, without the cost of ``uuid.UUID``."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _sig_list(value: Any) -> list[dict[str, Any]] | None:
    if not value:
        return None
    if isinstance(value, Mapping):
        value = [value]
    return [dict(v) for v in value]
