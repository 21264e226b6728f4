"""train and eval give every sample the teacher's own prompt, record it, and refuse mixes:
real merged files, the real CLI, the tiny student."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from connectodistill.cli import app
from connectodistill.evaluation.recipe import evaluate
from connectodistill.merging import merge
from connectodistill.synthetic import make_teacher_csvs
from connectodistill.training import train
from connectodistill.training.examples import build_examples, load_training_data

runner = CliRunner()
TINY = dict(epochs=1, num_samples=8, batch_size=8, gradient_accumulation=1, learning_rate=3e-3,
            warmup_steps=0, progress=False, seed=0, select_by="last")
EVAL = dict(num_samples=4, batch_size=4, max_new_tokens=8, progress=False)


@pytest.fixture(scope="module")
def mixed(small_benchmark, tmp_path_factory):
    """Two teacher files, with and without the guidance paragraph; every response kept."""
    d = tmp_path_factory.mktemp("mixed")
    csvs = make_teacher_csvs(small_benchmark, d / "csvs", k=3, seed=4, files=2, second_file_fraction=0.5,
                             with_description=(True, False))
    out = d / "mixed.parquet"
    merge(csv_files=csvs, output=out, dataset_name=str(small_benchmark), responses_per_sample="all",
          quiet=True, progress=False)
    return out


def test_each_training_row_gets_the_prompt_its_response_answered(merged_small):
    data = load_training_data(merged_small)
    ex, _ = build_examples(data.train_df, data, target="teacher", fill_missing=False)
    rows = data.train_df.set_index(["proofread_root_id", "current_root_id"])
    for e in ex:
        assert e.prompt_source == "teacher"
        assert e.prompt == rows.loc[e.key, "teacher_prompt"] if rows.index.is_unique else True
        assert "bounding box measures" in e.prompt and e.layout == "image,image,image,text"
    # every val/test sample has a prompt too: the teacher's, in the run's setting
    assert {p.source for p in data.sample_prompts.values()} == {"teacher"}
    assert len(data.sample_prompts) == len(data.df.drop_duplicates(["proofread_root_id", "current_root_id"]))


def test_mixed_prompt_settings_are_refused_or_chosen(mixed, tiny_student, tmp_path):
    r = runner.invoke(app, ["train", "--data", str(mixed), "--model", str(tiny_student), "--output-dir",
                            str(tmp_path / "runs")])
    assert r.exit_code == 2 and "mix settings" in r.output and "--allow-mixed-prompts" in r.output
    assert r.output.strip().count("\n") == 0 and not (tmp_path / "runs").exists()
    # choosing a setting keeps only its rows
    data = load_training_data(mixed, with_description=False)
    assert data.setting == "without_description" and data.dropped_other_setting > 0
    assert set(data.train_df["teacher_with_description"].dropna()) == {False}
    assert all("MICrONS" not in p for p in data.train_df["teacher_prompt"].dropna())
    # allowing the mix: each row keeps its own prompt, both settings present
    data = load_training_data(mixed, allow_mixed_prompts=True)
    ex, _ = build_examples(data.train_df, data, target="teacher", fill_missing=False)
    assert {("MICrONS" in e.prompt) for e in ex} == {True, False}


def test_run_records_prompts_and_eval_uses_them(merged_small, tiny_student, tmp_path):
    run = train(augmented_dataset=merged_small, model=str(tiny_student), output_dir=tmp_path / "runs", **TINY)
    cfg = json.loads((run / "training_config.json").read_text())
    assert cfg["prompt_source"] == "teacher" and cfg["prompt_setting"] == "with_description"
    assert cfg["prompt_sources"]["train_examples"] == {"teacher": cfg["rows"]["train_examples"]}
    saved = pq.read_table(run / "prompts.parquet").to_pandas()
    templates = json.loads((run / "prompt_templates.json").read_text())
    assert templates["mouse|with_description"]["template"]
    student = evaluate(adapter_path=run, output_dir=tmp_path / "res", name="s", **EVAL)
    base = evaluate(base_model=str(tiny_student), merged=merged_small, output_dir=tmp_path / "res", name="b",
                    **EVAL)
    ps, pb = (pd.read_csv(d / "predictions.csv") for d in (student, base))
    # the student and the base model answered exactly the teacher's question
    assert (ps["prompt_sha256"] == pb["prompt_sha256"]).all() and set(ps["prompt_source"]) == {"teacher"}
    merged = pq.read_table(merged_small).to_pandas().drop_duplicates(["proofread_root_id", "current_root_id"])
    stored = {(p, c): t for p, c, t in zip(merged["proofread_root_id"], merged["current_root_id"],
                                           merged["teacher_prompt"], strict=True)}
    for p, c, h in zip(ps["proofread_root_id"], ps["current_root_id"], ps["prompt_sha256"], strict=True):
        assert h == hashlib.sha256(stored[(p, c)].encode()).hexdigest()
        assert saved.set_index(["proofread_root_id", "current_root_id"]).loc[(p, c), "prompt_sha256"] == h
    summary = json.loads((student / "summary.json").read_text())
    assert summary["prompt_source_counts"] == {"teacher": 4} and summary["distinct_prompts"] == 4
    assert summary["settings"]["prompt"] == "teacher"
    # a different prompt source for this adapter is refused, unless asked for
    r = runner.invoke(app, ["eval", "--adapter-path", str(run), "--prompt", "builtin", "--output-dir",
                            str(tmp_path / "r2"), "--num-samples", "2"])
    assert r.exit_code == 2 and "--prompt" in r.output and "--allow-config-mismatch" in r.output
    assert not (tmp_path / "r2").exists()
    builtin = evaluate(adapter_path=run, prompt="builtin", allow_config_mismatch=True, output_dir=tmp_path / "res",
                       name="builtin", **EVAL)
    assert set(pd.read_csv(builtin / "predictions.csv")["prompt_source"]) == {"builtin"}


def test_new_flags_refuse_bad_input(merged_small, tiny_student, tmp_path):
    def fails(args, needle):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert needle in r.output and "Traceback" not in r.output
        assert r.output.strip().count("\n") == 0, r.output

    fails(["train", "--data", str(merged_small), "--model", str(tiny_student), "--prompt", "mine",
           "--output-dir", str(tmp_path / "t")], "prompt")
    fails(["eval", "--base-model", str(tiny_student), "--prompt", "teacher", "--output-dir", str(tmp_path / "e")],
          "--merged")
    fails(["eval", "--base-model", str(tiny_student), "--prompt", "nope", "--output-dir", str(tmp_path / "e")],
          "prompt")
    assert not (tmp_path / "t").exists() and not (tmp_path / "e").exists()
