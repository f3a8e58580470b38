"""The ``rpc://`` result backend: results sent back to the caller over RabbitMQ.

As Celery's ``rpc`` backend does it, so Celery clients and workers interoperate:

* the client names a reply queue in every task message (``reply_to``); it is
  durable, deleted when unused (``auto_delete``) and expires after
  ``result_expires`` without a consumer (``x-expires``), one per client process;
* a worker publishes each state of the task to the default exchange with the
  ``reply_to`` as routing key and the task id as ``correlation_id``; the body is the
  state document serialized with ``result_serializer`` (Celery's keys), transient
  (``delivery_mode`` 1). A state stored without a ``reply_to`` (no request: this
  process stored it) goes to this process's own queue;
* the client consumes its queue (auto-ack) and keeps the latest state per task; a
  ``SUCCESS`` is final, and a state expires ``result_expires`` after it arrived
  (sent as the message's ``expiration``, so an unread one expires in the queue too).

What rpc cannot do: results live only in the caller's process, so another process
cannot read them, and there is no shared state to count a chord's header down
(``BackendCapabilities.joins`` is off, so a chord is refused naming the backends
that can: ``redis://``, ``sqlite://``).

It rides on the broker's connection settings: ``rpc://`` takes the ``amqp://`` or
``amqps://`` ``broker_url`` and its ``broker_transport_options``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any, ClassVar

import pika
from conveyor.exceptions import ConfigurationError
from conveyor.interfaces import BackendCapabilities
from conveyor.utils import mask_url
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import BasicProperties

from .connection import open_connection, parameters, retrying
from .errors import CONNECTION_ERRORS, translate
from .transport import AmqpTransport

#: How long a store or a read keeps retrying through a broken connection.
_PATIENCE = 15.0
#: The longest slice a waiter holds the connection before letting others read.
_SLICE = 0.05


class RpcBackend:
    """Celery-compatible ``rpc://`` result backend (see the module docstring)."""

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities(replies=True)

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
        #: Both connections ask for no heartbeats (as Celery's client connections do
        #: not): nothing reads them between uses, and RabbitMQ closes a connection
        #: after two unanswered heartbeats. The reply queue's is read only while a
        #: result is awaited: closing it would delete the auto_delete reply queue and
        #: every result sent to it meanwhile, so a caller that reads its results
        #: minutes after sending would never get them. The writer's is used once a
        #: result: a worker idle for two heartbeats would find it closed at its next
        #: result, logged as a lost connection and sent again.
        self.params.heartbeat = 0
        expires = app.conf.result_expires
        if hasattr(expires, "total_seconds"):
            expires = expires.total_seconds()
        self.expires_ms = int(float(expires) * 1000) if expires else None
        #: Guards the reply connection (pika is not thread-safe); held while reading.
        self._lock = threading.RLock()
        #: Guards the states kept here, never held while waiting on the broker, so a
        #: state stored by another thread is not starved by a waiter's read loop.
        self._state = threading.Lock()
        self._pid = os.getpid()
        #: task id -> (payload, monotonic deadline or None, final)
        self._latest: dict[str, tuple[bytes, float | None, bool]] = {}
        self._reader: pika.BlockingConnection | None = None
        self._writer: BlockingChannel | None = None
        self._writer_lock = threading.Lock()
        self._queue = str(uuid.uuid4())

    # ------------------------------------------------------------- the reply queue
    @property
    def reply_to(self) -> str:
        """This process's reply queue, declared and consumed before it is named (so
        no result sent to it can be lost)."""
        with self._lock:
            self._read(0)
            return self._queue

    def _check_fork(self) -> None:
        """A forked child starts afresh: its own queue, no inherited connection."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._reader, self._writer = None, None
            with self._state:
                self._latest.clear()
            self._queue = str(uuid.uuid4())

    def _reading(self) -> pika.BlockingConnection:
        """The consuming connection, (re)opened for this process."""
        self._check_fork()
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
            ttl = int(props.expiration) / 1000 if props.expiration else None
            self._keep(props.correlation_id, body, ttl)

    def _keep(self, task_id: str, payload: bytes, ttl: float | None) -> None:
        final = self._succeeded(payload)
        deadline = time.monotonic() + ttl if ttl else None
        with self._state:
            held = self._latest.get(task_id)
            if held is not None and held[2] and not self._lapsed(held):
                return  # a SUCCESS is final
            self._latest[task_id] = (payload, deadline, final)

    def _succeeded(self, body: bytes) -> bool:
        try:
            return bool(self.app.results.load(body).get("status") == "SUCCESS")
        except Exception:  # noqa: BLE001 - an undecodable state is simply not final
            return False

    @staticmethod
    def _lapsed(held: tuple[bytes, float | None, bool]) -> bool:
        return held[1] is not None and time.monotonic() >= held[1]

    def _read(self, timeout: float) -> None:
        def read() -> None:
            with translate(self.url, "reading results"):
                self._reading().process_data_events(time_limit=timeout)

        def reset() -> None:
            self._reader = None

        retrying(read, url=self.url, doing="reading results", patience=_PATIENCE,
                 on_error=reset)

    def _current(self, task_id: str) -> bytes | None:
        with self._state:
            held = self._latest.get(task_id)
            if held is None:
                return None
            if self._lapsed(held):
                del self._latest[task_id]
                return None
            return held[0]

    # ------------------------------------------------------------- Backend protocol
    def get(self, task_id: str) -> bytes | None:
        with self._lock:
            self._read(0)
        return self._current(task_id)

    def wait(self, task_id: str, *, timeout: float | None,
             previous: bytes | None) -> bytes | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            latest = self._current(task_id)
            if latest is not None and latest != previous:
                return latest
            left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            if left <= 0:
                return None
            with self._lock:
                self._read(left)

    def store(self, task_id: str, state: str, payload: bytes, *,
              expires: float | None, reply_to: str | None = None) -> None:
        """Send ``payload`` to ``reply_to`` (the request's); a state for this
        process (no ``reply_to``, or our own queue) is kept here at once."""
        if self._pid != os.getpid():  # not the reader's lock otherwise: see _state
            with self._lock:
                self._check_fork()
        if not reply_to or reply_to == self._queue:
            self._keep(task_id, payload, expires)
            return
        destination = reply_to
        ser = self.app.codecs.serializer(self.app.conf.result_serializer)
        props = BasicProperties(
            content_type=ser.content_type, content_encoding=ser.content_encoding,
            delivery_mode=1, priority=0, correlation_id=task_id,
            expiration=str(int(expires * 1000)) if expires else None)

        def send() -> None:
            with translate(self.url, "sending a result"):
                if self._writer is None or not self._writer.is_open:
                    conn = open_connection(self.url, self.params, "sending a result")
                    self._writer = conn.channel()
                self._writer.basic_publish("", destination, payload, props)

        def reset() -> None:
            self._writer = None

        with self._writer_lock:
            retrying(send, url=self.url, doing="sending a result", patience=_PATIENCE,
                     on_error=reset)

    def forget(self, task_id: str) -> None:
        with self._state:
            self._latest.pop(task_id, None)

    def close(self) -> None:
        writer, self._writer = self._writer, None
        reader, self._reader = self._reader, None
        for conn in (reader, writer.connection if writer is not None else None):
            if conn is not None and conn.is_open:
                try:
                    conn.close()
                except CONNECTION_ERRORS:
                    pass


__all__ = ["RpcBackend"]
