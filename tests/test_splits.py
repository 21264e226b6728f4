"""Train/val/test assignment: grouped, stratified, seeded, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from connectodistill.core.errors import UserError
from connectodistill.merging.splits import assign_splits


def _data(n=3000, seed=0):
    """Groups of 1-4 samples; labels with realistic imbalance, some groups mixed."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, size=n)
    groups = np.repeat(np.arange(len(sizes)) * 7 + 864691134965949727, sizes)[:n]
    labels = rng.choice(list("abcdefg"), size=n, p=[0.42, 0.09, 0.24, 0.09, 0.1, 0.03, 0.03])
    return groups, labels


def test_every_sample_once_and_groups_never_straddle():
    groups, labels = _data()
    split = assign_splits(groups, labels, test_size=0.1, val_size=0.1, seed=42)
    assert split.shape == groups.shape
    assert set(split) == {"train", "val", "test"}
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1


def test_proportions_overall_and_per_class():
    groups, labels = _data()
    split = assign_splits(groups, labels, test_size=0.1, val_size=0.15, seed=1)
    assert np.mean(split == "test") == pytest.approx(0.1, abs=0.015)
    assert np.mean(split == "val") == pytest.approx(0.15, abs=0.015)
    for letter in "abcdefg":
        here = labels == letter
        # within one sample of the target share, even for the rare classes
        assert np.sum(split[here] == "test") == pytest.approx(0.1 * here.sum(), abs=1)
        assert np.sum(split[here] == "val") == pytest.approx(0.15 * here.sum(), abs=1)


def test_better_stratified_than_stratified_group_kfold():
    """Mixed-label neurons: per-class gaps no larger than scikit-learn's on the same data."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    groups, labels = _data(400, seed=3)

    def gaps(split):
        return sum(abs(np.sum((split == s) & (labels == c)) - 0.1 * np.sum(labels == c))
                   for s in ("val", "test") for c in "abcdefg")

    def sklearn_split(seed):
        split = np.full(len(labels), "train", dtype="<U5")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, test = next(StratifiedGroupKFold(10, shuffle=True, random_state=seed).split(labels, labels, groups))
            split[test] = "test"
            rest = np.flatnonzero(split == "train")
            _, val = next(StratifiedGroupKFold(9, shuffle=True, random_state=seed).split(
                labels[rest], labels[rest], groups[rest]))
        split[rest[val]] = "val"
        return split

    ours = np.mean([gaps(assign_splits(groups, labels, seed=k)) for k in range(10)])
    theirs = np.mean([gaps(sklearn_split(k)) for k in range(10)])
    assert ours <= theirs


def test_seeded_and_independent_of_row_order():
    groups, labels = _data(800)
    a = assign_splits(groups, labels, seed=7)
    assert (a == assign_splits(groups, labels, seed=7)).all()
    assert (a != assign_splits(groups, labels, seed=8)).any()
    perm = np.random.default_rng(0).permutation(len(groups))
    b = assign_splits(groups[perm], labels[perm], seed=7)
    assert (b == a[perm]).all()


def test_zero_sizes():
    groups, labels = _data(200)
    assert set(assign_splits(groups, labels, test_size=0, val_size=0)) == {"train"}
    assert set(assign_splits(groups, labels, test_size=0.2, val_size=0)) == {"train", "test"}
    assert set(assign_splits(groups, labels, test_size=0, val_size=0.2)) == {"train", "val"}
    assert len(assign_splits([], [])) == 0


def test_small_dataset_never_leaves_a_requested_split_empty():
    for seed in range(30):
        groups = np.arange(12)
        labels = np.array(list("abcdefgabcde"))
        split = assign_splits(groups, labels, test_size=0.1, val_size=0.1, seed=seed)
        assert {"train", "val", "test"} <= set(split)


def test_too_few_groups_and_bad_sizes():
    with pytest.raises(UserError, match="too few groups"):
        assign_splits([1, 1, 2, 2, 3], list("aabba"), test_size=0.1, val_size=0.1)
    with pytest.raises(UserError, match="sum below 1"):
        assign_splits(np.arange(100), ["a"] * 100, test_size=0.6, val_size=0.5)
    with pytest.raises(ValueError):
        assign_splits([1, 2], ["a"])
