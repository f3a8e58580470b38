"""Renders docs/settings.md from :mod:`conveyor.settings`, so the reference cannot
drift from the code (a test compares the committed page with :func:`render`).

``python -m conveyor.settings_reference docs/settings.md`` rewrites the page.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .settings import DEFAULTS, DESCRIPTIONS, ENVIRONMENT

HEADER = """\
# Settings

Every setting Conveyor knows, its default and what it does. Set them when creating
the app (`Conveyor("proj", task_serializer="msgpack")`), with
`app.conf.update(...)` or `app.conf.name = value`. A name not listed here is an
error at once, naming the closest known one.

This page is generated from `conveyor.settings`; after changing a setting run
`python -m conveyor.settings_reference docs/settings.md`.

| setting | default | environment | what it does |
|---|---|---|---|
"""


def _default(value: Any) -> str:
    return f"`{value!r}`"


def render() -> str:
    """The settings reference as Markdown, one row per setting in table order."""
    rows = []
    for name, default in DEFAULTS.items():
        env = f"`{ENVIRONMENT[name]}`" if name in ENVIRONMENT else ""
        text = DESCRIPTIONS[name].replace("|", "\\|")
        rows.append(f"| `{name}` | {_default(default)} | {env} | {text} |\n")
    return HEADER + "".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Write the reference to the path given, or print it."""
    args = sys.argv[1:] if argv is None else argv
    if args:
        Path(args[0]).write_text(render(), encoding="utf-8")
    else:
        sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
