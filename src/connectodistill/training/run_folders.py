"""What a folder written by this tool is: a run, a cross-validation run (its folds), a sweep
(its chosen point) or an exported model, by the file each kind holds.

The kinds nest: a sweep point may be a CV run, a CV run holds one run per fold. Every verb
that takes a folder (eval, predict, export, report) asks here which kind it got.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import UserError
from .runs import RUN_CONFIG

CV_CONFIG = "cv_config.json"  # a cross-validation run: folds 0..K-1 in fold-<i>/
SWEEP_FILE = "sweep.json"  # a sweep: every point, its val metric, the chosen one
EXPORT_MANIFEST = "connectodistill_export.json"  # a merged (exported) model folder


def is_cv_run(path) -> bool:
    return path is not None and (Path(path) / CV_CONFIG).is_file()


def is_sweep(path) -> bool:
    return path is not None and (Path(path) / SWEEP_FILE).is_file()


def is_export(path) -> bool:
    return path is not None and (Path(path) / EXPORT_MANIFEST).is_file()


def fold_dir(cv_dir: Path, fold: int) -> Path:
    return Path(cv_dir) / f"fold-{fold}"


def fold_status(cv_dir: Path, fold: int) -> str:
    """``done`` (adapter + training_config.json), ``partial`` (checkpoints only) or ``missing``."""
    d = fold_dir(cv_dir, fold)
    if (d / RUN_CONFIG).is_file():
        return "done"
    return "partial" if (d / "checkpoints").is_dir() else "missing"


def chosen_run(path: Path) -> Path:
    """The chosen point's run folder of a finished sweep."""
    data = json.loads((Path(path) / SWEEP_FILE).read_text())
    if not data.get("chosen"):
        raise UserError(f"{path}: the sweep has no chosen point yet; rerun the same `train --sweep` command")
    return Path(path) / data["chosen"]["run"]
