"""Per-queue statistics for ``conveyor inspect queues``, read in one atomic script.

A queue's messages live in four places (:mod:`.transport`): its priority step lists
(waiting), the db-wide ``_conveyor.delayed`` sorted set (parked, member prefixed by
the target list key), the db-wide ``unacked`` hash (leased, each entry ending with
the routing key it was taken for) and its dead-letter hash. The two db-wide keys are
walked server-side, so the cost grows with what is parked and leased in the whole
database: fine for an operator's command, not for a hot path.

Redis lists keep no arrival time, so ``oldest_age`` is always ``None`` here.
"""

from __future__ import annotations

import json
from typing import Any

from conveyor.interfaces import QueueStats

from .layout import MAX_WIRE, Layout
from .scripts import Script

#: KEYS: delayed, unacked, dead hash, then the queue's step lists.
#: ARGV: the unacked entry suffix, then one parked-member prefix per step list.
#: Returns {parked count, next due score or false, leased count, dead count, llen...}.
STATS = Script("""
local parked, first = 0, false
local scored = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #scored, 2 do
  local m = scored[i]
  for j = 2, #ARGV do
    if string.sub(m, 1, #ARGV[j]) == ARGV[j] then
      parked = parked + 1
      if not first then first = scored[i + 1] end
      break
    end
  end
end
local leased, tail = 0, ARGV[1]
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do
  if string.sub(v, -#tail) == tail then leased = leased + 1 end
end
local out = {parked, first, leased, redis.call('HLEN', KEYS[3])}
for i = 4, #KEYS do out[#out + 1] = redis.call('LLEN', KEYS[i]) end
return out
""")


def read(client: Any, layout: Layout, queue: str) -> QueueStats:
    """The :class:`QueueStats` of ``queue``; ``client`` is a redis-py client or Line.

    Waiting counts are keyed by the lowest Conveyor priority of each step: with the
    default steps ``[0, 3, 6, 9]`` priorities 7–9 are counted under 7, 4–6 under 4,
    1–3 under 1 and 0 (or none) under 0.
    """
    lists = layout.lists(queue)
    bounds = [*layout.steps[1:], MAX_WIRE + 1]
    prefixes = [b"%d:%s" % (len(k.encode("utf-8")), k.encode("utf-8")) for k in lists]
    suffix = f", {json.dumps(queue)}]"
    parked, first, leased, dead, *lengths = STATS(
        client, [layout.delayed, layout.unacked, layout.dead(queue), *lists],
        [suffix, *prefixes])
    waiting = {MAX_WIRE - (top - 1): int(n) for top, n in zip(bounds, lengths) if n}
    return QueueStats(queue, waiting, int(parked), float(first) if first else None,
                      int(leased), int(dead), None)
