"""Conveyor's Redis transport and result backend, kombu/Celery-compatible.

Entry points: transports ``redis`` and ``rediss`` (``redis+socket://`` resolves to
``redis``), backends ``redis`` and ``rediss``. Modules:

* :mod:`.transport` — the transport (settle, dead letters, depth), with
  :mod:`.channel` (publishing) and :mod:`.consumer` (fetching) as its mixins;
* :mod:`.envelope` — kombu's JSON envelope; :mod:`.layout` — key names, priorities;
* :mod:`.lease` — taking messages with kombu's unacked bookkeeping, the sweep;
* :mod:`.delay` — parked (delayed) messages; :mod:`.deadletter` — dead letters;
* :mod:`.backend` — Celery's result keys; :mod:`.connection`, :mod:`.errors`.
"""

from .backend import RedisBackend, SecureRedisBackend
from .transport import RedisTransport, SecureRedisTransport

__all__ = ["RedisTransport", "SecureRedisTransport", "RedisBackend", "SecureRedisBackend"]
