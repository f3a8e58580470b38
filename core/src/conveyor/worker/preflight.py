"""What a worker resolves before it consumes: every setting that names a plugin.

Plugins load lazily, so a misspelt name in ``accept_content`` would otherwise be
found at the first decode, and every valid message would be dead-lettered for it.
A worker instead loads each named serializer, compressor, router, transport and
backend when it starts; the first that cannot be resolved stops it with a
:class:`ConfigurationError` naming the setting (the CLI exits non-zero).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from ..connection import scheme_of
from ..exceptions import ConfigurationError, PluginError
from ..utils import mask_url

if TYPE_CHECKING:
    from ..app import Conveyor


def _named(app: Conveyor) -> Iterator[tuple[str, Any, Callable[[], object]]]:
    """(setting, value as shown, how to resolve it) for each setting naming a plugin."""
    conf, codecs = app.conf, app.codecs
    for setting in ("task_serializer", "result_serializer"):
        yield setting, conf[setting], partial(codecs.serializer, conf[setting])
    for setting in ("accept_content", "result_accept_content"):
        if conf[setting]:
            yield setting, conf[setting], partial(codecs.check_accept, conf[setting],
                                                  setting)
    for setting in ("task_compression", "result_compression"):
        if conf[setting]:
            yield setting, conf[setting], partial(codecs.compressor, conf[setting])
    yield "task_routers", conf.task_routers, app.routers
    yield "broker_url", mask_url(app.broker_url), lambda: app.loader.load(
        "conveyor.transports", scheme_of(app.broker_url))
    yield "result_backend", mask_url(app.backend_url), lambda: app.backend


def check(app: Conveyor) -> None:
    """Resolve every plugin a setting names; raise :class:`ConfigurationError`
    naming the first setting that does not resolve."""
    for setting, shown, resolve in _named(app):
        try:
            resolve()
        except (PluginError, ConfigurationError) as exc:
            raise ConfigurationError(
                f"The worker cannot start: setting {setting}={shown!r} does not "
                f"resolve: {exc}"
            ) from exc
