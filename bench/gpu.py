"""GPU truth: the real-size student (Qwen3-VL-8B-Instruct's architecture) measured in one run.

Builds Qwen3-VL-8B-Instruct's architecture from its published config (written below; no Hub,
no checkpoint: random init directly on the GPU in bf16) and measures, with three views per
sample through the project's own collator (``training.DistillCollator``), processor budget
(``modeling.load_processor``), model building and LoRA (``modeling.build_model_from_config``,
``modeling.add_lora``) and generation (``generation.generate_answers``):

- training: LoRA on the language model (the project's defaults), gradient checkpointing on,
  bf16 autocast, AdamW; batch 1, 2, 4; warm-up then 10 timed steps: step time (collator +
  model), samples/s, tokens/s, peak memory, MFU; the same with ``--tune-vision``; one row at a
  small pixel budget;
- memory: peak memory against pixel budget and batch size (which Modal GPU fits what);
- generation: batched greedy eval at batch 1, 4, 16 with 256 new tokens;
- 4-bit: bitsandbytes NF4 load (``modeling.load_model(load_in_4bit=True)``) of a saved random
  checkpoint and one training step, if bitsandbytes imports (else the JSON says why).

    python bench/gpu.py                                   # CUDA GPU -> bench/results/gpu.json
    python bench/gpu.py --smoke --output /tmp/gpu.json    # tiny config, CPU, ~20 s (the test)

Every section has a time estimate and the whole run a budget (``--budget-s``, default 420 s
so that it ends inside 8 minutes on one H200): a section that no longer fits is skipped with
a note, and the JSON is rewritten after every measurement, so a run that is cut short still
leaves its figures.

Wheels to carry to the GPU machine (it has torch, transformers, peft, accelerate, typer,
pandas, pyarrow, pillow, torchvision, but no pydantic, datasets or bitsandbytes): pydantic,
pydantic-core, annotated-types, typing-inspection, typing-extensions (pydantic 2.14 wants
>= 4.16), bitsandbytes. ``connectodistill.core.config`` (imported by ``training``) needs pydantic;
this script never imports ``datasets``. ``bench/gpu_device.sh`` installs them (``--no-deps``)
and runs this script; its header has the ``pip download`` command.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "gpu.json"

# Qwen/Qwen3-VL-8B-Instruct config.json as published on the Hub (transformers 4.57 format
# there: `rope_scaling` + `rope_theta`; written here as transformers 5's `rope_parameters`).
# Cross-checked against transformers' Qwen3VLConfig: the vision defaults are these values
# except out_hidden_size (3584 there, 4096 = the text hidden size here).
QWEN3_VL_8B_CONFIG: dict = {
    "model_type": "qwen3_vl",
    "text_config": {
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "vocab_size": 151936,
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0,
                            "mrope_section": [24, 20, 20], "mrope_interleaved": True},
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    },
    "vision_config": {
        "depth": 27,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_heads": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "in_channels": 3,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 4096,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [8, 16, 24],
    },
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": False,
}
# What a meta-device build of that config must give (facts file: ~8.77B, vision ~576M; LoRA
# r=16 on the language model's attention + MLP: ~43.6M trainable).
EXPECTED_PARAMS = (8.6e9, 8.9e9)
EXPECTED_LORA_TRAINABLE = (43e6, 44e6)

# The smoke run's own tiny Qwen3-VL (same family, same code paths; vocab set from the tokenizer).
TINY_CONFIG: dict = {
    "model_type": "qwen3_vl",
    "text_config": {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "hidden_act": "silu",
        "vocab_size": None, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0,
                            "mrope_section": [6, 5, 5], "mrope_interleaved": True},
    },
    "vision_config": {
        "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
        "hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "patch_size": 16,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 64,
        "num_position_embeddings": 256, "deepstack_visual_indexes": [0],
    },
    "tie_word_embeddings": False,
}

H200_BF16_DENSE_FLOPS = 989e12  # NVIDIA's datasheet figure for dense bf16 (H100 and H200 SXM)

# Modal GPUs and the memory the card reports (MiB from nvidia-smi, rounded), for the derived
# "smallest GPU that fits" column. T4 is left out: no bf16 (the project would load fp32).
MODAL_GPUS: list[tuple[str, float]] = [
    ("L4", 22.5), ("A10", 22.5), ("A100-40GB", 40.0), ("L40S", 45.0),
    ("A100-80GB", 80.0), ("H100", 79.6), ("H200", 140.4), ("B200", 179.0),
]
CONTEXT_HEADROOM_GIB = 1.5  # CUDA context + cuBLAS workspaces: outside the allocator's counts

FULL = dict(image_size=1024, max_pixels=None, small_pixels=256 * 256, batch_sizes="1,2,4",
            steps=10, warmup=2, gen_batch_sizes="1,4,16", gen_new_tokens=256,
            memory_pixels="65536,262144,1048576", memory_batch_sizes="1,2,4,8",
            target_chars=800, budget_s=420.0)
SMOKE = dict(image_size=64, max_pixels=64 * 64, small_pixels=32 * 32, batch_sizes="1,2",
             steps=2, warmup=1, gen_batch_sizes="1,2", gen_new_tokens=8,
             memory_pixels="1024,4096", memory_batch_sizes="1,2", target_chars=200,
             budget_s=120.0)
SECTIONS = ("train", "train_small_budget", "memory", "generation", "train_tune_vision",
            "quantized_4bit")
# Rough seconds each section takes on one H200 (skipped when less than this is left).
ESTIMATE_S = {"train": 90, "train_small_budget": 15, "memory": 45, "generation": 60,
              "train_tune_vision": 70, "quantized_4bit": 150}

FLOP_MODEL = (
    "Counted per step from the batch's real (unpadded) sequence lengths and image grids, "
    "multiply-add = 2 FLOPs. Language model, per token: 2 x the decoder layers' linear "
    "weights (q,k,v,o,gate,up,down) + 2 x lm_head at the positions the loss reads (the "
    "collator's logits_to_keep; every position without it) "
    "+ LoRA 2 r (in+out) per adapted linear; causal attention 2 x heads x head_dim x L(L+1) "
    "per layer and sequence. Vision tower, per patch: patch embedding + 2 x the blocks' linear "
    "weights, full attention 4 x hidden x P^2 per block and image, the merger and the 3 "
    "deepstack mergers per merged token. Backward with frozen base weights: activation "
    "gradients only (1 x forward for linears, 2 x for attention) plus the LoRA weight "
    "gradients; the vision tower has no backward unless --tune-vision. mfu = (forward + "
    "backward) / (step time incl. the collator x peak); mfu_model_only uses the model time "
    "alone; hfu_model_only also counts gradient checkpointing's recomputed forward. Peak: "
    "--peak-flops, default 989e12 FLOP/s (H100/H200 SXM dense bf16). Checked on the tiny "
    "model against torch.utils.flop_counter (matmuls; it skips CPU sdpa): equal."
)


# ----------------------------------------------------------------------------- small helpers
def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _gib(n) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("connectodistill", "torch", "transformers", "peft", "accelerate", "pydantic",
                "bitsandbytes", "tokenizers", "torchvision", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def machine_info(device: str) -> dict:
    import torch

    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu_name=props.name, gpu_memory_gib=_gib(props.total_memory),
                    gpu_multiprocessors=props.multi_processor_count,
                    compute_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    bf16_supported=torch.cuda.is_bf16_supported())
    else:
        info.update(gpu_name=None, gpu_memory_gib=None)
    return info


class Report:
    """The JSON document, rewritten (atomically) after every measurement."""

    def __init__(self, path: Path, doc: dict):
        self.path, self.doc = path, doc
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        self.doc["wall_s"] = round(time.monotonic() - self.doc["_t0"], 1)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({k: v for k, v in self.doc.items() if not k.startswith("_")},
                                  indent=1, default=str))
        tmp.replace(self.path)

    def section(self, name: str) -> dict:
        sec = self.doc["sections"].setdefault(name, {"status": "not run", "rows": []})
        return sec


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Memory:
    """Peak allocator figures on CUDA (None on CPU, which has no allocator statistics)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def reset(self) -> None:
        if self.cuda:
            import torch

            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> dict:
        if not self.cuda:
            return {"peak_memory_gib": None, "peak_reserved_gib": None,
                    "host_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
        import torch

        return {"peak_memory_gib": _gib(torch.cuda.max_memory_allocated()),
                "peak_reserved_gib": _gib(torch.cuda.max_memory_reserved())}

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


def release() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def smallest_modal_gpu(peak_reserved_gib: float | None) -> str | None:
    if peak_reserved_gib is None:
        return None
    need = peak_reserved_gib + CONTEXT_HEADROOM_GIB
    fits = [(mem, name) for name, mem in MODAL_GPUS if mem >= need]
    return min(fits)[1] if fits else "none of Modal's single GPUs"


# ----------------------------------------------------------------------------- project parts
def project_api():
    """The project's own functions (import paths with fallbacks for code that moves)."""
    from connectodistill.core import modeling

    try:
        from connectodistill.core.generation import generate_answers
    except ImportError:  # older layout
        from connectodistill.evaluation.recipe import generate_answers
    try:
        from connectodistill.training.examples import Example
    except ImportError:
        from connectodistill.training.collator import Example
    from connectodistill.training.sft import DistillCollator

    return modeling, generate_answers, Example, DistillCollator


def train_defaults() -> dict:
    """LoRA / collator defaults of ``connectodistill train`` (TrainConfig), not re-typed here."""
    from connectodistill.core.config import TrainConfig

    f = TrainConfig.model_fields
    return {k: f[k].default for k in ("lora_r", "lora_alpha", "lora_dropout", "max_length")}


def make_example(Example, **kw):
    """``Example(row=, prompt=, target=, key=)``, filling any new required field with None."""
    if dataclasses.is_dataclass(Example):
        for f in dataclasses.fields(Example):
            if (f.name not in kw and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING):
                kw[f.name] = None
    return Example(**kw)


def analysis_text(letter: str, chars: int, k: int) -> str:
    """A teacher-like analysis of about ``chars`` characters (the kit's phrases, repeated)."""
    from connectodistill.synthetic import ANALYSIS_DETAIL, ANALYSIS_PHRASES

    phrases = list(ANALYSIS_PHRASES.get(letter) or ["The segment is shown in three views."])
    parts, i = [], k
    while sum(len(p) + 1 for p in parts) < chars:
        parts.append(phrases[i % len(phrases)])
        parts.append(ANALYSIS_DETAIL.format(n=5 + (i * 7) % 50))
        i += 1
    return " ".join(parts)[: max(chars, 1)]


def make_samples(workdir: Path, n: int, image_size: int, target_chars: int, Example):
    """n benchmark-like rows with three ``image_size`` PNG views each, and their examples."""
    import pyarrow.parquet as pq

    from connectodistill.core.conversation import build_prompt, target_text
    from connectodistill.core.task import DESCRIPTION_TO_LETTER, image_columns, label_column
    from connectodistill.synthetic import make_benchmark

    path = make_benchmark(workdir / f"bench_{image_size}.parquet", n=n, seed=0, image_size=image_size)
    table = pq.read_table(path)
    rows = table.to_pylist()
    cols = image_columns(table.column_names)
    label = label_column(table.column_names)
    examples = []
    for i, row in enumerate(rows):
        letter = DESCRIPTION_TO_LETTER[row[label]]
        examples.append(make_example(
            Example, row=row, prompt=build_prompt(row),
            target=target_text(letter, analysis_text(letter, target_chars, i)),
            key=(int(row["proofread_root_id"]), int(row["current_root_id"]))))
    return rows, cols, examples


def model_config(base: dict, tokenizer):
    """A transformers Qwen3VLConfig from ``base``, with the kit tokenizer's special-token ids."""
    import copy

    from transformers import AutoConfig

    d = copy.deepcopy(base)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    d.update(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
             vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    text = d["text_config"]
    if text.get("vocab_size") is None:
        text["vocab_size"] = int(math.ceil(len(tokenizer) / 64) * 64)
    text["eos_token_id"] = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text["pad_token_id"] = tokenizer.pad_token_id
    text["bos_token_id"] = None
    if len(tokenizer) > text["vocab_size"]:
        raise ValueError(f"tokenizer ({len(tokenizer)}) larger than vocab_size {text['vocab_size']}")
    model_type = d.pop("model_type")
    return AutoConfig.for_model(model_type, **d)


def count_params(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "vision": vision, "language_and_head": total - vision, "trainable": trainable}


def meta_check(modeling, tokenizer, lora: dict) -> dict:
    """Qwen3-VL-8B's config on the meta device: parameter counts, LoRA-trainable parameters."""
    import torch

    cfg = model_config(QWEN3_VL_8B_CONFIG, tokenizer)
    t = time.perf_counter()
    model = modeling.build_model_from_config(cfg, device="meta", dtype=torch.bfloat16)
    base = count_params(model)
    model = modeling.add_lora(model, r=lora["lora_r"], alpha=lora["lora_alpha"], dropout=lora["lora_dropout"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out = {"params_total": base["total"], "params_vision": base["vision"],
           "lora_r": lora["lora_r"], "lora_trainable_language_model": trainable,
           "seconds": round(time.perf_counter() - t, 2)}
    out["params_in_range"] = EXPECTED_PARAMS[0] <= base["total"] <= EXPECTED_PARAMS[1]
    out["lora_trainable_in_range"] = EXPECTED_LORA_TRAINABLE[0] <= trainable <= EXPECTED_LORA_TRAINABLE[1]
    print(f"Qwen3-VL-8B on meta: {base['total'] / 1e9:.3f}B parameters (vision "
          f"{base['vision'] / 1e6:.1f}M), LoRA r={lora['lora_r']} trainable {trainable / 1e6:.2f}M", flush=True)
    del model
    gc.collect()
    return out


# ----------------------------------------------------------------------------- FLOPs
def step_flops(cfg, seq_lens: list[int], grids: list[tuple[int, int, int]], *, lora_r: int,
               tune_vision: bool, head_tokens: int | None = None) -> dict:
    """Forward, backward and recomputed FLOPs of one training step (see FLOP_MODEL)."""
    t, v = cfg.text_config, cfg.vision_config
    h, layers, ffn, vocab = t.hidden_size, t.num_hidden_layers, t.intermediate_size, t.vocab_size
    q = t.num_attention_heads * t.head_dim
    kv = t.num_key_value_heads * t.head_dim
    layer_w = h * q + 2 * h * kv + q * h + 3 * h * ffn
    layer_lora = (h + q) + 2 * (h + kv) + (q + h) + 3 * (h + ffn)  # sum of (in + out)
    tokens = sum(seq_lens)
    lin = 2 * layers * layer_w * tokens
    attn = layers * sum(2 * q * n * (n + 1) for n in seq_lens)
    head = 2 * h * vocab * (tokens if head_tokens is None else head_tokens)
    lora = 2 * lora_r * layers * layer_lora * tokens
    text_fwd = lin + attn + head + lora
    text_bwd = lin + 2 * attn + head + 2 * lora
    text_re = lin + attn + lora

    hv, depth, vffn, m = v.hidden_size, v.depth, v.intermediate_size, v.spatial_merge_size
    patch_in = v.in_channels * v.temporal_patch_size * v.patch_size**2
    per_image = [a * b * c for a, b, c in grids]
    patches = sum(per_image)
    block_w = hv * 3 * hv + hv * hv + 2 * hv * vffn
    block_lora = (hv + 3 * hv) + 2 * hv + 2 * (hv + vffn)
    merger_w = (hv * m * m) ** 2 + hv * m * m * v.out_hidden_size
    n_mergers = 1 + len(v.deepstack_visual_indexes or [])
    v_embed = 2 * patch_in * hv * patches
    v_lin = 2 * depth * block_w * patches
    v_attn = depth * sum(4 * hv * p * p for p in per_image)
    v_merge = 2 * n_mergers * merger_w * patches // (m * m)
    v_lora = 2 * lora_r * depth * block_lora * patches if tune_vision else 0
    vis_fwd = v_embed + v_lin + v_attn + v_merge + v_lora
    vis_bwd = (v_lin + 2 * v_attn + v_merge + 2 * v_lora) if tune_vision else 0
    vis_re = (v_lin + v_attn + v_lora) if tune_vision else 0
    return {"forward": text_fwd + vis_fwd, "backward": text_bwd + vis_bwd,
            "recompute": text_re + vis_re, "vision_forward": vis_fwd, "text_forward": text_fwd}


# ----------------------------------------------------------------------------- measurements
@dataclasses.dataclass
class Ctx:
    modeling: object
    generate_answers: object
    Example: object
    DistillCollator: object
    cfg: object
    device: str
    dtype: object
    lora: dict
    processor_dir: Path
    rows: list
    image_cols: tuple
    examples: list
    mem: Memory
    peak_flops: float | None
    budget: Budget
    args: argparse.Namespace


def collator_for(ctx: Ctx, max_pixels: int):
    processor, budget = ctx.modeling.load_processor(str(ctx.processor_dir), max_pixels=max_pixels)
    try:
        collator = ctx.DistillCollator(processor, ctx.image_cols, max_length=ctx.lora["max_length"])
    except TypeError:  # a changed signature: the two positional arguments it always had
        collator = ctx.DistillCollator(processor, ctx.image_cols)
    return collator, processor, budget


def build_student(ctx: Ctx, *, tune_vision: bool = False, gradient_checkpointing: bool = True,
                  lora: bool = True):
    """Random-init model of ``ctx.cfg`` on the device, then the project's LoRA."""
    model = ctx.modeling.build_model_from_config(ctx.cfg, device=ctx.device, dtype=ctx.dtype)
    if lora:
        model = ctx.modeling.add_lora(model, r=ctx.lora["lora_r"], alpha=ctx.lora["lora_alpha"],
                                      dropout=ctx.lora["lora_dropout"], tune_vision=tune_vision,
                                      gradient_checkpointing=gradient_checkpointing)
    return model


def time_train(ctx: Ctx, model, collator, batch_size: int, steps: int, warmup: int, *,
               tune_vision: bool, offset: int = 0) -> dict:
    """``warmup`` + ``steps`` optimizer steps as the Trainer runs them (collator in the loop)."""
    import torch

    cuda = ctx.device.startswith("cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=cuda)
    model.train()
    ctx.mem.reset()
    data_s = model_s = 0.0
    tokens = label_tokens = samples = done = 0
    image_tokens = patches = 0
    flops = {"forward": 0, "backward": 0, "recompute": 0, "vision_forward": 0}
    losses = []
    factor = ctx.cfg.vision_config.spatial_merge_size ** 2
    for step in range(warmup + steps):
        if step >= warmup and done and ctx.budget.left() < 2 * (data_s + model_s) / done:
            break  # out of time: keep what was measured
        batch_ex = [ctx.examples[(offset + step * batch_size + i) % len(ctx.examples)]
                    for i in range(batch_size)]
        t0 = time.perf_counter()
        batch = collator(batch_ex)
        batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
        ctx.mem.sync()
        t1 = time.perf_counter()
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the Trainer's max_grad_norm
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctx.mem.sync()
        t2 = time.perf_counter()
        if step < warmup:
            continue
        done += 1
        data_s += t1 - t0
        model_s += t2 - t1
        lens = batch["attention_mask"].sum(dim=1).tolist()
        grids = [tuple(int(x) for x in g) for g in batch["image_grid_thw"].tolist()]
        tokens += sum(lens)
        samples += batch_size
        label_tokens += int((batch["labels"] != -100).sum())
        patches += sum(a * b * c for a, b, c in grids)
        image_tokens += sum(a * b * c for a, b, c in grids) // factor
        kept = batch.get("logits_to_keep")
        f = step_flops(ctx.cfg, lens, grids, lora_r=ctx.lora["lora_r"], tune_vision=tune_vision,
                       head_tokens=None if kept is None else int(kept.numel()))
        for k in flops:
            flops[k] += f[k]
        losses.append(float(loss.detach()))
    peak = ctx.mem.peak()
    del opt
    if not done:
        return {"batch_size": batch_size, "error": "no timed step fitted in the time budget", **peak}
    step_s = (data_s + model_s) / done
    useful = flops["forward"] + flops["backward"]
    row = {
        "batch_size": batch_size, "steps": done, "warmup_steps": warmup,
        "step_s": round(step_s, 4), "model_step_s": round(model_s / done, 4),
        "data_step_s": round(data_s / done, 4),
        "samples_per_s": round(samples / (data_s + model_s), 3),
        "tokens_per_s": round(tokens / (data_s + model_s), 1),
        "model_tokens_per_s": round(tokens / model_s, 1),
        "tokens_per_sample": round(tokens / samples, 1),
        "image_tokens_per_sample": round(image_tokens / samples, 1),
        "label_tokens_per_sample": round(label_tokens / samples, 1),
        "vision_patches_per_sample": round(patches / samples, 1),
        "loss_mean": round(sum(losses) / len(losses), 4),
        "loss_finite": all(math.isfinite(x) for x in losses),
        "flops_per_step": useful // done,
        "vision_forward_flops_per_step": flops["vision_forward"] // done,
        "mfu": None, "mfu_model_only": None, "hfu_model_only": None,
        **peak,
    }
    if ctx.peak_flops:
        row["mfu"] = round(useful / (data_s + model_s) / ctx.peak_flops, 4)
        row["mfu_model_only"] = round(useful / model_s / ctx.peak_flops, 4)
        row["hfu_model_only"] = round((useful + flops["recompute"]) / model_s / ctx.peak_flops, 4)
    if done < steps:
        row["note"] = f"only {done} of {steps} timed steps fitted in the time budget"
    return row


def guarded(fn, *args, **kwargs) -> dict:
    """``fn(...)``, with an out-of-memory turned into a row that says so."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as e:
        if not _is_oom(e):
            raise
        msg = str(e).splitlines()[0][:200]
    release()
    return {"error": "out of memory", "detail": msg}


def section_train(ctx: Ctx, sec: dict, report: Report, *, tune_vision: bool) -> None:
    collator, _, budget = collator_for(ctx, ctx.args.max_pixels)
    t = time.perf_counter()
    model = build_student(ctx, tune_vision=tune_vision)
    sec["build_s"] = round(time.perf_counter() - t, 2)
    sec["params"] = count_params(model)
    sec["gradient_checkpointing"] = True
    sec["tune_vision"] = tune_vision
    for bs in ctx.args.batch_sizes:
        if ctx.budget.left() < 10:
            sec.setdefault("notes", []).append(f"batch {bs}: skipped, out of time")
            break
        r = guarded(time_train, ctx, model, collator, bs, ctx.args.steps, ctx.args.warmup,
                    tune_vision=tune_vision)
        sec["rows"].append({"pixel_budget": budget, "tune_vision": tune_vision,
                            "trainable_params": sec["params"]["trainable"], **r})
        _print_row(sec["rows"][-1])
        report.save()
    if not tune_vision:
        ctx.args._train_model = model  # reused by the small-budget row and the memory table
    else:
        del model
        release()


def section_small_budget(ctx: Ctx, sec: dict, report: Report) -> None:
    model = getattr(ctx.args, "_train_model", None) or build_student(ctx)
    collator, _, budget = collator_for(ctx, ctx.args.small_pixels)
    bs = max(ctx.args.batch_sizes)
    r = guarded(time_train, ctx, model, collator, bs, ctx.args.steps, ctx.args.warmup, tune_vision=False)
    sec["rows"].append({"pixel_budget": budget, "tune_vision": False,
                        "trainable_params": count_params(model)["trainable"], **r})
    sec["why_this_budget"] = (
        f"{ctx.args.small_pixels} pixels per view (--small-pixels). The full run's default, "
        "65536 = 256^2 (64 tokens per view), is the real Qwen3-VL processor's own min_pixels "
        "(shortest_edge 65536): the smallest budget the hub processor renders a view at unless "
        "load_processor lowers its minimum; below it a view keeps only a few dozen tokens")
    _print_row(sec["rows"][-1])
    report.save()
    ctx.args._train_model = model


def section_memory(ctx: Ctx, sec: dict, report: Report, measured: list[dict]) -> None:
    """Peak memory per (pixel budget, batch): 1 warm-up + 1 step each, LM-only LoRA."""
    model = getattr(ctx.args, "_train_model", None) or build_student(ctx)
    have = {(r["pixel_budget"]["max_pixels"], r["batch_size"]): r for r in measured
            if "pixel_budget" in r and not r.get("tune_vision")}
    for px in ctx.args.memory_pixels:
        collator, _, budget = collator_for(ctx, px)
        for bs in ctx.args.memory_batch_sizes:
            src = "timed training row"
            r = have.get((budget["max_pixels"], bs))
            if r is None:
                if ctx.budget.left() < 15:
                    sec.setdefault("notes", []).append(f"{px} px x batch {bs} and larger: out of time")
                    break
                r = guarded(time_train, ctx, model, collator, bs, 1, 1, tune_vision=False)
                src = "1 warm-up + 1 step"
            row = {"pixel_budget": budget, "batch_size": bs,
                   "tokens_per_sample": r.get("tokens_per_sample"),
                   "peak_memory_gib": r.get("peak_memory_gib"),
                   "peak_reserved_gib": r.get("peak_reserved_gib"),
                   "step_s": r.get("step_s"), "error": r.get("error"), "source": src,
                   "smallest_modal_gpu": smallest_modal_gpu(r.get("peak_reserved_gib"))}
            sec["rows"].append(row)
            report.save()
            if r.get("error") == "out of memory":
                break  # larger batches at this budget cannot fit either
    sec["fit_rule"] = (f"smallest_modal_gpu: the smallest of {[n for n, _ in MODAL_GPUS]} whose "
                       f"reported memory holds peak_reserved_gib + {CONTEXT_HEADROOM_GIB} GiB "
                       "(CUDA context, workspaces); T4 is left out (no bf16). Derived, not measured "
                       "on those GPUs.")


def section_generation(ctx: Ctx, sec: dict, report: Report) -> None:
    from connectodistill.core.conversation import build_prompt, load_images

    ctx.args._train_model = None
    release()
    _, processor, budget = collator_for(ctx, ctx.args.max_pixels)
    t = time.perf_counter()
    # As evaluation runs a student: base model + (unmerged) LoRA adapter, no checkpointing.
    model = build_student(ctx, gradient_checkpointing=False)
    sec["build_s"] = round(time.perf_counter() - t, 2)
    gen_cfg = model.base_model.model.generation_config
    gen_cfg.eos_token_id = None  # a random model: every sample generates all the new tokens
    gen_cfg.pad_token_id = processor.tokenizer.pad_token_id
    sec["note"] = ("EOS disabled, so every sample generates exactly gen_new_tokens tokens "
                   "(random weights); images decoded before timing, as evaluation does")
    n_max = max(ctx.args.gen_batch_sizes)
    prompts = [build_prompt(r) for r in ctx.rows[:n_max]]
    images = [load_images(r, ctx.image_cols) for r in ctx.rows[:n_max]]
    ctx.generate_answers(model, processor, prompts[:1], images[:1], batch_size=1, max_new_tokens=2)
    for bs in ctx.args.gen_batch_sizes:
        per_token = sec.get("_last_s_per_token_batch")
        if per_token and ctx.budget.left() < per_token * ctx.args.gen_new_tokens * 1.5:
            sec.setdefault("notes", []).append(f"batch {bs}: skipped, out of time")
            continue
        ctx.mem.reset()
        t = time.perf_counter()
        try:
            out = ctx.generate_answers(model, processor, prompts[:bs], images[:bs], batch_size=bs,
                                       max_new_tokens=ctx.args.gen_new_tokens)
            ctx.mem.sync()
            wall = time.perf_counter() - t
            row = {"batch_size": bs, "samples": bs, "new_tokens_per_sample": ctx.args.gen_new_tokens,
                   "pixel_budget": budget, "wall_s": round(wall, 3),
                   "samples_per_s": round(bs / wall, 3),
                   "new_tokens_per_s": round(bs * ctx.args.gen_new_tokens / wall, 1),
                   "responses": len(out), **ctx.mem.peak()}
            sec["_last_s_per_token_batch"] = wall / ctx.args.gen_new_tokens
        except RuntimeError as e:
            if not _is_oom(e):
                raise
            row = {"batch_size": bs, "error": "out of memory"}
            release()
        sec["rows"].append(row)
        _print_row(row, kind="gen")
        report.save()
    sec.pop("_last_s_per_token_batch", None)
    del model
    release()


def section_4bit(ctx: Ctx, sec: dict, report: Report) -> None:
    if not ctx.device.startswith("cuda"):
        sec["status"] = "skipped: 4-bit (bitsandbytes) needs a CUDA GPU"
        return
    try:
        import bitsandbytes

        sec["bitsandbytes"] = bitsandbytes.__version__
    except Exception as e:  # ImportError, or a wheel without this CUDA's library
        sec["status"] = (f"skipped: bitsandbytes does not import ({type(e).__name__}: {e}); "
                         "carry its wheel (bench/gpu_device.sh)")
        return
    ctx.args._train_model = None
    release()
    scratch = Path(tempfile.mkdtemp(prefix="gpu-bench-ckpt-", dir=ctx.args.scratch))
    try:
        # A random checkpoint on disk, so that the project's loader (from_pretrained) runs.
        t = time.perf_counter()
        model = build_student(ctx, lora=False)
        model.save_pretrained(scratch)
        del model
        release()
        sec["save_checkpoint_s"] = round(time.perf_counter() - t, 2)
        sec["checkpoint_gib"] = _gib(sum(p.stat().st_size for p in scratch.glob("*.safetensors")))
        report.save()
        # bf16 through the same loader first: the time and memory of the default path.
        ctx.mem.reset()
        t = time.perf_counter()
        model = ctx.modeling.load_model(str(scratch), device=ctx.device)
        ctx.mem.sync()
        sec["bf16_load"] = {"seconds": round(time.perf_counter() - t, 2), **ctx.mem.peak()}
        del model
        release()
        report.save()
        ctx.mem.reset()
        t = time.perf_counter()
        model = ctx.modeling.load_model(str(scratch), device=ctx.device, load_in_4bit=True)
        ctx.mem.sync()
        sec["nf4_load"] = {"seconds": round(time.perf_counter() - t, 2), **ctx.mem.peak()}
        model = ctx.modeling.add_lora(model, r=ctx.lora["lora_r"], alpha=ctx.lora["lora_alpha"],
                                      dropout=ctx.lora["lora_dropout"], gradient_checkpointing=True)
        sec["params"] = count_params(model)
        sec["params_note"] = ("numel as stored: each 4-bit weight tensor counts its packed uint8 "
                              "elements (half its parameters); peft's prepare_model_for_kbit_training "
                              "has cast the unquantized bf16 weights (embeddings, lm_head, norms) to fp32")
        collator, _, budget = collator_for(ctx, ctx.args.max_pixels)
        for bs in (1,):
            r = guarded(time_train, ctx, model, collator, bs, 2, 1, tune_vision=False)
            sec["rows"].append({"pixel_budget": budget, "quantization": "nf4 + double quant, bf16 compute",
                                "trainable_params": sec["params"]["trainable"], **r})
            _print_row(sec["rows"][-1])
            report.save()
        del model
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        release()


# ----------------------------------------------------------------------------- output
def _fmt(x, nd=2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _print_row(r: dict, kind: str = "train") -> None:
    if r.get("error"):
        print(f"  batch {r.get('batch_size')}: {r['error']}", flush=True)
    elif kind == "gen":
        print(f"  gen batch {r['batch_size']}: {r['samples_per_s']} samples/s, "
              f"{r['new_tokens_per_s']} new tokens/s, peak {_fmt(r.get('peak_memory_gib'))} GiB", flush=True)
    else:
        print(f"  {r['pixel_budget']['max_pixels']} px, batch {r['batch_size']}"
              f"{' +vision' if r.get('tune_vision') else ''}: step {r['step_s']} s, "
              f"{r['samples_per_s']} samples/s, {r['tokens_per_s']} tokens/s, MFU {_fmt(r.get('mfu'), 3)}, "
              f"peak {_fmt(r.get('peak_memory_gib'))} GiB", flush=True)


def print_table(doc: dict) -> None:
    secs = doc["sections"]
    lines = [f"\n== {doc['model']['name']} on {doc['machine'].get('gpu_name') or 'CPU'} "
             f"({doc['mode']}; {doc['wall_s']} s) =="]
    lines.append(f"{'section':<20}{'pixels':>9}{'batch':>6}{'step s':>9}{'samp/s':>9}{'tok/s':>10}"
                 f"{'MFU':>7}{'peak GiB':>10}")
    for name in ("train", "train_tune_vision", "train_small_budget", "quantized_4bit"):
        for r in secs.get(name, {}).get("rows", []):
            px = r.get("pixel_budget", {}).get("max_pixels")
            if r.get("error"):
                lines.append(f"{name:<20}{_fmt(px):>9}{_fmt(r.get('batch_size')):>6}  {r['error']}")
                continue
            lines.append(f"{name:<20}{_fmt(px):>9}{r['batch_size']:>6}{_fmt(r['step_s'], 3):>9}"
                         f"{_fmt(r['samples_per_s']):>9}{_fmt(r['tokens_per_s'], 0):>10}"
                         f"{_fmt(r.get('mfu'), 3):>7}{_fmt(r.get('peak_memory_gib')):>10}")
    for r in secs.get("generation", {}).get("rows", []):
        if r.get("error"):
            lines.append(f"{'generation':<20}{'':>9}{r['batch_size']:>6}  {r['error']}")
            continue
        lines.append(f"{'generation':<20}{r['pixel_budget']['max_pixels']:>9}{r['batch_size']:>6}"
                     f"{_fmt(r['wall_s'], 2):>9}{_fmt(r['samples_per_s']):>9}"
                     f"{_fmt(r['new_tokens_per_s'], 0):>10}{'':>7}{_fmt(r.get('peak_memory_gib')):>10}")
    mem = secs.get("memory", {}).get("rows", [])
    if mem:
        lines.append("peak memory GiB (allocated / reserved) by pixel budget x batch:")
        for r in mem:
            val = r["error"] or f"{_fmt(r['peak_memory_gib'])} / {_fmt(r['peak_reserved_gib'])}"
            lines.append(f"  {r['pixel_budget']['max_pixels']:>9} px  batch {r['batch_size']:>2}: {val}"
                         f"  -> {r.get('smallest_modal_gpu') or '-'}")
    for name, sec in secs.items():
        if not str(sec.get("status", "")).startswith("done"):
            lines.append(f"{name}: {sec.get('status')}")
    m = doc["model"].get("meta_check_8b", {})
    if m:
        lines.append(f"8B on meta: {m.get('params_total', 0) / 1e9:.3f}B params, LoRA trainable "
                     f"{m.get('lora_trainable_language_model', 0) / 1e6:.2f}M")
    print("\n".join(lines), flush=True)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny Qwen3-VL config on the CPU (or GPU), small everything: the test")
    ap.add_argument("--output", type=Path, default=None,
                    help=f"JSON path (default {DEFAULT_OUTPUT.relative_to(ROOT)}; required with --smoke)")
    ap.add_argument("--device", default=None, help="default: cuda:0 when present, else cpu")
    ap.add_argument("--image-size", type=int, help="side of the rendered square PNG views (1024)")
    ap.add_argument("--max-pixels", type=int, help="pixel budget per view (modeling.DEFAULT_MAX_PIXELS)")
    ap.add_argument("--small-pixels", type=int, help="the small-budget row's pixel budget (256*256)")
    ap.add_argument("--batch-sizes", help="training batch sizes (1,2,4)")
    ap.add_argument("--steps", type=int, help="timed training steps per row (10)")
    ap.add_argument("--warmup", type=int, help="warm-up steps per row (2)")
    ap.add_argument("--gen-batch-sizes", help="generation batch sizes (1,4,16)")
    ap.add_argument("--gen-new-tokens", type=int, help="new tokens per generated sample (256)")
    ap.add_argument("--memory-pixels", help="pixel budgets of the memory table")
    ap.add_argument("--memory-batch-sizes", help="batch sizes of the memory table (1,2,4,8)")
    ap.add_argument("--target-chars", type=int, help="characters of teacher analysis per target (800)")
    ap.add_argument("--budget-s", type=float, help="wall-clock budget of the whole run (420)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    ap.add_argument("--scratch", default=None, help="folder for the 4-bit section's checkpoint (~17 GB)")
    ap.add_argument("--peak-flops", type=float, default=H200_BF16_DENSE_FLOPS,
                    help="the GPU's dense bf16 peak for MFU (989e12: H100/H200 SXM)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (--smoke on CPU: 1; a tiny model's ops only contend for cores)")
    args = ap.parse_args(argv)
    defaults = SMOKE if args.smoke else FULL
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.output is None:
        if args.smoke:
            ap.error("--smoke needs --output (the smoke run never writes bench/results/gpu.json)")
        args.output = DEFAULT_OUTPUT
    if args.smoke and args.output.resolve() == DEFAULT_OUTPUT.resolve():
        ap.error("--smoke must not overwrite bench/results/gpu.json; pass another --output")
    for k in ("batch_sizes", "gen_batch_sizes", "memory_pixels", "memory_batch_sizes"):
        setattr(args, k, [int(x) for x in str(getattr(args, k)).split(",") if x.strip()])
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    return args


def main(argv=None) -> int:
    t_start = time.monotonic()
    args = parse_args(argv)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5's renames
    modeling, generate_answers, Example, DistillCollator = project_api()
    if args.max_pixels is None:
        args.max_pixels = modeling.DEFAULT_MAX_PIXELS
    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    if args.threads is None and args.smoke and not cuda:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    doc = {
        "_t0": t_start,
        "schema": "connectodistill.bench.gpu/1",
        "mode": "smoke" if args.smoke else "full",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started_utc": _now(),
        "machine": machine_info(device),
        "library_versions": library_versions(),
        "model": {"name": "tiny Qwen3-VL (bench/gpu.py TINY_CONFIG)" if args.smoke
                  else "Qwen3-VL-8B-Instruct architecture, random init"},
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "assumptions": {
            "views_per_sample": 3,
            "view_image": f"{args.image_size}x{args.image_size} PNG (the real benchmark's rendered "
                          "views assumed 1024x1024; --image-size), the offline kit's synthetic renders",
            "weights": "random init on the device (no checkpoint); speed and memory do not depend on the values",
            "tokenizer": "the offline kit's small BPE with Qwen's special tokens (not Qwen's 151k "
                         "vocabulary): prompt/answer token counts differ a little from the real "
                         "tokenizer; visual tokens, which dominate, are exact",
            "prompt": "conversation.build_prompt (the project's builtin template)",
            "target": f"<analysis> of ~{args.target_chars} characters + <answer> (teacher analyses are 0.5-1.2 KB)",
            "dtype": str(dtype).replace("torch.", ""),
            "attention": "transformers' default (sdpa)",
            "optimizer": "torch AdamW (fused on CUDA), grad-norm clip 1.0, bf16 autocast on CUDA (as the Trainer)",
            "memory_on_cpu": "CUDA allocator figures are null on CPU; host_peak_rss_gib instead",
        },
        "peak_flops": args.peak_flops if cuda else None,
        "flop_model": FLOP_MODEL,
        "checks": {},
        "sections": {name: {"status": "not run", "rows": []} for name in SECTIONS},
        "notes": [],
    }
    report = Report(args.output, doc)
    report.save()
    failed_checks = False
    budget = Budget(args.budget_s - (time.monotonic() - t_start))
    try:
        lora = train_defaults()
        doc["settings"]["lora"] = lora
        work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
        try:
            from connectodistill.synthetic.student import make_processor

            t = time.perf_counter()
            processor_dir = make_processor(work / "processor", "qwen3-vl")
            from connectodistill.core.modeling import load_processor

            tokenizer = load_processor(str(processor_dir))[0].tokenizer
            meta = meta_check(modeling, tokenizer, lora)
            doc["model"]["meta_check_8b"] = meta
            doc["checks"]["params_8b_in_range"] = meta["params_in_range"]
            doc["checks"]["lora_trainable_8b_in_range"] = meta["lora_trainable_in_range"]
            failed_checks = not (meta["params_in_range"] and meta["lora_trainable_in_range"])
            n = max([16, *args.gen_batch_sizes, *args.memory_batch_sizes, *args.batch_sizes])
            rows, image_cols, examples = make_samples(work, n, args.image_size, args.target_chars, Example)
            cfg = model_config(TINY_CONFIG if args.smoke else QWEN3_VL_8B_CONFIG, tokenizer)
            doc["model"]["config"] = cfg.to_dict()
            doc["setup_s"] = round(time.perf_counter() - t, 2)
            report.save()
            ctx = Ctx(modeling=modeling, generate_answers=generate_answers, Example=Example,
                      DistillCollator=DistillCollator, cfg=cfg, device=device, dtype=dtype, lora=lora,
                      processor_dir=processor_dir, rows=rows, image_cols=image_cols,
                      examples=examples, mem=Memory(device), peak_flops=doc["peak_flops"],
                      budget=budget, args=args)
            args._train_model = None
            for name in SECTIONS:
                sec = report.section(name)
                if name not in args.sections:
                    sec["status"] = "skipped: not in --sections"
                    continue
                est = ESTIMATE_S[name] if not args.smoke else 1
                if budget.left() < est:
                    sec["status"] = (f"skipped: out of time ({budget.left():.0f} s left of the "
                                     f"{args.budget_s:.0f} s budget, the section needs ~{est} s)")
                    report.save()
                    continue
                print(f"[{time.monotonic() - t_start:6.1f} s] {name}", flush=True)
                t = time.perf_counter()
                sec["status"] = "running"
                try:
                    if name == "train":
                        section_train(ctx, sec, report, tune_vision=False)
                    elif name == "train_tune_vision":
                        ctx.args._train_model = None
                        release()
                        section_train(ctx, sec, report, tune_vision=True)
                    elif name == "train_small_budget":
                        section_small_budget(ctx, sec, report)
                    elif name == "memory":
                        measured = [*doc["sections"]["train"]["rows"],
                                    *doc["sections"]["train_small_budget"]["rows"]]
                        section_memory(ctx, sec, report, measured)
                    elif name == "generation":
                        section_generation(ctx, sec, report)
                    elif name == "quantized_4bit":
                        section_4bit(ctx, sec, report)
                    if sec["status"] == "running":
                        sec["status"] = "done"
                except Exception as e:  # one broken section must not lose the others
                    sec["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                    sec["traceback"] = traceback.format_exc()[-4000:]
                    print(sec["traceback"], file=sys.stderr, flush=True)
                    ctx.args._train_model = None
                    release()
                sec["seconds"] = round(time.perf_counter() - t, 1)
                report.save()
            args._train_model = None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except Exception as e:
        doc["notes"].append(f"run stopped: {type(e).__name__}: {e}")
        doc["traceback"] = traceback.format_exc()[-4000:]
        print(doc["traceback"], file=sys.stderr, flush=True)
        failed_checks = True
    finally:
        doc["finished_utc"] = _now()
        report.save()
    print_table(doc)
    print(f"wrote {args.output}", flush=True)
    return 1 if failed_checks else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
