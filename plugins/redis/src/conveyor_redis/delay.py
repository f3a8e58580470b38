"""Delayed delivery broker-side: a sorted set by due time, moved back by Lua.

A parked message is one member of the ``_conveyor.delayed`` sorted set (score = due
unix time): ``"<n>:<list key><envelope>"`` where ``n`` is the byte length of the list
key, so the member alone says where the message goes and what to push, and is unique
because every envelope carries a unique delivery tag.

Why a sorted set and not the worker's memory: a far-future task held unacked in a
worker trips the visibility timeout and runs twice (kombu#337). A parked message is
in no ``unacked`` entry at all, so no sweep — ours or a Celery worker's — can restore
it early. Moving due members back is one Lua script (:data:`MOVE_DUE`): members are
pushed and removed in the same atomic step, so whichever process runs it, each
message comes back exactly once. Due messages go to the *front* of their list (next
out), earliest due first, as a Celery worker would run an ETA task when it is due
rather than behind the backlog.
"""

from __future__ import annotations

from .scripts import Script

#: Lua: ``move_due(delayed, now, max)`` moves up to ``max`` due members back to their
#: lists and returns the next due score (or nil). Shared with the claim script.
MOVE_DUE_FN = """
local function move_due(delayed, now, max)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, max)
  for i = #due, 1, -1 do
    local m = due[i]
    local colon = string.find(m, ':', 1, true)
    local n = colon and tonumber(string.sub(m, 1, colon - 1))
    if n then
      redis.call('RPUSH', string.sub(m, colon + 1, colon + n), string.sub(m, colon + n + 1))
    end
  end
  if #due > 0 then redis.call('ZREM', delayed, unpack(due)) end
  local nxt = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  return nxt[2]
end
"""

#: KEYS: delayed. ARGV: now, max. Returns the next due score or nil.
MOVE_DUE = Script(MOVE_DUE_FN + "return move_due(KEYS[1], ARGV[1], tonumber(ARGV[2]))")

#: Park a delivered message, atomically with its ack. Only a delivery still leased
#: to us is parked (HDEL says so); one restored meanwhile is already back in its
#: queue, and parking it too would duplicate it. The delivery count is untouched:
#: a parked delivery never started, so it was never charged.
#: KEYS: unacked, unacked_index, delayed. ARGV: tag, member, due.
DEFER = Script("""
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return 1
""")


def member(list_key: str, raw: str | bytes) -> bytes:
    """The sorted-set member that parks ``raw`` for ``list_key``."""
    key = list_key.encode("utf-8")
    body = raw if isinstance(raw, bytes) else raw.encode("utf-8")
    return b"%d:%s%s" % (len(key), key, body)


def split(value: bytes) -> tuple[str, bytes]:
    """``(list key, envelope)`` of a parked member."""
    head, _, rest = value.partition(b":")
    n = int(head)
    return rest[:n].decode("utf-8"), rest[n:]

