"""Evaluation and report: held-out ids, batched generation, refusals, the teacher on the same ids."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from connectodistill.cli import app
from connectodistill.core.data import read_merged
from connectodistill.evaluation.recipe import evaluate, generate_answers
from connectodistill.evaluation.reporting import report
from connectodistill.training.runs import RUN_CONFIG

runner = CliRunner()
FAST = dict(max_new_tokens=12, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def student_result(trained_run, tmp_path_factory):
    return evaluate(adapter_path=trained_run, output_dir=tmp_path_factory.mktemp("results"), name="student", **FAST)


def _keys(df):
    return {(int(p), int(c)) for p, c in zip(df["proofread_root_id"], df["current_root_id"], strict=True)}


def test_default_eval_set_is_the_adapters_test_ids(student_result, trained_run, small_benchmark):
    preds = pd.read_csv(student_result / "predictions.csv", dtype={"proofread_root_id": "int64", "current_root_id": "int64"})
    cfg = json.loads((trained_run / RUN_CONFIG).read_text())
    test_ids = {tuple(p) for p in cfg["splits"]["test"]}
    assert _keys(preds) == test_ids
    # Taken from the full benchmark: includes test samples the teacher got wrong.
    assert len(preds) == len(test_ids)
    summary = json.loads((student_result / "summary.json").read_text())
    assert summary["n"] == len(test_ids)
    assert summary["settings"]["split"] == "test" and summary["includes_train_samples"] is False
    assert (student_result / "confusion.png").stat().st_size > 1000
    for key in ("accuracy", "balanced_accuracy", "unparsed_rate", "per_class", "confusion",
                "accuracy_ci", "balanced_accuracy_ci", "sample_ids_hash"):
        assert key in summary
    # Unparsed answers count as wrong: accuracy is over every sample.
    assert summary["accuracy"] == pytest.approx(preds["correct"].mean())
    assert list(preds.columns)[:5] == ["proofread_root_id", "current_root_id", "species",
                                        "ground_truth_letter", "predicted_letter"]


def test_ids_stay_exact_in_predictions(student_result, trained_run):
    text = (student_result / "predictions.csv").read_text()
    cfg = json.loads((trained_run / RUN_CONFIG).read_text())
    for pid, cid in cfg["splits"]["test"]:
        assert f"{pid},{cid}," in text


def test_batched_and_one_by_one_generation_agree(trained_run, tiny_student, merged_small):
    from connectodistill.core.conversation import build_prompt, load_images
    from connectodistill.core.modeling import load_adapter, load_model, load_processor
    from connectodistill.core.task import image_columns

    table, _ = read_merged(merged_small)
    rows = table.slice(0, 6).to_pylist()
    cols = image_columns(table.column_names)
    prompts = [build_prompt(r) for r in rows]
    images = [load_images(r, cols) for r in rows]
    processor, _ = load_processor(str(trained_run))
    side = processor.tokenizer.padding_side
    model = load_adapter(load_model(str(tiny_student)), trained_run)
    batched = generate_answers(model, processor, prompts, images, batch_size=6, max_new_tokens=16)
    single = generate_answers(model, processor, prompts, images, batch_size=1, max_new_tokens=16)
    assert batched == single
    assert processor.tokenizer.padding_side == side  # left padding was only for generation


def test_train_samples_are_refused_then_flagged(trained_run, tmp_path):
    with pytest.raises(Exception, match="trained on"):
        evaluate(adapter_path=trained_run, split="train", output_dir=tmp_path, **FAST)
    out = evaluate(adapter_path=trained_run, split="train", allow_train_samples=True, num_samples=4,
                   output_dir=tmp_path, name="train-ids", **FAST)
    assert json.loads((out / "summary.json").read_text())["includes_train_samples"] is True


def test_base_model_with_merged_uses_the_same_ids(student_result, tiny_student, merged_small, tmp_path):
    base = evaluate(base_model=str(tiny_student), merged=merged_small, output_dir=tmp_path, name="base", **FAST)
    s_base = json.loads((base / "summary.json").read_text())
    s_student = json.loads((student_result / "summary.json").read_text())
    assert s_base["sample_ids_hash"] == s_student["sample_ids_hash"]
    assert s_base["adapter"] is None


def test_blank_images_and_simple_prompt_ablations(trained_run, tmp_path):
    out = evaluate(adapter_path=trained_run, blank_images=True, simple_prompt=True, output_dir=tmp_path, **FAST)
    s = json.loads((out / "summary.json").read_text())
    assert s["settings"]["blank_images"] and s["settings"]["simple_prompt"]
    assert "blank-images" in out.name and "simple-prompt" in out.name


def test_report_scores_the_teacher_on_exactly_the_same_ids(student_result, merged_small, tmp_path):
    md = report(results=[student_result], merged=merged_small, output=tmp_path / "report")
    table = pd.read_csv(md.with_suffix(".csv"))
    assert list(table["model"]) == ["teacher (single response)", "teacher (majority vote)", "student"]
    assert table["same_samples"].all()
    preds = pd.read_csv(student_result / "predictions.csv")
    ids = _keys(preds)
    responses = pd.read_parquet(merged_small.with_name("merged_responses.parquet"))
    on_ids = responses[[k in ids for k in zip(responses["proofread_root_id"], responses["current_root_id"], strict=True)]]
    teacher = table.set_index("model")
    # one n for every row (the student's), each sample weighing the same in the single-response row
    assert teacher.loc["teacher (single response)", "n"] == teacher.loc["teacher (majority vote)", "n"] == len(ids)
    share = on_ids.groupby(["proofread_root_id", "current_root_id"])["teacher_correct"].mean()
    right = [share.get(k, 0.0) for k in ids]
    assert teacher.loc["teacher (single response)", "accuracy"] == pytest.approx(np.mean(right))
    # ... and it is what delta_vs_teacher_single compares against
    assert teacher.loc["student", "delta_vs_teacher_single"] == pytest.approx(
        teacher.loc["student", "accuracy"] - np.mean(right))
    assert "teacher (majority vote)" in md.read_text()


def test_report_marks_results_on_different_samples(student_result, trained_run, tmp_path):
    other = evaluate(adapter_path=trained_run, split="val", output_dir=tmp_path, name="val", **FAST)
    md = report(results=[student_result, other], output=tmp_path / "r")
    table = pd.read_csv(md.with_suffix(".csv"))
    assert list(table["same_samples"]) == [True, False]
    assert "DIFFERENT" in md.read_text()


@pytest.mark.parametrize("case", ["no_config", "unknown_split", "empty", "mismatch", "missing_benchmark"])
def test_bad_eval_input_exits_2(case, trained_run, tmp_path):
    if case == "no_config":
        bare = tmp_path / "bare"
        shutil.copytree(trained_run, bare, ignore=shutil.ignore_patterns(RUN_CONFIG, "checkpoints"))
        args, needle = ["--adapter-path", str(bare)], RUN_CONFIG
    elif case == "unknown_split":
        args, needle = ["--adapter-path", str(trained_run), "--split", "holdout"], "split"
    elif case == "empty":
        # A run whose val split is empty: selecting it selects nothing.
        run = tmp_path / "run"
        shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints"))
        cfg = json.loads((run / RUN_CONFIG).read_text())
        cfg["splits"]["val"] = []
        (run / RUN_CONFIG).write_text(json.dumps(cfg))
        args, needle = ["--adapter-path", str(run), "--split", "val"], "no samples selected"
    elif case == "missing_benchmark":
        args, needle = ["--adapter-path", str(trained_run), "--dataset-name", str(tmp_path / "missing.parquet"),
                        "--allow-config-mismatch"], "missing.parquet"
    else:
        args, needle = ["--adapter-path", str(trained_run), "--max-pixels", "9999"], "--allow-config-mismatch"
    r = runner.invoke(app, ["eval", *args, "--output-dir", str(tmp_path / "out"), "--max-new-tokens", "4"])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert r.output.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_teacher_interval_resamples_samples_not_responses():
    from connectodistill.core.scoring import classification_metrics
    from connectodistill.evaluation.teacher import teacher_answers, teacher_rows

    # 40 samples x 5 responses; each sample's responses all right or all wrong (correlated).
    rows = []
    for i in range(40):
        truth, right = "ac"[i % 2], i % 4 != 0
        for _ in range(5):
            rows.append({"proofread_root_id": 864691134965949000 + i, "current_root_id": 864691135000000000 + i,
                         "ground_truth_letter": truth, "teacher_answer": truth if right else "d",
                         "teacher_correct": right})
    df = pd.DataFrame(rows)
    preds = df.drop_duplicates(["proofread_root_id", "current_root_id"])[
        ["proofread_root_id", "current_root_id", "ground_truth_letter"]].reset_index(drop=True)
    naive = classification_metrics(df["ground_truth_letter"].tolist(), df["teacher_answer"].tolist())
    single = teacher_rows(teacher_answers(preds, df), preds, "h")[0]
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(single["accuracy_ci"]) > 1.5 * width(naive["accuracy_ci"])
    assert single["accuracy_ci"][0] < 0.75 < single["accuracy_ci"][1]


def test_predictions_csv_round_trips_any_generated_text(tmp_path):
    from connectodistill.evaluation.recipe import read_predictions, write_predictions

    nasty = 'garbage\rwith a bare CR\x1d, "quotes", commas\nand newlines'
    preds = pd.DataFrame({"proofread_root_id": [864691134965949727, 864691134965949729],
                          "current_root_id": [864691135000000001, 864691135000000003],
                          "predicted_letter": [None, "a"], "response": [nasty, "<answer>a</answer>"]})
    write_predictions(preds, tmp_path / "p.csv")
    back = read_predictions(tmp_path / "p.csv")
    assert len(back) == 2
    assert back["response"][0] == nasty
    assert list(back["proofread_root_id"]) == [864691134965949727, 864691134965949729]
