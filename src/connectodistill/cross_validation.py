"""Cross-validated distillation: K students, each trained without one fold and scored on it.

On 377 samples a 10% test split holds ~38 samples (a 95% interval of about +-13 points);
with K folds every sample gets one held-out prediction (about +-4 points) and the student is
compared with the teacher on the same samples as a paired difference (``reporting``).

- ``train_cv``: one complete run folder per fold under ``<cv run>/fold-<i>/`` plus
  ``cv_config.json``. Folds run one after another here (``remote`` fans them out to one GPU
  container each); a rerun skips finished folds and resumes interrupted ones; a failed fold
  is recorded and the others go on.
- ``evaluate_cv``: each fold's adapter on its own test fold only (checked: never a sample it
  trained or selected on), pooled into one result folder that reads like a single eval
  (``predictions.csv`` with a ``fold`` column covering every sample once, ``summary.json``
  with pooled and per-fold metrics, one confusion matrix).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from .config import EvalConfig, TrainConfig
from .errors import UserError
from .run_folders import CV_CONFIG, fold_dir, fold_status, is_cv_run
from .runs import RUN_CONFIG
from .task import ID_COLUMNS

__all__ = ["CV_CONFIG", "cv_folds", "evaluate_cv", "fold_dir", "is_cv_run", "train_cv"]

def cv_folds(merged: Path) -> list[dict]:
    """The per-fold split lists of a ``merge --folds K`` file (UserError if it has none)."""
    from .data import read_merged

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
    from .data import sha256_file

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
    from .data import atomic_write_json

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


# ----------------------------------------------------------------------------- eval
def evaluate_cv(cfg: EvalConfig, evaluate_folds: Callable[[list[EvalConfig]], list[Path]]) -> Path:
    """Score each fold's adapter on its own test fold; pool into one result folder.

    ``evaluate_folds`` runs the folds' evals and returns their result folders: ``evaluate``
    passes one that runs them one after another here, ``eval --remote`` one that runs them at
    once on Modal."""
    import pandas as pd

    from .results import (
        confidence_summary,
        plot_confidence,
        plot_confusion,
        print_summary,
        read_predictions,
        sample_ids_hash,
        write_predictions,
    )
    from .scoring import classification_metrics
    cv_dir = Path(cfg.adapter_path)
    config = _read_cv_config(cv_dir)
    k = int(config["folds"])
    if cfg.split not in (None, "test"):
        raise UserError(f"a cross-validation run is scored on each fold's own test fold; drop --split {cfg.split}")
    if cfg.num_samples is not None:
        raise UserError("--num-samples cannot be used with a cross-validation run (every sample is scored once)")
    missing = [i for i in range(k) if fold_status(cv_dir, i) != "done"]
    if missing:
        raise UserError(f"{cv_dir}: fold(s) {', '.join(map(str, missing))} not trained yet; rerun "
                        "`connectodistill train --folds` with the same options to finish them")
    name = cfg.name or re.sub(r"[^\w.-]+", "-", f"{cv_dir.name}_cv")
    out_dir = Path(cfg.output_dir) / name
    tests, fold_cfgs = [], []
    for i in range(k):
        run = json.loads((fold_dir(cv_dir, i) / RUN_CONFIG).read_text())
        sp = run["splits"]
        test = {tuple(p) for p in sp["test"]}
        used = {tuple(p) for p in sp["train"]} | {tuple(p) for p in sp["val"]}
        if test & used:  # cannot happen with merge's folds; guards hand-edited metadata
            raise UserError(f"fold {i}: {len(test & used)} test samples were also trained or selected on")
        tests.append(test)
        fold_cfgs.append(cfg.model_copy(update={"adapter_path": fold_dir(cv_dir, i), "split": "test",
                                                "output_dir": out_dir / "folds", "name": f"fold-{i}"}))
    results = evaluate_folds(fold_cfgs)

    frames, per_fold, first_summary, triages = [], [], None, []
    seen: set[tuple[int, int]] = set()
    for i, (res, test) in enumerate(zip(results, tests, strict=True)):
        preds = read_predictions(res / "predictions.csv")
        keys = set(zip(preds[ID_COLUMNS[0]], preds[ID_COLUMNS[1]], strict=True))
        if keys - test or keys & seen:
            raise RuntimeError(f"fold {i} scored samples outside its own test fold")  # a bug, not input
        seen |= keys
        frames.append(preds.assign(fold=i))
        summary = json.loads((res / "summary.json").read_text())
        first_summary = first_summary or summary
        per_fold.append({"fold": i, "n": summary["n"], "accuracy": summary["accuracy"],
                         "accuracy_ci": summary["accuracy_ci"], "balanced_accuracy": summary["balanced_accuracy"],
                         **({"triage_threshold": summary["triage"]["threshold"]} if "triage" in summary else {})})
        if (res / "triage.csv").is_file():  # each fold chose its threshold on its own val part
            triages.append(read_predictions(res / "triage.csv").assign(fold=i))
    preds = pd.concat(frames, ignore_index=True)
    metrics = classification_metrics(preds["ground_truth_letter"].tolist(),
                                     [x if isinstance(x, str) else None for x in preds["predicted_letter"]],
                                     seed=cfg.seed, groups=preds["split_group"].to_numpy())
    counts = preds["ground_truth_letter"].value_counts()
    pooled = confidence_summary(preds, seed=cfg.seed) if "confidence" in preds else {}
    per_run = {"triage", "votes", "vote_accuracy", "ece", "brier", "aurc", "coverage_at_accuracy", "reliability"}
    summary = {
        **{k2: v for k2, v in first_summary.items() if k2 not in metrics and k2 not in per_run},
        **pooled,
        "name": out_dir.name,
        **metrics,
        "majority_class_rate": float(counts.iloc[0] / len(preds)),
        "sample_ids_hash": sample_ids_hash(preds[ID_COLUMNS[0]], preds[ID_COLUMNS[1]]),
        "includes_train_samples": False,
        "adapter": str(cv_dir),
        "prompt_source_counts": preds["prompt_source"].value_counts().to_dict(),
        "distinct_prompts": int(preds["prompt_sha256"].nunique()),
        "cross_validation": {"folds": k, "per_fold": per_fold,
                             "pooled": "every sample scored once, by the fold that never trained or selected on it"},
        "generation_seconds": round(sum(json.loads((res / "summary.json").read_text())
                                        .get("generation_seconds") or 0 for res in results), 2),
    }
    triage = pd.concat(triages, ignore_index=True) if len(triages) == k else None
    if triage is not None:  # pooled: every sample decided by its own fold's threshold
        auto = (triage["decision"] == "auto").to_numpy()
        right = preds.set_index([ID_COLUMNS[0], ID_COLUMNS[1]]).loc[
            list(zip(triage[ID_COLUMNS[0]], triage[ID_COLUMNS[1]], strict=True)), "correct"].to_numpy(bool)
        summary["triage"] = {"chosen_on": "val, per fold", "thresholds": [f.get("triage_threshold") for f in per_fold],
                             "target_accuracy": first_summary["triage"]["target_accuracy"],
                             "coverage": float(auto.mean()),
                             "accuracy": float(right[auto].mean()) if auto.any() else None}
    from .data import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(preds, out_dir / "predictions.csv")
    if triage is not None:
        write_predictions(triage, out_dir / "triage.csv")
    if pooled:
        plot_confidence(summary, preds, out_dir)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1, default=_json_default))
    plot_confusion(summary, out_dir / "confusion.png")
    print_summary(summary)
    return out_dir


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)
