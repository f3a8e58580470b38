"""Turn pika's errors into Conveyor's, in one place.

Three kinds come out:

* :class:`AmqpConnectionError` — RabbitMQ could not be reached, or the connection
  broke (restart, lost heartbeat, blocked too long). It is both an
  :class:`~conveyor.exceptions.OperationalError` (what users catch) and a
  ``pika.exceptions.AMQPConnectionError`` (listed in ``connection_errors``), so the
  core's publish retry and the worker's reconnect loop treat it as retryable.
* :class:`ChannelError` — RabbitMQ closed the channel: the broker's reply code and
  text are kept (``406 PRECONDITION_FAILED - inequivalent arg 'x-max-priority'…``) and
  the message says what to change. Retrying does not help.
* :class:`UnroutableError` — with ``confirm_publish`` a publish RabbitMQ returned
  (no queue bound for the routing key) or refused; names exchange and routing key.

Every message names the URL with its password masked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pika.exceptions as pe
from conveyor.exceptions import OperationalError
from conveyor.utils import mask_url

#: What the core retries (publish) and reconnects on (worker).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pe.AMQPConnectionError, pe.ConnectionWrongStateError, pe.ChannelWrongStateError,
    ConnectionError, OSError)

_PIKA_ERRORS: tuple[type[BaseException], ...] = (pe.AMQPError, *CONNECTION_ERRORS)

#: Reply codes worth a hint of their own.
_HINTS = {
    403: "Check the user's permissions on this vhost (rabbitmqctl set_permissions).",
    404: "Declare it first, or check the name.",
    405: "Another connection holds it exclusively.",
    406: ("A queue or exchange of that name exists with other arguments: declare it "
          "with the same settings (task_queue_max_priority, task_default_queue_type), "
          "or delete it (rabbitmqctl delete_queue NAME) if nothing needs it."),
}


class AmqpConnectionError(OperationalError, pe.AMQPConnectionError):
    """RabbitMQ is unreachable or the connection broke; retrying may succeed."""


class ChannelError(OperationalError):
    """RabbitMQ closed the channel; ``reply_code``/``reply_text`` say why."""

    def __init__(self, message: str, reply_code: int = 0, reply_text: str = "") -> None:
        super().__init__(message)
        self.reply_code = reply_code
        self.reply_text = reply_text


class UnroutableError(OperationalError):
    """A confirmed publish that RabbitMQ returned or refused: nothing took it."""

    def __init__(self, message: str, exchange: str, routing_key: str, nacked: bool) -> None:
        super().__init__(message)
        self.exchange = exchange
        self.routing_key = routing_key
        #: True when RabbitMQ refused it (nack), False when no queue was bound.
        self.nacked = nacked


def unroutable(url: str, exchange: str, routing_key: str, nacked: bool) -> UnroutableError:
    """The error for a publish RabbitMQ returned (``nacked``: refused)."""
    where = f"exchange {exchange or '(default)'!r} with routing key {routing_key!r}"
    if nacked:
        text = (f"RabbitMQ at {mask_url(url)} refused (nack) the message published to "
                f"{where}; it was not stored. Check the broker log (disk or memory "
                "alarm, queue length limit).")
    else:
        text = (f"RabbitMQ at {mask_url(url)} could not route the message published to "
                f"{where}: no queue is bound for it, so it was not stored. Declare the "
                "queue (start a worker for it) or fix the route.")
    return UnroutableError(text, exchange, routing_key, nacked)


def wrap(exc: BaseException, url: str, doing: str) -> OperationalError:
    """The Conveyor error for a pika error (to ``raise ... from exc``)."""
    if isinstance(exc, OperationalError):
        return exc
    where = mask_url(url)
    if isinstance(exc, pe.ChannelClosedByBroker):
        hint = _HINTS.get(exc.reply_code, "See the RabbitMQ log for details.")
        return ChannelError(
            f"RabbitMQ at {where} closed the channel while {doing}: "
            f"({exc.reply_code}) {exc.reply_text}. {hint}", exc.reply_code, exc.reply_text)
    if isinstance(exc, (pe.ProbableAuthenticationError, pe.AuthenticationError)):
        return AmqpConnectionError(
            f"RabbitMQ at {where} refused the login while {doing}: {exc!r}. Check the "
            "user name and password in the URL.")
    if isinstance(exc, pe.ProbableAccessDeniedError):
        return AmqpConnectionError(
            f"RabbitMQ at {where} denied access while {doing}: {exc!r}. Does the vhost "
            "exist, and may this user use it (rabbitmqctl set_permissions)?")
    if isinstance(exc, CONNECTION_ERRORS):
        return AmqpConnectionError(
            f"RabbitMQ at {where} unreachable while {doing}: {exc!r}. Is rabbitmq-server "
            "running and reachable there? Check host, port, vhost and firewall.")
    return OperationalError(f"RabbitMQ at {where} failed while {doing}: {exc!r}.")


@contextmanager
def translate(url: str, doing: str) -> Iterator[None]:
    """Re-raise pika errors raised inside the block as Conveyor's (see :func:`wrap`).

    Connection errors come out as :class:`AmqpConnectionError`, which the core still
    sees as one of ``connection_errors``, so it retries or reconnects.
    """
    try:
        yield
    except OperationalError:
        raise
    except _PIKA_ERRORS as exc:
        raise wrap(exc, url, doing) from exc
