"""Remote control over Celery's broadcast protocol (kombu's pidbox).

:mod:`.exchanges` names the exchanges Celery uses for control and events, declared
as Celery declares them, for transports with ``Capabilities.broadcast``.
"""
