"""Celery's task and worker events, sent by Conveyor workers and clients.

With ``worker_send_task_events`` (``conveyor worker -E``) a worker broadcasts
``worker-online``, a ``worker-heartbeat`` every 2 s, ``task-received``,
``task-started``, ``task-succeeded``, ``task-failed``, ``task-retried``,
``task-revoked`` and ``worker-offline``; with ``task_send_sent_event`` a client
broadcasts ``task-sent`` for each task it publishes. They carry Celery's fields
and go to Celery's ``celeryev`` exchange with Celery's routing keys, so Flower and
``conveyor monitor`` show Conveyor workers beside Celery ones. Events are lossy by
design, as Celery's: a broker that is down loses them, never the tasks.

:mod:`.dispatcher` sends (one background thread per process); :mod:`.plugin` turns
the worker's and publisher's hooks into events.
"""

from __future__ import annotations

from .plugin import enable, enable_on, wanted

__all__ = ["enable", "enable_on", "wanted"]
