"""Group joins in Celery's keys, so a Celery worker and a Conveyor worker share one.

For group ``g`` (Celery's group key is ``celery-taskset-meta-g``):

* ``….j`` — sorted set of the members' encoded results, scored by group index
  (``+inf`` without one), as Celery writes it with ``result_chord_ordered`` (its
  default);
* ``….d`` — set of ``task_id:index`` already counted, so a redelivered member is not
  counted twice;
* ``….s`` — how many members the join waits for; ``….t`` — Celery's correction to
  it for nested groups (added to ``.s`` when present);
* ``….c`` — the claim of whoever completed the join (``SET NX EX``), then ``done``
  once the join is finished, so a late duplicate changes nothing.

Each step is one Lua script (atomic on the server); keys expire ``expires`` seconds
after the last member came in.
"""

from __future__ import annotations

import uuid
from typing import Any

from conveyor.interfaces import Join

from .connection import Lines
from .errors import translate
from .scripts import Script

GROUP_PREFIX = "celery-taskset-meta-"
_SUFFIXES = (".j", ".t", ".s", ".d", ".c")

#: KEYS: j t s d c. ARGV: member, payload, score, expires (s, 0 = never), claim
#: seconds, claim token. Returns {done, size or -1, claimed 0/1}; {-1, -1, 0} once
#: the join is finished.
ADD = Script("""
if redis.call('GET', KEYS[5]) == 'done' then return {-1, -1, 0} end
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 0 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('SADD', KEYS[4], ARGV[1])
end
local done = redis.call('ZCARD', KEYS[1])
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
end
local size = redis.call('GET', KEYS[3])
if not size then return {done, -1, 0} end
size = tonumber(size) + tonumber(redis.call('GET', KEYS[2]) or '0')
local claimed = 0
if done == size and redis.call('SET', KEYS[5], ARGV[6], 'NX', 'EX', ARGV[5]) then
  claimed = 1
end
return {done, size, claimed}
""")

#: KEYS: j t s d c. ARGV: claim token, seconds to remember "done". 1 when finished.
FINISH = Script("""
if redis.call('GET', KEYS[5]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[5], 'done', 'EX', ARGV[2])
else
  redis.call('SET', KEYS[5], 'done')
end
return 1
""")


def keys(group_id: str) -> list[str]:
    """``.j .t .s .d .c`` of a group, in the scripts' KEYS order."""
    base = GROUP_PREFIX + group_id
    return [base + suffix for suffix in _SUFFIXES]


def _seconds(expires: float | None) -> int:
    """Whole seconds for EXPIRE (at least 1), 0 for never."""
    return max(1, round(float(expires))) if expires else 0


class JoinsMixin:
    """The :class:`~conveyor.interfaces.JoinBackend` methods of the Redis backend."""

    url: str
    _lines: Lines

    def _run(self, doing: str, script: Script | None, group_id: str, *args: Any) -> Any:
        line = self._lines.take()
        try:
            with translate(self.url, f"{doing} of group {group_id}"):
                if script is None:
                    return line.call(*args)
                return script(line, keys(group_id), args)
        finally:
            self._lines.give(line)

    def join_size(self, group_id: str, size: int, *, expires: float | None) -> None:
        j, _t, s, _d, c = keys(group_id)
        ttl = _seconds(expires)
        line = self._lines.take()
        try:
            with translate(self.url, f"setting the join size of group {group_id}"):
                line.call("DEL", c)
                if ttl:
                    line.call("SET", s, int(size), "EX", ttl)
                else:
                    line.call("SET", s, int(size))
        finally:
            self._lines.give(line)

    def join_add(self, group_id: str, task_id: str, index: int | None, payload: bytes, *,
                 expires: float | None, claim_for: float) -> Join:
        score = "+inf" if index is None else str(int(index))
        token = uuid.uuid4().hex
        done, size, claimed = self._run(
            "joining a member", ADD, group_id, f"{task_id}:{score}", payload, score,
            _seconds(expires), max(1, round(claim_for)), token)
        if done < 0:
            return Join(-1, None, None)
        return Join(int(done), None if size < 0 else int(size), token if claimed else None)

    def join_results(self, group_id: str) -> list[bytes]:
        found: list[bytes] = self._run("reading the join", None, group_id,
                                       "ZRANGE", keys(group_id)[0], 0, -1)
        return found

    def join_finish(self, group_id: str, claim: str, *, expires: float | None) -> bool:
        return bool(self._run("finishing the join", FINISH, group_id, claim,
                              _seconds(expires)))
