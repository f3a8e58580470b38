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


class Script:
    """One Lua script: ``script(client, keys, args)`` runs it atomically."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    def prepared(self, keys: Sequence[Any], nargs: int,
                 tail: Sequence[Any] = ()) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """The constant parts of a call with ``keys``, ``nargs`` varying arguments
        and then the constant ``tail`` arguments; see :meth:`run_prepared`."""
        return ("EVALSHA", self.sha, len(keys), *keys), tuple(tail)

    def run_prepared(self, line: Line, parts: tuple[tuple[Any, ...], tuple[Any, ...]],
                     args: Sequence[Any]) -> Any:
        """Run with the varying ``args`` between the prepared head and tail."""
        command = (*parts[0], *args, *parts[1])
        try:
            return line.call(*command)
        except NoScriptError:
            line.call("SCRIPT", "LOAD", self.source)
            return line.call(*command)

    def send(self, line: Line, keys: Sequence[Any], args: Sequence[Any], what: str) -> None:
        """Run without waiting for the reply (:meth:`Line.send`); idempotent scripts
        only, since a lost reply makes the line run it again.

        Sent as ``EVAL`` with the source, not ``EVALSHA``: a server that forgot the
        script (restarted) runs it anyway, instead of refusing it in a reply nobody
        may read for a while. The server caches it by SHA either way.
        """
        line.send(lambda again: self(again, keys, args), what,
                  "EVAL", self.source, len(keys), *keys, *args)

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
