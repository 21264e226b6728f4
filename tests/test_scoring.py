"""The one answer parser, ground truth, majority vote and classification metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from connectodistill.core.errors import UserError
from connectodistill.core.scoring import (
    classification_metrics,
    ground_truth_letters,
    majority_vote,
    option_descriptions,
    parse_answer,
    parse_response,
)
from connectodistill.core.task import CLASSES, LETTERS

# The answer rule, as docs/evaluation.md shows it. Teacher side: the CSV's `llm_answer` cell
# (already the text between the tags); student side: a whole generated response.
PROMPT_OPTIONS = {"a": "A single soma with its processes", "b": "Several somas, with processes",
                  "c": "Processes without a soma (axons, dendrites, synapses)", "d": "A nucleus",
                  "e": "Non-neuronal: glial cells or blood vessels", "f": "None of the above", "g": "Unsure"}

CSV_FORMS = [
    ("a", "a"), ("A", "a"), (" b ", "b"), ("a)", "a"), ("(b)", "b"), ("(D)", "d"), ("[e]", "e"),
    ("**d**", "d"), ("`e`", "e"), ("g.", "g"), ("'a'", "a"), ('"d":', "d"),
    ("c) Processes without a soma...", "c"), ("e. Non-neuronal types", "e"), ("E - non-neuronal", "e"),
    ("Nucleus", "d"), ("nucleus.", "d"), ("None of the above.", "f"), ("Unsure", "g"),
    ("a single soma and process(es)", "a"), ("a) A single soma and process(es)", "a"),
    ("**c) Processes without a soma**", "c"), ("b: multiple somas", "b"),
    ("", None), ("   ", None), (None, None), (math.nan, None),
    ("Analysis tags not found in response.", None),  # the placeholder is no answer
    ("The segment shows a soma", None), ("Based on the images, this appears to be", None),
    ("a or b", None), ("a, b", None), ("ab", None), ("h", None), ("H)", None), ("1", None),
    ("a) Nucleus", None),  # a letter followed by another option's text
    ("d) Processes without a soma", None), ("Answer: a", None), ("this is a soma", None),
    ("Processes", None),  # not a whole description, no letter
    ("<answer>b</answer>", None),  # tags are not part of an answer
]


@pytest.mark.parametrize(("text", "letter"), CSV_FORMS)
def test_parse_answer_csv_forms(text, letter):
    assert parse_answer(text) == letter


@pytest.mark.parametrize(
    ("text", "letter"),
    [("D. A nucleus", "d"), ("a) A single soma with its processes", "a"), ("A nucleus", "d"),
     ("e: Non-neuronal: glial cells", "e"), ("c) Processes without a soma (axons", "c"),
     ("b) A nucleus", None), ("Several", None)],
)
def test_parse_answer_prompt_wording(text, letter):
    """The prompt's own option wording counts as much as the dataset's."""
    assert parse_answer(text, PROMPT_OPTIONS) == letter


def test_option_descriptions_reads_a_full_list():
    text = "Pick one:\n" + "\n".join(f"{k}) {v}" for k, v in PROMPT_OPTIONS.items()) + "\n\nAnswer."
    assert option_descriptions(text) == PROMPT_OPTIONS
    assert option_descriptions("a) only one option here") == {}
    assert option_descriptions(None) == {}


GENERATED_FORMS = [
    ("<analysis>x</analysis>\n<answer>a</answer>", ("x", "a")),
    ("<analysis>\n first \n</analysis><answer>b</answer>\n<analysis>second</analysis><answer>c</answer>",
     ("first", "b")),  # the first blocks, as the teacher's extraction
    ("<answer> (C) </answer>", (None, "c")),
    ("<analysis>x</analysis><answer>**B**</answer>", ("x", "b")),
    ("<analysis>x</analysis><answer>c) Processes without a soma</answer>", ("x", "c")),
    ("<analysis>x</analysis> so the answer is a", ("x", None)),  # no answer block
    ("<analysis>cut off mid-sentence <answer>a", (None, None)),  # truncated blocks
    ("<analysis>x</analysis><answer>a", ("x", None)),  # answer block never closed
    ("<ANSWER>c</ANSWER>", (None, None)),  # tags are matched exactly, in lower case
    ("<Analysis>x</Analysis><answer>d</answer>", (None, "d")),
    ("<analysis>x</analysis><answer>a or b</answer>", ("x", None)),
    ("<answer></answer><answer>a</answer>", (None, None)),  # the first block is empty
    ("</answer><answer>e</answer>", (None, "e")),  # a closing tag before the first opening one
    ("", (None, None)), (None, (None, None)),
]


@pytest.mark.parametrize(("text", "parsed"), GENERATED_FORMS)
def test_parse_response_generated_forms(text, parsed):
    assert parse_response(text) == parsed


def test_teacher_and_student_share_one_rule():
    """A response scored by parse_response gives the letter parse_answer gives to the text the
    teacher's extraction (first <answer> .. first </answer>) would have stored."""
    for text, letter in CSV_FORMS:
        if isinstance(text, str) and "<" not in text:
            assert parse_response(f"<analysis>z</analysis><answer>{text}</answer>")[1] == letter


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
