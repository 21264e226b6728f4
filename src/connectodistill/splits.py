"""Train/val/test assignment: grouped by neuron, stratified by label, seeded.

Several segments belong to one proofread neuron, so a row-level split would leak a neuron
across train and test. ``assign_splits`` assigns whole groups, and spreads every label over
the three splits in proportion as far as whole groups allow.

How (stratified systematic sampling over groups, all numpy):

1. Each group joins the stratum of its rarest label (a neuron with one rare segment must
   not be allowed to pile up in one split; its common segments are many anyway).
2. Within a stratum, groups are put in a seeded random order and laid end to end on a
   circle of circumference 1 (each takes an arc proportional to its sample count), rotated by
   a seeded random offset. A group whose midpoint falls in [0, test_size) goes to test,
   in [test_size, test_size + val_size) to val, otherwise to train. So each stratum's
   samples split in the target proportions up to one group, and a stratum too small for
   a test share still gets one with the right probability.
3. A split asked for (size > 0) that came out empty takes one group from the split with
   the most groups, so a small dataset never yields a silently empty test set.

The result depends only on the (group, label) pairs and the seed, not on row order.
scikit-learn's ``StratifiedGroupKFold`` would do a similar job, but costs ~1.5 s to import
and ~5 s per split at 40k samples (a Python loop over groups x folds); merge must be fast.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import UserError
from .task import SPLITS

__all__ = ["assign_splits"]


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
                f"too few groups to split: {n_groups} neurons (distinct proofread_root_id) cannot "
                f"give a {name} split of {frac:.0%} (needs at least {need}); lower --test-size/"
                "--val-size or set them to 0"
            )
    rng = np.random.default_rng(seed)

    # 1. stratum of a group = rank of its rarest label (0 = rarest class overall)
    _, l_inv, l_cnt = np.unique(labels, return_inverse=True, return_counts=True)
    l_inv = l_inv.reshape(-1)
    rarity = np.empty(len(l_cnt), dtype=np.int64)
    rarity[np.lexsort((np.arange(len(l_cnt)), l_cnt))] = np.arange(len(l_cnt))
    stratum = np.full(n_groups, len(l_cnt), dtype=np.int64)
    np.minimum.at(stratum, g_inv, rarity[l_inv])
    size = np.bincount(g_inv, minlength=n_groups).astype(np.float64)

    # 2. seeded order within strata, arcs on a circle, rotated by a seeded offset per stratum
    perm = rng.permutation(n_groups)
    order = perm[np.argsort(stratum[perm], kind="stable")]
    st, sz = stratum[order], size[order]
    n_strata = len(l_cnt) + 1
    total = np.bincount(st, weights=sz, minlength=n_strata)
    start = np.concatenate(([0.0], np.cumsum(total)[:-1]))
    mid = (np.cumsum(sz) - sz / 2 - start[st]) / total[st]
    phase = (mid + rng.random(n_strata)[st]) % 1.0
    code = np.where(phase < test_size, 2, np.where(phase < test_size + val_size, 1, 0))
    group_split = np.empty(n_groups, dtype=np.int64)
    group_split[order] = code

    # 3. no requested split left empty (tiny datasets): borrow a group from the largest split
    for s, name in enumerate(SPLITS):
        if targets[name] > 0 and not (group_split == s).any():
            donor = int(np.argmax(np.bincount(group_split, minlength=3)))
            candidates = order[group_split[order] == donor]  # seeded order, common strata last
            group_split[candidates[-1]] = s

    return np.asarray(SPLITS, dtype="<U5")[group_split[g_inv]]
