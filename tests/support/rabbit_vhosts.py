"""``rabbitmqctl`` and private vhosts on the shared RabbitMQ (127.0.0.1:5672).

RabbitMQ is shared with other runs, so every suite that uses it works in a vhost of
its own (``conveyor-test-<random>``), made here and deleted by its fixture; nothing
outside it is touched. Used by the AMQP plugin tests, the fault suite, the contract
suite and ``inspect queues`` on RabbitMQ.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from conveyor_pytest.fixtures import require_service

HOST, PORT = "127.0.0.1", 5672


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """Run ``rabbitmqctl``; fail with its output."""
    proc = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} exited {proc.returncode}: "
                             f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def make_vhost(prefix: str = "conveyor-test") -> str:
    """A new vhost the guest user may use fully; its name."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return name


def url_for(vhost: str, scheme: str = "amqp") -> str:
    return f"{scheme}://guest:guest@{HOST}:{PORT}/{vhost}"


def private_vhost(prefix: str = "conveyor-test") -> Iterator[str]:
    """The body of a session fixture: a new vhost (skip, or fail in CI, when RabbitMQ
    does not answer), deleted when the session ends."""
    require_service("RabbitMQ", HOST, PORT)
    vhost = make_vhost(prefix)
    try:
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost)


#: ``with own_vhost() as vhost:`` — the same, for one test or module.
own_vhost = contextmanager(private_vhost)
