"""Dead letters kept durably in Redis: one hash per queue, one JSON record per message.

``_conveyor.dead.<queue>`` maps an id (the message's delivery tag) to
``{"id", "queue", "reason", "time", "envelope"}`` where ``envelope`` is the original
kombu envelope spliced in verbatim (so a requeue pushes back exactly what arrived),
or ``"raw"`` with the text when what arrived was not JSON. The set ``_conveyor.dead``
names the queues that have any, so listing never needs ``SCAN``.

Moving a delivery here is one Lua script together with its ack; requeueing one back
is one Lua script per record that deletes it and pushes it in the same step, so a
dead letter is requeued at most once even when two operators race.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis
from conveyor.interfaces import DeadLetter

from .envelope import decode
from .layout import Layout, to_wire
from .scripts import Script

#: KEYS: unacked, unacked_index, deliveries, dead hash, dead queue set.
#: ARGV: tag, id, record, queue. A delivery no longer leased to us was restored to
#: its queue meanwhile; dead-lettering it too would duplicate it, so it is left alone.
DEAD = Script("""
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[5], ARGV[4])
return 1
""")

#: KEYS: dead hash, dead queue set, target list, deliveries. ARGV: id, raw, queue.
#: The delivery count starts again: a requeued dead letter gets its full quota.
REQUEUE = Script("""
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[3]) end
return 1
""")


def record(dead_id: str, queue: str, reason: str, when: float, raw: bytes) -> bytes:
    """The stored JSON record for a dead letter."""
    head = json.dumps({"id": dead_id, "queue": queue, "reason": reason, "time": when})
    try:
        json.loads(raw)
        tail = b', "envelope": ' + raw + b"}"
    except ValueError:
        text = raw.decode("utf-8", "replace")
        tail = b', "raw": ' + json.dumps(text).encode("ascii") + b"}"
    return head[:-1].encode("utf-8") + tail


def parse(value: bytes) -> tuple[DeadLetter, bytes]:
    """The DeadLetter in a stored record and the envelope text to push back."""
    data = json.loads(value)
    if "envelope" in data:
        raw = json.dumps(data["envelope"]).encode("utf-8")
    else:
        raw = str(data.get("raw", "")).encode("utf-8")
    return DeadLetter(str(data["id"]), data["queue"], data.get("reason", ""),
                      float(data.get("time", 0)), decode(raw).message), raw


def load(client: redis.Redis, layout: Layout,
         queue: str | None = None) -> list[tuple[DeadLetter, bytes]]:
    """Every dead letter (of ``queue``), oldest first, with its envelope text."""
    if queue is None:
        members: Any = client.smembers(layout.dead_queues)
        queues = sorted(q.decode("utf-8") for q in members)
    else:
        queues = [queue]
    if not queues:
        return []
    pipe = client.pipeline(transaction=False)
    for q in queues:
        pipe.hvals(layout.dead(q))
    found: list[tuple[DeadLetter, bytes]] = []
    for values in pipe.execute():
        for value in values:
            try:
                found.append(parse(value))
            except (ValueError, KeyError, TypeError):
                continue  # a foreign or damaged record: leave it, list the rest
    found.sort(key=lambda item: item[0].time)
    return found


def chosen(items: Sequence[tuple[DeadLetter, bytes]], ids: Sequence[str] | None,
           queue: str | None) -> list[tuple[DeadLetter, bytes]]:
    wanted: Any = set(ids) if ids is not None else None
    return [(d, raw) for d, raw in items
            if (wanted is None or d.id in wanted) and (queue is None or d.queue == queue)]


def requeue(client: redis.Redis, layout: Layout, ids: Sequence[str] | None,
            queue: str | None) -> int:
    """Put chosen dead letters back on their queue's list; how many moved."""
    count = 0
    for d, raw in chosen(load(client, layout, queue), ids, queue):
        p = d.message.priority  # None only for garbage: the base list
        target = layout.list_for(d.queue, 0 if p is None else to_wire(p))
        count += REQUEUE(client, [layout.dead(d.queue), layout.dead_queues, target,
                                  layout.deliveries], [d.id, raw, d.queue])
    return count


def purge(client: redis.Redis, layout: Layout, queue: str | None) -> int:
    """Delete the dead letters (of ``queue``); how many."""
    if queue is None:
        members: Any = client.smembers(layout.dead_queues)
        queues = [q.decode("utf-8") for q in members]
    else:
        queues = [queue]
    if not queues:
        return 0
    pipe = client.pipeline(transaction=True)
    for q in queues:
        pipe.hlen(layout.dead(q))
        pipe.delete(layout.dead(q))
        pipe.srem(layout.dead_queues, q)
    return sum(pipe.execute()[0::3])
