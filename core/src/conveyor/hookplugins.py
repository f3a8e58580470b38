"""Hook plugins: registered only when they fit the specs; observers called contained.

A hook implementation that names an argument its spec does not have, or a hook no
spec defines (a misspelt name, never called), is found when the plugin is
registered, by pluggy's own checks (``register`` and ``check_pending``): an
installed ``conveyor.hooks`` plugin that fails them is logged and skipped (one bad
plugin must not break every app of the environment), a plugin passed to
``Conveyor(plugins=[...])`` raises :class:`PluginError`, and ``conveyor plugins``
shows it as failing, with the same cause.

Observer hooks (every hook whose result nobody needs) are called through
:func:`notify`: an implementation that raises is logged with its plugin's name and
the call goes on, so a broken observer never makes ``delay()`` raise after the broker
took the message, is never taken for a lost broker connection, and never stops a
worker. The hooks that shape a call (``before_task_publish``, ``route_task``) are
called directly and their exceptions reach the caller, as their specs say.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import pluggy

from . import hookspecs
from .exceptions import PluginError
from .utils import did_you_mean

log = logging.getLogger("conveyor.hooks")

#: The specs' names, for "did you mean" on a misspelt implementation.
SPEC_NAMES = frozenset(name for name, value in vars(hookspecs).items()
                       if hasattr(value, "conveyor_spec"))


class Manager(pluggy.PluginManager):
    """pluggy's plugin manager, which also tells those watching it when a plugin
    comes or goes.

    Why: the publish path asks for every message whether a hook has
    implementations, and pluggy's only answer, ``get_hookimpls()``, copies a list
    each time. pluggy gives no signal when implementations change, but they change
    only in :meth:`register` and :meth:`unregister` (its ``set_blocked`` and
    ``load_setuptools_entrypoints`` call them, as do Conveyor's own paths and
    anyone holding ``app.plugin_manager``), so an answer kept until these say
    otherwise is never stale.
    """

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self._watchers: list[Callable[[], None]] = []

    def watch(self, changed: Callable[[], None]) -> None:
        """Call ``changed`` after every registration and unregistration (a failed one
        too: pluggy may have added some implementations before it raised)."""
        self._watchers.append(changed)

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        try:
            return super().register(plugin, name)
        finally:
            self._changed()

    def unregister(self, plugin: Any | None = None, name: str | None = None) -> Any | None:
        try:
            return super().unregister(plugin, name)
        finally:
            self._changed()

    def _changed(self) -> None:
        for changed in self._watchers:
            changed()


def new_manager() -> Manager:
    """An empty plugin manager that knows every hook spec."""
    pm = Manager("conveyor")
    pm.add_hookspecs(hookspecs)
    return pm


def validate(plugin: Any, name: str) -> None:
    """Raise :class:`PluginError` unless every hook implementation of ``plugin``
    fits a spec (checked on a manager of its own, so nothing is half-registered)."""
    pm = new_manager()
    try:
        pm.register(plugin, name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        unknown = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()
                         if not caller.has_spec())
        hint = "".join(did_you_mean(hook, SPEC_NAMES) for hook in unknown)
        cause = " ".join(str(exc).split())
        raise PluginError(
            f"Hook plugin {name!r} does not fit the hook specs: {cause}.{hint} The specs "
            "are in conveyor.hookspecs; an implementation may take any subset of its "
            "spec's arguments, and no others."
        ) from exc


def register(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Validate, then register ``plugin`` on ``pm`` (raises :class:`PluginError`)."""
    validate(plugin, name)
    pm.register(plugin, name)


def notify(pm: pluggy.PluginManager, hook: str, kwargs: Mapping[str, Any]) -> None:
    """Call the observer hook ``hook`` with ``kwargs``; log what raises, never raise.

    Each implementation is called on its own (in pluggy's order, last registered
    first), so one broken observer neither stops the others nor hides its name.
    """
    caller = getattr(pm.hook, hook)
    impls = caller.get_hookimpls()
    if not impls:
        return
    if any(impl.hookwrapper or impl.wrapper for impl in impls):
        # A wrapper needs pluggy's own call; contain it as one.
        try:
            caller(**kwargs)
        except Exception:  # noqa: BLE001 - observing must not break the observed
            log.exception("Hook %s of plugins %s raised; ignored", hook,
                          ", ".join(impl.plugin_name for impl in impls))
        return
    for impl in reversed(impls):
        try:
            impl.function(*[kwargs[arg] for arg in impl.argnames])
        except Exception:  # noqa: BLE001 - observing must not break the observed
            log.exception("Hook %s of plugin %s (%s.%s) raised; ignored", hook,
                          impl.plugin_name, impl.function.__module__,
                          impl.function.__qualname__)
