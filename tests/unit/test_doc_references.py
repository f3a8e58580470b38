"""What the documentation and the docstrings point a reader to exists in this
repository: every relative Markdown link names a file of the checkout, and every
``docs/architecture.md, "Section"`` a docstring cites is a heading there. No
document of a development checkout beside it (a design note, a protocol note, a
sibling folder of notes) is named: a user of this repository does not have them.
"""

from __future__ import annotations

import re
from pathlib import Path

from printed_commands import REPO, markdown_files

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_CITE = re.compile(r'docs/architecture\.md,\s+((?:"[^"]+"(?:,\s*|\s+and\s+)?)+)')
SOURCES = [p for pattern in ("core/src/**/*.py", "plugins/*/src/**/*.py",
                             "contrib/*/src/**/*.py", "bench/*.py")
           for p in REPO.glob(pattern)]
ABSENT = re.compile(r"DESIGN\.md|PROTOCOL\.md|\.\./shared")


def test_every_relative_markdown_link_names_a_file_here() -> None:
    broken = []
    for path in markdown_files():
        for target in _LINK.findall(path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or an anchor in the same page
            if not (path.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{path.relative_to(REPO)}: {target}")
    assert not broken, broken


def test_every_cited_architecture_section_is_a_heading() -> None:
    headings = {m.group(1).strip() for m in re.finditer(
        r"^#+\s+(.+)$", (REPO / "docs" / "architecture.md").read_text(), re.M)}
    cited: dict[str, list[str]] = {}
    for path in SOURCES:
        text = re.sub(r"\s+", " ", path.read_text(encoding="utf-8"))
        for group in _CITE.findall(text):
            for name in re.findall(r'"([^"]+)"', group):
                cited.setdefault(name, []).append(str(path.relative_to(REPO)))
    assert cited  # the pattern still finds the citations
    missing = {name: where for name, where in cited.items() if name not in headings}
    assert not missing, f"cited sections that docs/architecture.md lacks: {missing}"


def test_nothing_names_a_document_outside_the_repository() -> None:
    found = [f"{path.relative_to(REPO)}:{n}" for path in [*SOURCES, *markdown_files()]
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if ABSENT.search(line)]
    assert not found, found
