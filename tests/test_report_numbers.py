"""Numbers you can publish: the report's intervals, its one teacher single-response figure,
triage that never accepts an answer without a letter, the teacher asked the student's own
question, and a benchmark that repeats a segment (issue 23)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from connectodistill import report
from connectodistill.cli import app
from connectodistill.core.calibration import accepted, brier, threshold_for
from connectodistill.core.data import write_parquet
from connectodistill.core.scoring import classification_metrics, parse_answer
from connectodistill.evaluation.results import sample_ids_hash, write_predictions

LETTERS = list("abcdefg")
runner = CliRunner()


# ----------------------------------------------------------------------------- hand-made inputs
def make_result(folder: Path, pids, cids, truth, predicted, groups, *, setting="with_description",
                name="student") -> Path:
    """An eval result folder (predictions.csv + summary.json) as `eval` writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    conf = np.array([0.9 if p else 0.0 for p in predicted])
    probs = np.full((len(truth), 7), 1 / 7)
    for i, p in enumerate(predicted):
        if p:
            probs[i] = 0.1 / 6
            probs[i, LETTERS.index(p)] = 0.9
    preds = pd.DataFrame({
        "proofread_root_id": np.asarray(pids, "int64"), "current_root_id": np.asarray(cids, "int64"),
        "ground_truth_letter": truth, "predicted_letter": predicted,
        "parsed": [p is not None for p in predicted], "correct": [p == t for p, t in zip(predicted, truth, strict=True)],
        "split_group": groups, **{f"p_{x}": probs[:, j] for j, x in enumerate(LETTERS)}, "confidence": conf,
    })
    write_predictions(preds, folder / "predictions.csv")
    m = classification_metrics(truth, predicted, groups=np.asarray(groups))
    summary = {"name": name, **m, "sample_ids_hash": sample_ids_hash(preds.proofread_root_id, preds.current_root_id),
               "includes_train_samples": False, "settings": {"prompt_setting": setting}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def make_merged(path: Path, rows: list[tuple], val=()) -> Path:
    """merge's outputs as far as report reads them: the metadata, and _responses.parquet from
    rows of (pid, cid, truth, answer, group, with_description)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(pa.table({"x": [0]}), path, {"splits": {"train": [], "val": [list(v) for v in val], "test": []}})
    df = pd.DataFrame(rows, columns=["proofread_root_id", "current_root_id", "ground_truth_letter", "teacher_answer",
                                     "split_group", "teacher_with_description"])
    df["teacher_correct"] = df.teacher_answer == df.ground_truth_letter
    df.to_parquet(path.with_name(f"{path.stem}_responses.parquet"))
    return path


def table_of(tmp_path, results, merged) -> pd.DataFrame:
    md = report(results=[str(r) for r in results], merged=str(merged), output=str(tmp_path / "report"))
    return pd.read_csv(md.with_suffix(".csv")).set_index("model")


def ci(value) -> list[float]:
    return json.loads(value) if isinstance(value, str) else list(value)


def cluster_bootstrap(values, groups, n=4000, seed=7) -> list[float]:
    """An independent percentile interval of a mean, drawing whole groups with replacement."""
    v, g = np.asarray(values, float), np.asarray(groups)
    _, inv = np.unique(g, return_inverse=True)
    sums, counts = np.bincount(inv, weights=v), np.bincount(inv)
    rng = np.random.default_rng(seed)
    draws = [sums[p].sum() / counts[p].sum() for p in (rng.integers(0, len(sums), len(sums)) for _ in range(n))]
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


# ----------------------------------------------------------------------------- 1. intervals
def test_every_interval_resamples_leak_proof_groups(tmp_path):
    """40 groups of 10 correlated segments: each row's interval matches an independent cluster
    bootstrap (a sample-by-sample bootstrap is about half as wide here)."""
    rng = np.random.default_rng(0)
    rows, pids, cids, groups, student, teacher_right, teacher_share = [], [], [], [], [], [], []
    for g in range(40):
        good = rng.random() < rng.uniform(0.2, 1.0)
        student_good = rng.random() < 0.6
        for s in range(10):
            pid, cid = 864691130000000000 + g, 864691140000000000 + 100 * g + s
            pids.append(pid), cids.append(cid), groups.append(g)
            answers = ["a" if rng.random() < (0.95 if good else 0.1) else "c" for _ in range(3)]
            rows += [(pid, cid, "a", x, g, True) for x in answers]
            teacher_right.append(max(set(answers), key=answers.count) == "a")
            teacher_share.append(answers.count("a") / 3)
            student.append("a" if rng.random() < (0.9 if student_good else 0.2) else "c")
    res = make_result(tmp_path / "res", pids, cids, ["a"] * 400, student, groups)
    t = table_of(tmp_path, [res], make_merged(tmp_path / "m.parquet", rows))
    for model, values in (("teacher (majority vote)", teacher_right), ("teacher (single response)", teacher_share),
                          ("student", [x == "a" for x in student])):
        want = cluster_bootstrap(values, groups)
        got = ci(t.loc[model, "accuracy_ci"])
        assert got == pytest.approx(want, abs=0.03), model
        assert want[1] - want[0] > 0.15  # the correlation is real: a per-sample interval is ~0.09 wide


# ----------------------------------------------------------------------------- 2. one definition
def test_one_teacher_single_response_figure_with_uneven_draws(tmp_path):
    """One sample with 10 right draws, one with 2 wrong: each sample weighs the same (0.5, not
    10/12), and delta_vs_teacher_single is the student's accuracy minus exactly that row."""
    rows = [(1, 11, "a", "a", 0, True)] * 10 + [(2, 22, "b", "c", 1, True)] * 2
    res = make_result(tmp_path / "res", [1, 2], [11, 22], ["a", "b"], ["a", "b"], [0, 1])
    t = table_of(tmp_path, [res], make_merged(tmp_path / "m.parquet", rows))
    single = t.loc["teacher (single response)"]
    assert single["accuracy"] == pytest.approx(0.5) and single["n"] == 2
    assert t.loc["student", "delta_vs_teacher_single"] == pytest.approx(t.loc["student", "accuracy"] - 0.5)
    assert "each sample weighs the same" in single["note"]


# ----------------------------------------------------------------------------- 3. triage
def test_triage_never_accepts_an_answer_without_a_letter():
    from connectodistill.evaluation.recipe import choose_triage

    # val: 19 right at 0.9 and one unparsed (confidence 0): 95% is reached only by taking all 20
    assert threshold_for([0.9] * 19 + [0.0], [1] * 19 + [0], 0.95) == 0.9
    assert threshold_for([0.0, 0.0], [0, 0], 0.0) is None  # nothing with a letter to accept
    val = pd.DataFrame({"proofread_root_id": range(20), "current_root_id": range(20),
                        "correct": [True] * 19 + [False], "confidence": [0.9] * 19 + [0.0]})
    preds = pd.DataFrame({"proofread_root_id": range(100, 110), "current_root_id": range(100, 110),
                          "predicted_letter": ["a"] * 8 + [None, None], "correct": [True] * 8 + [False] * 2,
                          "confidence": [0.9] * 8 + [0.0, 0.0]})
    triage, summary = choose_triage(val, preds, 0.95)
    assert summary["threshold"] > 0
    assert not ((triage["decision"] == "auto") & preds["predicted_letter"].isna()).any()
    assert not accepted([0.0, 0.5], 0.0)[0] and accepted([0.0, 0.5], 0.0)[1]


def test_teacher_vote_triage_never_accepts_a_sample_without_a_parsed_response(tmp_path):
    # val: 19 samples the teacher gets right unanimously, one where no response parsed
    val = [(i, 1000 + i) for i in range(20)]
    rows = [(p, c, "a", "a" if i < 19 else None, i, True) for i, (p, c) in enumerate(val) for _ in range(3)]
    test = [(100 + i, 2000 + i) for i in range(4)]
    rows += [(p, c, "a", "a" if i < 2 else None, 100 + i, True) for i, (p, c) in enumerate(test) for _ in range(3)]
    res = make_result(tmp_path / "res", [p for p, _ in test], [c for _, c in test], ["a"] * 4, ["a"] * 4,
                      list(range(4)))
    t = table_of(tmp_path, [res], make_merged(tmp_path / "m.parquet", rows, val=val))
    major = t.loc["teacher (majority vote)"]
    assert major["triage_threshold"] > 0 and major["triage_coverage"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- 4. settings
def test_the_teacher_answers_the_question_the_student_was_asked(tmp_path):
    rows = []
    for i in range(20):
        rows += [(i, 100 + i, "a", "a", i, True)] * 3   # asked with the species description: right
        rows += [(i, 100 + i, "a", "c", i, False)] * 5  # asked without it: wrong
    merged = make_merged(tmp_path / "m.parquet", rows)
    ids = (list(range(20)), [100 + i for i in range(20)], ["a"] * 20, ["a"] * 20, list(range(20)))
    with_desc = make_result(tmp_path / "with", *ids, setting="with_description", name="with")
    t = table_of(tmp_path / "one", [with_desc], merged)
    assert t.loc["teacher (majority vote)", "accuracy"] == 1.0
    assert t.loc["teacher (single response)", "accuracy"] == 1.0
    assert "60 responses with the species description" in t.loc["teacher (majority vote)", "note"]
    # two results asked different questions: each gets the teacher's answers to its own, named
    without = make_result(tmp_path / "without", *ids, setting="without_description", name="without")
    t = table_of(tmp_path / "two", [with_desc, without], merged)
    assert t.loc["teacher (majority vote), with description", "accuracy"] == 1.0
    assert t.loc["teacher (majority vote), without description", "accuracy"] == 0.0
    assert t.loc["without", "delta_vs_teacher"] == pytest.approx(1.0)
    assert t.loc["with", "delta_vs_teacher"] == pytest.approx(0.0)


# ----------------------------------------------------------------------------- 5. a repeated segment
def test_a_repeated_segment_counts_once_per_copy_for_everyone(tmp_path):
    rows = [(1, 11, "a", "a", 0, True)] * 2 + [(2, 22, "b", "b", 1, True)] * 2 + [(3, 33, "c", "d", 2, True)] * 2
    res = make_result(tmp_path / "res", [1, 1, 2, 3], [11, 11, 22, 33], ["a", "a", "b", "c"], ["a", "a", "b", "d"],
                      [0, 0, 1, 2])
    t = table_of(tmp_path, [res], make_merged(tmp_path / "m.parquet", rows))
    assert set(t["n"]) == {4}
    assert t.loc["teacher (majority vote)", "accuracy"] == pytest.approx(0.75)


@pytest.mark.slow
def test_a_repeated_segment_through_merge_cv_train_cv_eval_and_report(tmp_path, tiny_student):
    from connectodistill.synthetic import make_benchmark, make_teacher_csvs

    bench = make_benchmark(tmp_path / "dup.parquet", n=60, seed=6, duplicates=4)
    csvs = make_teacher_csvs(bench, tmp_path / "csvs", k=3, seed=6)
    merged = tmp_path / "merged.parquet"

    def invoke(*args):
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 0, r.output
        return r

    invoke("merge", *csvs, "--output", merged, "--dataset-name", bench, "--folds", 3, "--filter-correct-only")
    invoke("train", "--data", merged, "--model", tiny_student, "--output-dir", tmp_path / "runs", "--folds",
           "--run-name", "cv", "--epochs", 1, "--batch-size", 8, "--num-samples", 8, "--select-by", "last")
    [run] = list((tmp_path / "runs").iterdir())
    invoke("eval", "--adapter-path", run, "--output-dir", tmp_path / "results", "--max-new-tokens", 8,
           "--batch-size", 16, "--target-accuracy", 0.1)  # the pooled triage path too
    [result] = list((tmp_path / "results").glob("*_cv"))
    preds = pd.read_csv(result / "predictions.csv")
    assert len(preds) == 64  # every benchmark row, the four copies included
    md = report(results=[str(result)], merged=str(merged), output=str(tmp_path / "report"))
    table = pd.read_csv(md.with_suffix(".csv"))
    assert set(table["n"]) == {64}


# ----------------------------------------------------------------------------- smaller faults
@pytest.mark.parametrize("text,letter", [
    ("\u2018c\u2019", "c"), ("\u201cd\u201d", "d"), ("\u00a0b\u00a0", "b"), ("\u2014e\u2014", "e"),
    ("a\u2026", "a"), ("\u200bf\u200b", "f"), ("\uff27", "g"), ("\uff08\uff42\uff09", "b"),
    ("c) Processes without a soma\u2026", "c"), ("a or b", None), ("a\u00a0or\u00a0b", None),
])
def test_unicode_forms_of_a_lone_letter(text, letter):
    assert parse_answer(text) == letter


def test_brier_of_an_unparsed_answer_is_the_zero_vector():
    probs = np.array([[1.0, 0, 0, 0, 0, 0, 0]])  # all mass on the truth, but no letter was named
    assert brier(probs, ["a"]) == 0.0
    assert brier(probs, ["a"], parsed=[False]) == 1.0


def test_grpo_counts_zero_spread_per_group_of_generations():
    from connectodistill.training.grpo import Rewards

    r = Rewards(format_weight=0.0, answer_only=True, log_path=None, main=True, num_generations=4)
    prompt = "x"
    # two prompts x 4 completions: the first group all wrong (no signal), the second mixed
    completions = ["<answer>b</answer>"] * 4 + ["<answer>a</answer>", "<answer>b</answer>"] * 2
    r.funcs[0](None, completions, ["a"] * 8, [prompt] * 8, ["s"] * 8)
    assert (r.zero_spread, r.groups) == (1, 2)  # the batch as a whole has spread; one group has none


def test_a_fold_training_on_a_sliver_is_warned(tmp_path):
    from connectodistill.merging import merge
    from connectodistill.synthetic import make_benchmark, make_teacher_csvs

    bench_path = make_benchmark(tmp_path / "b.parquet", n=60, seed=2, with_images=False)
    bench = pd.read_parquet(bench_path)
    bench.loc[:29, "proofread_root_id"] = bench.loc[0, "proofread_root_id"]  # one neuron: half the samples
    bench.to_parquet(bench_path)
    csvs = make_teacher_csvs(bench_path, tmp_path / "csvs", k=2, seed=2)
    res = merge(csv_files=csvs, output=tmp_path / "m.parquet", dataset_name=str(bench_path), folds=4, quiet=True)
    warnings = res.report["fold_warnings"]
    assert len(warnings) == 1 and "trains on" in warnings[0] and "30 samples" in warnings[0]


# ----------------------------------------------------------------------------- outputs a reader can trust
def test_p_values_and_verdicts_say_only_what_the_test_says():
    from connectodistill.evaluation.reporting import describe_delta, format_p

    assert format_p(0.0) == "p < 0.001" and format_p(0.0573) == "p = 0.057" and format_p(None) == "p = n/a"
    row = {"model": "s", "delta_vs_teacher": -0.08, "delta_vs_teacher_ci": [-0.15, -0.01]}
    assert "worse" in describe_delta({**row, "mcnemar_p": 0.01})
    borderline = describe_delta({**row, "mcnemar_p": 0.057})  # the interval and McNemar disagree
    assert "worse" not in borderline and "borderline" in borderline and "p = 0.057" in borderline
    assert "no difference" in describe_delta({**row, "delta_vs_teacher_ci": [-0.15, 0.02], "mcnemar_p": 0.3})


def test_nothing_to_calibrate_without_a_parsed_answer(tmp_path):
    from connectodistill.evaluation.results import confidence_summary, plot_confidence

    preds = pd.DataFrame({"ground_truth_letter": ["a", "b"], "predicted_letter": [None, None],
                          "correct": [False, False], "confidence": [0.0, 0.0],
                          **{f"p_{x}": [1 / 7, 1 / 7] for x in LETTERS}})
    s = confidence_summary(preds)
    assert s["ece"] is None and s["calibration_note"] == "n/a: no parsed answers"
    plot_confidence({"name": "x", "n": 2, **s}, preds, tmp_path)
    assert not (tmp_path / "reliability.png").exists()  # no plot of nothing


def test_the_model_card_has_no_none_and_one_unit():
    from connectodistill.prediction.exporting import model_card

    row = {"model": "student", "n": 38, "accuracy": 0.7789, "accuracy_ci": "[0.70, 0.85]", "balanced_accuracy": 0.5,
           "balanced_accuracy_ci": "[0.4, 0.6]", "delta_vs_teacher": -0.0526, "delta_vs_teacher_ci": "[-0.1, 0.0]",
           "mcnemar_p": 0.0}
    card = model_card({"settings": {"lora_r": 16}, "rows": {}, "best_metric": None}, [row], "out")
    assert "None" not in card
    assert "77.9% [70.0, 85.0]" in card and "-5.3 pp [-10.0, +0.0], p < 0.001" in card
    assert "the last step (no val selection)" in card


def test_plots_share_their_axes_and_keep_an_edge_point_whole(tmp_path):
    from connectodistill.core.calibration import (
        plot_reliability,
        plot_risk_coverage,
        reliability_bins,
    )

    # every answer at p = 1.0: one point on the right edge, drawn whole
    fig = plot_reliability({"student": reliability_bins([1.0] * 5, [1, 1, 1, 0, 1])}, tmp_path / "r.png")
    ax = fig.axes[0]
    assert ax.get_xlim()[1] > 1.0 and ax.get_ylim()[1] > 1.0 and not ax.lines[-1].get_clip_on()
    limits = {plot_risk_coverage({"m": (np.linspace(0, 1, n), np.arange(n) % 2)}, tmp_path / f"{n}.png").axes[0].get_ylim()
              for n in (5, 50)}
    assert limits == {(0.0, 1.0)}  # the same scale whatever the model's risks
