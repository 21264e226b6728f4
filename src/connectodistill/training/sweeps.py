"""Sweeps: train a grid of settings, choose on validation, never on test.

``train --sweep learning_rate=1e-4,2e-4 --sweep lora_r=8,16`` trains every combination
(each a run folder ``<sweep>/point-<k>/``; with ``--folds`` each point is a cross-validation
run), reads each point's validation metric (the kept checkpoint's ``best_metric``: val loss,
lower is better, or val accuracy, higher is better; for a CV point the mean over its folds),
and writes ``sweep.json`` with every point, its metric, the chosen one and why. ``eval
--adapter-path <sweep>`` evaluates the chosen point. A rerun skips finished points.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.config import TrainConfig
from ..core.errors import UserError
from .run_folders import CV_CONFIG, SWEEP_FILE, chosen_run, fold_status, is_sweep
from .runs import RUN_CONFIG

__all__ = ["SWEEP_FILE", "choose", "chosen_run", "grid", "is_sweep", "parse_sweep", "train_sweep"]

# Settings a sweep may vary: the training knobs, not the data or the model.
SWEEPABLE = ("learning_rate", "lora_r", "lora_alpha", "lora_dropout", "epochs", "batch_size",
             "gradient_accumulation", "warmup_steps", "weight_decay", "max_pixels", "tune_vision",
             "tune_merger", "seed")


def parse_sweep(items: list[str] | dict | None) -> dict[str, list]:
    """``["learning_rate=1e-4,2e-4", "lora_r=8,16"]`` (or a mapping from a config file) -> grid axes."""
    if not items:
        return {}
    if isinstance(items, dict):
        pairs = [(str(k).replace("-", "_"), v if isinstance(v, list) else [v]) for k, v in items.items()]
    else:
        pairs = []
        for item in items:
            if "=" not in item:
                raise UserError(f"--sweep {item!r}: expected NAME=V1,V2 (e.g. learning_rate=1e-4,2e-4)")
            name, values = item.split("=", 1)
            pairs.append((name.strip().replace("-", "_"), [v.strip() for v in values.split(",") if v.strip()]))
    axes: dict[str, list] = {}
    for name, values in pairs:
        if name not in SWEEPABLE:
            raise UserError(f"--sweep {name}: not a sweepable setting; use one of {', '.join(SWEEPABLE)}")
        if not values:
            raise UserError(f"--sweep {name}: no values given")
        axes[name] = values
    return axes


def grid(cfg: TrainConfig, axes: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination, each validated as a TrainConfig (a bad value fails before training)."""
    from ..core.config import build_config

    points = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
    base = cfg.model_dump()
    out = []
    for p in points:
        checked = build_config(TrainConfig, {**base, "sweep": None}, p)
        out.append({k: getattr(checked, k) for k in p})
    return out


def _point_metric(run: Path) -> tuple[float | None, list]:
    """(the point's val metric, per-fold metrics) from its training_config.json file(s)."""
    if (run / CV_CONFIG).is_file():
        k = json.loads((run / CV_CONFIG).read_text())["folds"]
        per = [json.loads((run / f"fold-{i}" / RUN_CONFIG).read_text()).get("best_metric") for i in range(k)]
        vals = [v for v in per if v is not None]
        return (sum(vals) / len(vals) if len(vals) == len(per) and vals else None), per
    if (run / RUN_CONFIG).is_file():
        return json.loads((run / RUN_CONFIG).read_text()).get("best_metric"), []
    return None, []


def _done(run: Path) -> bool:
    if (run / CV_CONFIG).is_file():
        k = json.loads((run / CV_CONFIG).read_text())["folds"]
        return all(fold_status(run, i) == "done" for i in range(k))
    return (run / RUN_CONFIG).is_file()


def sweep_dir_for(cfg: TrainConfig) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir)
    model_short = Path(cfg.model.rstrip("/")).name
    parts = [model_short, cfg.run_name, "sweep", "cv" if cfg.folds else None, f"seed{cfg.seed}"]
    return Path(cfg.output_dir) / "_".join(re.sub(r"[^\w.-]+", "-", str(p)) for p in parts if p)


def train_sweep(cfg: TrainConfig, train: Callable[..., Path], *, callbacks: list | None = None) -> Path:
    """Train every grid point with ``train`` (``training.train``: a point may be a CV run),
    skipping finished ones; choose on val, write sweep.json."""
    from rich.console import Console

    if cfg.select_by == "last":
        raise UserError("a sweep chooses on validation: pass --select-by val_loss or --select-by val_accuracy")
    points = grid(cfg, parse_sweep(cfg.sweep))
    out = sweep_dir_for(cfg)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    for k, point in enumerate(points):
        run = out / f"point-{k}"
        if not _done(run):
            console.rule(f"sweep point {k + 1}/{len(points)}: {point}")
            train(cfg.model_copy(update={**point, "sweep": None, "run_dir": run, "resume": False}),
                  callbacks=callbacks)
    return choose(cfg, out, points)


def choose(cfg: TrainConfig, out: Path, points: list[dict]) -> Path:
    """Read every point's val metric, choose (lowest val loss / highest val accuracy), write sweep.json."""
    from rich.console import Console

    from ..core.data import atomic_write_json

    lower_is_better = cfg.select_by == "val_loss"
    axes = {name: list(dict.fromkeys(p[name] for p in points)) for name in points[0]} if points else {}
    record = {"axes": axes, "metric": cfg.select_by, "direction": "lower" if lower_is_better else "higher",
              "folds": bool(cfg.folds), "points": [], "chosen": None}
    for k, point in enumerate(points):
        metric, per_fold = _point_metric(out / f"point-{k}")
        record["points"].append({"index": k, "params": point, "run": f"point-{k}", "val_metric": metric,
                                 "per_fold": per_fold})
    scored = [p for p in record["points"] if p["val_metric"] is not None]
    if not scored:
        atomic_write_json(out / SWEEP_FILE, record)
        raise UserError(f"{out}: no sweep point has a val metric (no val samples?); cannot choose")
    best = (min if lower_is_better else max)(scored, key=lambda p: p["val_metric"])
    record["chosen"] = {**best, "why": f"{'lowest' if lower_is_better else 'highest'} {cfg.select_by}"
                        + (" (mean over folds)" if cfg.folds else "") + " among the points; test was never read"}
    atomic_write_json(out / SWEEP_FILE, record)
    Console(stderr=True).print(f"[bold]sweep[/] {out}: chose point-{best['index']} {best['params']} "
                               f"({cfg.select_by} {best['val_metric']:.4f}); evaluate it with "
                               f"`connectodistill eval --adapter-path {out}`")
    return out
