"""Settings read from where a project already keeps them: ``config_from_object``.

A Celery project keeps its settings in a module (``celeryconfig.py``), in Django's
settings (``CELERY_BROKER_URL``, read through ``"django.conf:settings"`` with
``namespace="CELERY"``) or in Flask's ``app.config`` mapping. This module turns any of
them into Conveyor setting names, with Celery's rules:

- with a namespace, only keys starting with ``NAMESPACE_`` are settings; the prefix is
  dropped and the rest lower-cased (``CELERY_TASK_SERIALIZER`` → ``task_serializer``).
  Every other key belongs to the host framework and is ignored;
- without one, the lower-case public names are settings (a ``celeryconfig`` module, or
  the dict Flask's documentation puts under ``app.config["CELERY"]``).

Inside those rules it is as strict as every other way of configuring: a key that names
no setting raises :class:`~conveyor.exceptions.UnknownOptionError` with the closest
known name, before any value is applied.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from .exceptions import ConfigurationError, UnknownOptionError
from .settings import DEFAULTS
from .utils import closest


def resolve(obj: Any) -> Any:
    """``obj`` itself, or what a text names: ``"pkg.module"``, ``"pkg.module:attr"``
    or ``"pkg.module.attr"`` (Celery's spellings)."""
    if not isinstance(obj, str):
        return obj
    module_name, colon, attr = obj.partition(":")
    if colon:
        return _attribute(_import(module_name, obj), attr, obj)
    try:
        return importlib.import_module(obj)
    except ModuleNotFoundError as exc:
        parent, _, attr = obj.rpartition(".")
        if not parent or exc.name != obj:
            raise ConfigurationError(
                f"config_from_object({obj!r}): cannot import {exc.name!r} ({exc}).") from exc
        return _attribute(_import(parent, obj), attr, obj)


def _import(module_name: str, spec: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"config_from_object({spec!r}): cannot import {module_name!r} ({exc}).") from exc


def _attribute(module: Any, attr: str, spec: str) -> Any:
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigurationError(
            f"config_from_object({spec!r}): module {module.__name__!r} has no attribute "
            f"{attr!r}.") from None


def _items(obj: Any) -> list[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        return [(str(k), v) for k, v in obj.items()]
    # Django's LazySettings lists its settings through dir(); so does a module.
    return [(name, getattr(obj, name)) for name in dir(obj) if not name.startswith("_")]


def _is_value(value: Any) -> bool:
    """False for what a config module holds besides settings (imports, helpers)."""
    return not (inspect.ismodule(value) or inspect.isclass(value)
                or inspect.isroutine(value))


def settings_from(obj: Any, namespace: str | None = None) -> dict[str, Any]:
    """The Conveyor settings ``obj`` holds, by setting name; unknown ones raise."""
    source = resolve(obj)
    prefix = f"{namespace}_" if namespace else None
    found: dict[str, tuple[str, Any]] = {}
    for key, value in _items(source):
        if prefix is not None:
            if not key.startswith(prefix) or key == prefix:
                continue  # the host framework's own setting
            name = key[len(prefix):].lower()
        elif key.islower() and _is_value(value):
            name = key
        else:
            continue
        if name not in DEFAULTS:
            match = closest(name, DEFAULTS)
            hint = f" Did you mean {match!r}" if match else ""
            if match and prefix is not None:
                hint += f" ({prefix}{match.upper()})"
            hint += "?" if match else ""
            raise UnknownOptionError(
                f"config_from_object: {key!r} names no setting ({name!r}).{hint} Keys "
                + (f"starting with {prefix!r} must be settings: rename or remove it."
                   if prefix else "in lower case must be settings: rename or remove it."))
        found[name] = (key, value)
    return {name: value for name, (_key, value) in found.items()}
