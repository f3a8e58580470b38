"""Poison rows and list entries of every kind: each is dead-lettered with a reason
saying what is wrong, one at a time, and never holds up the good messages of its
batch; a poison message whose headers name a task records FAILURE for it."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import uuid

import pika

from fault_lab import Lab

#: (stored headers, body, properties) of hand-written SQLite rows, and what the
#: dead-letter reason must say.
SQLITE_POISON = [
    ('{"id": "x", "task": "fault.work"', b"[[], {}, {}]", "{}", "cannot be decoded"),
    ("[1, 2]", b"[[], {}, {}]", "{}", "headers column holds JSON list"),
    ('{"id": "TASK", "task": "fault.work"}', b"[[], {}, {}]", "not json",
     "cannot be decoded"),
    ('{"id": "y", "task": "fault.work"}', "text, not a blob", "{}", "cannot be decoded"),
]
#: Entries pushed on a Redis list by hand, and what the reason must say.
REDIS_POISON = [
    (b"\xff\xfe garbage", "not JSON"),
    (b'{"body": "W1tdLCB7fSwge31d", "headers": {"id"', "not JSON"),
    (b"[1, 2, 3]", "JSON list, not an object"),
    (b'{"body": "W1tdLCB7fSwge31d", "content-type": "application/json", '
     b'"headers": {"id": "TASK", "task": "fault.work"}}', "no 'properties' object"),
]

#: Messages published to RabbitMQ by hand (body, content type, headers), and what the
#: reason must say.
AMQP_POISON = [
    (b"\xff\xfe garbage", "application/json", {"id": "g", "task": "fault.work"},
     "Cannot decode 'application/json' body: UnicodeDecodeError"),
    (b'[[], {}', "application/json", {"id": "TASK", "task": "fault.work"},
     "Cannot decode 'application/json' body: JSONDecodeError"),
    (b"[[], {}, {}]", "application/json", None, "no 'task' header"),
    (b"[[], {}, {}]", "application/x-nobody-knows", {"id": "n", "task": "fault.work"},
     "'application/x-nobody-knows': it is not in accept_content"),
]


def _poison(lab: Lab, task_id: str) -> list[str]:
    """Write the poison for ``lab``'s broker; the reasons expected, in order."""
    if lab.broker == "sqlite":
        with sqlite3.connect(lab.root / "broker.db") as db:
            for headers, body, props, _why in SQLITE_POISON:
                db.execute(
                    "INSERT INTO conveyor_messages (queue, priority, state, due, headers, "
                    "body, content_type, content_encoding, properties, exchange, "
                    "routing_key) VALUES ('celery', 0, 0, 0, ?, ?, 'application/json', "
                    "'utf-8', ?, '', 'celery')", (headers.replace("TASK", task_id), body,
                                                  props))
        return [why for *_, why in SQLITE_POISON]
    if lab.broker == "amqp":
        channel = lab.channel()
        for body, content_type, headers, _why in AMQP_POISON:
            if headers is not None and headers["id"] == "TASK":
                headers = {**headers, "id": task_id}
            channel.basic_publish("", "celery", body, pika.BasicProperties(
                content_type=content_type, content_encoding="utf-8", headers=headers,
                correlation_id=(headers or {}).get("id"), delivery_mode=2))
        channel.close()
        return [why for *_, why in AMQP_POISON]
    for raw, _why in REDIS_POISON:
        lab.redis.lpush("celery", raw.replace(b"TASK", task_id.encode()))
    return [why for _raw, why in REDIS_POISON]


def test_poison_is_dead_lettered_without_holding_up_its_batch(lab: Lab) -> None:
    lab.vt = 60.0  # a held-up message would wait a minute: the test would time out
    lab.send_many(10)
    poisoned = str(uuid.uuid4())
    reasons = _poison(lab, poisoned)
    for n in range(10, 20):
        lab.send(n)
    started = time.monotonic()
    worker = lab.worker(pool="threads", concurrency=2, prefetch=8)
    lab.wait_for(lambda: len(lab.ended()) == 20, 20, "the 20 good tasks")
    took = time.monotonic() - started
    assert lab.ended() == {n: 1 for n in range(20)}

    # FAILURE recorded for the poison whose headers name its task.
    failed = lab.app.AsyncResult(poisoned)
    lab.wait_for(lambda: failed.state == "FAILURE", 10, "FAILURE for the poisoned task")

    out = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "-A", "faulttasks", "dead", "list", "--json"],
        cwd=lab.root, env=lab.env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == len(reasons), rows
    got = sorted(r["reason"] for r in rows)
    for why in reasons:
        assert any(why in reason for reason in got), (why, "\n".join(got))
    assert {r["reason"].split(":")[0] for r in rows} <= {"DecodeError", "ContentDisallowed"}
    assert poisoned in {r["task_id"] for r in rows}
    plain = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "-A", "faulttasks", "dead", "list"],
        cwd=lab.root, env=lab.env(), capture_output=True, text=True, timeout=30)
    assert plain.returncode == 0 and len(plain.stdout.splitlines()) == len(reasons)

    lab.wait_for(lambda: lab.waiting() == 0, 10, "the queue to be empty")
    assert lab.leased() == 0
    assert worker.poll() is None
    lab.figure(f"{len(reasons)} poison messages dead-lettered; "
               f"20 good tasks ran once each in {took:.2f}s; 0 left leased")


def test_an_oversized_message_from_a_foreign_client_is_dead_lettered(lab: Lab) -> None:
    lab.app.conf.task_message_max_size = None  # a client without the limit
    big = lab.app.send_task("fault.work", (0,), {"pad": "x" * 200_000})
    lab.send(1)
    worker = lab.worker(FAULT_MAX_SIZE="100000")
    lab.wait_for(lambda: lab.ended()[1] == 1, 20, "the small task")
    lab.wait_for(lambda: big.state == "FAILURE", 20, "FAILURE for the oversized task")
    (dead,) = lab.app.transport_factory().dead_letters()
    assert dead.reason.startswith("MessageSizeExceeded: Message body of 200,")
    assert "task_message_max_size (100,000 bytes)" in dead.reason
    assert 0 not in lab.ended() and worker.poll() is None
