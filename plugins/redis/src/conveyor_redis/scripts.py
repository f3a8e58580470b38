"""Lua scripts run by SHA, reloaded when the server forgot them (after a restart).

redis-py's ``register_script`` would do for single calls, but in a pipeline it adds a
``SCRIPT EXISTS`` round trip per execute; this runner keeps one round trip and lets
pipelines use ``EVALSHA`` after :meth:`Script.ensure` loaded it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError


class Script:
    """One Lua script: ``script(client, keys, args)`` runs it atomically."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    def __call__(self, client: redis.Redis, keys: Sequence[Any],
                 args: Sequence[Any] = ()) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    def queue(self, pipe: Any, keys: Sequence[Any], args: Sequence[Any] = ()) -> None:
        """Add a call to a pipeline (load it first with :meth:`ensure`)."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    def ensure(self, client: redis.Redis) -> None:
        client.script_load(self.source)
