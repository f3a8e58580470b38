"""The fault suite's figures reach a plain run's output (CI runs ``pytest`` without
``-s``, which would swallow a test's prints): one fault test run as CI runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ONE = ("tests/fault/test_outages.py::"
       "test_publishing_under_a_held_lock_honours_the_callers_bounds[sqlite]")


def test_a_plain_run_prints_the_figures_in_its_summary() -> None:
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
                          "-p", "no:cacheprovider", ONE], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = out.stdout.split("fault suite figures", 1)
    assert len(summary) == 2, out.stdout[-3000:]
    assert "[fault] sqlite: publish under a held lock gave up after " in summary[1]
