"""The plugin loader: find (metadata only), load (one name, lazily), describe.

Every serializer, compressor, transport, backend and router arrives through an entry
point, the first-party ones included. stevedore's defaults hide failures
(``ExtensionManager`` only logs; ``DriverManager`` re-raises the bare import error), so
every failure here becomes a :class:`PluginError` naming the group, the name asked for,
what is installed, the closest match and the extra that provides it, with the original
error chained as ``__cause__``. One broken plugin never breaks another.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from stevedore import DriverManager
from stevedore.exception import MultipleMatches, NoMatches
from stevedore.extension import ExtensionManager

from .exceptions import PluginError
from .hookplugins import validate
from .utils import closest

GROUPS: dict[str, str] = {
    "serializers": "conveyor.serializers",
    "compressors": "conveyor.compressors",
    "transports": "conveyor.transports",
    "backends": "conveyor.backends",
    "routers": "conveyor.routers",
    "hooks": "conveyor.hooks",
    "commands": "conveyor.commands",
}

#: Groups whose entry points give one object per app (see :func:`make`); a transport
#: or backend entry point is a factory taking ``(url, app)``.
PER_APP = frozenset(GROUPS[g] for g in ("serializers", "compressors", "routers", "hooks"))

#: Groups a bare install may lack without anything being wrong (``conveyor plugins``
#: names the others when they are empty).
OPTIONAL = frozenset(GROUPS[g] for g in ("hooks", "commands"))

#: The distributions whose extras install plugin families, the umbrella first: an
#: install hint names an extra one of them really declares (``Provides-Extra``).
EXTRA_PROVIDERS = ("conveyor", "conveyor-core")


@dataclass(frozen=True, slots=True)
class Extra:
    """An extra of an installed Conveyor distribution and what it installs."""

    distribution: str
    name: str
    installs: frozenset[str]

    @property
    def command(self) -> str:
        return f"pip install '{self.distribution}[{self.name}]'"


def extras() -> list[Extra]:
    """The extras of the installed ``conveyor``/``conveyor-core``, read from their
    metadata (so a hint never names an extra that does not exist)."""
    found = []
    for dist in EXTRA_PROVIDERS:
        try:
            meta = metadata.metadata(dist)
        except metadata.PackageNotFoundError:
            continue
        requirements = [Requirement(text) for text in meta.get_all("Requires-Dist") or ()]
        for extra in meta.get_all("Provides-Extra") or ():
            installs = frozenset(
                canonicalize_name(req.name) for req in requirements
                if req.marker is not None and req.marker.evaluate({"extra": extra}))
            found.append(Extra(dist, extra, installs))
    return found


def _fix_hint(name: str, distribution: str | None = None) -> str:
    """The install command for a plugin: the smallest extra that installs its
    ``distribution`` (a plugin that failed to load), else the extra named like the
    plugin or its prefix (``rediss`` → ``redis``), else nothing."""
    known = extras()
    if distribution is not None:
        wanted = canonicalize_name(distribution)
        fits = [e for e in known if wanted in e.installs]
    else:
        fits = [e for e in known if e.name == name] or \
            [e for e in known if name.startswith(e.name)]
    if not fits:
        return ""
    return f" Install it with: {min(fits, key=lambda e: len(e.installs)).command}."


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """An installed entry point, read from metadata without importing it."""

    group: str
    name: str
    value: str
    distribution: str
    version: str

    @property
    def display_name(self) -> str:
        return f"{self.distribution}[{self.name}]"


def _group(group: str) -> str:
    return GROUPS.get(group, group)


def find(group: str) -> list[PluginInfo]:
    """Installed plugins of ``group``, sorted by name, without importing any.

    The entry points are the ones stevedore's ``DriverManager`` will search (its
    cache), so a plugin listed here is one :func:`load` finds; the distribution and
    version come from the package metadata.
    """
    group = _group(group)
    owners = {(ep.name, ep.value): ep.dist for ep in metadata.entry_points(group=group)}
    found = []
    for ep in ExtensionManager.make_test_instance([], namespace=group).list_entry_points():
        dist = owners.get((ep.name, ep.value))
        found.append(PluginInfo(
            group=group, name=ep.name, value=ep.value,
            distribution=dist.metadata["Name"] if dist is not None else "?",
            version=dist.version if dist is not None else "?",
        ))
    return sorted(found, key=lambda p: (p.name, p.distribution))


def bare_core_hint() -> str:
    """What to install when ``conveyor-core`` came alone: it brings no plugin, not
    even a serializer, so nothing can be sent until the standard ones are there."""
    core_extras = {e.name for e in extras() if e.distribution == "conveyor-core"}
    also = " or pip install 'conveyor-core[std]'" if "std" in core_extras else ""
    return ("conveyor-core alone installs no plugins; install the standard ones "
            f"(serializers, routers, the SQLite default) with: pip install conveyor{also}.")


def not_found_message(group: str, name: str) -> str:
    """The explanation for a name with no entry point in ``group``."""
    installed = sorted({p.name for p in find(group)})
    text = f"No plugin {name!r} in entry point group {group!r}."
    match = closest(name, installed)
    if match:
        text += f" Did you mean {match!r}?"
    text += f" Installed: {', '.join(installed) or 'none'}."
    if not installed:
        return f"{text} {bare_core_hint()}"
    return text + _fix_hint(name)


class Loader:
    """Loads plugins one name at a time and caches them (thread-safe)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def load(self, group: str, name: str) -> Any:
        """The object the entry point ``name`` of ``group`` targets (not called)."""
        key = (_group(group), name)
        try:
            return self._cache[key]
        except KeyError:
            pass
        with self._lock:
            if key not in self._cache:
                self._cache[key] = load(*key)
            return self._cache[key]

    def make(self, group: str, name: str, app: Any) -> Any:
        """The plugin ``name`` of a per-app group (serializers, compressors, routers,
        hooks) for ``app``: the entry point's object, or what its factory returns."""
        return make(self.load(group, name), app, _group(group), name)


def load(group: str, name: str) -> Any:
    """Import exactly one plugin; every failure becomes a :class:`PluginError`."""
    group = _group(group)

    def failed(_manager: Any, ep: Any, err: BaseException) -> None:
        owners = [p for p in find(group) if p.name == name]
        dists = ", ".join(f"{p.distribution} {p.version}" for p in owners) or "?"
        hint = _fix_hint(name, owners[0].distribution) if owners else ""
        raise PluginError(
            f"Plugin {name!r} of group {group!r} ({dists}, {ep.value}) failed to load: "
            f"{type(err).__name__}: {err}."
            + (hint or " Reinstall its distribution or fix the import.")
        ) from err

    try:
        manager = DriverManager(namespace=group, name=name, invoke_on_load=False,
                                on_load_failure_callback=failed)
    except PluginError:
        raise
    except NoMatches as exc:
        raise PluginError(not_found_message(group, name)) from exc
    except MultipleMatches as exc:
        dists = ", ".join(p.display_name for p in find(group) if p.name == name)
        raise PluginError(
            f"Plugin name {name!r} of group {group!r} is provided by several "
            f"distributions ({dists}); uninstall all but one."
        ) from exc
    return manager.driver


#: What an entry point of a per-app plugin group may name.
EXPECTED = ("the plugin object itself (a module, an instance, a class whose methods are "
            "static), a factory taking no argument, or a factory taking the app")


def takes_app(target: Any, group: str, name: str) -> bool | None:
    """How to get the plugin from an entry point's ``target``: None when it is the
    object itself (a module or an instance), else whether the factory (a class or a
    function) takes the app. Told apart by the signature; a factory that fits
    neither form is a :class:`PluginError` saying what was expected."""
    if not (inspect.isclass(target) or inspect.isroutine(target)):
        return None
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError) as exc:
        raise PluginError(f"Plugin {name!r} of group {group!r} names {target!r}, whose "
                          f"signature cannot be read; expected {EXPECTED}.") from exc
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                   p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    required = [p for p in params if p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if len(required) > 1 or any(p.kind == p.KEYWORD_ONLY for p in required):
        shown = ", ".join(p.name for p in required)
        raise PluginError(
            f"Plugin {name!r} of group {group!r} names {getattr(target, '__qualname__', target)}"
            f", which requires ({shown}); expected {EXPECTED}.")
    return bool(positional)


def make(target: Any, app: Any, group: str, name: str) -> Any:
    """The plugin object an entry point's ``target`` gives for ``app`` (see
    :func:`takes_app`)."""
    how = takes_app(target, group, name)
    if how is None:
        return target
    return target(app) if how else target()


def check_command(target: Any, name: str) -> None:
    """Raise :class:`PluginError` unless ``target`` (a ``conveyor.commands`` entry
    point) is a :class:`~conveyor.interfaces.Command`."""
    from .interfaces import Command
    if not isinstance(target, Command):
        raise PluginError(
            f"Command plugin {name!r} names {target!r}, which is not a "
            "conveyor.interfaces.Command (an object with help, add_arguments(parser) "
            "and run(app, namespace) -> int).")


@dataclass(frozen=True, slots=True)
class PluginStatus:
    """One row of ``conveyor plugins``."""

    info: PluginInfo
    ok: bool
    error: str | None
    #: Lines the plugin adds about itself (its factory's optional ``plugin_notes()``),
    #: e.g. what a bridge does on each backend it was tested on.
    notes: tuple[str, ...] = ()


def describe() -> list[PluginStatus]:
    """Every installed plugin of every group with whether it loads, and for a hook
    plugin whether it fits the hook specs (never raises)."""
    rows = []
    for group in GROUPS.values():
        for info in find(group):
            try:
                target = load(group, info.name)
                if group in PER_APP:
                    takes_app(target, group, info.name)
                if group == GROUPS["hooks"]:
                    validate(target, info.name)
                if group == GROUPS["commands"]:
                    check_command(target, info.name)
            except PluginError as exc:
                cause = exc.__cause__
                text = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
                rows.append(PluginStatus(info, False, " ".join(text.split())))
            else:
                notes = getattr(target, "plugin_notes", None)
                rows.append(PluginStatus(info, True, None,
                                         tuple(notes()) if callable(notes) else ()))
    return rows
