"""The package's face: every verb is a function, whatever submodules were imported before."""

from __future__ import annotations

import importlib
import pkgutil


def test_verbs_stay_functions_after_every_submodule_is_imported():
    import connectodistill

    for mod in pkgutil.iter_modules(connectodistill.__path__):
        if mod.name not in ("__main__",):
            importlib.import_module(f"connectodistill.{mod.name}")
    for verb in connectodistill.__all__:
        if verb != "__version__":
            assert callable(getattr(connectodistill, verb)), verb  # a module named like a verb would shadow it
