"""connectodistill: distil a teacher's ConnectomeBench answers into a small open VLM student.

The flow, a package per stage over the shared ``core``::

    teacher CSVs -> merging -> training -> evaluation (+ report) -> prediction (+ export)

Each CLI verb is one function here, importable from a notebook::

    from connectodistill import merge, train, evaluate, report, predict, export, demo
    from connectodistill import TrainConfig, UserError

Heavy libraries (torch, transformers, datasets) are imported only when a verb runs.
"""

import os
from importlib import import_module

__version__ = "0.1.0"

# OpenMP threads (torch's, MKL's, oneDNN's: GNU libgomp) that wait at a barrier sleep instead of
# spinning. Spinning is free on an idle machine; beside another job it burns the CPU time the
# other threads need: two demos at once on 2 cores took ~11x their time alone, with ~4.6x the
# CPU time (bench/README.md, "shared"). libgomp reads this once, when torch loads it, so it is
# set here, before any verb imports torch; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# name -> module; resolved lazily so `import connectodistill` stays fast. The modules are named
# by nouns, so no submodule can shadow a verb.
_VERBS = {
    "merge": "merging.recipe",
    "train": "training.recipe",
    "evaluate": "evaluation.recipe",
    "report": "evaluation.reporting",
    "predict": "prediction.recipe",
    "export": "prediction.exporting",
    "demo": "offline_demo",
}
_NAMES = {
    **{c: "core.config" for c in ("MergeConfig", "TrainConfig", "EvalConfig", "ReportConfig",
                                  "PredictConfig", "ExportConfig", "DemoConfig", "RemoteConfig")},
    "UserError": "core.errors",
}

__all__ = ["__version__", *_VERBS, *_NAMES]


def __getattr__(name: str):
    if name in _VERBS or name in _NAMES:
        return getattr(import_module(f"connectodistill.{_VERBS.get(name) or _NAMES[name]}"), name)
    raise AttributeError(f"module 'connectodistill' has no attribute {name!r}")
