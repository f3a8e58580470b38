"""No private name crosses a module boundary in the core, or between the core and a
plugin: what one module needs from another is public (``conveyor.utils`` holds
what plugins share, such as URL masking). Read from the source with ``ast``, so a
new crossing fails here before it couples two modules by accident.

A private name is ``_name`` (not a dunder). A module may use its own private names
on any object (``other._merged`` in ``canvas.py``, where ``_merged`` is defined); a
crossing is an import of a private name, or ``x._name`` / ``getattr(x, "_name")``
where ``_name`` is defined only in another module of the core, or (from a plugin)
only in the core. Names our code never defines (a driver's, the standard
library's) are not ours to police here.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "core" / "src" / "conveyor"
PLUGINS = sorted(p for p in [*REPO.glob("plugins/*/src/*"), *REPO.glob("contrib/*/src/*")]
                 if p.is_dir() and not p.name.endswith(".egg-info"))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, module and instance
    attributes (``self._x = …``, ``_x: int``)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            found.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)
        elif isinstance(node, ast.arg):
            found.add(node.arg)
    return {n for n in found if _private(n)}


def _used(tree: ast.AST) -> list[tuple[int, str, str]]:
    """``(line, name, how)`` for each private name read from another object, and
    each private name imported."""
    used: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.startswith("conveyor") and any(
                    _private(part) for part in module.split(".")):
                used.append((node.lineno, module, "import from a private module"))
            how = "relative import" if node.level else "import"
            used += [(node.lineno, alias.name, how) for alias in node.names
                     if _private(alias.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                used.append((node.lineno, node.attr, "attribute"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and _private(node.args[1].value)):
            used.append((node.lineno, node.args[1].value, node.func.id))
    return used


def _modules(root: Path) -> dict[Path, ast.AST]:
    return {path: ast.parse(path.read_text(encoding="utf-8"), str(path))
            for path in sorted(root.rglob("*.py"))}


def crossings() -> list[str]:
    core = _modules(CORE)
    plugins = {pkg: _modules(pkg) for pkg in PLUGINS}
    where: dict[str, set[Path]] = defaultdict(set)
    for path, tree in core.items():
        for name in _defined(tree):
            where[name].add(path)
    in_core = set(where)
    found: list[str] = []
    for path, tree in core.items():
        mine = _defined(tree)
        for line, name, how in _used(tree):
            if how == "import from a private module":
                found.append(f"{path.relative_to(REPO)}:{line}: {how} {name}")
            elif how.endswith("import") or (name not in mine and name in in_core):
                found.append(f"{path.relative_to(REPO)}:{line}: {how} {name} "
                             f"(defined in {sorted(p.name for p in where[name])})")
    for pkg, modules in plugins.items():
        own = set().union(*(_defined(tree) for tree in modules.values()))
        for path, tree in modules.items():
            for line, name, how in _used(tree):
                if how == "relative import":
                    continue  # inside the plugin's own package
                if how in ("import", "import from a private module") or (
                        name in in_core and name not in own):
                    found.append(f"{path.relative_to(REPO)}:{line}: {how} {name} "
                                 "(the core's)")
    return found


def test_no_private_name_crosses_the_core_or_into_it_from_a_plugin() -> None:
    assert PLUGINS and len(_modules(CORE)) > 20  # the layout this test reads
    assert crossings() == []


def test_the_check_sees_a_crossing(tmp_path: Path) -> None:
    """The same reading finds the kinds of crossing it is there to find."""
    tree = ast.parse("from conveyor.app import _build\n"
                     "from conveyor._impl import thing\n"
                     "x = app._publisher\n"
                     "y = getattr(worker, '_running')\n"
                     "z = self._mine\n")
    assert [(name, how) for _, name, how in _used(tree)] == [
        ("_build", "import"), ("conveyor._impl", "import from a private module"),
        ("_publisher", "attribute"), ("_running", "getattr")]
