"""bench/gpu.py: the GPU benchmark's code paths, run with --smoke (tiny Qwen3-VL config, CPU).

The smoke run goes through the same sections as the H200 run (training with and without
--tune-vision, the small-budget row, the memory table, generation; 4-bit is skipped on CPU)
and also builds the real Qwen3-VL-8B config on the meta device for its parameter counts.
On CPU the CUDA allocator figures (peak memory) are null by design.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu.py"


def _load_bench_module(name: str):
    """bench/<name>.py, registered under its own name (the name gpu.py's siblings import)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU, even on a GPU box
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--output", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_training_rows(smoke):
    doc, _ = smoke
    secs = doc["sections"]
    for name in ("train", "train_tune_vision", "train_small_budget"):
        assert secs[name]["status"] == "done", (name, secs[name])
        rows = secs[name]["rows"]
        assert rows, name
        for r in rows:
            assert r.get("error") is None, r
            for key in ("step_s", "model_step_s", "samples_per_s", "tokens_per_s", "flops_per_step"):
                assert _finite_positive(r[key]), (name, key, r[key])
            assert r["trainable_params"] > 0 and r["loss_finite"]
            assert r["steps"] == doc["settings"]["steps"]
            assert r["peak_memory_gib"] is None  # no CUDA allocator on CPU
    assert [r["batch_size"] for r in secs["train"]["rows"]] == doc["settings"]["batch_sizes"]
    lm_only = secs["train"]["rows"][0]
    # three 64 px views at a 64*64 budget: 2x2 merged tokens each
    assert lm_only["image_tokens_per_sample"] == 12
    assert lm_only["tune_vision"] is False and secs["train"]["gradient_checkpointing"] is True
    assert secs["train_tune_vision"]["rows"][0]["trainable_params"] > lm_only["trainable_params"]
    assert secs["train_tune_vision"]["rows"][0]["vision_forward_flops_per_step"] > 0
    small = secs["train_small_budget"]["rows"][0]
    assert small["pixel_budget"]["max_pixels"] == 32 * 32 and small["image_tokens_per_sample"] == 3


def test_generation_rows(smoke):
    doc, _ = smoke
    sec = doc["sections"]["generation"]
    assert sec["status"] == "done"
    assert [r["batch_size"] for r in sec["rows"]] == doc["settings"]["gen_batch_sizes"]
    for r in sec["rows"]:
        assert _finite_positive(r["samples_per_s"]) and _finite_positive(r["new_tokens_per_s"])
        assert r["responses"] == r["batch_size"] and r["new_tokens_per_sample"] == 8
    (merged,) = sec["merged_rows"]  # the LoRA merged, as eval runs it on CUDA; no chosen batch on CPU
    assert merged["lora_merged"] is True and merged["batch_size"] == max(doc["settings"]["gen_batch_sizes"])
    assert _finite_positive(merged["samples_per_s"]) and "chosen_batch" not in sec


def test_one_pass_rows(smoke):
    """Prefill-only answers by pixel budget and batch, and the generation they are compared with."""
    doc, _ = smoke
    sec = doc["sections"]["one_pass"]
    assert sec["status"] == "done", sec.get("traceback")
    one = [r for r in sec["rows"] if r["what"] == "one-pass"]
    assert {(r["pixel_budget"]["max_pixels"], r["batch_size"]) for r in one} == {
        (p, b) for p in doc["settings"]["onepass_pixels"] for b in doc["settings"]["onepass_batch_sizes"]}
    assert all(_finite_positive(r["samples_per_s"]) for r in one)
    (gen,) = [r for r in sec["rows"] if r["what"].startswith("generate")]
    assert _finite_positive(gen["samples_per_s"]) and sec["one_pass_speedup_at_default_budget"] > 0


def test_memory_table(smoke):
    doc, _ = smoke
    sec = doc["sections"]["memory"]
    assert sec["status"] == "done"
    cells = {(r["pixel_budget"]["max_pixels"], r["batch_size"]) for r in sec["rows"]}
    assert cells == {(p, b) for p in (32 * 32, 64 * 64) for b in (1, 2)}
    for r in sec["rows"]:
        assert r["error"] is None
        assert r["peak_memory_gib"] is None and r["smallest_modal_gpu"] is None  # CPU: null
    assert "memory_on_cpu" in doc["assumptions"]


def test_real_8b_config_on_meta(smoke):
    doc, _ = smoke
    meta = doc["model"]["meta_check_8b"]
    assert 8.6e9 <= meta["params_total"] <= 8.9e9
    assert 570e6 <= meta["params_vision"] <= 580e6
    assert 43e6 <= meta["lora_trainable_language_model"] <= 44e6
    assert doc["checks"] == {"params_8b_in_range": True, "lora_trainable_8b_in_range": True,
                             "params_9b_in_range": True, "lora_trainable_9b_in_range": True}


def test_qwen35_9b_config_on_meta(smoke):
    """Qwen3.5-9B's shape: ~9.4B parameters; LoRA on all 248 decoder linears, the Gated DeltaNet
    projections included (the Qwen-VL pattern would adapt 128 of them, ~29M parameters)."""
    doc, stdout = smoke
    meta = doc["model"]["meta_check_9b"]
    assert 9.3e9 <= meta["params_total"] <= 9.5e9 and 450e6 <= meta["params_vision"] <= 460e6
    assert meta["lora_adapted_linears"] == 32 * 3 + 24 * 5 + 8 * 4  # MLP everywhere, 24 linear + 8 full mixers
    assert 43e6 <= meta["lora_trainable_language_model"] <= 44e6
    assert "Qwen3.5-9B on meta" in stdout


def test_the_qwen35_shape_runs_the_same_sections(tmp_path):
    """--model qwen3.5-9b: the sections a GPU run measures, on its tiny config (the hybrid layers)."""
    out = tmp_path / "gpu35.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--model", "qwen3.5-9b", "--sections",
                           "train,generation", "--output", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc["model"]["key"] == "qwen3.5-9b" and doc["model"]["config"]["model_type"] == "qwen3_5"
    for name in ("train", "generation"):
        assert doc["sections"][name]["status"] == "done", doc["sections"][name]
    row = doc["sections"]["train"]["rows"][0]
    assert row["loss_finite"] and _finite_positive(row["flops_per_step"]) and row["image_tokens_per_sample"] == 12


def test_flop_count_of_the_hybrid_layers():
    """Qwen3.5: 2 x the linear weights per token (gated q_proj, Gated DeltaNet projections) plus
    the token mixers' own terms, against the tiny model's structure."""
    import torch
    from transformers import AutoConfig

    shapes, flops = _load_bench_module("gpu_shapes"), _load_bench_module("gpu_flops")
    from connectodistill.core.modeling import build_model_from_config

    d = json.loads(json.dumps(shapes.TINY_QWEN35_CONFIG))
    d["text_config"]["vocab_size"] = 256
    cfg = AutoConfig.for_model(d.pop("model_type"), **d)
    model = build_model_from_config(cfg, device="cpu", dtype=torch.float32)
    text_lin = sum(m.weight.numel() for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and "visual" not in n)
    t = cfg.text_config
    conv = 2 * t.linear_conv_kernel_dim * (2 * 16 + 2 * 16)  # kernel x conv_dim (2 key + value dims)
    delta = 2 * 3 * 16 * 16 * 2  # 3 key x value products per value head
    attn = 2 * t.num_attention_heads * t.head_dim * 2  # one token, the full-attention layer
    f = flops.step_flops(cfg, [1], [], lora_r=0, tune_vision=False)
    assert f["forward"] == 2 * text_lin + conv + delta + attn
    lin = {k: sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and k in n)
           for k in (".visual.blocks.", "merger")}
    embed = model.model.visual.patch_embed.proj.weight.numel()
    vis_attn = cfg.vision_config.depth * 4 * cfg.vision_config.hidden_size * 64 * 64
    g = flops.step_flops(cfg, [1], [(1, 8, 8)], lora_r=0, tune_vision=False)
    # one merger per merged token: Qwen3.5 has no deepstack mergers
    assert g["vision_forward"] == 2 * 64 * (embed + lin[".visual.blocks."]) + 2 * 16 * lin["merger"] + vis_attn


def test_metadata_and_skipped_4bit(smoke):
    doc, stdout = smoke
    assert doc["mode"] == "smoke" and "--smoke" in doc["command"]
    for lib in ("torch", "transformers", "peft"):
        assert doc["library_versions"][lib]
    assert doc["machine"]["device"] == "cpu" and doc["peak_flops"] is None
    assert doc["sections"]["quantized_4bit"]["status"].startswith("skipped: ")
    assert "8B on meta" in stdout.splitlines()[-2]  # the table is printed last


def test_smoke_never_writes_the_real_results():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    for extra in ([], ["--output", str(ROOT / "bench" / "results" / "gpu.json")]):
        proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", *extra], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "--output" in proc.stderr


def test_flop_count_matches_the_model_structure():
    """Per token, the forward FLOPs of the count are 2 x the linear weights the token meets."""
    import torch
    from transformers import AutoConfig

    shapes, flops = _load_bench_module("gpu_shapes"), _load_bench_module("gpu_flops")
    from connectodistill.core.modeling import build_model_from_config

    d = json.loads(json.dumps(shapes.TINY_CONFIG))
    d["text_config"]["vocab_size"] = 256
    cfg = AutoConfig.for_model(d.pop("model_type"), **d)
    model = build_model_from_config(cfg, device="cpu", dtype=torch.float32)
    text_lin = sum(m.weight.numel() for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and "visual" not in n)
    block_lin = sum(m.weight.numel() for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and ".visual.blocks." in f".{n}")
    merger_lin = sum(m.weight.numel() for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and "merger" in n)
    embed = model.model.visual.patch_embed.proj.weight.numel()
    # one token, no image: no attention beyond the token itself (2 x q_dim x 1 x 2 per layer)
    f = flops.step_flops(cfg, [1], [], lora_r=0, tune_vision=False)
    attn = cfg.text_config.num_hidden_layers * 2 * cfg.text_config.num_attention_heads * cfg.text_config.head_dim * 2
    assert f["forward"] == 2 * text_lin + attn
    # one 8x8-patch image on top: patch embedding + blocks per patch, mergers per merged token
    g = flops.step_flops(cfg, [1], [(1, 8, 8)], lora_r=0, tune_vision=False)
    vis_attn = cfg.vision_config.depth * 4 * cfg.vision_config.hidden_size * 64 * 64
    assert g["vision_forward"] == 2 * 64 * (embed + block_lin) + 2 * 16 * merger_lin + vis_attn
    assert g["backward"] == f["backward"]  # frozen vision tower: no backward without --tune-vision
    assert flops.step_flops(cfg, [1], [(1, 8, 8)], lora_r=0, tune_vision=True)["backward"] > f["backward"]


def test_the_sections_fit_the_budget_together():
    """Every section's estimate together under the full run's budget: none is skipped for time."""
    gpu = _load_bench_module("gpu")
    assert set(gpu.ESTIMATE_S) == set(gpu.SECTIONS)
    assert sum(gpu.ESTIMATE_S.values()) <= gpu.FULL["budget_s"]


def test_data_preparation_on_one_thread(smoke):
    doc, stdout = smoke
    sec = doc["sections"]["data_prep"]
    assert sec["status"] == "done"
    assert [r["batch_size"] for r in sec["rows"]] == doc["settings"]["batch_sizes"]
    for r in sec["rows"]:
        assert r["threads"] == 1 and _finite_positive(r["collator_s"]) and r["batches"] == 2
        assert _finite_positive(r["gpu_step_s"]) and r["workers_to_hide"] >= 1
    assert "data prep, 1 thread" in stdout
