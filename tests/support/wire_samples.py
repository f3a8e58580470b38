"""The captured Celery traffic in ``tests/data/wire-samples`` (what each file holds is
described in its README): the one place tests read it from, so every test sees the
same files and none reads outside the checkout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The directory of captures, inside the repository.
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "wire-samples"


def sample(name: str) -> dict[str, Any]:
    """One capture, by file name without ``.json`` (``"redis-json-plain"``)."""
    path = SAMPLES / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SAMPLES.glob("*.json")))
        raise FileNotFoundError(f"no wire sample {name!r} in {SAMPLES}; known: {known}")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def samples(pattern: str = "*") -> list[tuple[str, dict[str, Any]]]:
    """``(name, capture)`` for every capture whose name matches the glob ``pattern``,
    sorted by name. Raises if nothing matches, so a moved directory fails loudly."""
    found = [(path.stem, json.loads(path.read_text()))
             for path in sorted(SAMPLES.glob(f"{pattern}.json"))]
    if not found:
        raise FileNotFoundError(f"no wire samples match {pattern!r} in {SAMPLES}")
    return found
