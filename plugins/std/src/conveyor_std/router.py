"""The ``routes`` router: Celery's ``task_routes`` (dicts, globs, regexes, callables)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from conveyor.exceptions import ConfigurationError

RouteFn = Callable[..., Any]


def _expand(route: Any) -> dict[str, Any] | None:
    if route is None:
        return None
    if isinstance(route, str):
        return {"queue": route}
    if isinstance(route, Mapping):
        return dict(route)
    raise ConfigurationError(
        f"A task route must be a queue name or a dict of options, not {route!r}."
    )


def _regex_matcher(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda name: pattern.match(name) is not None


def _glob_matcher(pattern: str) -> Callable[[str], bool]:
    return lambda name: fnmatch.fnmatchcase(name, pattern)


def _from_mapping(table: Mapping[Any, Any]) -> RouteFn:
    exact: dict[str, Any] = {}
    patterns: list[tuple[Callable[[str], bool], Any]] = []
    for key, value in table.items():
        if isinstance(key, re.Pattern):
            patterns.append((_regex_matcher(key), value))
        elif any(c in key for c in "*?["):
            patterns.append((_glob_matcher(key), value))
        else:
            exact[key] = value

    def route(name: str, *_: Any, **__: Any) -> Any:
        if name in exact:
            return exact[name]
        for match, value in patterns:
            if match(name):
                return value
        return None

    return route


def compile_routes(routes: Any) -> list[RouteFn]:
    """Turn ``task_routes`` into a list of callables, tried in order."""
    if routes is None:
        return []
    if isinstance(routes, Mapping) or callable(routes):
        routes = [routes]
    if not isinstance(routes, Sequence) or isinstance(routes, str):
        raise ConfigurationError(
            f"task_routes must be a dict, a callable or a list of them, not {routes!r}."
        )
    return [_from_mapping(r) if isinstance(r, Mapping) else r for r in routes]


class RoutesRouter:
    """Reads ``task_routes`` from the app's settings (re-read when they change)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._source: Any = object()
        self._compiled: list[RouteFn] = []

    @property
    def enabled(self) -> bool:
        """False while ``task_routes`` is unset, so the core can skip routing."""
        return self.app.conf.task_routes is not None

    def route(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              options: Mapping[str, Any], task: Any) -> dict[str, Any] | None:
        routes = self.app.conf.task_routes
        if routes is not self._source:
            self._compiled, self._source = compile_routes(routes), routes
        for fn in self._compiled:
            found = _expand(fn(name, args, kwargs, options, task=task))
            if found is not None:
                return found
        return None
