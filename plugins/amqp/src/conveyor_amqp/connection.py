"""Opening pika connections: URL, heartbeat, timeouts and TLS in one place.

Celery's URLs work as written: ``amqp://guest:guest@localhost:5672//`` is the vhost
``/`` (kombu's spelling), ``amqp://`` alone is guest on localhost, and ``amqps://``
is TLS with the system's trusted certificates and the host name checked, unless the
``ssl`` transport option says otherwise.

pika's :class:`~pika.BlockingConnection` is not thread-safe: each transport owns
one connection and uses it from one thread; the result backend keeps one per thread.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pika
from conveyor.exceptions import ConfigurationError
from conveyor.utils import mask_url

from .errors import CONNECTION_ERRORS, translate, wrap

T = TypeVar("T")

#: ``ssl`` option keys (kombu's ``broker_use_ssl`` names) and what they set.
SSL_KEYS = ("ca_certs", "certfile", "keyfile", "cert_reqs", "server_hostname")


def ssl_context(setting: Any, host: str) -> pika.SSLOptions:
    """TLS options from the ``ssl`` transport option (None, a dict or an SSLContext)."""
    if isinstance(setting, ssl.SSLContext):
        return pika.SSLOptions(setting, server_hostname=host)
    setting = dict(setting or {})
    unknown = sorted(set(setting) - set(SSL_KEYS))
    if unknown:
        raise ConfigurationError(
            f"broker_transport_options['ssl'] has unknown key(s) {', '.join(unknown)}; "
            f"known keys: {', '.join(SSL_KEYS)}.")
    context = ssl.create_default_context(cafile=setting.get("ca_certs"))
    if setting.get("certfile"):
        context.load_cert_chain(setting["certfile"], setting.get("keyfile"))
    reqs = setting.get("cert_reqs", ssl.CERT_REQUIRED)
    if reqs in (ssl.CERT_NONE, "none", "CERT_NONE"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return pika.SSLOptions(context, server_hostname=setting.get("server_hostname", host))


def parameters(url: str, options: Mapping[str, Any],
               connect_timeout: float | None) -> pika.URLParameters:
    """pika's connection parameters for ``url`` and the transport options."""
    secure = url.lower().startswith("amqps")
    try:
        params = pika.URLParameters(url)
    except ValueError as exc:
        raise ConfigurationError(
            f"Cannot read the broker URL {mask_url(url)!r}: {exc}. Write it like "
            "'amqp://guest:guest@localhost:5672//' (the last '/' names the vhost).") from exc
    path = urlsplit(url).path
    if path in ("", "/", "//"):
        params.virtual_host = "/"
    if secure:
        params.ssl_options = ssl_context(options.get("ssl"), params.host)
    elif options.get("ssl"):
        raise ConfigurationError(
            "broker_transport_options['ssl'] is set but the URL is amqp://; use "
            "amqps:// for TLS.")
    params.heartbeat = int(options["heartbeat"])
    if connect_timeout is not None:
        params.socket_timeout = params.stack_timeout = float(connect_timeout)
    if options.get("blocked_connection_timeout") is not None:
        params.blocked_connection_timeout = float(options["blocked_connection_timeout"])
    params.client_properties = {"connection_name": "conveyor", "product": "conveyor"}
    return params


def open_connection(url: str, params: pika.URLParameters,
                    doing: str = "connecting") -> pika.BlockingConnection:
    """A connected :class:`~pika.BlockingConnection`; errors name the URL."""
    with translate(url, doing):
        return pika.BlockingConnection(params)


class Backoff:
    """Exponential pauses between reconnect attempts: 0.1 s doubling up to ``cap``."""

    def __init__(self, start: float = 0.1, cap: float = 5.0) -> None:
        self.start = self.pause = start
        self.cap = cap

    def next(self) -> float:
        pause, self.pause = self.pause, min(self.pause * 2, self.cap)
        return pause

    def reset(self) -> None:
        self.pause = self.start


def retrying(call: Callable[[], T], *, url: str, doing: str, patience: float,
             on_error: Callable[[], None]) -> T:
    """Run ``call``, retrying connection errors with backoff for up to ``patience``
    seconds (``on_error`` drops the broken connection before each retry)."""
    deadline = time.monotonic() + patience
    backoff = Backoff()
    while True:
        try:
            return call()
        except CONNECTION_ERRORS as exc:
            on_error()
            pause = backoff.next()
            if time.monotonic() + pause > deadline:
                raise wrap(exc, url, doing) from exc
            time.sleep(pause)
