"""YAML bodies written with ``safe_dump`` and read with ``safe_load`` only.

``yaml.load`` with the full loader can build arbitrary Python objects, so a message
could run code in the worker; the safe loader builds plain data only. A safe dump
with PyYAML's defaults (block style, keys sorted, non-ASCII escaped) is what kombu
writes (docs/architecture.md, "Serializers"), so task bodies are byte-identical
with Celery's.

perf: the libyaml-backed ``CSafeDumper``/``CSafeLoader`` are used when PyYAML has them
(about 4x faster per message). libyaml folds long non-ASCII strings at other points
than the pure-Python emitter kombu uses; the bytes then differ, the decoded values
do not.
"""

from __future__ import annotations

from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YAMLSerializer:
    """``application/x-yaml``; tuples travel as sequences and come back as lists."""

    content_type = "application/x-yaml"
    content_encoding = "utf-8"

    def __init__(self, app: Any = None) -> None:
        self.app = app

    def dumps(self, obj: Any) -> bytes:
        try:
            text = yaml.dump(obj, Dumper=_Dumper)
        except yaml.representer.RepresenterError as exc:
            raise TypeError(
                f"Cannot encode with YAML (safe dump): {exc}. It carries str, bytes, "
                "int, float, bool, None, list/tuple, dict, date and datetime; convert "
                "other values (Decimal, UUID, objects) or use serializer='json'."
            ) from exc
        return str(text).encode("utf-8")

    def loads(self, data: bytes | str) -> Any:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
