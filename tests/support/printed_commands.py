"""Every command line the documentation prints: the fenced ``sh``/``console`` blocks
of the repository's Markdown files and the examples of ``conveyor --help``.

A fenced block must say what it is: a block without a language is reported as an
error, so a command cannot hide in one and escape the test that runs them all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Languages whose lines are commands (``console``: only lines after ``$ ``).
SHELL = {"sh", "bash", "shell", "console"}
_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```",
                    re.M | re.S)
_SKIP_DIRS = {".git", ".venv", "node_modules", "data", "build", "dist"}


@dataclass(frozen=True)
class Printed:
    """One command line as printed, and where."""

    command: str
    where: str

    @property
    def key(self) -> str:
        """The command without its trailing comment (what a handler is looked up by)."""
        return re.sub(r"\s+#.*$", "", self.command).strip()


def markdown_files() -> list[Path]:
    """Every Markdown file of the checkout, outside tool and data directories."""
    return sorted(p for p in REPO.rglob("*.md")
                  if not _SKIP_DIRS & set(p.relative_to(REPO).parts[:-1])
                  and not any(part.startswith(".") for part in p.relative_to(REPO).parts))


def _commands(body: str, lang: str) -> list[tuple[int, str]]:
    """``(line offset in the block, command)`` for each command of a fenced block."""
    lines: list[tuple[int, str]] = []
    pending = ""
    for offset, raw in enumerate(body.splitlines(), 1):
        if lang == "console":
            if pending:
                line = raw
            elif raw.startswith("$ "):
                line = raw[2:]
            else:
                continue  # output
        else:
            line = raw
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        lines.append((offset, (pending + line).strip()))
        pending = ""
    return lines


def from_markdown() -> tuple[list[Printed], list[str]]:
    """The printed commands, and the fenced blocks that carry no language."""
    found: list[Printed] = []
    untagged: list[str] = []
    for path in markdown_files():
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(REPO).as_posix()
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            lang = match.group("lang")
            if not lang:
                untagged.append(f"{rel}:{line}")
            elif lang in SHELL:
                found += [Printed(cmd, f"{rel}:{line + offset}")
                          for offset, cmd in _commands(match.group("body"), lang)]
    return found, untagged


def from_help(epilog: str) -> list[Printed]:
    """The command lines under ``examples:`` in ``conveyor --help``."""
    _, _, examples = epilog.partition("examples:\n")
    return [Printed(line.strip(), "conveyor --help")
            for line in examples.splitlines() if line.strip()]
