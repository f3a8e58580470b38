"""bench/codecs.py stays runnable: a very short run prints the JSON report."""

from __future__ import annotations

import json
import subprocess
import sys

from codec_support import REPO
from conveyor.plugins import find


def test_codec_benchmark_runs_and_covers_every_codec() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "codecs.py"), "--seconds", "0.01"],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert 500 <= report["payloads"]["task"]["json_size"] <= 700
    assert 100_000 <= report["payloads"]["100k"]["json_size"] < 101_000
    assert set(report["serializers"]) == {p.name for p in find("conveyor.serializers")}
    assert set(report["compressors"]) == {p.name for p in find("conveyor.compressors")}
    for section in ("serializers", "compressors"):
        for name, row in report[section].items():
            for label in ("task", "100k"):
                assert row[label]["ops_per_s"] > 0, (section, name, row)
                assert row[label]["size"] > 0, (section, name, row)
