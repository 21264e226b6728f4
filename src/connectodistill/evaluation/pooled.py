"""A cross-validation run's evaluation: each fold's adapter on its own test fold only (checked:
never a sample it trained or selected on), pooled into one result folder that reads like a
single eval (``predictions.csv`` with a ``fold`` column covering every sample once,
``summary.json`` with pooled and per-fold metrics, one confusion matrix).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from ..core.config import EvalConfig
from ..core.errors import UserError
from ..core.task import ID_COLUMNS
from ..training.cross_validation import _read_cv_config
from ..training.run_folders import fold_dir, fold_status
from ..training.runs import RUN_CONFIG

__all__ = ["evaluate_cv"]


def evaluate_cv(cfg: EvalConfig, evaluate_folds: Callable[[list[EvalConfig]], list[Path]]) -> Path:
    """Score each fold's adapter on its own test fold; pool into one result folder.

    ``evaluate_folds`` runs the folds' evals and returns their result folders: ``evaluate``
    passes one that runs them one after another here, ``eval --remote`` one that runs them at
    once on Modal."""
    import pandas as pd

    from ..core.scoring import classification_metrics
    from .results import (
        confidence_summary,
        plot_confidence,
        plot_confusion,
        print_summary,
        read_predictions,
        sample_ids_hash,
        write_predictions,
    )
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
                         "calibration": summary.get("calibration"),
                         **({"triage_threshold": summary["triage"]["threshold"]} if "triage" in summary else {})})
        if (res / "triage.csv").is_file():  # each fold chose its threshold on its own val part
            triages.append(read_predictions(res / "triage.csv").assign(fold=i))
    preds = pd.concat(frames, ignore_index=True)
    metrics = classification_metrics(preds["ground_truth_letter"].tolist(),
                                     [x if isinstance(x, str) else None for x in preds["predicted_letter"]],
                                     seed=cfg.seed, groups=preds["split_group"].to_numpy())
    counts = preds["ground_truth_letter"].value_counts()
    pooled = confidence_summary(preds, seed=cfg.seed) if "confidence" in preds else {}
    per_run = {"triage", "votes", "vote_accuracy", "ece", "brier", "aurc", "coverage_at_accuracy", "reliability",
               "uncalibrated", "calibration", "calibration_note"}
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
        # each fold's confidence at its own temperature, fit on its own val part
        "calibration": {"per_fold": [f["calibration"] for f in per_fold]},
        "cross_validation": {"folds": k, "per_fold": per_fold,
                             "pooled": "every sample scored once, by the fold that never trained or selected on it"},
        "generation_seconds": round(sum(json.loads((res / "summary.json").read_text())
                                        .get("generation_seconds") or 0 for res in results), 2),
    }
    triage = pd.concat(triages, ignore_index=True) if len(triages) == k else None
    if triage is not None:  # pooled: every sample decided by its own fold's threshold
        # each fold's triage.csv follows its predictions.csv row for row, so the pooled frames
        # align by position (a segment the benchmark repeats has one row per copy in both)
        if not (triage[list(ID_COLUMNS)].to_numpy() == preds[list(ID_COLUMNS)].to_numpy()).all():
            raise RuntimeError("the folds' triage rows do not follow their predictions")  # a bug, not input
        auto = (triage["decision"] == "auto").to_numpy()
        right = preds["correct"].to_numpy(bool)
        summary["triage"] = {"chosen_on": "val, per fold", "thresholds": [f.get("triage_threshold") for f in per_fold],
                             "target_accuracy": first_summary["triage"]["target_accuracy"],
                             "coverage": float(auto.mean()),
                             "accuracy": float(right[auto].mean()) if auto.any() else None}
    from ..core.data import atomic_write_text

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
