"""Lua scripts run by SHA, reloaded when the server forgot them (after a restart).

A script runs on a redis-py client or on a held :class:`~.connection.Line` (the hot
paths). redis-py's ``register_script`` would do for the client, but not for a Line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from .connection import Line
from .resp import pack_items


class Script:
    """One Lua script: ``script(client, keys, args)`` runs it atomically."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    def prepared(self, keys: Sequence[Any], nargs: int,
                 tail: Sequence[Any] = ()) -> tuple[bytes, bytes]:
        """Packed constant parts of a call with ``keys``, ``nargs`` varying arguments
        and then the constant ``tail`` arguments; see :meth:`run_prepared`."""
        head = b"*%d\r\n%s" % (3 + len(keys) + nargs + len(tail),
                                pack_items(["EVALSHA", self.sha, len(keys), *keys]))
        return head, pack_items(tail)

    def run_prepared(self, line: Line, parts: tuple[bytes, bytes],
                     args: Sequence[Any]) -> Any:
        """Run with the varying ``args`` between prepared head and tail (hot paths)."""
        packed = parts[0] + pack_items(args) + parts[1]
        try:
            return line.send(packed)
        except NoScriptError:
            line.call("SCRIPT", "LOAD", self.source)
            return line.send(packed)

    def __call__(self, client: redis.Redis | Line, keys: Sequence[Any],
                 args: Sequence[Any] = ()) -> Any:
        if isinstance(client, Line):
            try:
                return client.call("EVALSHA", self.sha, len(keys), *keys, *args)
            except NoScriptError:
                client.call("SCRIPT", "LOAD", self.source)
                return client.call("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)
