"""What a user sees when things are wrong: passwords masked whatever their form,
a broker that is down or an app module that does not import is one line naming it
(exit 2, no traceback), transport option values of the wrong type are refused at
connect, and an oversized message is refused at apply_async."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.exceptions import MessageSizeExceeded, OperationalError

SECRET = "hunter2-secret"
#: Nothing listens on port 1: a broker that is down.
DOWN = f"redis://127.0.0.1:1/0?password={SECRET}"
DOWN_MASKED = "redis://127.0.0.1:1/0?password=**"

APP = '''
import json, os
from conveyor import Conveyor

app = Conveyor("errapp", broker=os.environ["ERR_BROKER"],
               backend=os.environ.get("ERR_BACKEND", "sqlite:///results.db"))
app.conf.broker_transport_options = json.loads(os.environ.get("ERR_OPTIONS", "{}"))
'''


def conveyor(tmp_path: Path, *args: str, timeout: float = 60,
             **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "errapp.py").write_text(APP)
    return subprocess.run([sys.executable, "-m", "conveyor.cli", *args], cwd=tmp_path,
                          env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)


def test_repr_and_settings_mask_every_form_of_password() -> None:
    app = Conveyor("masked", broker=DOWN, backend=f"redis://:{SECRET}@127.0.0.1:1/1")
    shown = f"{app!r} {app.conf} {app.conf!r}"
    assert SECRET not in shown
    assert DOWN_MASKED in shown and "redis://:**@127.0.0.1:1/1" in shown


def test_operational_error_masks_a_query_password() -> None:
    app = Conveyor("masked", broker=DOWN, backend="memory://masked")
    with pytest.raises(OperationalError) as caught:
        app.send_task("t.x", retry=False)
    assert SECRET not in str(caught.value) and DOWN_MASKED in str(caught.value)
    app.close()


@pytest.mark.parametrize("command", [["call", "t.x"], ["dead", "list"],
                                     ["dead", "list", "--json"], ["purge", "-f"]])
def test_commands_with_the_broker_down_say_so_and_exit_2(tmp_path: Path,
                                                         command: list[str]) -> None:
    out = conveyor(tmp_path, "-A", "errapp", *command, ERR_BROKER=DOWN)
    assert out.returncode == 2, out.stderr
    assert f"error: Cannot connect to broker {DOWN_MASKED}" in out.stderr \
        or f"error: Cannot publish to broker {DOWN_MASKED}" in out.stderr
    assert "Traceback" not in out.stderr and SECRET not in out.stderr + out.stdout


def test_a_worker_whose_broker_is_down_logs_no_password(tmp_path: Path) -> None:
    (tmp_path / "errapp.py").write_text(APP)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "conveyor.cli", "-A", "errapp",
                                 "-l", "INFO", "worker"], cwd=tmp_path,
                                env={**os.environ, "ERR_BROKER": DOWN}, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while b"Cannot connect" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    err = log.read_text()
    assert f"Cannot connect to {DOWN_MASKED}" in err
    assert SECRET not in err


def test_an_app_module_that_does_not_import_is_one_clear_line(tmp_path: Path) -> None:
    out = conveyor(tmp_path, "-A", "nosuchmodule", "worker", ERR_BROKER=DOWN)
    assert out.returncode == 2
    assert out.stderr.startswith("error: Cannot import the app module 'nosuchmodule'")
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(("broker", "key"), [
    ("sqlite:///broker.db", "visibility_timeout"),
    ("redis://127.0.0.1:1/0", "visibility_timeout"),
    ("memory://errapp", "visibility_timeout"),
    ("amqp://guest:guest@127.0.0.1:1//", "heartbeat"),
    ("kombu+redis://127.0.0.1:1/0", "visibility_timeout"),
    ("kombu+filesystem://", "polling_interval"),
    ("kombu+memory://", "polling_interval"),
])
def test_transport_option_values_of_the_wrong_type_stop_the_worker(
        tmp_path: Path, broker: str, key: str) -> None:
    out = conveyor(tmp_path, "-A", "errapp", "worker", ERR_BROKER=broker,
                   ERR_OPTIONS=f'{{"{key}": "abc"}}')
    assert out.returncode == 2, out.stderr
    assert f"broker_transport_options[{key!r}]" in out.stderr
    assert "must be a number" in out.stderr and "'abc'" in out.stderr
    assert "Traceback" not in out.stderr


def test_an_oversized_message_is_refused_at_apply_async() -> None:
    app = Conveyor("sized", broker="memory://sized", backend="memory://sized")
    app.conf.task_message_max_size = 10_000

    @app.task(name="t.echo")
    def echo(data: str) -> str:
        return data

    with pytest.raises(MessageSizeExceeded, match=r"task_message_max_size \(10,000 "
                                                  r"bytes\)") as caught:
        echo.delay("x" * 20_000)
    assert "'t.echo'" in str(caught.value) and "20,0" in str(caught.value)
    assert app.transport_factory().depth("celery") == 0
    echo.delay("x" * 5_000)  # under the limit: sent
    app.close()
