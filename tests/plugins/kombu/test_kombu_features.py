"""The README's feature table, produced by probing each tested kombu transport.

Every cell is what a probe saw on the real transport: the error a user gets, or the
behaviour. The table must equal ``conveyor_kombu.features.TESTED`` (what the plugin
and ``conveyor plugins`` claim) and the README's copy. After a change in behaviour,
update TESTED and paste ``features.render()`` into the README.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conveyor_kombu import features
from kombu_lab import TRANSPORTS, Lab, make_lab

from conveyor import Conveyor
from conveyor.cli import main
from conveyor.exceptions import CapabilityError
from conveyor.interfaces import Message, Route

README = Path(__file__).resolve().parents[3] / "plugins" / "kombu" / "README.md"

#: A worker that takes one message and dies without acking it (as with SIGKILL).
KILLED_WORKER = '''
import json, os, sys
from conveyor import Conveyor
from conveyor.interfaces import Message, Route

broker, options, queue = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
app = Conveyor("probe", broker=broker, backend="memory://probe",
               broker_transport_options=options)
t = app.transport_factory()
t.declare(Route(queue))
t.publish_many([(Message({"id": "probe", "task": "k.add"}, b"[[1, 1], {}, {}]"),
                 Route(queue), None)])
assert len(t.fetch([queue], limit=1, timeout=5)) == 1
os._exit(0)
'''


def _error(exc: CapabilityError) -> str:
    """The part of the message that names what is missing (not the URL)."""
    return f"CapabilityError: {str(exc).split('; the ')[0]}"


def probe(kind: str, tmp_path: Path) -> dict[str, str]:
    lab = make_lab(kind, tmp_path)
    app = lab.app()
    t = app.transport_factory()
    q = lab.queue
    cells: dict[str, str] = {}
    try:
        t.declare(Route(q))
        try:
            app.send_task("k.add", (1, 1), queue=q, priority=5)
        except CapabilityError as exc:
            cells["priority"] = f"not supported: {_error(exc)}"
        else:
            t.purge(q)
            for p in (1, 9):
                t.publish_many([(Message({"id": f"p{p}"}, b"[]", properties={"priority": p}),
                                 Route(q), None)])
            got = [d.message.task_id for d in t.fetch([q], limit=2, timeout=5)]
            cells["priority"] = ("works: higher priority first" if got == ["p9", "p1"]
                                 else f"not supported: served {got}")
        app.send_task("k.add", (1, 1), queue=q, countdown=1)  # within the horizon
        try:
            app.send_task("k.add", (1, 1), queue=q, countdown=3600)
            cells["delay"] = "works: parked by the broker"
        except CapabilityError as exc:
            needs = _error(exc).split(" needs ")[1].split(" (")[0]
            cells["delay"] = ("works: held by the worker up to worker_eta_horizon; "
                              f"beyond it CapabilityError: needs {needs}")
        t.purge(q)
        t.publish_many([(Message({"id": "dead"}, b"[]"), Route(q), None)])
        (d,) = t.fetch([q], limit=1, timeout=5)
        t.dead_letter(d, "probe")
        listed = [x.message.task_id for x in t.dead_letters(q)]
        requeued = t.requeue_dead(None, q)
        back = [x.message.task_id for x in t.fetch([q], limit=1, timeout=5)]
        cells["dead letters"] = ("works: `<queue>.dead`"
                                 if listed == ["dead"] and requeued == 1 and back == ["dead"]
                                 else f"not supported: listed {listed}, back {back}")
        t.close()
        cells["acks_late"] = _killed_worker_probe(lab, app)
    finally:
        lab.close()
    return cells


def _killed_worker_probe(lab: Lab, app: Conveyor) -> str:
    """Does a message a worker took and died with come back?"""
    script = lab.path / "killed_worker.py"
    script.write_text(textwrap.dedent(KILLED_WORKER))
    queue = lab.queue + ".kill"
    subprocess.run([sys.executable, str(script), lab.broker, json.dumps(lab.options), queue],
                   check=True, timeout=60, capture_output=True)
    t = app.transport_factory()
    try:
        t.declare(Route(queue))
        deadline = time.monotonic() + float(lab.options.get("visibility_timeout", 0)) + 3
        while time.monotonic() < deadline:
            got = t.fetch([queue], limit=1, timeout=0.5)
            if got:
                t.ack(got)
                return "works: redelivered after visibility_timeout"
        return "not supported: a killed worker's unacked message is never redelivered"
    finally:
        t.close()


def test_feature_table_is_what_each_kombu_transport_does(tmp_path: Path) -> None:
    seen = {}
    for kind in TRANSPORTS:
        (tmp_path / kind).mkdir()
        seen[kind] = probe(kind, tmp_path / kind)
    assert seen == features.TESTED, features.render(seen)
    table = features.render()
    assert table in README.read_text(), (
        f"{README} must carry the feature table; paste this:\n{table}")


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_conveyor_plugins_names_the_features(kind: str) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["plugins"]) == 0
    assert f"kombu+{kind}://: priority" in out.getvalue()
