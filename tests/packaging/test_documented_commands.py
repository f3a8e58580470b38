"""Every command line printed in the Markdown files and in ``conveyor --help`` runs as
printed, so the documentation cannot drift from the code.

Each printed command must have a handler below. A command nobody handles fails
``test_every_printed_command_has_a_handler`` (add a handler when you print a new
one), and so does a handler whose command is no longer printed. Commands run through
``bash -c`` exactly as printed, with this environment's ``bin`` first on PATH (the
monitor's with free ports given after, see ``monitor_serves``); those needing an app
``proj`` get one written into a temporary directory. The few lines
that cannot run inside the suite (installing uv, the suite itself) are checked by
what they must achieve, each with its reason.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from monitor_lab import free_port
from packaging_support import installed, make_venv
from printed_commands import REPO, Printed, from_help, from_markdown
from processes import Proc

from conveyor.cli import EXAMPLES

BIN = Path(sys.executable).parent
PROJ = """
from conveyor import Conveyor

app = Conveyor("proj")

@app.task
def add(x, y):
    return x + y
"""


Ctx = tuple[Path, dict[str, str]]


def shell(command: str, *, cwd: Path, timeout: float, env: dict[str, str] | None = None,
          path: Path = BIN) -> subprocess.CompletedProcess[str]:
    """Run ``command`` as printed; fail with its output when it exits non-zero."""
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout,
                          env={**os.environ, **(env or {}),
                               "PATH": f"{path}{os.pathsep}{os.environ['PATH']}"})
    if proc.returncode != 0:
        pytest.fail(f"`{command}` exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}", pytrace=False)
    return proc


def _proj(directory: Path) -> Ctx:
    (directory / "proj.py").write_text(textwrap.dedent(PROJ))
    url = f"sqlite:///{directory / 'proj.sqlite3'}"
    return directory, {"CONVEYOR_BROKER_URL": url, "CONVEYOR_RESULT_BACKEND": url}


@pytest.fixture
def proj(tmp_path: Path) -> Ctx:
    """A directory holding ``proj.py``, and the environment that gives it a broker."""
    return _proj(tmp_path)


def worker1(cwd: Path, env: dict[str, str]) -> Proc:
    """A worker named ``worker1@host`` (the name the docs use) serving ``proj``,
    consuming; use it as a context manager to stop it."""
    worker = Proc([str(BIN / "conveyor"), "-A", "proj", "-l", "INFO", "worker", "-n",
                   "worker1@host"], cwd, env=env)
    try:
        worker.wait_output("consuming", 30)
    except BaseException:
        worker.stop()
        raise
    return worker


@pytest.fixture(scope="module")
def shared_worker1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    """``proj`` with ``worker1@host`` serving it, for every remote control command
    that leaves the worker as it found it (``OnWorker1``): started once, not once a
    command."""
    cwd, env = _proj(tmp_path_factory.mktemp("worker1"))
    with worker1(cwd, env):
        yield cwd, env


# ------------------------------------------------------------------ the handlers


def uv_is_installed(printed: Printed, proj: Ctx) -> None:
    """``python -m pip install uv`` is not run (no install from the index inside the
    suite; the environment running this test was made by uv): uv is there and runs."""
    assert re.match(r"uv \d", shell("uv --version", cwd=REPO, timeout=30).stdout)


def install_uv_then_demo(printed: Printed, proj: Ctx) -> None:
    first, _, rest = printed.command.partition(" && ")
    uv_is_installed(Printed(first, printed.where), proj)
    out = shell(rest, cwd=REPO, timeout=120).stdout
    assert "examples behaved" in out and "FAIL" not in out


def the_suite_itself(printed: Printed, proj: Ctx) -> None:
    """``uv run pytest`` is this very run (running it here would recurse): CI runs
    the same line, and this test runs under the repository's pytest configuration."""
    assert printed.key in (REPO / ".ci" / "run").read_text().splitlines()


def uv_sync(printed: Printed, proj: Ctx) -> None:
    """Run with ``--dry-run``: syncing the environment this suite runs in, while it
    runs, would change it under the other tests. Resolving is what can break."""
    out = shell(f"{printed.key} --dry-run", cwd=REPO, timeout=120)
    assert "error" not in (out.stdout + out.stderr).lower()


#: A selection for the nested core run, through ``PYTEST_ADDOPTS`` (the printed
#: line itself stays as printed): its modules run in a few seconds.
NESTED_ADDOPTS = "-k 'test_settings or test_options or test_envelope' -p no:cacheprovider"


def core_tests(printed: Printed, proj: Ctx) -> None:
    """``uv run pytest tests/unit`` as printed, from the repository root, on a
    selection (``NESTED_ADDOPTS``): it proves the printed line runs (uv, the locked
    environment, the repository's pytest configuration) and collects every unit
    test (each module imports; the rest are counted as deselected), and that the
    selection passes with nothing skipped. The outer run, which is this suite, runs
    every unit test; ``tests/unit/conftest.py`` fails any of them that connects to
    a broker port, brokers up or down, so "no broker needed" holds for all."""
    env = {"PYTEST_ADDOPTS": NESTED_ADDOPTS, "CONVEYOR_REQUIRE_SERVICES": "1"}
    summary = shell(printed.command, cwd=REPO, timeout=600,
                    env=env).stdout.strip().splitlines()[-1]
    assert re.search(r"^=* ?\d+ passed, \d+ deselected in ", summary), summary
    assert not re.search(r"skipped|failed|error", summary), summary


def serve(command: str, cwd: Path, env: dict[str, str], client: str) -> str:
    """Start a worker command as printed, run ``client`` (Python) against it once it
    consumes, stop it warm; the client's output. The worker must exit 0. Its log is
    what it prints plus ``worker.log`` when printed with ``--logfile worker.log``."""
    printed_out = cwd / "worker.out"

    def log() -> bytes:
        return b"".join(p.read_bytes() for p in (printed_out, cwd / "worker.log")
                        if p.exists())

    with printed_out.open("wb") as out:
        worker = subprocess.Popen(
            ["bash", "-c", command], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while b"consuming" not in log():
            assert worker.poll() is None, log().decode()
            assert time.monotonic() < deadline, log().decode()
            time.sleep(0.1)
        served = shell(f"python -c \"{client}\"", cwd=cwd, env=env, timeout=60).stdout
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
        code = worker.wait(30)
    assert code == 0, log().decode()
    assert b"INFO" in log()  # -l INFO, after the subcommand, took effect
    return served


def worker_serves(printed: Printed, proj: Ctx) -> None:
    """Start the worker as printed, have it serve its queues (``priority.high`` when
    it names it, and the default one), stop it warm."""
    cwd, env = proj
    queue = "priority.high" if "priority.high" in printed.command else "celery"
    client = ("import proj; "
              f"print(proj.add.apply_async((2, 2), queue='{queue}').get(timeout=20)); "
              "print(proj.add.delay(20, 22).get(timeout=20))")
    assert serve(printed.command, cwd, env, client).split() == ["4", "42"]


AMQP_PROJ = """
import os
from conveyor import Conveyor

app = Conveyor("proj", broker=os.environ["T_AMQP_URL"], backend="rpc://")

@app.task
def add(x, y):
    return x + y
"""


def amqp_worker_serves(printed: Printed, proj: Ctx) -> None:
    """The AMQP plugin's quick start: the worker as printed, on a RabbitMQ vhost of
    its own, answers ``add.delay(2, 2).get()`` over ``rpc://``."""
    cwd, _ = proj
    (cwd / "proj.py").write_text(textwrap.dedent(AMQP_PROJ))
    vhost = f"conveyor-doc-{uuid.uuid4().hex[:8]}"
    ctl = ["rabbitmqctl", "-q"]
    subprocess.run([*ctl, "add_vhost", vhost], check=True, timeout=60, capture_output=True)
    try:
        subprocess.run([*ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                       check=True, timeout=60, capture_output=True)
        env = {"T_AMQP_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}"}
        client = "import proj; print(proj.add.delay(2, 2).get(timeout=20))"
        assert serve(printed.command, cwd, env, client).split() == ["4"]
    finally:
        subprocess.run([*ctl, "delete_vhost", vhost], timeout=60, capture_output=True)


def monitor_serves(printed: Printed, proj: Ctx) -> None:
    """Start the monitor as printed, then ``--port`` and (when printed)
    ``--metrics-port`` again with free ports, as the last given wins: the default
    5580 and the printed 9808 may be taken on the machine (a monitor, another
    checkout's suite). The page, its JSON (the queues it names) and ``/metrics`` on
    both ports answer; SIGTERM stops it with status 0."""
    cwd, env = proj
    out = cwd / "monitor.out"
    metrics_port = free_port() if "--metrics-port " in printed.command else None
    command = f"{printed.command} --port {free_port()}" + (
        f" --metrics-port {metrics_port}" if metrics_port else "")
    with out.open("wb") as sink:
        monitor = subprocess.Popen(
            ["bash", "-c", command], cwd=cwd, stdout=sink, stderr=subprocess.STDOUT,
            env={**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while b"conveyor monitor on" not in out.read_bytes():
            assert monitor.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        port = re.search(rb"http://127\.0\.0\.1:(\d+)/ ", out.read_bytes())
        assert port is not None, out.read_text()
        base = f"http://127.0.0.1:{int(port.group(1))}"
        with urllib.request.urlopen(base + "/", timeout=10) as page:
            assert b"Conveyor monitor" in page.read()
        with urllib.request.urlopen(base + "/api/state", timeout=10) as state:
            queues = [q["queue"] for q in json.loads(state.read())["queues"]]
        assert queues == ["celery", "priority.high"]
        for url in [base + "/metrics"] + (
                [f"http://127.0.0.1:{metrics_port}/metrics"] if metrics_port else []):
            with urllib.request.urlopen(url, timeout=10) as metrics:
                assert b"conveyor_queue_messages" in metrics.read()
    finally:
        if monitor.poll() is None:
            os.killpg(monitor.pid, signal.SIGTERM)
        code = monitor.wait(30)
    assert code == 0, out.read_text()


def in_proj(check: Callable[[str], bool]) -> Callable[[Printed, Ctx], None]:
    """Run the command in the ``proj`` directory and check its standard output."""
    def handler(printed: Printed, proj: Ctx) -> None:
        cwd, env = proj
        out = shell(printed.command, cwd=cwd, env=env, timeout=120).stdout
        assert check(out), out
    return handler


def demo_in_proj(printed: Printed, proj: Ctx) -> None:
    """The demo as ``conveyor --help`` prints it: every example behaves within 30 s,
    on its own embedded SQLite (whatever broker the environment names), leaving
    nothing in the working directory."""
    cwd, env = proj
    before = sorted(cwd.iterdir())
    start = time.monotonic()
    out = shell(printed.command, cwd=cwd, env=env, timeout=60).stdout
    elapsed = time.monotonic() - start
    assert "6/6 examples behaved" in out and "FAIL" not in out and elapsed < 30, out
    assert "[4, 8, 16, 32]" in out and "20" in out, out
    assert sorted(cwd.iterdir()) == before


def _is_task_id(out: str) -> bool:
    return str(uuid.UUID(out.strip())) == out.strip()


def example_plugin_readme(printed: list[Printed], wheelhouse: Path, tmp_path: Path) -> None:
    """The example plugin's README, line after line, in a fresh environment holding
    Conveyor's wheels, from the repository root (where its paths start)."""
    bindir = make_venv(tmp_path / "venv", wheelhouse, ["conveyor", "conveyor-pytest"])
    for line in printed:
        out = shell(line.command, cwd=REPO, timeout=300, path=bindir,
                    env={"PYTHONDONTWRITEBYTECODE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        if line.key == "conveyor plugins":
            for name in ("compactjson", "deflate", "example", "example-trace"):  # its comment
                assert re.search(rf"^  {name} +conveyor-example-plugin .* ok$", out.stdout,
                                 re.M), out.stdout
        if line.key.startswith("pytest"):
            summary = out.stdout.strip().splitlines()[-1]
            assert re.search(r"\d+ passed", summary) and "skipped" not in summary, summary
    assert "conveyor-example-plugin" in installed(bindir)


class OnWorker1:
    """Run a remote control command as printed while ``worker1@host`` serves
    ``proj``, and check its standard output. The worker is the module's
    (``shared_worker1``): the command must leave it serving, as it found it
    (``undo``: a command run after it, whose output must hold ``undone``)."""

    def __init__(self, check: Callable[[str], bool], undo: str = "",
                 undone: str = "") -> None:
        self.check, self.undo, self.undone = check, undo, undone

    def __call__(self, printed: Printed, worker1_proj: Ctx) -> None:
        cwd, env = worker1_proj
        out = shell(printed.command, cwd=cwd, env=env, timeout=120).stdout
        assert self.check(out), out
        if self.undo:
            out = shell(self.undo, cwd=cwd, env=env, timeout=120).stdout
            assert self.undone in out, out


def shutdown_stops_worker1(printed: Printed, proj: Ctx) -> None:
    """``control shutdown`` as printed, to a ``worker1@host`` of its own: it answers,
    then stops warm, with status 0."""
    cwd, env = proj
    with worker1(cwd, env) as worker:
        out = shell(printed.command, cwd=cwd, env=env, timeout=120).stdout
        assert "->  worker1@host: OK\n    shutting down" in out, out
        assert worker.popen.wait(30) == 0 and "stopping (warm)" in worker.output()


COMMANDS: dict[str, Callable[[Printed, Ctx], None]] = {
    "python -m pip install uv && uv run conveyor demo": install_uv_then_demo,
    "python -m pip install uv": uv_is_installed,
    "uv run pytest": the_suite_itself,
    "uv sync --all-extras": uv_sync,
    "uv run pytest tests/unit": core_tests,
    "conveyor -A proj worker -l INFO -Q celery,priority.high -c 4 --pool threads":
        worker_serves,
    "conveyor -A proj worker -l INFO": amqp_worker_serves,
    "conveyor -A proj worker -l INFO --logfile worker.log": worker_serves,
    "conveyor -A proj worker -l INFO -E": worker_serves,
    "conveyor -A proj monitor -Q celery,priority.high --metrics-port 9808": monitor_serves,
    "conveyor -A proj worker -l INFO --pool processes --autoscale 8,2 "
    "--max-tasks-per-child 100 --max-memory-per-child 200000": worker_serves,
    "conveyor -A proj dead list": in_proj(lambda out: out == ""),
    "conveyor -A proj dead list --json": in_proj(lambda out: out == ""),
    "conveyor plugins": in_proj(lambda out: re.search(r"^  json +conveyor-std .* ok$", out,
                                                      re.M) is not None),
    "conveyor -A proj call proj.add --args '[2, 2]' --countdown 10": in_proj(_is_task_id),
    "conveyor -A proj result 6f1c…": in_proj(
        lambda out: json.loads(out)["status"] == "PENDING"),
    "conveyor -A proj purge -Q celery -f": in_proj(lambda out: "celery: purged" in out),
    "conveyor -A proj dead requeue --all -Q celery": in_proj(
        lambda out: out.strip() == "requeued 0 message(s)"),
    "conveyor -A proj inspect queues --json": in_proj(
        lambda out: json.loads(out)["queue"] == "celery"),
    "conveyor -A proj inspect queues -Q celery,priority.high": in_proj(
        lambda out: [line.split()[:2] for line in out.splitlines()]
        == [["queue", "ready"], ["celery", "0"], ["priority.high", "0"]]),
    "conveyor demo": demo_in_proj,
    "conveyor -A proj status": OnWorker1(
        lambda out: out.startswith("->  worker1@host: OK\n") and "1 node online." in out),
    "conveyor -A proj inspect active": OnWorker1(
        lambda out: out.startswith("->  worker1@host: OK\n    - empty -")),
    "conveyor -A proj inspect stats --json": OnWorker1(
        lambda out: json.loads(out)["worker1@host"]["pool"]["max-concurrency"] >= 1),
    "conveyor -A proj control revoke 6f1c… --terminate": OnWorker1(
        lambda out: "->  worker1@host: OK\n    terminate: tasks unknown" in out),
    # No command takes a stamp back (nor in Celery): worker1 keeps skipping tasks
    # stamped tenant=acme, which no other command here sends.
    "conveyor -A proj control revoke_by_stamped_headers tenant=acme": OnWorker1(
        lambda out: "->  worker1@host: OK\n    headers {'tenant': 'acme'} flagged as "
                    "revoked, but not terminated" in out),
    "conveyor -A proj control shutdown -d worker1@host": shutdown_stops_worker1,
    "conveyor -A proj control rate_limit proj.add 10/m": OnWorker1(
        lambda out: "->  worker1@host: OK\n    new rate limit set successfully" in out,
        undo="conveyor -A proj control rate_limit proj.add 0 -d worker1@host",
        undone="->  worker1@host: OK\n    rate limit disabled successfully"),
    "conveyor -A proj control enable_events": OnWorker1(
        lambda out: "->  worker1@host: OK\n    task events enabled" in out,
        undo="conveyor -A proj control disable_events -d worker1@host",
        undone="->  worker1@host: OK\n    task events disabled"),
}
#: Files whose commands make one sequence, run together by one handler.
FILES: dict[str, Callable[[list[Printed], Path, Path], None]] = {
    "contrib/example-plugin/README.md": example_plugin_readme,
}


def _printed() -> list[Printed]:
    found, _ = from_markdown()
    return found + from_help(EXAMPLES)


def _in_files(printed: Printed) -> str | None:
    return next((f for f in FILES if printed.where.startswith(f + ":")), None)


def _single() -> dict[str, list[Printed]]:
    """Printed commands not in FILES, by key (a command printed twice runs once)."""
    found: dict[str, list[Printed]] = {}
    for printed in _printed():
        if _in_files(printed) is None:
            found.setdefault(printed.key, []).append(printed)
    return found


def test_every_fenced_block_says_its_language() -> None:
    _, untagged = from_markdown()
    assert not untagged, ("fenced blocks without a language (use ```sh for commands, "
                          f"```text for anything else): {untagged}")


def test_every_printed_command_has_a_handler() -> None:
    single = _single()
    unhandled = {k: [p.where for p in v] for k, v in single.items() if k not in COMMANDS}
    assert not unhandled, f"printed but run by no test (add a handler): {unhandled}"
    stale = set(COMMANDS) - set(single)
    assert not stale, f"handlers for commands no longer printed: {stale}"
    files = {_in_files(p) for p in _printed()} - {None}
    assert files == set(FILES), f"FILES entries without printed commands: {set(FILES) - files}"


@pytest.mark.parametrize("key", sorted(_single()))
def test_printed_command_runs(key: str, request: pytest.FixtureRequest) -> None:
    if key not in COMMANDS:
        pytest.fail(f"no handler for {key!r}", pytrace=False)
    handler = COMMANDS[key]
    ctx = request.getfixturevalue("shared_worker1" if isinstance(handler, OnWorker1)
                                  else "proj")
    handler(_single()[key][0], ctx)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FILES))
def test_printed_command_sequence_runs(name: str, wheelhouse: Path, tmp_path: Path) -> None:
    FILES[name]([p for p in _printed() if _in_files(p) == name], wheelhouse, tmp_path)
