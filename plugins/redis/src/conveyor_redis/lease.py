"""Leases: taking messages with kombu's unacked bookkeeping, giving them back, sweeping.

kombu emulates acknowledgements with two db-wide keys (docs/architecture.md,
"Redis broker", leases): the hash ``unacked`` (delivery tag → JSON ``[envelope, exchange, routing_key]``) and the sorted
set ``unacked_index`` (delivery tag → unix time of delivery). A Celery worker's sweep
restores any entry older than its ``visibility_timeout``, and ours restores theirs, so
both sides must write exactly these entries. Conveyor records ``exchange`` ``""`` and
the queue it took the message from as routing key, which sends a restored message
back to that very queue on either side (kombu would otherwise re-route a topic
message through its bindings to every matching queue).

Unlike kombu, taking is atomic: :data:`CLAIM` pops up to ``limit`` messages in
priority order *and* records them in one Lua script, so a crash can never lose a
popped message. It also moves due parked messages first, and reads each message's
delivery count from the ``_conveyor.deliveries`` hash (tag → deliveries that started)
to give ``Delivery.deliveries`` (those plus this one). A delivery is charged there only
when its task starts (:data:`STARTED`), as on SQLite: a message that merely waited in
a dead worker's prefetch is not charged for a run it never had.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Any

import redis

from .connection import Line, pack_many
from .delay import MOVE_DUE_FN
from .layout import Layout, clamp_wire
from .scripts import Script

#: KEYS: unacked, unacked_index, deliveries, delayed, then the poll-order list keys.
#: ARGV: now, limit, max moved, pre-popped key index (0: none), pre-popped envelope,
#: then one JSON-quoted queue name per list key.
#: Returns {{key index, envelope, delivery count, tag, ...}, next due score or nil}.
CLAIM = Script(MOVE_DUE_FN + r"""
local now, limit = ARGV[1], tonumber(ARGV[2])
-- perf: the earliest parked member first; nothing due (the common case) is one call
local nxt = redis.call('ZRANGE', KEYS[4], '0', '0', 'WITHSCORES')[2]
if nxt and tonumber(nxt) <= tonumber(now) then
  nxt = move_due(KEYS[4], now, tonumber(ARGV[3]))
end
local out, n, tags, leases, scores = {}, 0, {}, {}, {}
local function claim(raw, i)
  local qjson = ARGV[5 + i]
  -- perf: kombu and Conveyor write the tag last; look only near the end
  local at = string.find(raw, '"delivery_tag": "', -120, true)
  local tag = at and string.match(raw, '^([^"\\]+)"}}%s*$', at + 17)
  local record
  if tag then
    record = '[' .. raw .. ', "", ' .. qjson .. ']'
  else
    local ok, env = pcall(cjson.decode, raw)
    if ok and type(env) == 'table' and type(env.properties) == 'table'
        and type(env.properties.delivery_tag) == 'string' then
      tag = env.properties.delivery_tag
      record = '[' .. raw .. ', "", ' .. qjson .. ']'
    else
      -- no usable tag: a deterministic one keeps the delivery count meaningful
      tag = 'conveyor-' .. redis.sha1hex(raw)
      record = cjson.encode({raw, '', cjson.decode(qjson)})
    end
  end
  local m = #tags + 1
  tags[m], leases[2 * m - 1], leases[2 * m] = tag, tag, record
  scores[2 * m - 1], scores[2 * m] = now, tag
  out[n + 1], out[n + 2], out[n + 4] = i, raw, tag
  n = n + 4
end
local pre = tonumber(ARGV[4])
if pre > 0 then claim(ARGV[5], pre) end
-- perf: Conveyor's messages sent without a priority sit in the last list (wire
-- priority 9); one EXISTS on the lists before it, when they are all empty, spares
-- an RPOP each (callgrind on Redis, a claim of 4: 313k -> 307k instructions)
local from = 1
if n == 0 and #KEYS > 5 and redis.call('EXISTS', unpack(KEYS, 5, #KEYS - 1)) == 0 then
  from = #KEYS - 4
end
for i = from, #KEYS - 4 do
  local want = limit - n / 4
  if want <= 0 then break end
  local items = redis.call('RPOP', KEYS[4 + i], n == 0 and ARGV[2] or want)
  if items then
    for _, raw in ipairs(items) do claim(raw, i) end
  end
end
-- perf: one HSET, ZADD and HMGET for the batch (in chunks unpack can hold), not
-- three calls a message
for j = 1, #tags, 1000 do
  local k = math.min(j + 999, #tags)
  redis.call('HSET', KEYS[1], unpack(leases, 2 * j - 1, 2 * k))
  redis.call('ZADD', KEYS[2], unpack(scores, 2 * j - 1, 2 * k))
  local counts = redis.call('HMGET', KEYS[3], unpack(tags, j, k))
  for x = j, k do out[4 * x - 1] = (tonumber(counts[x - j + 1]) or 0) + 1 end
end
return {out, nxt}
""")

#: Settle for good: drop the leases and delivery counts of tags, in one reply (what
#: :func:`send_ack` does, run again by it where a reply was lost or refused).
#: KEYS: unacked, unacked_index, deliveries. ARGV: delivery tags.
ACK = Script("""
for i = 1, #ARGV, 4000 do
  local j = math.min(i + 3999, #ARGV)
  redis.call('ZREM', KEYS[2], unpack(ARGV, i, j))
  redis.call('HDEL', KEYS[1], unpack(ARGV, i, j))
  redis.call('HDEL', KEYS[3], unpack(ARGV, i, j))
end
return #ARGV
""")


def send_ack(line: Line, keys: Sequence[str], tags: Sequence[str], what: str) -> None:
    """Settle ``tags`` for good (what :data:`ACK` does) as three plain commands written
    at once, their replies read with the line's next command (:meth:`.Line.send`).

    perf: the same deletes run by a script cost Redis the call's setup and a Lua
    conversion of every argument and reply: an ack of 2, callgrind on the server
    (I/O included): 40.5k instructions as ``FCALL`` against 21.2k as ``HDEL``,
    ``ZREM``, ``HDEL`` (27.9k inside ``MULTI``/``EXEC``).

    Not one transaction, and need not be: each delete is idempotent, and the record
    goes first, so a connection lost between two leaves at worst an index entry
    without a record, which any sweep (ours or kombu's) drops, and the tag's delivery
    count, which nothing reads again (a few bytes, only if the process died then);
    every reply not confirmed runs :data:`ACK` again on the next use of the line (or
    the next line), through :meth:`.Line.send_packed`.
    """
    line.send_packed(lambda again: ACK(again, keys, tags), what,
                     pack_many(ack_commands(keys, tags)), 3)


def ack_commands(keys: Sequence[str], tags: Sequence[str]) -> list[tuple[str, ...]]:
    """The three deletes of :func:`send_ack`, record first (see there)."""
    unacked, index, deliveries = keys
    return [("HDEL", unacked, *tags), ("ZREM", index, *tags), ("HDEL", deliveries, *tags)]


#: Charge started deliveries: the count becomes the delivery's own number (what
#: CLAIM reported), never lower, and only while it is still leased, so running it
#: again after a lost reply charges nothing twice and a lease that lapsed and was
#: settled elsewhere leaves no count behind.
#: KEYS: unacked, deliveries. ARGV: tag, count, tag, count, …
STARTED = Script("""
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1
      and (tonumber(redis.call('HGET', KEYS[2], ARGV[i])) or 0) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
return 1
""")

#: :data:`ACK` and :data:`STARTED` in one call: the processes pool acks the jobs its
#: children began while it charges the ones it hands them (one round trip, and no
#: wait for the ack's reply before the charge is written). Idempotent, as both are.
#: KEYS: unacked, unacked_index, deliveries. ARGV: number of tags to ack, those tags,
#: then tag, count, tag, count, … to charge.
ACK_STARTED = Script("""
local acks = tonumber(ARGV[1])
for i = acks + 2, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1
      and (tonumber(redis.call('HGET', KEYS[3], ARGV[i])) or 0) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  end
end
for i = 2, acks + 1, 4000 do
  local j = math.min(i + 3999, acks + 1)
  redis.call('ZREM', KEYS[2], unpack(ARGV, i, j))
  redis.call('HDEL', KEYS[1], unpack(ARGV, i, j))
  redis.call('HDEL', KEYS[3], unpack(ARGV, i, j))
end
return 1
""")

#: Renew the leases a claim sent ahead took, read late (the task it was sent with
#: ran long): only those still scored as that claim left them. One that lapsed and
#: was restored meanwhile (and maybe taken by another worker) is not ours any more;
#: renewed here, a sweep that read it before cannot restore it (RESTORE compares).
#: KEYS: unacked_index. ARGV: the claim's score, the new score, tags… Returns the
#: tags renewed.
RENEW_CLAIMED = Script("""
local kept = {}
local at = tonumber(ARGV[1])
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == at then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
    kept[#kept + 1] = ARGV[i]
  end
end
return kept
""")

#: Give a leased message back to a list, only if still leased to us. Its count is
#: left as it is: a delivery that started was charged then, one that did not never is.
#: KEYS: unacked, unacked_index, list. ARGV: tag, envelope, "L" (end of the line) or
#: "R" (next out).
GIVE_BACK = Script("""
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[3] == 'R' then
  redis.call('RPUSH', KEYS[3], ARGV[2])
else
  redis.call('LPUSH', KEYS[3], ARGV[2])
end
return 1
""")

#: Push back a message whose claim reply was lost, dropping its lease if the claim
#: did run. KEYS: unacked, unacked_index, list. ARGV: tag, envelope.
RETURN_ORPHAN = Script("""
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
""")

#: Restore an overdue entry, compare-and-swap: only if the record is still the one
#: read and its lease was not renewed meanwhile. KEYS: unacked, unacked_index,
#: target lists… ARGV: tag, record as read, ceiling score, envelope to push.
RESTORE = Script("""
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[3]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
for i = 3, #KEYS do redis.call('RPUSH', KEYS[i], ARGV[4]) end
return 1
""")


def lookup(client: redis.Redis, layout: Layout, exchange: str, routing_key: str) -> list[str]:
    """The queues a restored message goes to, as kombu's ``_lookup`` finds them.

    The anonymous exchange names the queue directly; a named one is resolved through
    ``_kombu.binding.<exchange>`` (an empty pattern is a direct binding, a non-empty
    one a topic regex). Nothing bound: the routing key, rather than losing it.
    """
    if not exchange:
        return [routing_key]
    found: list[str] = []
    members: Any = client.smembers(layout.binding(exchange))
    for member in members:
        parts = member.decode("utf-8").split(layout.sep, 2)
        if len(parts) != 3:
            continue
        key, pattern, queue = parts
        try:
            hit = re.match(pattern, routing_key) if pattern else key == routing_key
        except re.error:
            hit = False
        if hit and queue not in found:
            found.append(queue)
    return found or [routing_key]


def restore_entry(client: redis.Redis, layout: Layout, tag: bytes, value: bytes,
                  ceiling: float) -> bool:
    """Put one overdue ``unacked`` entry back on its queue(s), marked redelivered."""
    try:
        envelope, exchange, routing_key = json.loads(value)
    except (ValueError, TypeError):
        envelope = None
    if not isinstance(envelope, dict):
        # Not a kombu envelope (or ours for a garbage message): push the text back as
        # it came, so the worker that takes it dead-letters it with a reason.
        raw = envelope if isinstance(envelope, str) else None
        if raw is None:
            return bool(RESTORE(client, [layout.unacked, layout.unacked_index],
                                [tag, value, ceiling, b""]))
        payload, wire = raw, None
        queues = [routing_key] if isinstance(routing_key, str) and routing_key else []
    else:
        props = envelope.get("properties")
        props = props if isinstance(props, dict) else {}
        headers, info = envelope.get("headers"), props.get("delivery_info")
        if isinstance(headers, dict) and isinstance(info, dict):
            headers["redelivered"] = info["redelivered"] = True  # as kombu marks it
        payload, wire = json.dumps(envelope), props.get("priority")
        queues = lookup(client, layout, str(exchange or ""), str(routing_key or ""))
    targets = [layout.list_for(q, clamp_wire(wire)) for q in queues]
    return bool(RESTORE(client, [layout.unacked, layout.unacked_index, *targets],
                        [tag, value, ceiling, payload]))


def sweep(client: redis.Redis, layout: Layout, visibility_timeout: float,
          batch: int = 100, rounds: int = 10) -> int:
    """Restore deliveries leased longer than ``visibility_timeout``; how many."""
    ceiling = time.time() - visibility_timeout
    restored = 0
    for _ in range(rounds):
        tags: Any = client.zrangebyscore(layout.unacked_index, "-inf", ceiling,
                                         start=0, num=batch)
        if not tags:
            break
        values: Any = client.hmget(layout.unacked, tags)
        for tag, value in zip(tags, values):
            if value is None:  # index entry without a record: drop it, as kombu does
                client.zrem(layout.unacked_index, tag)
            elif restore_entry(client, layout, tag, value, ceiling):
                restored += 1
        if len(tags) < batch:
            break
    return restored


def give_back_claim(client: redis.Redis, layout: Layout, at: float) -> int:
    """Restore what the :data:`CLAIM` called with time ``at`` leased; how many.

    For a claim whose reply was lost: its leases are scored ``at``, and nobody
    holds them. Each is restored as :func:`sweep` restores a lapsed lease (only if
    still scored ``at``: not renewed since, not settled), so it is taken again now
    rather than when the visibility timeout runs out. Another process's claim made
    at the very same microsecond would have its leases given back too: its tasks
    then run again, as after a lapsed lease.
    """
    tags: Any = client.zrangebyscore(layout.unacked_index, at, at)
    if not tags:
        return 0
    values: Any = client.hmget(layout.unacked, tags)
    return sum(1 for tag, value in zip(tags, values)
               if value is not None and restore_entry(client, layout, tag, value, at))


def parse_claimed(reply: Sequence[Any]) -> tuple[list[Any], float | None]:
    """The flat claim list and the next due time from a :data:`CLAIM` reply."""
    out = reply[0] if reply else []
    nxt = reply[1] if len(reply) > 1 else None  # a Lua nil ends the reply early
    return out or [], float(nxt) if nxt is not None else None
