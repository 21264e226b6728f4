"""The one answer parser, ground truth, majority vote and classification metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from connectodistill.errors import UserError
from connectodistill.scoring import (
    classification_metrics,
    ground_truth_letters,
    majority_vote,
    parse_answer,
    parse_response,
)
from connectodistill.task import CLASSES, LETTERS


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("a", "a"), ("A", "a"), (" b ", "b"), ("c)", "c"), ("(D)", "d"), ("[e]", "e"),
        ("**f**", "f"), ("g.", "g"), ("'a'", "a"), ("<answer>b</answer>", "b"),
        ("<answer>\n (C) \n</answer>", "c"), ("\"d\":", "d"), ("`e`", "e"),
    ],
)
def test_parse_answer_letters(text, letter):
    assert parse_answer(text) == letter


@pytest.mark.parametrize(
    "text",
    ["", "   ", None, math.nan, "a or b", "a, b", "ab", "h", "H)", "this is a soma",
     "a) A single soma and process(es)", "Answer: a", "The segment shows a soma", "1"],
)
def test_parse_answer_rejects(text):
    assert parse_answer(text) is None


def test_parse_response_takes_last_blocks():
    text = ("<analysis>first</analysis> <answer>b</answer>\n"
            "<analysis>\n second thought \n</analysis><answer> (C) </answer>")
    assert parse_response(text) == ("second thought", "c")


def test_parse_response_missing_tags():
    assert parse_response("<analysis>x</analysis> so the answer is a") == ("x", None)
    assert parse_response("<answer>d</answer>") == (None, "d")
    assert parse_response("<analysis>x</analysis><answer>a or b</answer>") == ("x", None)
    assert parse_response("<analysis>cut off mid-sentence <answer>a") == (None, None)
    assert parse_response(None) == (None, None)


def test_ground_truth_letters_exact_strings():
    assert ground_truth_letters(list(CLASSES.values())) == list(LETTERS)
    with pytest.raises(UserError, match="'nucleus'"):
        ground_truth_letters(["Nucleus", "nucleus"])  # case matters: exact strings only
    with pytest.raises(UserError, match="None"):
        ground_truth_letters([None])


def test_majority_vote():
    assert majority_vote(["a", "b", "a"]) == ("a", pytest.approx(2 / 3))
    assert majority_vote(["b", "a"]) == ("b", 0.5)  # tie: first appearance
    assert majority_vote(["b", None, "a", "a", "b"]) == ("b", 0.4)
    assert majority_vote([None, "c"]) == ("c", 0.5)  # share counts unparsed responses
    assert majority_vote([None, None]) == (None, 0.0)
    assert majority_vote([]) == (None, 0.0)


def test_classification_metrics_by_hand():
    y_true = ["a", "a", "a", "b", "c", "c"]
    y_pred = ["a", "a", None, "a", "c", "b"]
    m = classification_metrics(y_true, y_pred, n_bootstrap=200, seed=1)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["unparsed_rate"] == pytest.approx(1 / 6)
    # recall: a 2/3, b 0/1, c 1/2 -> mean over the three present classes
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 0 + 1 / 2) / 3)
    assert set(m["per_class"]) == set(LETTERS)
    assert m["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["per_class"]["g"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    conf = m["confusion"]
    assert conf["rows"] == list(LETTERS)
    assert conf["columns"] == [*LETTERS, "unparsed"]
    assert np.array(conf["matrix"]).shape == (7, 8)
    assert conf["matrix"][0] == [2, 0, 0, 0, 0, 0, 0, 1]
    assert conf["matrix"][2][:3] == [0, 1, 1]
    lo, hi = m["accuracy_ci"]
    assert 0.0 <= lo <= m["accuracy"] <= hi <= 1.0
    lo, hi = m["balanced_accuracy_ci"]
    assert 0.0 <= lo <= hi <= 1.0


def test_classification_metrics_matches_sklearn_and_is_seeded():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    rng = np.random.default_rng(0)
    y_true = rng.choice(list(LETTERS), size=500, p=[0.4, 0.1, 0.2, 0.1, 0.1, 0.05, 0.05]).tolist()
    y_pred = [t if rng.random() < 0.8 else str(rng.choice(list(LETTERS))) for t in y_true]
    m = classification_metrics(y_true, y_pred, seed=3)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m == classification_metrics(y_true, y_pred, seed=3)
    assert m["accuracy_ci"] != classification_metrics(y_true, y_pred, seed=4)["accuracy_ci"]
    lo, hi = m["accuracy_ci"]
    assert lo < m["accuracy"] < hi and hi - lo < 0.1


def test_classification_metrics_edges():
    m = classification_metrics(["a"], ["h"], n_bootstrap=0)  # not a letter -> unparsed
    assert m["accuracy"] == 0.0 and m["unparsed_rate"] == 1.0
    assert m["accuracy_ci"] is None and m["balanced_accuracy_ci"] is None
    empty = classification_metrics([], [])
    assert empty["n"] == 0 and empty["accuracy"] is None
    with pytest.raises(ValueError):
        classification_metrics(["a"], [])
    with pytest.raises(UserError):
        classification_metrics(["z"], ["a"])
