"""Typed tasks: mypy sees the function's parameters through Task[P, R]."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

from conveyor.options import KNOWN, ExecutionOptions

FIXTURES = Path(__file__).parent / "typing_fixtures"

SNIPPET = '''
from conveyor import AsyncResult, Conveyor

app = Conveyor("typed", broker="memory://typed")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True, queue="q")
def hello(self: object, a: int, b: str) -> str:
    return b * a


ok1: AsyncResult[int] = add.delay(1, 2)
ok2: int = add(1, 2)
ok3: AsyncResult[str] = hello.delay(2, "x")
reveal_type(add.delay(1, 2).get())
bad1 = add.delay(1, "x")  # line 20
bad2 = add.s(1, 2, 3)  # line 21
bad3 = hello.apply_async((1, "x"), countdown=3)
'''


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for this module's runs: the standard library and Conveyor are
    analysed once, not once per run. A module mypy found errors in is not cached, so
    each run still reports every error of what it checks."""
    return tmp_path_factory.mktemp("mypy-cache")


def _run_mypy(cache: Path, *files: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir",
                           str(cache), *map(str, files)],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_mypy_checks_task_calls_against_the_function(tmp_path: Path, mypy_cache: Path) -> None:
    if shutil.which("mypy") is None and not (Path(sys.executable).parent / "mypy").exists():
        pytest.fail("mypy is a dev dependency: uv sync should have installed it")
    source = tmp_path / "snippet.py"
    source.write_text(textwrap.dedent(SNIPPET).lstrip("\n"))
    out = _run_mypy(mypy_cache, source)
    lines = out.stdout.splitlines()
    assert any(':19: note: Revealed type is "int"' in line for line in lines), out.stdout
    errors = [line for line in lines if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["20", "21"], out.stdout
    assert 'incompatible type "str"; expected "int"' in errors[0]
    assert 'Too many arguments for "s"' in errors[1]


def _mypy(cache: Path, *files: Path) -> list[str]:
    out = _run_mypy(cache, *files)
    assert "error: " in out.stdout or out.returncode == 0, out.stdout + out.stderr
    return [line for line in out.stdout.splitlines() if ": error:" in line]


@pytest.mark.slow
def test_mypy_reports_each_misuse_of_the_calling_api_and_nothing_once_corrected(
        mypy_cache: Path) -> None:
    misuse, correct = FIXTURES / "calling_misuse.py", FIXTURES / "calling_correct.py"
    expected = {
        number: match.group(1)
        for number, line in enumerate(misuse.read_text().splitlines(), start=1)
        if (match := re.search(r"# E: (.+)$", line))
    }
    assert len(expected) >= 15
    got: dict[int, list[str]] = {}
    for line in _mypy(mypy_cache, misuse):
        got.setdefault(int(line.split(":")[1]), []).append(line)
    assert sorted(got) == sorted(expected), "\n".join(sum(got.values(), []))
    for number, text in expected.items():
        assert len(got[number]) == 1 and text in got[number][0], (number, got[number])
    assert _mypy(mypy_cache, correct) == []


def test_the_typed_options_are_exactly_the_known_ones() -> None:
    # The TypedDict is what a type checker sees; DEFAULTS is what the runtime checks.
    assert set(typing.get_type_hints(ExecutionOptions, localns=_hint_names())) == KNOWN
    assert ExecutionOptions.__required_keys__ == frozenset()


def _hint_names() -> dict[str, object]:
    from conveyor.canvas import Signature
    from conveyor.connection import Publisher
    return {"Signature": Signature, "Publisher": Publisher}


@pytest.mark.slow
def test_every_package_passes_mypy_strict(mypy_cache: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    targets = [str(root / "core" / "src" / "conveyor"), str(root / "contrib" / "pytest" / "src"),
               str(root / "contrib" / "monitor" / "src")]
    targets += sorted(str(p) for p in (root / "plugins").glob("*/src"))
    out = _run_mypy(mypy_cache, *targets)
    assert out.returncode == 0, out.stdout + out.stderr
