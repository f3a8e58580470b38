"""Lua scripts run by SHA, reloaded when the server forgot them (after a restart).

A script runs on a redis-py client or on a held :class:`~.connection.Line` (the hot
paths). redis-py's ``register_script`` would do for the client, but not for a Line.

A script sent ahead (:meth:`Script.send`: charges, result writes) runs as a Redis 7
function (``FCALL``) on a connection it was loaded on, else as ``EVAL`` with its
source; never as ``EVALSHA``, whose refusal after a ``SCRIPT FLUSH`` would be read
only later, after the caller went on (an ``acks_late`` ack would then land before
the result it follows). A function is loaded on each connection before its first
use there, in a round trip of its own, and forgotten when the connection reconnects
(a restarted server holds none); ``SCRIPT FLUSH`` does not remove functions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from .connection import CONNECTION_ERRORS, Line


class _Functions:
    """The scripts loaded as functions on one redis-py connection, forgotten when it
    reconnects (:meth:`reset` is its connect callback: the server may be a restarted
    or another one). ``supported`` is False where ``FUNCTION LOAD`` was refused."""

    __slots__ = ("loaded", "supported", "__weakref__")

    def __init__(self) -> None:
        self.loaded: set[str] = set()
        self.supported = True

    def reset(self, _connection: Any = None) -> None:
        self.loaded.clear()
        self.supported = True


def _functions(connection: Any) -> _Functions:
    """The :class:`_Functions` of ``connection``, made and hooked on first use."""
    found: _Functions | None = getattr(connection, "conveyor_functions", None)
    if found is None:
        found = connection.conveyor_functions = _Functions()
        connection.register_connect_callback(found.reset)  # kept weakly: held above
    return found


class Script:
    """One Lua script: ``script(client, keys, args)`` runs it atomically."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
        #: The name it has as a Redis function, alone in a library of that name (two
        #: versions of a script never share a name, nor does a name change meaning).
        self.function = "conveyor_" + self.sha
        self.library = (f"#!lua name={self.function}\n"
                        f"redis.register_function('{self.function}', function(KEYS, ARGV)\n"
                        f"{source}\nend)")
        self._fcall = ("FCALL", self.function)
        self._eval = ("EVAL", self.source)

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

        Sent as ``FCALL`` where the line's connection holds the script as a function,
        else as ``EVAL`` with the source; not as ``EVALSHA`` (see the module
        docstring): a server that forgot the script runs it anyway, instead of
        refusing it in a reply nobody may read for a while.

        perf: the server hashes an ``EVAL``'s source on every call; for the result
        write's 1.4 KB, with the ack's, 37k of the 216k instructions Redis spends a
        task (solo consumer's claim, result write and ack, callgrind on the server):
        216k -> 175k with ``FCALL``.
        """
        line.send(lambda again: self._again(again, keys, args), what,
                  *self.head(line), len(keys), *keys, *args)

    def head(self, line: Line) -> tuple[str, ...]:
        """How a send on ``line`` calls the script: ``("FCALL", name)`` where its
        connection holds it as a function (loaded first if it may), else ``("EVAL",
        source)``."""
        held: _Functions | None = getattr(line.conn, "conveyor_functions", None)
        # perf: the common case (loaded here already) without a call
        if (held is not None and self.sha in held.loaded) or self._held_by(line):
            return self._fcall
        return self._eval

    def _held_by(self, line: Line) -> bool:
        """Whether the line's connection holds this script as a function, loading it
        there first if it may (one round trip a connection)."""
        try:
            held = _functions(line.connection())
        except CONNECTION_ERRORS:  # the send reconnects, or owes the command
            return False
        if self.sha in held.loaded or not held.supported:
            return held.supported
        try:
            line.call("FUNCTION", "LOAD", "REPLACE", self.library)
        except redis.ResponseError:  # before Redis 7, or not allowed (ACL, replica)
            held.supported = False
            return False
        except CONNECTION_ERRORS:  # the send reconnects, or owes the command
            return False
        held.loaded.add(self.sha)
        return True

    def _again(self, line: Line, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run again what a send did not confirm, by SHA; a function the server no
        longer holds (``FUNCTION FLUSH``) is loaded again before its next send."""
        held: _Functions | None = getattr(line.conn, "conveyor_functions", None)
        if held is not None:
            held.loaded.discard(self.sha)
        return self(line, keys, args)

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
