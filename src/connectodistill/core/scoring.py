"""Scoring, shared by merge (the teacher) and evaluation (the student).

One extraction and one parser decide what an answer is, so the teacher and the student are
scored by the same rule:

- ``parse_response``: a whole generated response -> (analysis, letter). It applies the
  extraction that produced the teacher CSV's ``analysis`` and ``llm_answer`` cells: the text
  between the first ``<answer>`` and the first ``</answer>`` after it (exact lower-case tags,
  plain substring search), stripped; likewise the first analysis block. No answer block means
  unparsed.
- ``parse_answer``: that answer text (or the teacher's ``llm_answer``) -> a letter a-g or None.
  The text is normalised first (Unicode NFKC: fullwidth letters, no-break spaces and the
  ellipsis character become their plain forms), and what surrounds the answer is stripped:
  spaces, brackets, quotes, any Unicode punctuation or space, zero-width characters.
  It accepts a lone letter in any case with brackets, punctuation or markdown around it; a
  letter, a delimiter, then the start of *that* option's description; or one option's full
  description alone. Descriptions are compared case- and punctuation-insensitively, in the
  dataset's wording and in the wording of the prompt's own option list when given. Anything
  else ("a or b", a letter followed by another option's text, a sentence) is unparsed, and
  unparsed counts as wrong. docs/evaluation.md shows the rule as a table of examples.
- ``ground_truth_letters``: the dataset's exact description strings -> letters.
- ``majority_vote``: the letter most responses agree on, and its share.
- ``share_metrics``: the same figures for a model answering each sample several times (the
  teacher's K draws): per sample the share of its answers that are right, each sample
  weighing the same;
- ``classification_metrics``: accuracy (unparsed counts wrong), balanced accuracy,
  per-class precision/recall/F1, a confusion matrix with an "unparsed" column, and
  bootstrap 95% intervals (optionally resampling whole groups).

Everything here is pure: no I/O, no global state. scikit-learn is imported inside
``classification_metrics`` only (it costs a second at import).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .errors import UserError
from .task import CLASSES, DESCRIPTION_TO_LETTER, LETTERS

__all__ = [
    "UNPARSED",
    "classification_metrics",
    "ground_truth_letters",
    "share_metrics",
    "majority_vote",
    "option_descriptions",
    "parse_answer",
    "parse_response",
]

# Column name used for answers that are not one of the seven letters.
UNPARSED = "unparsed"

ANSWER_TAGS = ("<answer>", "</answer>")
ANALYSIS_TAGS = ("<analysis>", "</analysis>")
# Markdown emphasis is never part of an answer: "**c**", "`d`", "__e__".
_MARKDOWN = str.maketrans("", "", "*`_~")
# What may surround a lone letter: whitespace, brackets, quotes, punctuation (and, by
# ``_surrounds``, any Unicode punctuation, space, control or zero-width character).
_SURROUNDING = " \t\r\n\f\v()[]{}<>.,;:!?\"'-#"
# A letter, then a delimiter, then text: "c) Proc...", "(e). Non-...", "d: Nucleus", "b - mult".
_LETTER_THEN_TEXT = re.compile(r"^[(\[]?([a-gA-G])(?:\s*[)\].:,\-\u2013\u2014]+\s*|\s+)(.+)$", re.S)
_OPTION_LINE = re.compile(r"^\s*[(\[]?([a-g])[)\].:]\s+(\S.*?)\s*$", re.M)
_LETTER_SET = frozenset(LETTERS)


def _surrounds(ch: str) -> bool:
    """Whether ``ch`` may stand around an answer: the ASCII set, or a Unicode punctuation mark
    (curly quotes, dashes, ...), space separator, control or format (zero-width) character."""
    return ch in _SURROUNDING or unicodedata.category(ch)[0] in "PZ" or unicodedata.category(ch) in ("Cc", "Cf")


def _strip(s: str) -> str:
    i, j = 0, len(s)
    while i < j and _surrounds(s[i]):
        i += 1
    while j > i and _surrounds(s[j - 1]):
        j -= 1
    return s[i:j]


def _words(text: str) -> str:
    """Lower case, every run of non-alphanumerics one space: for description comparison."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def option_descriptions(prompt: str | None) -> dict[str, str]:
    """The option list of a prompt text (``a) ...`` lines), letter -> description; {} if none.

    Only a complete list (all seven letters) counts, so a stray ``a) `` in prose is ignored.
    """
    if not prompt:
        return {}
    found: dict[str, str] = {}
    for m in _OPTION_LINE.finditer(str(prompt)):
        found.setdefault(m.group(1), m.group(2))
    return found if set(found) == _LETTER_SET else {}


def _descriptions(options: Mapping[str, str | Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    out = {x: [_words(CLASSES[x])] for x in LETTERS}
    for x, ds in (options or {}).items():
        for d in [ds] if isinstance(ds, str) else ds:
            if x in out and _words(d) and _words(d) not in out[x]:
                out[x].append(_words(d))
    return {x: tuple(v) for x, v in out.items()}


def _is_start_of(text: str, description: str) -> bool:
    """``text`` (normalised) is a non-empty prefix of ``description`` ending on a word boundary."""
    return bool(text) and (description == text or description.startswith(text + " "))


def parse_answer(text: object, options: Mapping[str, str | Sequence[str]] | None = None) -> str | None:
    """The letter a-g that an answer text names, or None (unparsed).

    ``options`` is the prompt's own option wording (``option_descriptions(prompt)``, one or
    several descriptions per letter); the dataset's wording is always accepted.

    >>> parse_answer("(B)"), parse_answer("c) Processes without a soma..."), parse_answer("Nucleus")
    ('b', 'c', 'd')
    >>> parse_answer("a or b"), parse_answer("a) Nucleus"), parse_answer("this is a soma")
    (None, None, None)
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    s = _strip(unicodedata.normalize("NFKC", str(text)).translate(_MARKDOWN))
    if not s:
        return None
    if len(s) == 1:
        return s.lower() if s.lower() in _LETTER_SET else None
    descriptions = _descriptions(options)
    m = _LETTER_THEN_TEXT.match(s)
    if m:
        letter, rest = m.group(1).lower(), _words(m.group(2).rstrip(". \u2026"))
        if any(_is_start_of(rest, d) for d in descriptions[letter]):
            return letter
    # One option's full description alone ("Nucleus", "a single soma and process(es)").
    whole = _words(s)
    hits = {x for x, ds in descriptions.items() if whole in ds}
    return hits.pop() if len(hits) == 1 else None


def _first_block(text: str, tags: tuple[str, str]) -> str | None:
    """Text between the first opening tag and the first closing tag after it, stripped."""
    start = text.find(tags[0])
    if start < 0:
        return None
    end = text.find(tags[1], start + len(tags[0]))
    if end < 0:
        return None
    return text[start + len(tags[0]):end].strip()


def parse_response(text: object, options: Mapping[str, str | Sequence[str]] | None = None) -> tuple[str | None, str | None]:
    """(analysis, letter) of a full generated response, by the teacher CSV's extraction.

    The analysis is the first ``<analysis>...</analysis>`` block (None without one); the
    letter is ``parse_answer`` of the first ``<answer>...</answer>`` block (None without a
    complete block, e.g. when generation stopped before closing it). Tags are matched exactly,
    in lower case, as the teacher's extraction did.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None, None
    text = str(text)
    answer = _first_block(text, ANSWER_TAGS)
    return _first_block(text, ANALYSIS_TAGS), (parse_answer(answer, options) if answer is not None else None)


def ground_truth_letters(values: Iterable[object]) -> list[str]:
    """Letters of ground-truth description strings (exact match to ``task.CLASSES``).

    An unknown value is the user's data, not ours: UserError naming it.
    """
    out: list[str] = []
    for i, v in enumerate(values):
        letter = DESCRIPTION_TO_LETTER.get(v) if isinstance(v, str) else None
        if letter is None:
            known = "; ".join(f"{k}={d!r}" for k, d in CLASSES.items())
            raise UserError(
                f"unknown ground-truth label {v!r} (row {i}); expected one of the seven "
                f"ConnectomeBench descriptions exactly: {known}"
            )
        out.append(letter)
    return out


def majority_vote(letters: Sequence[str | None]) -> tuple[str | None, float]:
    """(most frequent parsed letter, its votes / number of responses incl. unparsed).

    Ties go to the letter that appeared first; with no parsed letter: (None, 0.0).
    """
    counts: dict[str, int] = {}
    for x in letters:  # dicts keep insertion order = first appearance
        if x is not None:
            counts[x] = counts.get(x, 0) + 1
    if not counts:
        return None, 0.0
    best = max(counts, key=counts.__getitem__)  # max keeps the first of equal counts
    return best, counts[best] / len(letters)


def _codes(y_true: Sequence[str], y_pred: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes: letters 0..6; predictions that are not a letter -> 7 (unparsed)."""
    index = {letter: i for i, letter in enumerate(LETTERS)}
    try:
        t = np.fromiter((index[x] for x in y_true), dtype=np.int64, count=len(y_true))
    except KeyError as e:
        raise UserError(f"unknown ground-truth letter {e.args[0]!r}; expected one of {', '.join(LETTERS)}") from None
    p = np.fromiter((index.get(x, 7) if isinstance(x, str) else 7 for x in y_pred),
                    dtype=np.int64, count=len(y_pred))
    return t, p


def _balanced(correct_per_class: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Mean recall over the classes with support, along the last axis."""
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = correct_per_class / support
    present = support > 0
    return np.where(present, recall, 0.0).sum(-1) / np.maximum(present.sum(-1), 1)


def _bootstrap(t: np.ndarray, correct: np.ndarray, n_bootstrap: int, seed: int, groups=None) -> dict:
    """Percentile 95% intervals of accuracy and balanced accuracy, resampling whole groups
    (``statistics.group_weights``; without groups every sample is its own group)."""
    from .statistics import group_index, group_weights

    k = len(LETTERS)
    onehot = np.eye(k)[t]  # (n, k)
    acc, bal = [], []
    for w in group_weights(group_index(groups, len(t)), n_bootstrap, seed):
        acc.append((w @ correct) / w.sum(1))
        support = w @ onehot
        hits = w @ (onehot * correct[:, None])
        bal.append(_balanced(hits, support))
    acc, bal = np.concatenate(acc), np.concatenate(bal)
    return {
        "accuracy_ci": [float(np.percentile(acc, 2.5)), float(np.percentile(acc, 97.5))],
        "balanced_accuracy_ci": [float(np.percentile(bal, 2.5)), float(np.percentile(bal, 97.5))],
    }


def classification_metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str | None],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    groups: Sequence | None = None,
) -> dict:
    """Metrics of letter predictions against ground-truth letters (JSON-ready dict).

    Keys: ``n``, ``accuracy`` (an unparsed prediction counts wrong), ``unparsed_rate``,
    ``balanced_accuracy`` (mean recall over the classes present in ``y_true``),
    ``per_class`` ({letter: {precision, recall, f1, support}} for all seven letters),
    ``confusion`` ({"rows": letters (true), "columns": letters + ["unparsed"] (predicted),
    "matrix": counts}), ``accuracy_ci`` and ``balanced_accuracy_ci`` (percentile 95%
    bootstrap intervals over ``n_bootstrap`` resamples, seeded, of whole ``groups`` when
    given, e.g. the leak-proof split groups, else of rows; None when ``n_bootstrap`` is 0 or
    there are no rows). With no rows the rates are None.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    t, p = _codes(y_true, y_pred)
    n = len(t)
    labels = list(range(len(LETTERS) + 1))
    columns = [*LETTERS, UNPARSED]
    if n == 0:
        return {
            "n": 0, "accuracy": None, "unparsed_rate": None, "balanced_accuracy": None,
            "per_class": {x: {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0} for x in LETTERS},
            "confusion": {"rows": list(LETTERS), "columns": columns,
                          "matrix": [[0] * len(columns) for _ in LETTERS]},
            "accuracy_ci": None, "balanced_accuracy_ci": None,
        }
    cm = confusion_matrix(t, p, labels=labels)[: len(LETTERS)]
    precision, recall, f1, support = precision_recall_fscore_support(
        t, p, labels=labels[: len(LETTERS)], zero_division=0
    )
    correct = (t == p).astype(np.float64)
    out = {
        "n": n,
        "accuracy": float(correct.mean()),
        "unparsed_rate": float((p == len(LETTERS)).mean()),
        "balanced_accuracy": float(_balanced(np.diag(cm[:, : len(LETTERS)]), cm.sum(1))),
        "per_class": {
            x: {"precision": float(precision[i]), "recall": float(recall[i]),
                "f1": float(f1[i]), "support": int(support[i])}
            for i, x in enumerate(LETTERS)
        },
        "confusion": {"rows": list(LETTERS), "columns": columns, "matrix": cm.tolist()},
        "accuracy_ci": None,
        "balanced_accuracy_ci": None,
    }
    if n_bootstrap > 0:
        out.update(_bootstrap(t, correct, n_bootstrap, seed, groups))
    return out


def share_metrics(y_true: Sequence[str], right_share, unparsed_share=None, *, n_bootstrap: int = 1000,
                  seed: int = 0, groups: Sequence | None = None) -> dict:
    """``classification_metrics``' headline figures for several answers per sample.

    ``right_share``: per sample, the share of its answers that are right (a sample without an
    answer: 0, wrong); ``unparsed_share``: the share that named no letter. Each sample weighs
    the same whatever its number of answers: accuracy is the mean of the shares (the expected
    accuracy of one answer drawn per sample), balanced accuracy the mean over classes of that
    mean. Intervals resample whole ``groups`` as ``classification_metrics`` does.
    """
    t, _ = _codes(y_true, [None] * len(y_true))
    right = np.asarray(right_share, dtype=np.float64).reshape(-1)
    if len(right) != len(t):
        raise ValueError(f"y_true has {len(t)} items but right_share has {len(right)}")
    if len(t) == 0:
        return {"n": 0, "accuracy": None, "unparsed_rate": None, "balanced_accuracy": None,
                "accuracy_ci": None, "balanced_accuracy_ci": None}
    onehot = np.eye(len(LETTERS))[t]
    out = {
        "n": len(t),
        "accuracy": float(right.mean()),
        "unparsed_rate": float(np.mean(unparsed_share)) if unparsed_share is not None else None,
        "balanced_accuracy": float(_balanced(onehot.T @ right, onehot.sum(0))),
        "accuracy_ci": None,
        "balanced_accuracy_ci": None,
    }
    if n_bootstrap > 0:
        out.update(_bootstrap(t, right, n_bootstrap, seed, groups))
    return out
