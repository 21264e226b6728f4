"""Every family of the table (core/families.py) works wherever Qwen3-VL works: a few training
steps, an adapter that saves and reloads to identical logits, batched generation equal to
one-by-one, answer rows and one-pass answers, and an export that answers as base + adapter. Qwen3.5 also end to end through the
CLI; a model type outside the table fails with one line listing the families."""

from __future__ import annotations

import json
import re

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from connectodistill.cli import app
from connectodistill.core.families import FAMILIES, family, kinds
from connectodistill.core.task import image_columns

runner = CliRunner()
FAST = dict(num_samples=16, epochs=1, batch_size=4, gradient_accumulation=1, learning_rate=3e-3,
            warmup_steps=0, logging_steps=1, select_by="last", progress=False, seed=0)


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    from connectodistill.synthetic import make_tiny_student

    root = tmp_path_factory.mktemp("family_students")
    return {k: make_tiny_student(root / k, kind=k) for k in kinds()}


@pytest.fixture(scope="module")
def runs(students, merged_small, tmp_path_factory):
    """One short SFT run (4 steps) per family, through the real recipe."""
    from connectodistill.training import train

    out = tmp_path_factory.mktemp("family_runs")
    return {k: train(augmented_dataset=merged_small, model=str(students[k]), output_dir=out / k, run_name=k,
                     **FAST) for k in kinds()}


@pytest.fixture(scope="module")
def samples(merged_small):
    from connectodistill.core.conversation import build_prompt, load_images
    from connectodistill.core.data import read_merged

    table, _ = read_merged(merged_small)
    rows = table.slice(0, 4).to_pylist()
    cols = image_columns(table.column_names)
    return [build_prompt(r) for r in rows], [load_images(r, cols) for r in rows]


def _batch(processor, prompts, images):
    from connectodistill.core.generation import render_prompts

    processor.tokenizer.padding_side = "left"
    texts = render_prompts(processor, prompts, images)
    return processor(text=texts, images=[im for ims in images for im in ims], padding=True, return_tensors="pt")


def test_the_table_is_the_one_source_of_the_kinds():
    from connectodistill.core import modeling
    from connectodistill.synthetic import student

    assert modeling.KINDS == {f.model_type: f.kind for f in FAMILIES}
    assert student.KINDS == kinds() and "qwen3.5" in kinds()
    assert len({f.kind for f in FAMILIES}) == len({f.model_type for f in FAMILIES}) == len(FAMILIES)
    for f in FAMILIES:  # every pattern compiles and no language pattern can reach the vision tower
        for pattern in (f.language_layers, f.vision_blocks, f.merger):
            re.compile(pattern)
        assert not re.fullmatch(f.language_layers, "model.visual.blocks.0.mlp.linear_fc1")
        assert re.fullmatch(f.language_layers, "model.language_model.layers.3.mlp.down_proj")
    q35 = family("qwen3.5")
    assert re.fullmatch(q35.language_layers, "model.language_model.layers.0.linear_attn.in_proj_qkv")
    assert not re.fullmatch(family("qwen3-vl").language_layers, "model.language_model.layers.0.linear_attn.out_proj")


@pytest.mark.parametrize("kind", kinds())
def test_trains_a_few_steps(runs, kind):
    import math

    from safetensors.torch import load_file

    run = runs[kind]
    cfg = json.loads((run / "training_config.json").read_text())
    assert cfg["model_kind"] == kind and cfg["global_step"] == 4
    losses = [h["loss"] for h in json.loads((run / "loss_history.json").read_text()) if "loss" in h]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["target_modules"] == f"(?:{family(kind).language_layers})"
    tensors = load_file(run / "adapter_model.safetensors")
    moved = [k for k, v in tensors.items() if "lora_B" in k and v.abs().sum() > 0]
    assert moved  # lora_B starts at zero: these were trained
    if kind == "qwen3.5":  # the Gated DeltaNet layers learn too, not only the full-attention one
        assert any(".linear_attn.in_proj_qkv." in k for k in moved)


@pytest.mark.parametrize("kind", kinds())
def test_adapter_saves_and_reloads_to_identical_logits(runs, students, samples, kind, tmp_path):
    import torch
    from peft import PeftModel

    from connectodistill.core.modeling import load_model, load_processor

    processor, _ = load_processor(runs[kind])
    batch = _batch(processor, *samples)
    trained = PeftModel.from_pretrained(load_model(students[kind]), str(runs[kind])).eval()
    trained.save_pretrained(tmp_path / "again")
    again = PeftModel.from_pretrained(load_model(students[kind]), str(tmp_path / "again")).eval()
    base = load_model(students[kind]).eval()
    with torch.no_grad():
        a, b, c = (m(**batch).logits for m in (trained, again, base))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)  # the adapter changes the answer


@pytest.mark.parametrize("kind", kinds())
def test_batched_generation_equals_one_by_one(runs, students, samples, kind):
    from peft import PeftModel

    from connectodistill.core.generation import generate_answers, letter_probabilities
    from connectodistill.core.modeling import load_model, load_processor

    processor, _ = load_processor(runs[kind])
    model = PeftModel.from_pretrained(load_model(students[kind]), str(runs[kind]))
    prompts, images = samples
    batched = generate_answers(model, processor, prompts, images, batch_size=4, max_new_tokens=16)
    single = generate_answers(model, processor, prompts, images, batch_size=1, max_new_tokens=16)
    assert batched == single and all(batched)
    # the letter-token check holds for the family's tokenizer; batched probabilities agree too
    p4 = letter_probabilities(model, processor, prompts, images, batched, batch_size=4)
    p1 = letter_probabilities(model, processor, prompts, images, batched, batch_size=1)
    assert abs(p4 - p1).max() < 1e-5 and abs(p4.sum(axis=1) - 1).max() < 1e-9


@pytest.mark.parametrize("kind", kinds())
def test_export_answers_as_base_plus_adapter(runs, students, samples, kind, tmp_path):
    import torch
    from peft import PeftModel

    from connectodistill.core.generation import generate_answers
    from connectodistill.core.modeling import load_model, load_processor, model_kind
    from connectodistill.prediction.exporting import export

    out = export(run=runs[kind], output=tmp_path / "merged", dtype="float32")
    merged, merged_processor = load_model(out), load_processor(out)[0]
    assert model_kind(merged) == kind and not any("lora" in n for n, _ in merged.named_parameters())
    assert merged_processor.chat_template == load_processor(runs[kind])[0].chat_template  # as trained
    adapted = PeftModel.from_pretrained(load_model(students[kind]), str(runs[kind])).eval()
    prompts, images = samples
    assert generate_answers(merged, merged_processor, prompts, images, max_new_tokens=16) == \
        generate_answers(adapted, merged_processor, prompts, images, max_new_tokens=16)
    batch = _batch(merged_processor, prompts, images)
    with torch.no_grad():
        assert torch.allclose(merged.eval()(**batch).logits, adapted(**batch).logits, atol=1e-4)


@pytest.mark.parametrize("kind", kinds())
def test_answer_rows_and_one_pass_answers(runs, students, samples, merged_small, kind):
    """Answer rows learn exactly the letter and the turn's end with the family's tokenizer and
    template; one-pass letter distributions agree batched and one by one, and sum to 1."""
    from peft import PeftModel

    from connectodistill.core.generation import one_pass_probabilities
    from connectodistill.core.modeling import load_model, load_processor
    from connectodistill.training.collator import IGNORE_INDEX, DistillCollator
    from connectodistill.training.examples import answer_rows, build_examples, load_training_data

    data = load_training_data(merged_small)
    rationale, _ = build_examples(data.train_df.head(4), data, target="teacher", fill_missing=False)
    processor, _ = load_processor(runs[kind])
    collate = DistillCollator(processor, data.image_cols, multi_task=True)
    for ex in answer_rows(rationale, 1.0, seed=0)[:2]:
        enc = collate.encode(ex)
        labels = enc["labels"][enc["labels"] != IGNORE_INDEX].tolist()
        assert processor.tokenizer.decode(labels) == f"{ex.letter}</answer><|im_end|>"
    model = PeftModel.from_pretrained(load_model(students[kind]), str(runs[kind]))
    p4 = one_pass_probabilities(model, processor, *samples, batch_size=4)
    p1 = one_pass_probabilities(model, processor, *samples, batch_size=1)
    assert abs(p4 - p1).max() < 1e-5 and abs(p4.sum(axis=1) - 1).max() < 1e-9


def test_qwen35_through_the_cli(students, merged_small, small_benchmark, tmp_path):
    """`connectodistill train --model <tiny qwen3.5 folder>`, then eval, predict and export."""
    student = students["qwen3.5"]
    r = runner.invoke(app, ["train", "--data", str(merged_small), "--model", str(student), "--output-dir",
                            str(tmp_path / "runs"), "--run-name", "q35", "--num-samples", "16", "--epochs", "1",
                            "--batch-size", "4", "--learning-rate", "3e-3", "--select-by", "last"])
    assert r.exit_code == 0, r.output
    (run,) = (tmp_path / "runs").iterdir()
    cfg = json.loads((run / "training_config.json").read_text())
    assert cfg["model_kind"] == "qwen3.5" and cfg["base_model"] == str(student)
    # the run's processor renders without thinking, as trained
    assert (run / "chat_template.jinja").read_text().startswith(family("qwen3.5").template_prelude)

    gen = ["--num-samples", "4", "--batch-size", "4", "--max-new-tokens", "24"]
    r = runner.invoke(app, ["eval", "--adapter-path", str(run), "--output-dir", str(tmp_path / "results"),
                            "--name", "q35", *gen])
    assert r.exit_code == 0, r.output
    ev = pd.read_csv(tmp_path / "results" / "q35" / "predictions.csv")
    assert len(ev) == 4 and ev["response"].notna().all()

    bench = pq.read_table(small_benchmark).to_pandas()
    keys = list(zip(ev["proofread_root_id"], ev["current_root_id"], strict=True))
    sub = bench[[k in set(keys) for k in zip(bench["proofread_root_id"], bench["current_root_id"], strict=True)]]
    segments = tmp_path / "segments.parquet"
    pq.write_table(pa.Table.from_pandas(sub.drop(columns=["class_description"]), preserve_index=False), segments)
    r = runner.invoke(app, ["predict", str(segments), "--adapter-path", str(run), "--output",
                            str(tmp_path / "predicted"), "--batch-size", "4", "--max-new-tokens", "24"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "predicted" / "predict_summary.json").read_text())["model_kind"] == "adapter"
    pr = pd.read_parquet(tmp_path / "predicted" / "predictions.parquet")
    letters = dict(zip(zip(pr["proofread_root_id"], pr["current_root_id"], strict=True), pr["letter"], strict=True))
    assert len(pr) == 4 and set(letters) == set(keys)
    same = [letters[k] == x or (pd.isna(letters[k]) and pd.isna(x)) for k, x in zip(keys, ev["predicted_letter"],
                                                                                  strict=True)]
    assert all(same)  # predict asks what eval asked and answers the same

    r = runner.invoke(app, ["export", str(run), "--output", str(tmp_path / "exported"), "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", "--model", str(tmp_path / "exported"), "--output-dir", str(tmp_path / "results"),
                            "--name", "exported", *gen])
    assert r.exit_code == 0, r.output
    merged = pd.read_csv(tmp_path / "results" / "exported" / "predictions.csv")
    assert merged["current_root_id"].tolist() == ev["current_root_id"].tolist()
    assert (merged["response"] == ev["response"]).all()  # the export answers as base + adapter


def test_an_unsupported_model_type_fails_with_the_families(students, merged_small, tmp_path):
    import shutil

    from transformers import Gemma4Config

    folder = tmp_path / "gemma4"
    shutil.copytree(students["qwen3-vl"], folder)
    (folder / "config.json").unlink()
    Gemma4Config().save_pretrained(folder)
    out = tmp_path / "runs"
    r = runner.invoke(app, ["train", "--data", str(merged_small), "--model", str(folder), "--output-dir", str(out)])
    assert r.exit_code == 2, r.output
    assert r.output.strip().count("\n") == 0 and "Traceback" not in r.output
    assert "unsupported model type 'gemma4'" in r.output
    assert all(f"{f.kind} ({f.model_type}" in r.output for f in FAMILIES)
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
