"""RabbitMQ for Conveyor through pika: the ``amqp://``/``amqps://`` transports and the
``rpc://`` result backend, declared and shaped as Celery 5.7 does it.

pika logs every connection step at INFO; a worker started with ``-l INFO`` would
print them all, so its logger starts at WARNING unless the application set a level.
"""

import logging

from .backend import RpcBackend
from .transport import AmqpTransport, SecureAmqpTransport

if logging.getLogger("pika").level == logging.NOTSET:
    logging.getLogger("pika").setLevel(logging.WARNING)

__all__ = ["AmqpTransport", "RpcBackend", "SecureAmqpTransport"]
