"""Typed tasks: mypy sees the function's parameters through Task[P, R]."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_mypy_checks_task_calls_against_the_function(tmp_path: Path) -> None:
    if shutil.which("mypy") is None and not (Path(sys.executable).parent / "mypy").exists():
        pytest.fail("mypy is a dev dependency: uv sync should have installed it")
    source = tmp_path / "snippet.py"
    source.write_text(textwrap.dedent(SNIPPET).lstrip("\n"))
    out = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--strict",
                          "--cache-dir", str(tmp_path / ".mypy"), str(source)],
                         capture_output=True, text=True, timeout=240)
    lines = out.stdout.splitlines()
    assert any(':19: note: Revealed type is "int"' in line for line in lines), out.stdout
    errors = [line for line in lines if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["20", "21"], out.stdout
    assert 'incompatible type "str"; expected "int"' in errors[0]
    assert 'Too many arguments for "s"' in errors[1]


@pytest.mark.slow
def test_every_package_passes_mypy_strict(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    targets = [str(root / "core" / "src" / "conveyor"), str(root / "contrib" / "pytest" / "src")]
    targets += sorted(str(p) for p in (root / "plugins").glob("*/src"))
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir",
                          str(tmp_path / ".mypy"), *targets],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
