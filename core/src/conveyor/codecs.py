"""Serializers and compressors of one app: encode by name, decode by content type.

Plugins are loaded the first time a name is needed. Decoding only ever considers the
serializers listed in ``accept_content``, so a message of another type is refused
with :class:`ContentDisallowed` before any of its bytes are parsed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .exceptions import ConfigurationError, ContentDisallowed, DecodeError, PluginError
from .interfaces import Compressor, Serializer
from .plugins import find

if TYPE_CHECKING:
    from .app import Conveyor


class Codecs:
    """The app's codec registry (lazy, cached, thread-safe)."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        self._serializers: dict[str, Serializer] = {}
        self._compressors: dict[str, Compressor] = {}
        self._by_header: dict[str, Compressor] = {}
        self._accept: dict[tuple[str, ...], dict[str, Serializer]] = {}
        self._lock = threading.RLock()

    def reset(self) -> None:
        """Forget instances (settings such as security keys changed)."""
        with self._lock:
            self._serializers.clear()
            self._accept.clear()

    # ------------------------------------------------------------- by name
    def serializer(self, name: str) -> Serializer:
        try:
            return self._serializers[name]
        except KeyError:
            pass
        with self._lock:
            if name not in self._serializers:
                self._serializers[name] = self.app.loader.make(
                    "conveyor.serializers", name, self.app)
            return self._serializers[name]

    def compressor(self, name: str) -> Compressor:
        try:
            return self._compressors[name]
        except KeyError:
            pass
        with self._lock:
            if name not in self._compressors:
                instance = self.app.loader.make("conveyor.compressors", name, self.app)
                self._compressors[name] = instance
                self._by_header.setdefault(instance.content_type, instance)
            return self._compressors[name]

    # ------------------------------------------------------------- by content type
    def _accepted(self, key: tuple[str, ...]) -> dict[str, Serializer]:
        """The serializers ``key`` (an accept list as a tuple) allows, by content type."""
        found = self._accept.get(key)
        if found is not None:
            return found
        with self._lock:
            table: dict[str, Serializer] = {}
            for item in key:
                if "/" in item:  # a content type: find the serializer that writes it
                    for info in find("conveyor.serializers"):
                        try:
                            ser = self.serializer(info.name)
                        except (PluginError, ConfigurationError):
                            continue  # broken, or unusable here (auth without keys)
                        if ser.content_type == item:
                            table[item] = ser
                            break
                else:
                    ser = self.serializer(item)
                    table[ser.content_type] = ser
            self._accept[key] = table
            return table

    def check_accept(self, accept: Iterable[str], setting: str) -> None:
        """Raise unless every item of ``accept`` (serializer names or content types)
        is an installed serializer: :class:`PluginError` for a name,
        :class:`ConfigurationError` for a content type no serializer writes."""
        accept = tuple(accept)
        table = self._accepted(accept)
        for item in accept:
            if "/" in item and item not in table:
                names = sorted({p.name for p in find("conveyor.serializers")})
                raise ConfigurationError(
                    f"No installed serializer writes content type {item!r} (in {setting}). "
                    f"Name a serializer instead: {', '.join(names) or 'none installed'}.")

    def decoder(self, content_type: str, accept: Iterable[str],
                setting: str = "accept_content") -> Serializer:
        """The serializer that reads ``content_type``, if ``accept`` allows it."""
        # perf: one tuple a message (was two: here and in _accepted)
        accept = tuple(accept)
        found = self._accepted(accept).get(content_type)
        if found is None:
            raise ContentDisallowed(
                f"Refusing to decode content type {content_type!r}: it is not in "
                f"{setting} {list(accept)!r}. Add its serializer's name to {setting} "
                "if this content is trusted."
            )
        return found

    def decompressor(self, header: str) -> Compressor:
        """The compressor named by a message's ``compression`` header value."""
        found = self._by_header.get(header)
        if found is not None:
            return found
        with self._lock:
            for info in find("conveyor.compressors"):
                if header in self._by_header:
                    break
                try:
                    self.compressor(info.name)
                except PluginError:
                    continue
            if header in self._by_header:
                return self._by_header[header]
        raise DecodeError(
            f"No installed compressor reads compression {header!r}. Installed: "
            f"{', '.join(sorted(p.name for p in find('conveyor.compressors'))) or 'none'}."
        )

    # ------------------------------------------------------------- helpers
    def dumps(self, obj: Any, serializer: str, compression: str | None
              ) -> tuple[bytes, str, str, str | None]:
        """Serialize (and compress) ``obj``: body, content type, encoding, header."""
        ser = self.serializer(serializer)
        data = ser.dumps(obj)
        if compression:
            comp = self.compressor(compression)
            return comp.compress(data), ser.content_type, ser.content_encoding, comp.content_type
        return data, ser.content_type, ser.content_encoding, None

    def loads(self, data: bytes, content_type: str, compression: str | None,
              accept: Iterable[str], setting: str = "accept_content") -> Any:
        """Decompress and decode bytes, enforcing ``accept``."""
        # perf: called for every message on both sides; the accepted table is looked
        # up here, and decoder() (two calls more) only asked when it has no answer.
        key = accept if type(accept) is tuple else tuple(accept)
        table = self._accept.get(key)
        ser = table.get(content_type) if table is not None else None
        if ser is None:
            ser = self.decoder(content_type, key, setting)
        if compression:
            try:
                data = self.decompressor(compression).decompress(data)
            except DecodeError:
                raise
            except Exception as exc:
                raise DecodeError(f"Cannot decompress {compression!r} body: {exc}") from exc
        try:
            return ser.loads(data)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(
                f"Cannot decode {content_type!r} body: {type(exc).__name__}: {exc}"
            ) from exc
