"""The teacher on a result's own samples: its responses to each of them, and its report rows.

Everything is per row of the result's ``predictions.csv``, so the teacher and the student are
always scored on the same n: a segment the benchmark repeats is one row per copy for both
(its responses are looked up by its ids, again for each copy).

Only the responses to the question the result was asked count: merge's ``_responses.parquet``
can hold both prompt settings (with and without the species description), and a result
records its own (``settings.prompt_setting``).

Two rows, one definition each (docs/evaluation.md):

- ``teacher (single response)``: per sample the share of its responses that are right (a
  sample without a response: 0), averaged with each sample weighing the same: the expected
  accuracy of one response drawn per sample. ``delta_vs_teacher_single`` compares against
  exactly this.
- ``teacher (majority vote)``: per sample the most frequent letter of its responses.

Both intervals resample the result's leak-proof groups, like every other row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.task import ID_COLUMNS, LETTERS

SINGLE = "teacher (single response)"
MAJORITY = "teacher (majority vote)"
SETTING_WORDS = {"with_description": "with the species description",
                 "without_description": "without the species description",
                 "unknown": "whose prompt setting is unknown"}


@dataclass
class TeacherAnswers:
    """The teacher's responses to each sample (row) of one result, in the result's row order."""

    letters: list[list[str | None]]  # parsed letter of each response (None: unparsed)
    right: np.ndarray  # share of the sample's responses that are right (0 without any)
    unparsed: np.ndarray  # share of them that named no letter (0 without any)
    majority: list[str | None]  # scoring.majority_vote of the letters
    share: np.ndarray  # the majority's vote share (0 without a parsed letter)
    dist: np.ndarray  # (n, 7): share of the responses naming each letter
    groups: np.ndarray  # leak-proof group of each sample, for the intervals
    responses: object  # the responses used (a DataFrame, filtered to the setting)
    setting: str | None  # the setting of the responses used; None = all of them
    note: str  # which responses, in words


def _none(values):
    """NaN/None -> None (unparsed)."""
    return [v if isinstance(v, str) else None for v in values]


def _keys(frame) -> list[tuple[int, int]]:
    return [(int(p), int(c)) for p, c in zip(frame[ID_COLUMNS[0]], frame[ID_COLUMNS[1]], strict=True)]


def responses_in_setting(responses, setting: str | None, keys: set):
    """(responses asked ``setting``'s question, the setting used, a note on the samples
    ``keys``). All responses when the result has no setting, or when none of them was asked
    its setting (the note says so)."""
    from ..core.prompts import setting_name

    mine = responses[[k in keys for k in _keys(responses)]]
    if setting is None or "teacher_with_description" not in responses:
        return responses, None, f"{len(mine)} responses (all prompt settings)"
    names = responses["teacher_with_description"].map(setting_name)
    sel = responses[(names == setting).to_numpy()]
    n_mine = int((mine["teacher_with_description"].map(setting_name) == setting).sum())
    if not n_mine:
        present = ", ".join(sorted(set(names)))
        return responses, None, (f"NO response was asked the result's question ({setting}); all {len(mine)} "
                                 f"responses used ({present})")
    other = len(mine) - n_mine
    return sel, setting, (f"{n_mine} responses {SETTING_WORDS.get(setting, setting)}"
                          + (f" ({other} of another setting left out)" if other else ""))


def teacher_answers(preds, responses, setting: str | None = None) -> TeacherAnswers:
    """The teacher's responses (to ``setting``'s question) for every row of ``preds``."""
    from ..core.calibration import vote_distribution
    from ..core.scoring import majority_vote

    keys = _keys(preds)
    sel, used, note = responses_in_setting(responses, setting, set(keys))
    by_key: dict[tuple[int, int], list] = {}
    for k, a, ok in zip(_keys(sel), _none(sel["teacher_answer"].tolist()),
                        sel["teacher_correct"].astype(bool).tolist(), strict=True):
        by_key.setdefault(k, []).append((a, ok))
    letters = [[a for a, _ in by_key.get(k, [])] for k in keys]
    right = np.array([np.mean([ok for _, ok in by_key[k]]) if k in by_key else 0.0 for k in keys], dtype=float)
    unparsed = np.array([np.mean([a is None for a in ls]) if ls else 0.0 for ls in letters], dtype=float)
    votes = [majority_vote(ls) for ls in letters]
    dist = np.stack([vote_distribution(ls) for ls in letters]) if keys else np.zeros((0, len(LETTERS)))
    if "split_group" in preds:
        groups = preds["split_group"].to_numpy()
    else:  # the responses' groups, else every sample alone
        rgroup = dict(zip(_keys(responses), responses["split_group"], strict=True)) if "split_group" in responses else {}
        groups = np.array([rgroup.get(k, -1 - i) for i, k in enumerate(keys)])
    missing = sum(not ls for ls in letters)
    if missing:
        note += f"; {missing} samples without a response count as wrong"
    return TeacherAnswers(letters, right, unparsed, [v[0] for v in votes], np.array([v[1] for v in votes]),
                          dist, groups, sel, used, note)


def teacher_rows(ans: TeacherAnswers, preds, sample_hash: str, label: str = "", seed: int = 0) -> list[dict]:
    """The single-response and majority-vote rows on ``preds``' samples (same n as the result)."""
    from ..core.scoring import classification_metrics, share_metrics

    truth = preds["ground_truth_letter"].tolist()
    single = share_metrics(truth, ans.right, ans.unparsed, groups=ans.groups, seed=seed)
    major = classification_metrics(truth, ans.majority, groups=ans.groups, seed=seed)
    n_resp = sum(len(ls) for ls in ans.letters)
    return [
        _row(SINGLE + label, single, sample_hash,
             f"{ans.note}; each sample weighs the same ({n_resp} responses on {len(truth)} samples)"),
        _row(MAJORITY + label, major, sample_hash, ans.note),
    ]


def _row(model: str, m: dict, sample_hash: str, note: str = "") -> dict:
    return {
        "model": model, "n": m["n"], "accuracy": m["accuracy"], "accuracy_ci": m["accuracy_ci"],
        "balanced_accuracy": m["balanced_accuracy"], "balanced_accuracy_ci": m["balanced_accuracy_ci"],
        "unparsed_rate": m["unparsed_rate"], "sample_ids_hash": sample_hash, "note": note,
    }


def teacher_confidence(rows: list[dict], ans: TeacherAnswers, preds, merged, target: float, figures) -> list[dict]:
    """The teacher rows with their confidence figures (``figures``: reporting's per-row ECE,
    Brier, AURC, coverage): the majority judged by its vote share, with a triage whose
    threshold is chosen on the val samples' responses only (for a cross-validation result,
    per fold on that fold's val samples); a single response judged by the share of its
    sample's responses that agree with it (per response: response-weighted)."""
    from ..core.calibration import accepted, reading, threshold_for
    from ..core.data import read_merged
    from ..core.scoring import majority_vote

    truth = preds["ground_truth_letter"].tolist()
    correct = np.array([x is not None and x == t for x, t in zip(ans.majority, truth, strict=True)], dtype=float)
    # Triage: each part of the samples gets the threshold chosen on its own val samples.
    meta = read_merged(merged, columns=[])[1]
    if "fold" in preds and meta.get("fold_splits"):
        parts = [(meta["fold_splits"][int(f)]["val"], (preds["fold"] == f).to_numpy()) for f in preds["fold"].unique()]
    else:
        parts = [((meta.get("splits") or {}).get("val") or [], np.ones(len(truth), dtype=bool))]
    answers: dict[tuple[int, int], list] = {}
    gt: dict[tuple[int, int], str] = {}
    for k, a, t in zip(_keys(ans.responses), _none(ans.responses["teacher_answer"].tolist()),
                       ans.responses["ground_truth_letter"], strict=True):
        answers.setdefault(k, []).append(a)
        gt[k] = t
    accept, thresholds, n_val = np.zeros(len(truth), dtype=bool), [], 0
    for val_ids, mask in parts:
        vkeys = [(int(p), int(c)) for p, c in val_ids]
        votes = [majority_vote(answers.get(k, [])) for k in vkeys]
        vc = [v[0] is not None and v[0] == gt.get(k) for v, k in zip(votes, vkeys, strict=True)]
        thr = threshold_for([v[1] for v in votes], vc, target) if vkeys else None
        thresholds.append(thr)
        n_val += len(vkeys)
        accept |= mask & accepted(ans.share, thr)
    parsed = np.array([x is not None for x in ans.majority])
    for r in rows:
        if r["model"].startswith(MAJORITY):
            r.update(confidence="vote share", **figures(ans.share, correct, ans.dist, truth, parsed=parsed))
            if n_val:
                cov = float(accept.mean())
                acc = float(correct[accept].mean()) if accept.any() else None
                r.update(triage_threshold=thresholds[0] if len(parts) == 1 else None, triage_coverage=cov,
                         triage_accuracy=acc, reading=f"{reading(cov, acc)} (target {target:.0%}, threshold "
                         f"chosen on {n_val} val samples' responses)")
        elif r["model"].startswith(SINGLE):
            # Each response judged by the share of its sample's responses that name its letter.
            conf, right, dist, rtruth = [], [], [], []
            for letters, d, t in zip(ans.letters, ans.dist, truth, strict=True):
                for a in letters:
                    conf.append(d[LETTERS.index(a)] if a in LETTERS else 0.0)
                    right.append(a == t)
                    dist.append(d)
                    rtruth.append(t)
            if conf:
                r.update(confidence="share of its sample's responses agreeing (per response, response-weighted)",
                         **figures(np.array(conf), np.array(right, dtype=float), np.stack(dist), rtruth,
                                   unit="responses", parsed=np.array(conf) > 0))
    return rows
