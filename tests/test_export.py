"""export: the LoRA merged into the base as a plain Hugging Face folder that answers like the run."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from connectodistill.cli import app

runner = CliRunner()
EVAL = ["--num-samples", "6", "--batch-size", "6", "--max-new-tokens", "24"]


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "student-f32"
    r = runner.invoke(app, ["export", str(trained_run), "--output", str(out), "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    return out


def test_export_is_a_standard_folder_with_a_model_card(exported, trained_run, tiny_student):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    names = {p.name for p in exported.iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "connectodistill_export.json", "prompts.parquet",
            "prompt_templates.json", "chat_template.jinja"} <= names
    assert not any(n.startswith("adapter_") for n in names)  # merged: no adapter files
    model = AutoModelForImageTextToText.from_pretrained(exported)
    assert model.dtype == torch.float32
    processor = AutoProcessor.from_pretrained(exported)
    run = json.loads((trained_run / "training_config.json").read_text())
    assert processor.image_processor.size["longest_edge"] == run["pixel_budget"]["max_pixels"]
    card = (exported / "README.md").read_text()
    assert str(tiny_student) in card and "teacher" in card and "AutoModelForImageTextToText" in card
    manifest = json.loads((exported / "connectodistill_export.json").read_text())
    assert manifest["exported_from"] == str(trained_run) and manifest["splits"] == run["splits"]


def test_exported_model_answers_exactly_like_base_plus_adapter(exported, trained_run, tmp_path):
    for args in (["--adapter-path", str(trained_run), "--name", "adapter"], ["--model", str(exported), "--name", "merged"]):
        r = runner.invoke(app, ["eval", *args, "--output-dir", str(tmp_path), *EVAL])
        assert r.exit_code == 0, r.output
    a, m = (pd.read_csv(tmp_path / n / "predictions.csv") for n in ("adapter", "merged"))
    assert a["current_root_id"].tolist() == m["current_root_id"].tolist()  # the run's test ids
    assert (a["prompt_sha256"] == m["prompt_sha256"]).all()  # the same question
    assert (a["response"] == m["response"]).all()  # the same greedy answers
    summary = json.loads((tmp_path / "merged" / "summary.json").read_text())
    assert summary["exported_model"] == str(exported) and not summary["includes_train_samples"]


def test_bf16_export_loads(trained_run, tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "bf16"
    r = runner.invoke(app, ["export", str(trained_run), "--output", str(out)])
    assert r.exit_code == 0, r.output
    assert AutoModelForImageTextToText.from_pretrained(out, dtype="auto").dtype == torch.bfloat16


def test_bad_export_input_exit_2(trained_run, exported, tmp_path):
    def fails(args, needle):
        r = runner.invoke(app, ["export", *map(str, args)])
        assert r.exit_code == 2, r.output
        assert needle in r.output and r.output.strip().count("\n") == 0

    fails([tmp_path, "--output", tmp_path / "x"], "training_config.json")
    fails([trained_run, "--output", exported], "already exists")
    fails([trained_run, "--output", trained_run / "inside"], "inside the run folder")
    fails([trained_run, "--output", tmp_path / "y", "--report", tmp_path / "nope.csv"], "not found")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert not (trained_run / "inside").exists()
    r = runner.invoke(app, ["eval", "--model", str(tmp_path), "--output-dir", str(tmp_path / "r")])
    assert r.exit_code == 2 and "connectodistill export" in r.output
