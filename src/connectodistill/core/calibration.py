"""Confidence you can act on: calibration, selective accuracy and triage thresholds (pure numpy).

Every function takes one confidence per sample (a letter probability, or a vote share) and
whether that sample's answer was right; an unparsed answer enters with confidence 0 and
correct 0, and its letter distribution is the zero vector (it named no letter). Samples of
equal confidence are never split: a threshold accepts all of them or none, so no result
depends on the order of ties. A threshold is always above 0, so triage never accepts an
answer that names no letter.

- ``ece``: expected calibration error over ``n_bins`` equal-width bins of [0, 1], each bin
  weighted by its share of the samples: sum of share * |mean confidence - accuracy|;
- ``brier``: mean over samples of the sum over the seven letters of (p - [letter is the truth])^2,
  with p the zero vector for an unparsed answer (so it scores 1, never better than a wrong one);
- ``risk_coverage`` / ``aurc``: selective risk (1 - accuracy) of the most confident samples,
  at every coverage k/n, and its mean over k (the area under the risk-coverage curve);
- ``threshold_for`` / ``coverage_at_accuracy``: the smallest confidence threshold (> 0) whose
  accepted samples reach an accuracy, and the share of samples it accepts; ``accepted``: which
  samples a threshold accepts;
- ``fit_temperature`` / ``apply_temperature``: temperature scaling (Guo et al., 2017): one
  scalar T, fit by the negative log-likelihood of the true letter on held-out (val) samples,
  that divides the letter logits; a monotone rescaling of each distribution (the argmax, so
  the answer, never changes);
- ``summarize``: all of the above as one JSON-ready dict;
- ``plot_reliability`` / ``plot_risk_coverage``: PNGs via matplotlib's Figure API (no pyplot).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .task import LETTERS

__all__ = [
    "COVERAGE_TARGETS",
    "LETTER_COLUMNS",
    "accepted",
    "apply_temperature",
    "aurc",
    "brier",
    "coverage_at_accuracy",
    "ece",
    "fit_temperature",
    "plot_reliability",
    "plot_risk_coverage",
    "reading",
    "reliability_bins",
    "risk_coverage",
    "selective",
    "summarize",
    "threshold_for",
    "vote_distribution",
]

LETTER_COLUMNS = tuple(f"p_{x}" for x in LETTERS)  # predictions.csv: p_a ... p_g
COVERAGE_TARGETS = (0.90, 0.95, 0.99)


def _arrays(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    y = np.asarray(correct, dtype=np.float64).reshape(-1)
    if c.shape != y.shape:
        raise ValueError(f"{len(c)} confidences but {len(y)} correctness values")
    return c, y


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """Each row's distribution at temperature T: softmax(log p / T), rows summing to 1.

    The letter probabilities are a softmax of the seven letter logits, so log p equals those
    logits up to a per-row constant and this is exactly softmax(logits / T).
    """
    p = np.asarray(probs, dtype=np.float64)
    logits = np.log(np.clip(p, 1e-300, None)) / float(temperature)
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


def _nll(probs: np.ndarray, truth_index: np.ndarray, temperature: float) -> float:
    q = apply_temperature(probs, temperature)
    return float(-np.log(np.clip(q[np.arange(len(q)), truth_index], 1e-300, None)).mean())


def fit_temperature(probs, truth: Sequence[str], bounds: tuple[float, float] = (0.05, 100.0)) -> dict:
    """The temperature minimising the mean negative log-likelihood of the true letters.

    ``probs``: (n, 7) letter distributions of held-out samples (val, never test); ``truth``:
    their ground-truth letters. Returns ``{"temperature", "n", "nll_before", "nll_after"}``;
    with no samples T = 1. Searched on log T (bounded, scipy's Brent), so T > 0.
    """
    from scipy.optimize import minimize_scalar

    p = np.asarray(probs, dtype=np.float64).reshape(len(truth), len(LETTERS))
    if len(p) == 0:
        return {"temperature": 1.0, "n": 0, "nll_before": None, "nll_after": None}
    idx = np.array([LETTERS.index(x) for x in truth])
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(lambda s: _nll(p, idx, float(np.exp(s))), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    t = float(np.exp(res.x))
    return {"temperature": t, "n": len(p), "nll_before": _nll(p, idx, 1.0), "nll_after": _nll(p, idx, t)}


def reliability_bins(confidence, correct, n_bins: int = 10) -> list[dict]:
    """Per equal-width bin of [0, 1] (the last one closed): lo, hi, n, mean confidence, accuracy.

    Empty bins have ``confidence`` and ``accuracy`` None.
    """
    c, y = _arrays(confidence, correct)
    idx = np.clip((c * n_bins).astype(np.int64), 0, n_bins - 1)  # 1.0 falls in the last bin
    out = []
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        out.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": n,
                    "confidence": float(c[m].mean()) if n else None,
                    "accuracy": float(y[m].mean()) if n else None})
    return out


def ece(confidence, correct, n_bins: int = 10) -> float | None:
    """Expected calibration error: sum over bins of (share of samples) * |mean confidence - accuracy|."""
    c, _ = _arrays(confidence, correct)
    if len(c) == 0:
        return None
    bins = reliability_bins(confidence, correct, n_bins)
    return float(sum(b["n"] / len(c) * abs(b["confidence"] - b["accuracy"]) for b in bins if b["n"]))


def brier(probs, truth: Sequence[str], parsed=None) -> float | None:
    """Mean over samples of sum over the seven letters of (p_letter - [letter is the truth])^2.

    ``probs``: (n, 7) in the order of ``task.LETTERS``; ``truth``: the ground-truth letters;
    ``parsed``: per sample, whether its answer named a letter (None: all did). An unparsed
    answer's distribution is the zero vector, whatever probabilities the model had: it scores
    1.0, as a vote over responses that named no letter does.
    """
    p = np.asarray(probs, dtype=np.float64).reshape(len(truth), len(LETTERS))
    if len(p) == 0:
        return None
    if parsed is not None:
        p = np.where(np.asarray(parsed, dtype=bool).reshape(-1, 1), p, 0.0)
    onehot = np.array([[t == x for x in LETTERS] for t in truth], dtype=np.float64)
    return float(((p - onehot) ** 2).sum(1).mean())


def _tie_groups(c: np.ndarray, y: np.ndarray):
    """Distinct confidences in descending order, with the cumulative (count, correct) up to each."""
    values, inverse = np.unique(-c, return_inverse=True)  # ascending -c = descending c
    n = np.bincount(inverse, minlength=len(values)).astype(np.float64)
    hits = np.bincount(inverse, weights=y, minlength=len(values))
    return -values, n, hits, np.cumsum(n), np.cumsum(hits)


def risk_coverage(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    """(coverage k/n, selective risk) for k = 1..n, most confident samples first.

    Within a group of equal confidences the risk is its expectation over their orderings:
    the errors of the more confident groups plus the group's error rate per extra sample.
    """
    c, y = _arrays(confidence, correct)
    n = len(c)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    _, gn, ghits, cum_n, cum_hits = _tie_groups(c, y)
    k = np.arange(1, n + 1, dtype=np.float64)
    g = np.searchsorted(cum_n, k, side="left")  # the group holding the k-th sample
    before_n, before_hits = cum_n[g] - gn[g], cum_hits[g] - ghits[g]
    hits = before_hits + (k - before_n) * ghits[g] / gn[g]
    return k / n, 1.0 - hits / k


def aurc(confidence, correct) -> float | None:
    """Area under the risk-coverage curve: the mean selective risk over coverages 1/n .. n/n."""
    _, risk = risk_coverage(confidence, correct)
    return float(risk.mean()) if len(risk) else None


def threshold_for(confidence, correct, target: float) -> float | None:
    """The smallest confidence t > 0 such that the samples with confidence >= t are at least
    ``target`` accurate; None when no t reaches it (everything goes to a human).

    Confidence 0 means no letter was named: it is never a threshold, so such an answer is
    never accepted, whatever else the accepted samples hold."""
    c, y = _arrays(confidence, correct)
    if len(c) == 0:
        return None
    values, _, _, cum_n, cum_hits = _tie_groups(c, y)
    ok = (cum_hits / cum_n >= target - 1e-12) & (values > 0)
    return float(values[np.flatnonzero(ok)[-1]]) if ok.any() else None


def accepted(confidence, threshold: float | None) -> np.ndarray:
    """Which samples a triage threshold accepts: confidence >= threshold, never confidence 0
    (an answer without a letter); none when the threshold is None."""
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    if threshold is None:
        return np.zeros(len(c), dtype=bool)
    return (c >= threshold) & (c > 0)


def selective(confidence, correct, threshold: float | None) -> dict:
    """Coverage, accuracy and counts of the samples accepted at ``threshold`` (None: none)."""
    c, y = _arrays(confidence, correct)
    accept = accepted(c, threshold)
    n_auto = int(accept.sum())
    return {"n": len(c), "n_auto": n_auto, "n_human": len(c) - n_auto,
            "coverage": n_auto / len(c) if len(c) else None,
            "accuracy": float(y[accept].mean()) if n_auto else None}


def coverage_at_accuracy(confidence, correct, target: float) -> float:
    """The largest share of samples, most confident first (ties together), at least ``target`` accurate."""
    cov = selective(confidence, correct, threshold_for(confidence, correct, target))["coverage"]
    return float(cov or 0.0)


def vote_distribution(letters: Sequence[str | None]) -> np.ndarray:
    """Share of the responses naming each of the seven letters (unparsed ones name none)."""
    out = np.zeros(len(LETTERS))
    for x in letters:
        if x in LETTERS:
            out[LETTERS.index(x)] += 1
    return out / max(len(letters), 1)


def reading(coverage: float | None, accuracy: float | None, unit: str = "segments") -> str:
    """One line a proofreading lab can act on, from a triage's coverage and accuracy."""
    if not coverage:
        return f"accepts no {unit} automatically, sends 100% to a human"
    return (f"accepts {100 * coverage:.0f}% of {unit} at {100 * accuracy:.1f}% accuracy, "
            f"sends {100 * (1 - coverage):.0f}% to a human")


def summarize(confidence, correct, probs=None, truth: Sequence[str] | None = None, n_bins: int = 10,
              parsed=None) -> dict:
    """ece, brier (when ``probs`` and ``truth`` are given; ``parsed`` as in ``brier``), aurc,
    coverage_at_accuracy, reliability."""
    c, y = _arrays(confidence, correct)
    return {
        "ece": ece(c, y, n_bins),
        "brier": brier(probs, truth, parsed) if probs is not None and truth is not None else None,
        "aurc": aurc(c, y),
        "coverage_at_accuracy": {f"{t:.2f}": coverage_at_accuracy(c, y, t) for t in COVERAGE_TARGETS},
        "reliability": reliability_bins(c, y, n_bins),
    }


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)


def plot_reliability(curves: Mapping[str, Sequence[dict]], path: Path, title: str = ""):
    """Reliability diagram: accuracy against mean confidence per bin, one line per confidence."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated")
    for label, bins in curves.items():
        full = [b for b in bins if b["n"]]
        # a point on the edge (all samples at p = 1.0) stays whole: no clipping at the axes
        ax.plot([b["confidence"] for b in full], [b["accuracy"] for b in full], marker="o", label=label,
                clip_on=False, zorder=3)
        for b in full:
            ax.annotate(str(b["n"]), (b["confidence"], b["accuracy"]), fontsize=6,
                        textcoords="offset points", xytext=(3, -8))
    # the same axes for every model, so plots of different results compare at a glance
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="mean confidence in bin", ylabel="accuracy in bin")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or "reliability (numbers: samples per bin)", fontsize=9)
    _save(fig, path)
    return fig


def plot_risk_coverage(curves: Mapping[str, tuple[Sequence[float], Sequence[int]]], path: Path,
                       title: str = ""):
    """Risk-coverage curves from {label: (confidence, correct)}, most confident first."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    for label, (conf, corr) in curves.items():
        cov, risk = risk_coverage(conf, corr)
        if len(cov):
            ax.plot(cov, risk, label=f"{label} (AURC {aurc(conf, corr):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="coverage (share accepted, most confident first)",
           ylabel="risk (1 - accuracy of the accepted)")  # one scale for every model
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or "risk-coverage", fontsize=9)
    _save(fig, path)
    return fig
