"""The ``rpc://`` result backend: results sent back to the caller over RabbitMQ.

As Celery's ``rpc`` backend does it, so Celery clients and workers interoperate:

* the client names a reply queue in every task message (``reply_to``); it is
  durable, deleted when unused (``auto_delete``) and expires after
  ``result_expires`` without a consumer (``x-expires``), one per client process;
* a worker publishes each state of the task to the default exchange with the
  ``reply_to`` as routing key and the task id as ``correlation_id``; the body is the
  state document serialized with ``result_serializer`` (Celery's keys), sent
  transient (``delivery_mode`` 1);
* the client consumes its queue (auto-ack) and keeps the latest state per task.

What rpc cannot do: results live only in the caller's queue, so another process
cannot read them, they vanish when read, and there is no shared state to count a
chord's header down; a chord with this backend is an error naming backends that
can (``redis://``, ``sqlite://``).

It rides on the broker's connection settings: ``rpc://`` takes the ``amqp://`` or
``amqps://`` ``broker_url`` and its ``broker_transport_options``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

import pika
from conveyor.exceptions import ConfigurationError
from conveyor.utils import mask_url
from pika.spec import BasicProperties

from .connection import Backoff, open_connection, parameters, retrying
from .errors import CONNECTION_ERRORS, translate
from .transport import AmqpTransport

log = logging.getLogger("conveyor.amqp")

NO_CHORDS = (
    "The rpc:// result backend cannot join chords: results go only to the caller's "
    "reply queue, so no process can count the header's results down. Use a result "
    "backend with shared state, such as result_backend='redis://…' or "
    "'sqlite:///results.sqlite3'.")

#: How long a store keeps retrying through a broken connection.
_PATIENCE = 15.0
#: The longest slice a waiter holds the connection before letting others read.
_SLICE = 0.05


class RpcBackend:
    """Celery-compatible ``rpc://`` result backend (see the module docstring)."""

    def __init__(self, url: str = "rpc://", app: Any = None) -> None:
        if app is None:
            raise ConfigurationError("The rpc:// backend needs the app (its broker URL).")
        broker = str(app.broker_url)
        if not broker.lower().startswith("amqp"):
            raise ConfigurationError(
                f"The rpc:// result backend needs an amqp:// or amqps:// broker_url; "
                f"this app's is {mask_url(broker)!r}. Use another result_backend "
                "(redis://, sqlite://) with this broker.")
        self.app = app
        self.url = broker
        options = AmqpTransport.check_options(dict(app.conf.broker_transport_options))
        self.params = parameters(broker, options, app.conf.broker_connection_timeout)
        expires = app.conf.result_expires
        if hasattr(expires, "total_seconds"):
            expires = expires.total_seconds()
        self.expires_ms = int(float(expires) * 1000) if expires else None
        self._lock = threading.RLock()
        self._pid = 0
        self._latest: dict[str, bytes] = {}
        self._reader: pika.BlockingConnection | None = None
        self._writer: pika.BlockingConnection | None = None
        self._writer_lock = threading.Lock()
        self._queue = ""

    # ------------------------------------------------------------- the reply queue
    @property
    def reply_to(self) -> str:
        """This process's reply queue (declared and consumed on first use)."""
        with self._lock:
            self._reading()
            return self._queue

    def _reading(self) -> pika.BlockingConnection:
        """The consuming connection, (re)opened for this process."""
        if self._pid != os.getpid():  # a forked child starts afresh
            self._pid = os.getpid()
            self._reader = self._writer = None
            self._latest.clear()
            self._queue = str(uuid.uuid4())
        if self._reader is None or not self._reader.is_open:
            self._reader = None
            conn = open_connection(self.url, self.params, "opening the rpc reply queue")
            with translate(self.url, f"declaring reply queue {self._queue!r}"):
                ch = conn.channel()
                args = {"x-expires": self.expires_ms} if self.expires_ms else None
                ch.queue_declare(self._queue, durable=True, auto_delete=True,
                                 arguments=args)
                ch.basic_consume(self._queue, self._on_reply, auto_ack=True)
            self._reader = conn
        return self._reader

    def _on_reply(self, _ch: Any, _method: Any, props: BasicProperties, body: bytes) -> None:
        if props.correlation_id:
            self._latest[props.correlation_id] = body

    def _drain(self, timeout: float) -> None:
        def read() -> None:
            with translate(self.url, "reading results"):
                self._reading().process_data_events(time_limit=timeout)

        def reset() -> None:
            self._reader = None

        retrying(read, url=self.url, doing="reading results", patience=_PATIENCE,
                 on_error=reset)

    # ------------------------------------------------------------- Backend protocol
    def get(self, task_id: str) -> bytes | None:
        with self._lock:
            self._drain(0)
            return self._latest.get(task_id)

    def wait(self, task_id: str, *, timeout: float | None,
             previous: bytes | None) -> bytes | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                latest = self._latest.get(task_id)
                if latest is not None and latest != previous:
                    return latest
                left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
                if left <= 0:
                    return None
                self._drain(left)

    def store(self, task_id: str, state: str, payload: bytes, *,
              expires: float | None, reply_to: str | None = None,
              correlation_id: str | None = None) -> None:
        """Send ``payload`` to the caller's reply queue (none named: nobody waits)."""
        if not reply_to:
            return
        ser = self.app.codecs.serializer(self.app.conf.result_serializer)
        props = BasicProperties(content_type=ser.content_type,
                                content_encoding=ser.content_encoding,
                                delivery_mode=1, priority=0,
                                correlation_id=correlation_id or task_id)

        def send() -> None:
            with translate(self.url, "sending a result"):
                if self._writer is None or not self._writer.is_open:
                    self._writer = open_connection(self.url, self.params,
                                                   "sending a result")
                    self._wch = self._writer.channel()
                self._wch.basic_publish("", reply_to, payload, props)

        def reset() -> None:
            self._writer = None

        with self._writer_lock:
            retrying(send, url=self.url, doing="sending a result", patience=_PATIENCE,
                     on_error=reset)

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._latest.pop(task_id, None)

    def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None and conn.is_open:
                try:
                    conn.close()
                except CONNECTION_ERRORS:
                    pass
        self._reader = self._writer = None

    def chord_unsupported(self) -> ConfigurationError:
        return ConfigurationError(NO_CHORDS)


__all__ = ["RpcBackend", "NO_CHORDS", "Backoff"]
