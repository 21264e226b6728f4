"""Generation at scale: on CUDA, eval and predict merge the LoRA into the weights at load and pick
their batch from the GPU's free memory; both are recorded in summary.json. The merge itself is
checked here on the CPU in fp32, where it must give the very same answers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from connectodistill.core import modeling

ROOT = Path(__file__).resolve().parent.parent


def _samples(merged, n: int):
    from connectodistill.core.conversation import load_images
    from connectodistill.training.examples import build_examples, load_training_data

    data = load_training_data(merged)
    ex, _ = build_examples(data.val_df, data, target="teacher", fill_missing=True, sample_level=True)
    ex = ex[:n]
    return [e.prompt for e in ex], [load_images(e.row, data.image_cols) for e in ex], [e.layout for e in ex]


def test_a_merged_lora_gives_the_same_answers_in_fp32(trained_run, merged_small):
    from peft import PeftModel

    from connectodistill.core.generation import generate_answers, letter_probabilities

    cfg = json.loads((trained_run / "training_config.json").read_text())
    processor, _ = modeling.load_processor(trained_run)
    prompts, images, layouts = _samples(merged_small, 2)
    unmerged, info = modeling.load_for_inference(cfg["base_model"], trained_run)  # CPU: kept as an adapter
    assert isinstance(unmerged, PeftModel) and info == {"lora_merged": False, "why": "not on CUDA: kept as an adapter"}
    merged, info = modeling.load_for_inference(cfg["base_model"], trained_run, merge=True)  # the CUDA path
    assert info["lora_merged"] is True and not isinstance(merged, PeftModel)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert next(merged.parameters()).dtype == torch.float32
    answers = [generate_answers(m, processor, prompts, images, layouts=layouts, batch_size=2, max_new_tokens=16)
               for m in (unmerged, merged)]
    assert answers[0] == answers[1] and any(a.strip() for a in answers[0])
    probs = [letter_probabilities(m, processor, prompts, images, answers[0], layouts=layouts, batch_size=2)
             for m in (unmerged, merged)]
    assert probs[0] == pytest.approx(probs[1], abs=1e-5)
    base, info = modeling.load_for_inference(cfg["base_model"])
    assert info["lora_merged"] is False and not isinstance(base, PeftModel)


def _shapes():
    name = "gpu_shapes"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_the_batch_comes_from_free_gpu_memory():
    """On the real 8B shape (meta device: nothing allocated) at the default budget and budget."""
    from transformers import AutoConfig

    d = json.loads(json.dumps(_shapes().QWEN3_VL_8B_CONFIG))
    model = modeling.build_model_from_config(AutoConfig.for_model(d.pop("model_type"), **d), device="meta",
                                             dtype=torch.bfloat16)
    gib = 2**30
    kw = dict(views=3, max_pixels=modeling.DEFAULT_MAX_PIXELS, new_tokens=1024)
    each = modeling.per_sample_bytes(model.config, **kw)
    assert 0.5 * gib < each < 2 * gib  # a KV cache of ~4.3k tokens x 36 layers, plus the prefill's activations
    sizes = {free: modeling.choose_batch_size(model, **kw, free_bytes=free * gib)[0] for free in (0, 4, 16, 60, 120)}
    assert sizes[0] == 1 and sizes[120] == modeling.MAX_GENERATION_BATCH  # never 0, never past the cap
    assert list(sizes.values()) == sorted(sizes.values()) and 8 <= sizes[60] <= 32  # an H100 after 17.5 GB of weights
    smaller = modeling.choose_batch_size(model, **{**kw, "max_pixels": 256 * 256}, free_bytes=16 * gib)[0]
    assert smaller > sizes[16]  # smaller views, more sequences at once
    batch, info = modeling.choose_batch_size(model, **kw, free_bytes=16 * gib)
    assert info == {"free_gib": 16.0, "per_sample_gib": round(each / gib, 3)}


def test_the_batch_on_the_cpu_or_as_given(tiny_student):
    model = modeling.load_model(str(tiny_student))
    kw = dict(views=3, max_pixels=64 * 64, new_tokens=16)
    assert modeling.generation_batch(model, None, **kw) == (4, {"batch_size": 4, "chosen_from": "cpu default"})
    assert modeling.generation_batch(model, 7, **kw) == (7, {"batch_size": 7, "chosen_from": "given"})


def test_eval_and_predict_record_what_they_did(trained_run, tmp_path, small_benchmark):
    from connectodistill.evaluation import evaluate
    from connectodistill.prediction import predict

    out = evaluate(adapter_path=trained_run, num_samples=2, max_new_tokens=8, output_dir=tmp_path, name="e",
                   progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generation"] == {"lora_merged": False, "why": "not on CUDA: kept as an adapter",
                                     "batch": {"batch_size": 4, "chosen_from": "cpu default"}}
    assert summary["settings"]["batch_size"] == 4
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(small_benchmark).slice(0, 2), tmp_path / "two.parquet")
    out = predict(input=str(tmp_path / "two.parquet"), adapter_path=trained_run, output=tmp_path / "p",
                  chunk_size=2, max_new_tokens=8, batch_size=2, progress=False)
    got = json.loads((out / "predict_summary.json").read_text())["generation"]
    assert got == {"lora_merged": False, "why": "not on CUDA: kept as an adapter",
                   "batch": {"batch_size": 2, "chosen_from": "given"}}
