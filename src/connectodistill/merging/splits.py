"""Train/val/test assignment: grouped by neuron, stratified by label, seeded.

Several segments belong to one proofread neuron, so a row-level split would leak a neuron
across train and test. ``leak_groups`` joins samples that share either id (connected
components), ``assign_splits`` assigns whole groups, and spreads every label over the three
splits in proportion as far as whole groups allow.

How (a greedy balance over groups, like scikit-learn's ``StratifiedGroupKFold`` but for
three splits of unequal size):

1. Every split starts with a target count per label: its share (``1 - test - val``,
   ``val``, ``test``) of that label's samples.
2. Groups are taken largest first (ties in a seeded random order); each goes to the split
   where it most reduces the sum of squared gaps between the splits' label counts and their
   targets. Large and mixed-label neurons are placed while every split still has room; the
   many small ones then fill the remaining gaps, so each label ends within about one group
   of its target in every split.
3. A split asked for (size > 0) that came out empty takes the smallest group of the split
   with the most groups, so a small dataset never yields a silently empty test set.

The result depends only on the (group, label) pairs and the seed, not on row order.
``StratifiedGroupKFold`` itself would cost ~1.5 s to import and ~5 s per split at 40k
samples (it evaluates every fold with numpy for every group); merge must be fast.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.errors import UserError
from ..core.task import SPLITS

__all__ = ["assign_folds", "assign_splits", "leak_groups"]


def leak_groups(proofread_ids, current_ids) -> np.ndarray:
    """A group number per sample: samples sharing either id are one group, transitively.

    One proofread neuron has several segments, and a segment id may (rarely) occur under two
    proofread neurons; either way the same images or the same neuron would otherwise sit on
    both sides of a split. Ids are nodes (one id space for both columns), each sample an edge
    between its two ids; a group is a connected component. Numbered by first appearance.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    p = np.asarray(proofread_ids, dtype=np.int64)
    c = np.asarray(current_ids, dtype=np.int64)
    if len(p) == 0:
        return np.zeros(0, dtype=np.int64)
    nodes, inv = np.unique(np.concatenate([p, c]), return_inverse=True)
    a, b = inv[: len(p)], inv[len(p):]
    graph = coo_matrix((np.ones(len(p)), (a, b)), shape=(len(nodes), len(nodes)))
    _, comp = connected_components(graph, directed=False)
    comp = comp[a]
    # renumber by first appearance, so group numbers read in row order
    _, first, inverse = np.unique(comp, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def assign_splits(
    groups: Sequence | np.ndarray,
    labels: Sequence | np.ndarray,
    *,
    test_size: float = 0.1,
    val_size: float = 0.1,
    seed: int = 42,
) -> np.ndarray:
    """A ``"train"``/``"val"``/``"test"`` label per sample (numpy ``<U5`` array).

    ``groups`` (e.g. proofread_root_id) never straddle two splits; ``labels`` are spread
    over the splits in proportion as far as groups allow; same inputs + seed -> same result.
    ``test_size``/``val_size`` are fractions of the samples (0 means no such split).
    Too few groups for the requested splits -> UserError.
    """
    groups = np.asarray(groups)
    labels = np.asarray(labels)
    if groups.shape != labels.shape or groups.ndim != 1:
        raise ValueError(f"groups and labels must be 1-D of one length, got {groups.shape} and {labels.shape}")
    if not (0.0 <= test_size < 1.0 and 0.0 <= val_size < 1.0 and test_size + val_size < 1.0):
        raise UserError(
            f"invalid split sizes test_size={test_size}, val_size={val_size}: each must be in "
            "[0, 1) and their sum below 1 (the rest is train)"
        )
    n = len(groups)
    out = np.full(n, "train", dtype="<U5")
    if n == 0 or (test_size == 0 and val_size == 0):
        return out

    targets = {"train": 1.0 - test_size - val_size, "val": val_size, "test": test_size}
    _, g_inv = np.unique(groups, return_inverse=True)
    g_inv = g_inv.reshape(-1)
    n_groups = int(g_inv.max()) + 1
    for name, frac in targets.items():
        if frac > 0 and n_groups * frac < 1:
            need = int(np.ceil(1 / frac))
            raise UserError(
                f"too few groups to split: {n_groups} leak-proof groups (samples sharing an id) cannot "
                f"give a {name} split of {frac:.0%} (needs at least {need}); lower --test-size/"
                "--val-size or set them to 0"
            )
    # label counts per group, as (group, label, count) runs sorted by group
    _, l_inv = np.unique(labels, return_inverse=True)
    l_inv = l_inv.reshape(-1)
    n_labels = int(l_inv.max()) + 1
    pairs, counts = np.unique(g_inv * n_labels + l_inv, return_counts=True)
    pair_label = (pairs % n_labels).tolist()
    pair_count = counts.tolist()
    bounds = np.searchsorted(pairs // n_labels, np.arange(n_groups + 1)).tolist()
    size = np.bincount(g_inv, minlength=n_groups)
    per_label = np.bincount(l_inv, minlength=n_labels)

    # 1. gap to target per (split, label); 2. largest groups first, ties in seeded order
    active = [s for s, name in enumerate(SPLITS) if targets[name] > 0]
    gap = {s: (-targets[SPLITS[s]] * per_label).tolist() for s in active}
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(n_groups), -size))
    group_split = np.empty(n_groups, dtype=np.int64)
    for g in order.tolist():
        lo, hi = bounds[g], bounds[g + 1]
        best, best_cost = active[0], float("inf")
        for s in active:
            d = gap[s]
            # change of sum(gap^2) if the group joins s: sum over its labels of x * (2 gap + x)
            cost = sum(x * (2 * d[c] + x) for c, x in zip(pair_label[lo:hi], pair_count[lo:hi], strict=True))
            if cost < best_cost:
                best, best_cost = s, cost
        group_split[g] = best
        d = gap[best]
        for c, x in zip(pair_label[lo:hi], pair_count[lo:hi], strict=True):
            d[c] += x

    # 3. no requested split left empty (tiny datasets): borrow the donor's smallest group
    for s in active:
        if not (group_split == s).any():
            donor = int(np.argmax(np.bincount(group_split, minlength=len(SPLITS))))
            candidates = order[group_split[order] == donor]  # largest first
            group_split[candidates[-1]] = s

    return np.asarray(SPLITS, dtype="<U5")[group_split[g_inv]]


def assign_folds(
    groups: Sequence | np.ndarray,
    labels: Sequence | np.ndarray,
    *,
    folds: int,
    val_size: float = 0.1,
    seed: int = 42,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(fold number per sample, per fold a ``train``/``val``/``test`` array) for K-fold CV.

    Each group goes to one of ``folds`` test folds, labels spread evenly as far as groups
    allow (the same greedy balance as ``assign_splits``, with K equal shares). Fold ``i``
    tests on its own samples; inside the other folds a ``val_size`` share of *all* samples
    (whole groups, stratified) is set aside for checkpoint choice, the rest is train. Every
    sample is tested exactly once over the K folds.
    """
    groups = np.asarray(groups)
    labels = np.asarray(labels)
    if folds < 2:
        raise UserError(f"--folds must be at least 2, got {folds}")
    n_groups = len(np.unique(groups))
    if n_groups < folds:
        raise UserError(f"too few groups for {folds} folds: {n_groups} leak-proof groups (samples sharing an id); "
                        "lower --folds")
    fold = _balanced_assignment(groups, labels, np.full(folds, 1.0 / folds), seed)
    per_fold = []
    for i in range(folds):
        split = np.full(len(groups), "test", dtype="<U5")
        rest = fold != i
        share = val_size / max(1e-9, rest.mean())  # val is a share of all samples, taken from the rest
        if share >= 1.0:
            raise UserError(f"--val-size {val_size} leaves no training samples with {folds} folds; lower it")
        split[rest] = assign_splits(groups[rest], labels[rest], test_size=0.0, val_size=share, seed=seed + i)
        per_fold.append(split)
    return fold, per_fold


def fold_warnings(per_fold: list[np.ndarray], groups, val_size: float) -> list[str]:
    """One line per fold whose train share falls far below what K folds promise.

    With K folds each fold should train on about (K-1)/K of the samples less ``val_size``; a
    leak-proof group too large to split (one neuron's many segments) can push a fold well
    under that, silently training it on a sliver. "Far below": under 80% of the expected share.
    """
    groups = np.asarray(groups)
    k = len(per_fold)
    expected = (k - 1) / k - val_size
    _, inv, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    out = []
    for i, split in enumerate(per_fold):
        share = float((split == "train").mean())
        if share < 0.8 * expected:
            test = split == "test"
            big = int(sizes[inv.reshape(-1)[test]].max()) if test.any() else 0
            out.append(f"fold {i} trains on {share:.0%} of the samples, not ~{expected:.0%}: its test fold holds "
                       f"{test.mean():.0%} of them (largest leak-proof group: {big} samples); its student "
                       "learns from less, lower --folds or check the groups")
    return out


def _balanced_assignment(groups: np.ndarray, labels: np.ndarray, shares: np.ndarray, seed: int) -> np.ndarray:
    """A bin number per sample: whole groups, largest first, each to the bin where it most
    reduces the squared gap between per-label counts and their targets (shares x label totals)."""
    _, g_inv = np.unique(groups, return_inverse=True)
    g_inv = g_inv.reshape(-1)
    _, l_inv = np.unique(labels, return_inverse=True)
    l_inv = l_inv.reshape(-1)
    n_groups, n_labels, k = int(g_inv.max()) + 1, int(l_inv.max()) + 1, len(shares)
    counts = np.zeros((n_groups, n_labels))
    np.add.at(counts, (g_inv, l_inv), 1)
    gap = -np.outer(shares, counts.sum(0))  # (bins, labels)
    size = counts.sum(1)
    order = np.lexsort((np.random.default_rng(seed).random(n_groups), -size))
    out = np.empty(n_groups, dtype=np.int64)
    for g in order:
        x = counts[g]
        cost = (x * (2 * gap + x)).sum(1)
        b = int(np.argmin(cost))
        out[g] = b
        gap[b] += x
    for b in range(k):  # no empty fold on tiny data: take the smallest group of the largest bin
        if not (out == b).any():
            donor = int(np.argmax(np.bincount(out, minlength=k)))
            cand = order[out[order] == donor]
            out[cand[-1]] = b
    return out[g_inv]
