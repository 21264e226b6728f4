"""Intervals and paired comparisons for a small benchmark (n = 377), resampling leak-proof groups.

Samples of one group (one neuron's segments, or samples sharing an id) are correlated, so
every bootstrap here resamples whole groups: each resample draws G groups with replacement,
which is the same as giving each group a multinomial count and each sample its group's count
as a weight. Two models compared on the same samples use the *same* resamples, so their
shared difficulty cancels: a paired difference is far tighter than two separate intervals.

- ``group_weights``: the (resamples x samples) weight matrix, in bounded-memory chunks;
- ``bootstrap_mean``: a percentile interval of a (weighted) mean;
- ``paired_delta``: mean(a) - mean(b) on the same samples, with its paired interval;
- ``mcnemar_exact``: the exact two-sided McNemar p-value of paired right/wrong outcomes.

Pure numpy (scipy only for the binomial tail).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["bootstrap_mean", "group_index", "group_weights", "mcnemar_exact", "paired_delta"]

_CHUNK_CELLS = 4_000_000  # resamples x samples per chunk: bounded memory


def group_index(groups, n: int) -> np.ndarray:
    """Groups as 0..G-1 codes; None means every sample is its own group."""
    if groups is None:
        return np.arange(n)
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    return inv.reshape(-1)


def group_weights(groups: np.ndarray, n_bootstrap: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of the (resamples x samples) weight matrix of a group bootstrap (seeded)."""
    g = group_index(groups, len(groups))
    n_groups = int(g.max()) + 1 if len(g) else 0
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(len(g), 1))
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=b)
        yield counts[:, g].astype(np.float64)


def _pct(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def bootstrap_mean(values, groups=None, *, n_bootstrap: int = 1000, seed: int = 0) -> list[float] | None:
    """Percentile 95% interval of mean(values), resampling whole groups."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0 or n_bootstrap <= 0:
        return None
    out = [(w @ v) / w.sum(1) for w in group_weights(group_index(groups, len(v)), n_bootstrap, seed)]
    return _pct(np.concatenate(out))


def paired_delta(a, b, groups=None, *, n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """mean(a) - mean(b) over the same samples, and its paired 95% group-bootstrap interval.

    ``a``/``b``: per-sample scores (1/0 correct, or a share such as the fraction of a
    teacher's responses that were right). Also the unpaired interval (a and b resampled
    independently), to show what pairing buys.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a and b must hold the same samples, got {a.shape} and {b.shape}")
    if len(a) == 0:
        return {"n": 0, "delta": None, "ci": None, "unpaired_ci": None}
    g = group_index(groups, len(a))
    paired, unpaired = [], []
    for w, w2 in zip(group_weights(g, n_bootstrap, seed), group_weights(g, n_bootstrap, seed + 1), strict=True):
        s = w.sum(1)
        paired.append((w @ (a - b)) / s)
        unpaired.append((w @ a) / s - (w2 @ b) / w2.sum(1))
    return {"n": int(len(a)), "delta": float(a.mean() - b.mean()),
            "ci": _pct(np.concatenate(paired)), "unpaired_ci": _pct(np.concatenate(unpaired))}


def mcnemar_exact(a, b) -> float:
    """Exact two-sided McNemar p-value of paired outcomes (``a``, ``b``: right/wrong per sample).

    Only the discordant pairs count: n01 (a right, b wrong) and n10; under the null each
    discordant pair is a fair coin, so p = P(Binomial(n01 + n10, 1/2) as extreme as observed).
    """
    from scipy.stats import binom

    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    n01 = int((a & ~b).sum())
    n10 = int((~a & b).sum())
    n = n01 + n10
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(n01, n10), n, 0.5)))
