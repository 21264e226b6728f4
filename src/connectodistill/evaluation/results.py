"""An eval result folder: ``predictions.csv`` (one row per sample), ``summary.json``, the
confusion / reliability / risk-coverage plots, and the terminal table.

Written by ``evaluate`` for one adapter or model, and by ``evaluate_cv`` for the pooled folds of
a cross-validation run; read back by ``report``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..core.data import sample_ids_hash  # noqa: F401 - importable from here too
from ..core.task import ID_COLUMNS


def uncalibrated_probs(preds):
    """The letter distributions before the temperature (``p_a``..``p_g`` hold them after):
    temperature scaling is invertible, softmax(T * log p) undoes softmax(log p / T); each row
    by its own ``temperature`` (the folds of a pooled CV result differ)."""
    import numpy as np

    from ..core.calibration import LETTER_COLUMNS, apply_temperature

    p = preds[list(LETTER_COLUMNS)].to_numpy(float)
    if "temperature" not in preds:
        return p
    temps = preds["temperature"].to_numpy(float)
    out = np.empty_like(p)
    for temp in np.unique(temps):
        rows = temps == temp
        out[rows] = apply_temperature(p[rows], 1.0 / temp)
    return out


NO_PARSED = "n/a: no parsed answers"


def confidence_summary(preds, seed: int = 0) -> dict:
    """Calibration and selective accuracy of a predictions frame (``calibration.summarize``):
    ece, brier, aurc, coverage_at_accuracy, reliability of the calibrated ``confidence``, and
    the same before the temperature under ``uncalibrated``; with vote columns also
    ``vote_accuracy`` and ``votes`` (the majority's metrics and vote-share calibration).
    Without a single parsed answer there is nothing to calibrate: the figures are None and
    ``calibration_note`` says so.

    Computed from the frame alone, so a pooled frame (cross-validation) gets pooled figures.
    """
    import numpy as np

    from ..core.calibration import LETTER_COLUMNS, summarize, vote_distribution
    from ..core.scoring import classification_metrics

    truth = preds["ground_truth_letter"].tolist()
    parsed = preds["predicted_letter"].map(lambda x: isinstance(x, str)).to_numpy()
    correct = preds["correct"].to_numpy(float)
    if not parsed.any():
        out = {k: None for k in ("ece", "brier", "aurc", "coverage_at_accuracy", "reliability")}
        out["calibration_note"] = NO_PARSED
    else:
        out = summarize(preds["confidence"].to_numpy(float), correct, preds[list(LETTER_COLUMNS)].to_numpy(float),
                        truth, parsed=parsed)
        if "confidence_raw" in preds:
            before = summarize(preds["confidence_raw"].to_numpy(float), correct, uncalibrated_probs(preds), truth,
                               parsed=parsed)
            out["uncalibrated"] = {k: before[k] for k in ("ece", "brier", "aurc", "coverage_at_accuracy",
                                                          "reliability")}
    if "vote_letters" in preds:
        letters = [x if isinstance(x, str) else None for x in preds["vote_letter"]]
        m = classification_metrics(truth, letters, seed=seed,
                                   groups=preds["split_group"].to_numpy() if "split_group" in preds else None)
        dist = np.stack([vote_distribution([c if c != "-" else None for c in str(v)]) for v in preds["vote_letters"]])
        vote_right = np.array([x == t for x, t in zip(letters, truth, strict=True)], dtype=float)
        out["vote_accuracy"] = m["accuracy"]
        out["votes"] = {**{k: m[k] for k in ("n", "accuracy", "accuracy_ci", "balanced_accuracy",
                                             "balanced_accuracy_ci", "unparsed_rate")},
                        **summarize(preds["vote_share"].to_numpy(float), vote_right, dist, truth,
                                    parsed=np.array([x is not None for x in letters]))}
    return out


def plot_confidence(summary: dict, preds, out_dir: Path) -> None:
    """``reliability.png`` (calibrated and uncalibrated letter probability, and vote share with
    --votes) and ``risk_coverage.png``; neither without a parsed answer (nothing to plot)."""
    from ..core.calibration import plot_reliability, plot_risk_coverage

    if summary.get("reliability") is None:
        return
    calibration = summary.get("calibration") or {}
    temp = calibration.get("temperature")
    label = (f"calibrated (T={temp:.2f})" if temp is not None else
             "calibrated (each fold's T)" if "per_fold" in calibration else "letter probability")
    bins = {label: summary["reliability"]}
    curves = {label: (preds["confidence"].to_numpy(float), preds["correct"].to_numpy(float))}
    if "uncalibrated" in summary:
        bins = {"uncalibrated": summary["uncalibrated"]["reliability"], **bins}
        curves = {"uncalibrated": (preds["confidence_raw"].to_numpy(float), preds["correct"].to_numpy(float)),
                  **curves}
    if "votes" in summary:
        k = summary["votes"].get("k")
        bins[f"vote share (K={k})"] = summary["votes"]["reliability"]
        correct = (preds["vote_letter"] == preds["ground_truth_letter"]).to_numpy(float)
        curves[f"vote share (K={k})"] = (preds["vote_share"].to_numpy(float), correct)
    title = f"{summary['name']} (n={summary['n']})"
    ece = f"ECE {summary['uncalibrated']['ece']:.3f} -> {summary['ece']:.3f}" if "uncalibrated" in summary \
        else f"ECE {summary['ece']:.3f}"
    plot_reliability(bins, out_dir / "reliability.png", f"{title}: {ece}")
    plot_risk_coverage(curves, out_dir / "risk_coverage.png", title)


def write_predictions(preds, path: Path) -> None:
    """Per-sample CSV. Every text field is quoted: generated text can hold a bare '\r', which
    minimal quoting leaves unquoted and CSV readers then take for a line break."""
    from ..core.data import atomic_write_text

    atomic_write_text(path, preds.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC))


def read_predictions(path: Path):
    """The per-sample CSV back, ids as exact int64."""
    import pandas as pd

    return pd.read_csv(path, dtype={c: "int64" for c in ID_COLUMNS})


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


def plot_confusion(summary: dict, path: Path) -> None:
    """Confusion matrix as a PNG (rows: ground truth; columns: prediction, incl. unparsed)."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    cm = summary["confusion"]
    m = np.array(cm["matrix"])
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(cm["columns"])), cm["columns"])
    ax.set_yticks(range(len(cm["rows"])), cm["rows"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center",
                        color="white" if m[i, j] > m.max() / 2 else "black")
    flag = "  [INCLUDES TRAIN SAMPLES]" if summary.get("includes_train_samples") else ""
    ax.set_title(f"{summary['name']}{flag}\naccuracy {summary['accuracy']:.3f} (n={summary['n']})", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    lo, hi = summary["accuracy_ci"]
    blo, bhi = summary["balanced_accuracy_ci"]
    t = Table(title=f"eval {summary['name']}")
    for col in ("n", "accuracy (95% CI)", "balanced acc. (95% CI)", "unparsed"):
        t.add_column(col)
    t.add_row(str(summary["n"]), f"{summary['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]",
              f"{summary['balanced_accuracy']:.3f} [{blo:.3f}, {bhi:.3f}]", f"{summary['unparsed_rate']:.3f}")
    console = Console(stderr=True)
    console.print(t)
    if summary.get("ece") is not None:
        from ..core.calibration import reading

        cov = summary["coverage_at_accuracy"]
        before = summary.get("uncalibrated")
        temp = (summary.get("calibration") or {}).get("temperature")
        was = (f" (uncalibrated: ECE {before['ece']:.3f}, Brier {before['brier']:.3f}"
               + (f"; temperature {temp:.3g})" if temp is not None else "; each fold's temperature)")
               if before else "")
        console.print(f"confidence (letter probability, calibrated): ECE {summary['ece']:.3f}, Brier "
                      f"{summary['brier']:.3f}{was}, AURC {summary['aurc']:.3f}, coverage at 90/95/99% accuracy "
                      f"{cov['0.90']:.2f}/{cov['0.95']:.2f}/{cov['0.99']:.2f}")
        if "votes" in summary:
            v = summary["votes"]
            console.print(f"majority of {v.get('k')} sampled: accuracy {v['accuracy']:.3f}; vote share ECE "
                          f"{v['ece']:.3f}, AURC {v['aurc']:.3f}")
        if "triage" in summary:
            tr = summary["triage"]
            if "thresholds" in tr:  # cross-validation: each fold chose on its own val part
                where = "thresholds chosen on each fold's own val samples"
            else:
                thr = "none reaches it" if tr["threshold"] is None else f"{tr['threshold']:.3f}"
                where = f"threshold {thr}, chosen on {tr['val']['n']} val samples"
            console.print(f"triage at {tr['target_accuracy']:.0%} ({where}): {reading(tr['coverage'], tr['accuracy'])}")
    elif summary.get("calibration_note"):
        console.print(f"confidence: {summary['calibration_note']}")
    if summary["includes_train_samples"]:
        console.print("[bold red]warning: these samples include training samples of this adapter[/]")
