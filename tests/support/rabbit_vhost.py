"""A RabbitMQ vhost a test module owns: made with ``rabbitmqctl``, deleted afterwards.

RabbitMQ on 127.0.0.1:5672 is shared with other runs on the machine, so a suite that
needs it works in a vhost of its own and touches nothing outside it. When RabbitMQ
does not answer, the test skips (fails under ``CONVEYOR_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from conveyor_pytest.fixtures import require_service

HOST, PORT = "127.0.0.1", 5672


def _ctl(*args: str) -> None:
    proc = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} exited {proc.returncode}: "
                             f"{proc.stdout}{proc.stderr}")


@contextmanager
def private_vhost(prefix: str) -> Iterator[str]:
    """The ``amqp://`` URL of a new vhost named ``<prefix>-<random>``, deleted on exit."""
    require_service("RabbitMQ", HOST, PORT)
    vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"
    _ctl("add_vhost", vhost)
    try:
        _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{HOST}:{PORT}/{vhost}"
    finally:
        _ctl("delete_vhost", vhost)
