"""Finding tasks the way Celery projects lay them out: ``autodiscover_tasks`` and
``shared_task``.

A Django project keeps its tasks in each app's ``tasks.py`` and declares them with
``@shared_task``, which names no app: reusable apps cannot know the project's app.
So discovery is lazy, as in Celery: ``app.autodiscover_tasks()`` only notes the
packages, and their ``tasks`` modules are imported when the app is finalized — when a
worker starts, or the first time a task name is looked up and not found. Importing them
at configuration time would import Django models before Django is set up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from .exceptions import ConfigurationError, NotRegistered

if TYPE_CHECKING:
    from .app import Conveyor
    from .task import Task

P = ParamSpec("P")
R = TypeVar("R")

#: Tasks declared with ``@shared_task``: (function, options with the task's name).
_shared: list[tuple[Callable[..., Any], dict[str, Any]]] = []

Packages = Iterable[str] | Callable[[], Iterable[str]] | None


class TaskRegistry(dict[str, "Task[Any, Any]"]):
    """``app.tasks``: name → task. A name not found finalizes the app (imports
    pending ``tasks`` modules, binds shared tasks) and is looked up once more.

    ``get()`` does not finalize: the worker finalizes its app before it consumes.
    """

    def __init__(self, app: Conveyor) -> None:
        super().__init__()
        self._app = app

    def __missing__(self, name: str) -> Task[Any, Any]:
        self._app.finalize()
        if dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        raise NotRegistered(f"Task {name!r} is not registered in app "
                            f"{self._app.main!r}: import the module that defines it, or "
                            "name its package in app.autodiscover_tasks([...]).")


def import_tasks(packages: Packages, related_name: str) -> None:
    """Import ``<package>.<related_name>`` of every package that has one."""
    if callable(packages):
        packages = packages()
    if packages is None:
        packages = django_apps()
    for entry in packages:
        package = _package_name(entry)
        try:
            importlib.import_module(f"{package}.{related_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.{related_name}":
                raise  # an import inside the tasks module failed: the user must see it


def _package_name(entry: str) -> str:
    """The package of an INSTALLED_APPS entry: a package, or an AppConfig's path."""
    try:
        importlib.import_module(entry)
        return entry
    except ModuleNotFoundError as exc:
        if exc.name != entry or "." not in entry:
            raise ConfigurationError(
                f"autodiscover_tasks: cannot import package {entry!r} ({exc}).") from exc
    module, _, attr = entry.rpartition(".")
    name = getattr(importlib.import_module(module), attr, None)
    name = getattr(name, "name", None)
    if not isinstance(name, str):
        raise ConfigurationError(
            f"autodiscover_tasks: {entry!r} is neither a package nor a Django AppConfig.")
    return name


def django_apps() -> list[str]:
    """The packages of Django's installed apps (Django is set up first if needed)."""
    try:
        django = importlib.import_module("django")
        apps = importlib.import_module("django.apps").apps
        improperly = importlib.import_module("django.core.exceptions").ImproperlyConfigured
    except ImportError:
        raise ConfigurationError(
            "autodiscover_tasks() without packages reads Django's installed apps, but "
            "Django is not installed: pass the packages, e.g. "
            "app.autodiscover_tasks(['proj.orders']).") from None
    if not apps.ready:
        try:
            django.setup()
        except improperly as exc:
            raise ConfigurationError(
                f"autodiscover_tasks() without packages reads Django's installed apps, "
                f"but Django is not configured ({exc}). Set DJANGO_SETTINGS_MODULE, or "
                "pass the packages.") from exc
    return [config.name for config in apps.get_app_configs()]


def bind_shared(app: Conveyor) -> None:
    """Register on ``app`` every shared task it does not have yet."""
    for fn, options in list(_shared):
        if not dict.__contains__(app.tasks, options["name"]):
            register: Any = app.task(**options)
            register(fn)


class SharedTask:
    """What ``@shared_task`` returns: the task of that name on the current app.

    Every use (``.delay``, a call, an attribute) looks the task up on
    :func:`~conveyor.current_app`, so one declaration serves whichever app the
    project creates, in every process.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def _task(self) -> Task[Any, Any]:
        from .app import current_app
        return current_app().tasks[self.name]

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._task(), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._task()(*args, **kwargs)

    def __reduce__(self) -> Any:
        return (SharedTask, (self.name,))

    def __repr__(self) -> str:
        return f"<@shared_task: {self.name}>"


@overload
def shared_task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def shared_task(*, bind: Literal[True], name: str | None = None, **options: Any
                ) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...


@overload
def shared_task(*, bind: Literal[False] = False, name: str | None = None,
                **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def shared_task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """``@shared_task`` or ``@shared_task(bind=True, …)``: a task of no particular
    app, registered on each app when it is finalized. It is typed as the
    :class:`~conveyor.Task` it stands for; at run time it is a :class:`SharedTask`."""
    def declare(func: Callable[..., Any]) -> Any:
        name = options.get("name") or f"{func.__module__}.{func.__qualname__}"
        _shared.append((func, {**options, "name": name}))
        return SharedTask(name)
    return declare(fn) if fn is not None else declare
