"""Training: the loss mask, images reaching the model, LoRA runs that save, reload and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from connectodistill.cli import app
from connectodistill.core.conversation import PROMPT_TEMPLATE_ID, prompt_template_hash
from connectodistill.core.data import read_merged
from connectodistill.core.errors import UserError
from connectodistill.core.task import image_columns
from connectodistill.training import train
from connectodistill.training.collator import IGNORE_INDEX
from connectodistill.training.examples import build_examples, load_training_data, pick_rows
from connectodistill.training.sft import DistillCollator


def examples_of(merged, df=None, **kw):
    data = load_training_data(merged)
    return build_examples(data.train_df if df is None else df, data, **kw)

runner = CliRunner()


@pytest.fixture(scope="module")
def processor(tiny_student):
    from connectodistill.core.modeling import load_processor

    return load_processor(str(tiny_student))[0]


@pytest.fixture(scope="module")
def examples(merged_small):
    table, _ = read_merged(merged_small)
    ex, _ = examples_of(merged_small, target="teacher", fill_missing=False)
    return ex, image_columns(table.column_names)


def test_labels_are_exactly_the_answer_and_end_token(processor, examples):
    ex, cols = examples
    # Two samples with different answer lengths, so one row is padded.
    pair = sorted(ex, key=lambda e: len(e.target))
    pair = [pair[0], pair[-1]]
    batch = DistillCollator(processor, cols)(pair)
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    for i, e in enumerate(pair):
        labels, ids = batch["labels"][i], batch["input_ids"][i]
        assert tok.decode(labels[labels != IGNORE_INDEX]) == e.target + "<|im_end|>"
        # Labelled positions carry exactly the input tokens there.
        assert (labels[labels != IGNORE_INDEX] == ids[labels != IGNORE_INDEX]).all()
        # Image tokens and padding are never labelled.
        assert (labels[ids == image_id] == IGNORE_INDEX).all()
        pad = batch["attention_mask"][i] == 0
        assert (labels[pad] == IGNORE_INDEX).all()
    assert (batch["attention_mask"] == 0).any()  # the shorter row was padded
    assert "mm_token_type_ids" in batch
    assert (batch["input_ids"] == image_id).sum() == batch["image_grid_thw"].prod(-1).sum() // 4


def test_logits_only_where_the_loss_reads_them(tiny_student, processor, examples):
    import torch

    from connectodistill.core.modeling import load_model

    ex, cols = examples
    batch = DistillCollator(processor, cols)(ex[:3])
    model = load_model(str(tiny_student))
    full = {k: v for k, v in batch.items() if k not in ("logits_to_keep", "shift_labels")}
    with torch.no_grad():
        kept, every = model(**batch), model(**full)
    n_prompt = int((batch["labels"][0] == IGNORE_INDEX).sum())
    assert batch["logits_to_keep"].shape[0] == 3  # split with the batch's rows
    assert kept.logits.shape[1] == batch["logits_to_keep"].shape[1] < n_prompt < every.logits.shape[1]
    # The same loss as over the whole sequence: no label is dropped, none counted twice.
    assert torch.allclose(kept.loss, every.loss, atol=1e-5)
    assert int((batch["shift_labels"] != IGNORE_INDEX).sum()) == int((batch["labels"] != IGNORE_INDEX).sum())


def test_a_batch_without_labels_is_refused(processor, examples):
    ex, cols = examples
    col = DistillCollator(processor, cols)
    enc = col.encode(ex[0])
    enc["labels"][:] = IGNORE_INDEX
    col.encode = lambda e: enc
    with pytest.raises(ValueError, match="no label tokens"):
        col([ex[0]])


def test_overlong_sample_is_an_error_not_a_truncation(processor, examples):
    ex, cols = examples
    with pytest.raises(UserError, match="max_length 32"):
        DistillCollator(processor, cols, max_length=32)([ex[0]])


def test_images_reach_the_model(tiny_student, processor, examples):
    import torch

    from connectodistill.core.modeling import load_model

    ex, cols = examples
    model = load_model(str(tiny_student))
    a = ex[0]
    b_row = dict(a.row)
    other = next(e for e in ex if e.row[cols[0]] != a.row[cols[0]])
    for c in cols:  # same prompt and target, other images
        b_row[c] = other.row[c]
    b = type(a)(row=b_row, prompt=a.prompt, target=a.target, key=a.key)
    col = DistillCollator(processor, cols)
    with torch.no_grad():
        la = model(**col([a])).loss.item()
        lb = model(**col([b])).loss.item()
    assert la != lb


def test_run_folder_config_and_splits(trained_run, merged_small):
    run = Path(trained_run)
    assert "_fixture_claude_" in run.name and run.name.endswith("_epochs2_lr0.003_r16")
    assert (run / "adapter_model.safetensors").is_file() and (run / "adapter_config.json").is_file()
    cfg = json.loads((run / "training_config.json").read_text())
    _, report = read_merged(merged_small)
    assert cfg["splits"] == report["splits"]
    assert cfg["prompt_template_id"] == PROMPT_TEMPLATE_ID
    assert cfg["prompt_template_hash"] == prompt_template_hash()
    assert len(cfg["merged_sha256"]) == 64 and len(cfg["chat_template_sha256"]) == 64
    assert cfg["settings"]["lora_r"] == 16 and cfg["base_model"].endswith("qwen3-vl")
    assert cfg["pixel_budget"] == {"min_pixels": 4096, "max_pixels": 4096}
    assert cfg["teacher_models"] == ["claude-3-7-sonnet-20250219"]
    assert cfg["rows"]["train_examples"] > 0
    history = json.loads((run / "loss_history.json").read_text())
    assert any("eval_loss" in h for h in history)
    # No secret or token ever lands in the run config.
    assert "HF_TOKEN" not in json.dumps(cfg) and "WANDB_API_KEY" not in json.dumps(cfg)


def test_test_rows_never_reach_training(merged_small):
    table, report = read_merged(merged_small)
    df = table.to_pandas()
    train_keys = {e.key for e in examples_of(merged_small, pick_rows(df, report["splits"], "train"),
                                             target="teacher", fill_missing=True)[0]}
    test_keys = {tuple(p) for p in report["splits"]["test"]}
    assert train_keys and test_keys and not train_keys & test_keys


def test_adapter_reloads_to_identical_logits(trained_run, tiny_student, processor, examples):
    import torch

    from connectodistill.core.modeling import load_adapter, load_model

    ex, cols = examples
    batch = DistillCollator(processor, cols)(ex[:2])
    m1 = load_adapter(load_model(str(tiny_student)), trained_run).eval()
    m2 = load_adapter(load_model(str(tiny_student)), trained_run).eval()
    base = load_model(str(tiny_student)).eval()
    with torch.no_grad():
        l1, l2, l0 = (m(**batch).logits for m in (m1, m2, base))
    assert torch.equal(l1, l2)
    assert not torch.allclose(l1, l0)  # the adapter changed something


def test_loss_falls_and_resume_continues(merged_small, tiny_student, tmp_path):
    common = dict(augmented_dataset=merged_small, model=str(tiny_student), output_dir=tmp_path,
                  run_name="resume", batch_size=4, gradient_accumulation=1, learning_rate=3e-3,
                  warmup_steps=0, select_by="last", progress=False, logging_steps=1)
    run = train(epochs=2, **common)
    history = [h["loss"] for h in json.loads((run / "loss_history.json").read_text()) if "loss" in h]
    assert len(history) >= 24
    assert sum(history[-5:]) / 5 < 0.9 * sum(history[:5]) / 5
    steps = json.loads((run / "training_config.json").read_text())["global_step"]
    # Resume to 3 epochs: continues from the last checkpoint (epoch 2), not from scratch.
    run2 = train(epochs=3, resume=True, **common)
    assert run2 == run
    state = json.loads((run / "training_config.json").read_text())
    assert state["global_step"] == steps * 3 // 2
    assert state["resumed_from"].endswith(f"checkpoint-{steps}")
    logged = [h["step"] for h in json.loads((run / "loss_history.json").read_text()) if "loss" in h]
    assert logged == sorted(set(logged))  # no step was run twice


def test_ground_truth_target_and_fill_missing(merged_small):
    table, report = read_merged(merged_small)
    df = pick_rows(table.to_pandas(), report["splits"], "train").copy()
    df.loc[df.index[:3], "teacher_analysis"] = None
    df = df[df["train_row"]]
    without = int(df["teacher_analysis"].isna().sum())  # the 3, plus draws that lost their tags
    assert without >= 3
    ex, skipped = examples_of(merged_small, df, target="teacher", fill_missing=False)
    assert skipped == without and len(ex) == len(df) - without
    ex, skipped = examples_of(merged_small, df, target="teacher", fill_missing=True)
    assert skipped == 0 and len(ex) == len(df)
    gt, _ = examples_of(merged_small, df, target="ground-truth", fill_missing=False)
    assert all("<analysis>The segment" in e.target for e in gt)


def test_bad_inputs_exit_2(merged_small, tiny_student, tmp_path):
    import pyarrow as pa

    def fails(data, needle, *extra, model=str(tiny_student)):
        r = runner.invoke(app, ["train", "--data", str(data), "--model", model, "--output-dir", str(tmp_path), *extra])
        assert r.exit_code == 2, r.output
        assert needle in r.output and "Traceback" not in r.output
        assert r.output.strip().count("\n") == 0

    t = pq.read_table(merged_small)
    # Missing columns.
    bad = tmp_path / "bad.parquet"
    pq.write_table(t.drop(["teacher_analysis"]).replace_schema_metadata(t.schema.metadata), bad)
    fails(bad, "teacher_analysis")
    # No train rows: every train row lacks an analysis and --fill-missing is off.
    none = tmp_path / "none.parquet"
    t2 = t.set_column(t.schema.get_field_index("teacher_analysis"), "teacher_analysis",
                      pa.nulls(len(t), pa.string()))
    pq.write_table(t2.replace_schema_metadata(t.schema.metadata), none)
    fails(none, "no training rows")
    # Unknown model path.
    fails(merged_small, "nope", model=str(tmp_path / "nope"))
    # 4-bit without CUDA.
    fails(merged_small, "CUDA", "--load-in-4bit")
    # Nothing was written for any of them.
    assert not any(p.name.startswith("qwen3-vl_") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_two_process_cpu_run_saves_one_adapter(merged_small, tiny_student, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"augmented_dataset: {merged_small}\nmodel: {tiny_student}\noutput_dir: {tmp_path / 'runs'}\n"
        "run_name: ddp\nepochs: 1\nbatch_size: 4\ngradient_accumulation: 1\nselect_by: last\nprogress: false\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    accelerate = Path(sys.executable).with_name("accelerate")
    out = subprocess.run(
        [str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "connectodistill", "train", "--config", str(cfg)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    assert (runs[0] / "adapter_model.safetensors").is_file()
    assert json.loads((runs[0] / "training_config.json").read_text())["global_step"] > 0


def test_select_by_val_accuracy_and_wandb_offline(merged_small, tiny_student, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # must never reach the run folder
    run = train(augmented_dataset=merged_small, model=str(tiny_student), output_dir=tmp_path / "runs",
                run_name="valacc", epochs=2, num_samples=16, batch_size=8, gradient_accumulation=1,
                learning_rate=3e-3, select_by="val_accuracy", max_new_tokens=8, use_wandb=True,
                progress=False)
    cfg = json.loads((run / "training_config.json").read_text())
    history = json.loads((run / "loss_history.json").read_text())
    accs = [h["eval_val_accuracy"] for h in history if "eval_val_accuracy" in h]
    assert len(accs) == 2 and all(0.0 <= a <= 1.0 for a in accs)
    assert cfg["best_metric"] == max(accs)
    assert cfg["best_checkpoint"] is not None
    assert list((tmp_path / "wandb").glob("offline-run-*"))  # W&B wrote its offline run
    assert "x" * 40 not in "".join(p.read_text(errors="ignore") for p in run.glob("*.json"))


def test_train_and_eval_warn_nothing_the_user_cannot_act_on(merged_small, tiny_student, tmp_path):
    """peft's FutureWarning (it reads transformers' deprecated ``is_gradient_checkpointing``) and
    torch's pin_memory warning on CPU were printed on every train and eval (issue 25)."""
    import warnings

    from connectodistill.evaluation.recipe import evaluate

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train(augmented_dataset=merged_small, model=str(tiny_student), output_dir=tmp_path, run_name="quiet",
                    epochs=1, num_samples=8, batch_size=4, gradient_accumulation=1, select_by="val_loss",
                    progress=False)
        evaluate(adapter_path=run, output_dir=tmp_path / "results", num_samples=2, max_new_tokens=4, progress=False)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "is_gradient_checkpointing" in m]
    assert not [m for m in messages if "pin_memory" in m]
