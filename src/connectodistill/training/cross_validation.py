"""Cross-validated distillation: K students, each trained without one fold and scored on it.

On 377 samples a 10% test split holds ~38 samples (a 95% interval of about +-13 points);
with K folds every sample gets one held-out prediction (about +-4 points) and the student is
compared with the teacher on the same samples as a paired difference (``reporting``).

- ``train_cv``: one complete run folder per fold under ``<cv run>/fold-<i>/`` plus
  ``cv_config.json``. Folds run one after another here (``remote`` fans them out to one GPU
  container each); a rerun skips finished folds and resumes interrupted ones; a failed fold
  is recorded and the others go on.
The pooled evaluation of a CV run is ``evaluation/pooled.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from ..core.config import TrainConfig
from ..core.errors import UserError
from .run_folders import CV_CONFIG, fold_dir, fold_status, is_cv_run

__all__ = ["CV_CONFIG", "cv_folds", "fold_dir", "is_cv_run", "train_cv"]

def cv_folds(merged: Path) -> list[dict]:
    """The per-fold split lists of a ``merge --folds K`` file (UserError if it has none)."""
    from ..core.data import read_merged

    folds = read_merged(merged, columns=[])[1].get("fold_splits") or []
    if not folds:
        raise UserError(f"{merged} has no cross-validation folds; re-run merge with --folds K")
    return folds


def cv_run_name(cfg: TrainConfig, k: int) -> str:
    """A CV run's folder name: like a run's, without the timestamp, so a rerun finds it."""
    model_short = Path(cfg.model.rstrip("/")).name
    parts = [model_short, cfg.run_name, f"cv{k}", f"epochs{cfg.epochs:g}", f"lr{cfg.learning_rate:g}",
             f"r{cfg.lora_r}", f"seed{cfg.seed}"]
    return "_".join(re.sub(r"[^\w.-]+", "-", str(p)) for p in parts if p)


def _read_cv_config(cv_dir: Path) -> dict:
    try:
        return json.loads((cv_dir / CV_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{cv_dir / CV_CONFIG}: unreadable ({e}); remove the folder or pass another --run-dir") from e


def plan_cv(cfg: TrainConfig) -> tuple[Path, list[int], dict]:
    """(CV run folder, the folds to train now, cv_config) for ``cfg``; checks the folder fits."""
    from ..core.data import sha256_file

    merged = Path(cfg.augmented_dataset)
    if not merged.is_file():
        raise UserError(f"merged dataset not found: {merged} (run `connectodistill merge --folds K` first)")
    folds = cv_folds(merged)
    k = len(folds)
    cv_dir = Path(cfg.run_dir) if cfg.run_dir else Path(cfg.output_dir) / cv_run_name(cfg, k)
    digest = sha256_file(merged)
    if (cv_dir / CV_CONFIG).is_file():
        existing = _read_cv_config(cv_dir)
        if existing.get("merged_sha256") != digest:
            raise UserError(f"{cv_dir} was trained on another merged file; pass another --run-dir or remove it")
        config = existing
    else:
        config = {"folds": k, "merged_file": str(merged), "merged_sha256": digest,
                  "settings": cfg.model_dump(mode="json"), "fold_runs": {},
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if cfg.fold is not None and not 0 <= cfg.fold < k:
        raise UserError(f"--fold {cfg.fold} is out of range: {merged} has folds 0..{k - 1}")
    todo = [cfg.fold] if cfg.fold is not None else list(range(k))
    return cv_dir, todo, config


def fold_config(cfg: TrainConfig, cv_dir: Path, fold: int) -> TrainConfig:
    """The single-fold training config: that fold's split lists, its own run folder."""
    partial = fold_status(cv_dir, fold) == "partial"
    return cfg.model_copy(update={"fold": fold, "folds": False, "run_dir": fold_dir(cv_dir, fold),
                                  "resume": partial})


def write_cv_config(cv_dir: Path, config: dict) -> None:
    from ..core.data import atomic_write_json

    cv_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cv_dir / CV_CONFIG, config)


def train_cv(cfg: TrainConfig, train: Callable[..., Path], *, callbacks: list | None = None) -> Path:
    """Train one student per fold (or only ``cfg.fold``) with ``train`` (``training.train``, one
    run per call); return the CV run folder.

    Finished folds are skipped, interrupted ones resumed from their last checkpoint. A fold
    that fails is recorded in ``cv_config.json`` and the others still run; the call then
    raises a UserError naming the failed folds (rerun to continue only those).
    """
    from rich.console import Console

    console = Console(stderr=True)
    cv_dir, todo, config = plan_cv(cfg)
    write_cv_config(cv_dir, config)
    failed = {}
    for i in todo:
        status = fold_status(cv_dir, i)
        if status == "done":
            console.print(f"fold {i}: done already, skipped")
            config["fold_runs"].setdefault(str(i), {"status": "done", "run": fold_dir(cv_dir, i).name})
            continue
        console.rule(f"fold {i} of {config['folds']}" + (" (resuming)" if status == "partial" else ""))
        try:
            train(fold_config(cfg, cv_dir, i), callbacks=callbacks)
        except UserError:
            raise  # bad input is the same for every fold: stop at once
        except Exception as e:  # noqa: BLE001 - one fold's failure must not lose the others
            failed[i] = f"{type(e).__name__}: {e}".splitlines()[0]
            config["fold_runs"][str(i)] = {"status": "failed", "error": failed[i]}
        else:
            config["fold_runs"][str(i)] = {"status": "done", "run": fold_dir(cv_dir, i).name}
        write_cv_config(cv_dir, config)
    if failed:
        listing = "; ".join(f"fold {i}: {msg}" for i, msg in failed.items())
        raise UserError(f"{len(failed)} fold(s) failed ({listing}); the others are kept in {cv_dir}: "
                        "rerun the same command to train only what is missing")
    console.print(f"[bold]cross-validation run[/] {cv_dir} ({config['folds']} folds)")
    return cv_dir
