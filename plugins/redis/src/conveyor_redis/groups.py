"""Saved groups in Celery's key, ``celery-taskset-meta-<group id>``, so a group saved
by Conveyor is restored by Celery's ``GroupResult.restore`` and the reverse (both
write ``{"result": [[group_id, null], [member tuples]]}`` with the result
serializer)."""

from __future__ import annotations

from typing import Any

from .connection import Lines
from .errors import translate

GROUP_PREFIX = "celery-taskset-meta-"


class GroupsMixin:
    """The :class:`~conveyor.interfaces.GroupBackend` methods of the Redis backend."""

    url: str
    _lines: Lines

    def _group_call(self, doing: str, group_id: str, *args: Any) -> Any:
        line = self._lines.take()
        try:
            with translate(self.url, f"{doing} group {group_id}"):
                return line.call(*args)
        finally:
            self._lines.give(line)

    def save_group(self, group_id: str, payload: bytes, *, expires: float | None) -> None:
        key = GROUP_PREFIX + group_id
        if expires:
            self._group_call("saving", group_id, "SET", key, payload, "PX",
                             max(1, int(float(expires) * 1000)))
        else:
            self._group_call("saving", group_id, "SET", key, payload)

    def get_group(self, group_id: str) -> bytes | None:
        found: bytes | None = self._group_call("reading", group_id, "GET",
                                               GROUP_PREFIX + group_id)
        return found

    def forget_group(self, group_id: str) -> None:
        self._group_call("forgetting", group_id, "DEL", GROUP_PREFIX + group_id)
