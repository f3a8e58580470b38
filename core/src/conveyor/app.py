"""The application: settings, task registry and plugins; publishing goes through its
:class:`~conveyor.publish.PublishPath` (``app.publishing``).

Creating or configuring an app loads no plugin; each is imported the first time it
is needed to connect, encode or decode. There is no process-global app that import
order could capture: tasks belong to the app that declared them.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import (TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, Unpack,
                    overload)

from . import hookplugins, maps, replace
from .utils import mask_url
from .canvas import Signature
from .codecs import Codecs
from .connection import ConnectionPool, scheme_of
from .discovery import Packages, TaskRegistry, bind_shared, import_tasks
from .exceptions import ConfigurationError, PluginError
from .interfaces import Backend, BackendCapabilities, Message, Route, Router, Transport
from .plugins import Loader, find
from .publish import PublishPath
from .result import AsyncResult
from .result import AsyncResult as _AsyncResult
from .result import GroupResult as _GroupResult
from .resultstore import ResultStore
from .settings import DEFAULT_URL, Settings
from .task import Task

if TYPE_CHECKING:
    from .control.client import Control
    from .options import ExecutionOptions
    from .worker.worker import Worker

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

_apps: weakref.WeakValueDictionary[str, Conveyor] = weakref.WeakValueDictionary()
_default: list[Conveyor] = []
_loader = Loader()
#: Forks this process descends from: an app whose connections were made before
#: the last one makes new ones (``_check_fork``). perf: read on every publish and
#: result, where ``os.getpid()`` is a system call (~220 ns here, timeit).
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


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
        maps.register(self)  # Celery's built-in celery.map, .starmap and .chunks
        replace.register(self)  # and celery.accumulate, the join of a replacing group
        self._discover: list[tuple[Packages, str]] = []
        self.loader = _loader
        self.codecs = Codecs(self)
        self.results = ResultStore(self)
        #: Every message this app sends goes through here (:mod:`conveyor.publish`).
        self.publishing = PublishPath(self)
        self._plugins = list(plugins)
        for plugin in self._plugins:  # the caller's own mistake: say so here and now
            hookplugins.validate(plugin, _plugin_name(plugin))
        #: Inner serializer of the ``auth`` serializer (set by ``setup_security``).
        self.security_inner_serializer = "json"
        self._hooks: hookplugins.Manager | None = None
        self._pool: ConnectionPool | None = None
        self._backend: Backend | None = None
        self._routers: list[Router] | None = None
        self._lock = threading.RLock()
        self._forks = _forks
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
    def plugin_manager(self) -> hookplugins.Manager:
        self.hooks  # noqa: B018 - finalize
        assert self._hooks is not None
        return self._hooks

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call the observer hook ``hook``: an implementation that raises is logged
        with its plugin's name and ignored (see :mod:`conveyor.hookplugins`)."""
        hookplugins.notify(self.plugin_manager, hook, kwargs)

    def _make_plugin_manager(self) -> hookplugins.Manager:
        pm = hookplugins.new_manager()
        for plugin in self._plugins:
            pm.register(plugin)  # validated when given
        if os.environ.get("CONVEYOR_DISABLE_PLUGIN_AUTOLOAD") != "1":
            for info in find("conveyor.hooks"):
                try:
                    plugin = self.loader.make("conveyor.hooks", info.name, self)
                    if pm.is_registered(plugin):
                        continue  # also passed explicitly
                    hookplugins.register(pm, plugin, info.name)
                except (PluginError, ValueError) as exc:  # ValueError: name taken
                    log.error("Hook plugin %s not registered: %s", info.display_name, exc)
        if self.conf.worker_send_task_events or self.conf.task_send_sent_event:
            from .events import enable_on  # Celery's events; imported only when on
            enable_on(pm, self)
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
        pool = self._pool
        if pool is not None and self._forks == _forks:
            return pool  # perf: read for every publish; _check_fork's call saved
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
        backend = self._backend
        if backend is not None and self._forks == _forks:
            return backend  # perf: read for most publishes; _check_fork's call saved
        self._check_fork()
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    url = self.backend_url
                    factory = self.loader.load("conveyor.backends", scheme_of(url))
                    self._backend = _declares_capabilities(factory(url, self), url)
        return self._backend

    def _check_fork(self) -> None:
        if self._forks != _forks:  # connections must not cross a fork
            self._forks = _forks
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
            self.publishing.forget()  # it may hold the pool: after it is dropped

    def close(self) -> None:
        """Close publishing connections and the backend."""
        self._close_connections()

    async def aclose(self) -> None:
        """Close the asyncio connections this app opened on the running loop."""
        from . import aio
        await aio.aclose(self)

    def routers(self) -> list[Router]:
        """The ``task_routers`` plugins, each checked against :class:`Router`."""
        if self._routers is None:
            routers = []
            for name in self.conf.task_routers:
                router = self.loader.make("conveyor.routers", name, self)
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
                  kwargs: Mapping[str, Any] | None = None,
                  **options: Unpack[ExecutionOptions]) -> AsyncResult[Any]:
        """Send a task by name; it need not be registered in this process."""
        return self.publish(name, args or (), kwargs or {}, options, {},
                            self.tasks.get(name))

    async def asend_task(self, name: str, args: Sequence[Any] | None = None,
                         kwargs: Mapping[str, Any] | None = None,
                         **options: Unpack[ExecutionOptions]) -> AsyncResult[Any]:
        """``send_task`` for asyncio code (see :mod:`conveyor.aio`)."""
        from . import aio
        return await aio.publish(self, name, args or (), kwargs or {}, options, {},
                                 self.tasks.get(name))

    def signature(self, name: str, args: Sequence[Any] | None = None,
                  kwargs: Mapping[str, Any] | None = None, **options: Any
                  ) -> Signature[Any]:
        """A signature of a task by name, registered here or not (Celery's
        ``app.signature``): for canvases of tasks another process defines."""
        return Signature(name, args, kwargs, options, app=self)

    def publish(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                call: Mapping[str, Any], sig: Mapping[str, Any], task: Any
                ) -> AsyncResult[Any]:
        """Resolve, build and send one task message (:meth:`PublishPath.publish`)."""
        return self.publishing.publish(name, args, kwargs, call, sig, task)

    def publish_batch(self, calls: Sequence[tuple[str, Sequence[Any], Mapping[str, Any],
                                                  Mapping[str, Any], Mapping[str, Any]]]
                      ) -> list[AsyncResult[Any]]:
        """Send several calls pipelined (:meth:`PublishPath.publish_batch`)."""
        return self.publishing.publish_batch(calls)

    def prepare(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                call: Mapping[str, Any], sig: Mapping[str, Any], task: Any
                ) -> tuple[Message, Route, float | None, dict[str, Any]]:
        """Resolve options and build the message (:meth:`PublishPath.prepare`)."""
        return self.publishing.prepare(name, args, kwargs, call, sig, task)

    # ------------------------------------------------------------------ results
    def AsyncResult(self, task_id: str) -> _AsyncResult[Any]:  # noqa: N802 - Celery's name
        return _AsyncResult(task_id, self)

    def GroupResult(self, group_id: str, results: Sequence[_AsyncResult[Any]]  # noqa: N802
                    ) -> _GroupResult[Any]:
        return _GroupResult(group_id, results, self)

    @property
    def control(self) -> Control:
        """Remote control of the workers (Celery's ``app.control``: ``inspect()``,
        ``revoke``, ``ping``, ``shutdown``), over the broker's broadcasts."""
        from .control.client import Control
        return Control(self)

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


def _declares_capabilities(backend: Backend, url: str) -> Backend:
    """``backend``, once it is known to say what it can do: the core reads its
    ``capabilities`` instead of guessing, so a plugin without them fails here, at
    load, with what to add, not later with an AttributeError mid-task."""
    if not isinstance(getattr(backend, "capabilities", None), BackendCapabilities):
        kind = type(backend)
        raise PluginError(
            f"The result backend for {scheme_of(url)}:// ({kind.__module__}."
            f"{kind.__qualname__}) declares no capabilities. Give its class "
            f"`capabilities = BackendCapabilities(...)` (conveyor.interfaces; every "
            f"flag off if it has none of the optional protocols): see "
            f"docs/writing-plugins.md.")
    return backend
