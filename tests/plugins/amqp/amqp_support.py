"""Helpers shared by the AMQP plugin tests: a private RabbitMQ vhost, processes, waits.

RabbitMQ on 127.0.0.1:5672 is shared with other runs, so every test session works
in a vhost of its own (``conveyor-test-<random>``), made with ``rabbitmqctl`` and
deleted afterwards; nothing outside it is touched.
"""

from __future__ import annotations

import json
from typing import Any

import pika
from processes import Proc, wait_for
from rabbit_vhosts import HOST, PORT, make_vhost, rabbitmqctl, url_for

__all__ = ["HOST", "PORT", "Proc", "wait_for", "depth", "make_vhost", "queue_info",
           "rabbitmqctl", "url_for"]


def queue_info(vhost: str) -> dict[str, dict[str, Any]]:
    """``rabbitmqctl list_queues`` of the vhost: name -> durable, auto_delete,
    arguments (name -> value), type (message counts there lag: see :func:`depth`)."""
    out = rabbitmqctl("list_queues", "-q", "-p", vhost, "--formatter", "json", "name",
                      "durable", "auto_delete", "arguments", "type")
    rows = {}
    for row in json.loads(out or "[]"):
        row["arguments"] = {name: value for name, _type, value in row["arguments"]}
        rows[row.pop("name")] = row
    return rows


def depth(url: str, queue: str) -> int:
    """Messages ready in ``queue`` now, 0 if it does not exist (rabbitmqctl's
    counts lag by seconds)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0
        raise
    finally:
        conn.close()
