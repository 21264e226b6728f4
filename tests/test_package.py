"""The package's face: every verb is a function, whatever submodules were imported before;
the stage packages import only downwards."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import connectodistill

PKG = Path(connectodistill.__file__).parent
# Lowest first: a package may import its own modules and any package below it, never above.
ORDER = ["core", "merging", "training", "evaluation", "prediction"]


def test_verbs_stay_functions_after_every_submodule_is_imported():
    for mod in pkgutil.walk_packages(connectodistill.__path__, "connectodistill."):
        if not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)
    for verb in connectodistill.__all__:
        if verb != "__version__":
            assert callable(getattr(connectodistill, verb)), verb  # a module named like a verb would shadow it


def _imported_packages(path: Path) -> set[str]:
    """The top-level packages of connectodistill that a module imports (relative or absolute)."""
    here = path.relative_to(PKG).parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[: len(here) - (node.level - 1)]) if node.level > 1 else list(here)
                parts = base + (node.module.split(".") if node.module else [])
                names = parts[:1] or [a.name for a in node.names]
            elif (node.module or "").startswith("connectodistill."):
                names = [node.module.split(".")[1]]
            else:
                continue
            found.update(names)
    return found


def test_no_stage_imports_a_later_stage():
    for i, pkg in enumerate(ORDER):
        later = set(ORDER[i + 1:]) | {"remote", "synthetic", "cli", "offline_demo"}
        for path in (PKG / pkg).rglob("*.py"):
            assert not _imported_packages(path) & later, f"{path.relative_to(PKG)} imports {_imported_packages(path) & later}"
