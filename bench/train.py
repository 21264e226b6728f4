"""Training throughput: samples/s and tokens/s per optimizer step, data preparation vs model time.

CPU (always): the offline kit's tiny Qwen3-VL student, LoRA r=16 on the language model, the
project's real collator and prompt.
CUDA (when present): also a randomly-initialised model of the real Qwen3-VL-8B shape (no
weights needed), bf16, for a few pixel budgets and batch sizes, with peak memory and MFU.

    python bench/train.py [--steps 20] [--batch-sizes 2,8] [--full-logits] [--out bench/results/train.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Qwen3-VL-8B-Instruct's published shape (config.json on the Hub).
QWEN3_VL_8B = dict(
    text=dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
              num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144,
              rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                               "mrope_interleaved": True}),
    vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                deepstack_visual_indexes=[8, 16, 24]),
)
H100_BF16_DENSE_FLOPS = 989e12


def examples_and_collator(student: Path, n: int, max_pixels: int | None = None):
    import pyarrow.parquet as pq

    from connectodistill.core.conversation import build_prompt, target_text
    from connectodistill.core.modeling import load_processor
    from connectodistill.core.scoring import ground_truth_letters
    from connectodistill.core.task import image_columns, label_column
    from connectodistill.synthetic import ANALYSIS_PHRASES, make_benchmark
    from connectodistill.training.collator import Example
    from connectodistill.training.sft import DistillCollator

    size = 64 if max_pixels is None else int(max_pixels ** 0.5)
    bench = make_benchmark(student.parent / f"bench_{size}.parquet", n=n, seed=0, image_size=size)
    df = pq.read_table(bench).to_pandas()
    cols = image_columns(df.columns)
    letters = ground_truth_letters(df[label_column(df.columns)].tolist())
    ex = [Example(row=r, prompt=build_prompt(r), target=target_text(x, ANALYSIS_PHRASES[x][0]), key=(0, i))
          for i, (r, x) in enumerate(zip(df.to_dict("records"), letters, strict=True))]
    kwargs = {} if max_pixels is None else {"min_pixels": max_pixels, "max_pixels": max_pixels}
    processor, budget = load_processor(str(student), **kwargs)
    return ex, DistillCollator(processor, cols), budget


def time_steps(model, collator, examples, batch_size: int, steps: int, device: str,
               full_logits: bool = False) -> dict:
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    data_s = model_s = 0.0
    tokens = 0
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for step in range(steps + 2):  # 2 warm-up steps
        batch_ex = [examples[(step * batch_size + i) % len(examples)] for i in range(batch_size)]
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in collator(batch_ex).items()
                 if not (full_logits and k in ("logits_to_keep", "shift_labels"))}
        sync()
        t1 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t2 = time.perf_counter()
        if step >= 2:
            data_s += t1 - t0
            model_s += t2 - t1
            tokens += int(batch["attention_mask"].sum())
    total = data_s + model_s
    return {
        "batch_size": batch_size, "steps": steps,
        "samples_per_s": round(steps * batch_size / total, 2), "tokens_per_s": round(tokens / total, 1),
        "data_ms_per_step": round(1000 * data_s / steps, 2), "model_ms_per_step": round(1000 * model_s / steps, 2),
        "tokens_per_sample": round(tokens / (steps * batch_size), 1),
    }


def cpu_bench(steps: int, batch_sizes: list[int], workdir: Path, full_logits: bool = False) -> list[dict]:
    import torch

    from connectodistill.core.modeling import add_lora, load_model
    from connectodistill.synthetic import make_tiny_student

    student = make_tiny_student(workdir / "student", kind="qwen3-vl")
    examples, collator, budget = examples_and_collator(student, 64)
    rows = []
    for bs in batch_sizes:
        torch.manual_seed(0)
        model = add_lora(load_model(str(student)), r=16, alpha=16, dropout=0.0)
        rows.append({"model": "tiny qwen3-vl (offline kit)", "device": "cpu", "pixel_budget": budget,
                     "logits": "every position" if full_logits else "label positions",
                     **time_steps(model, collator, examples, bs, steps, "cpu", full_logits)})
        print(json.dumps(rows[-1]))
    return rows


def cuda_bench(steps: int, workdir: Path) -> list[dict]:
    """Real Qwen3-VL-8B shape, random weights, bf16, LoRA r=16 on the language model."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from connectodistill.core.modeling import add_lora
    from connectodistill.synthetic import make_tiny_student

    student = make_tiny_student(workdir / "student", kind="qwen3-vl")
    tiny = json.loads((student / "config.json").read_text())
    rows = []
    for max_pixels in (256 * 256, 512 * 512, 1024 * 1024):
        examples, collator, budget = examples_and_collator(student, 32, max_pixels=max_pixels)
        for bs in (1, 2, 4):
            cfg = Qwen3VLConfig(text_config=QWEN3_VL_8B["text"], vision_config=QWEN3_VL_8B["vision"],
                                **{k: tiny[k] for k in ("image_token_id", "video_token_id",
                                                        "vision_start_token_id", "vision_end_token_id")})
            torch.manual_seed(0)
            with torch.device("cuda"):
                model = Qwen3VLForConditionalGeneration(cfg).to(torch.bfloat16)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model = add_lora(model, r=16, alpha=16, dropout=0.05, gradient_checkpointing=True)
            n_params = sum(p.numel() for p in model.parameters())
            torch.cuda.reset_peak_memory_stats()
            try:
                r = time_steps(model, collator, examples, bs, steps, "cuda")
            except torch.OutOfMemoryError:
                r = {"batch_size": bs, "error": "out of memory"}
            if "tokens_per_s" in r:
                # 6 * N * tokens (forward + backward), the usual estimate; LoRA skips most weight grads
                # so this overstates the work a little.
                r["mfu_h100_bf16"] = round(6 * n_params * r["tokens_per_s"] / H100_BF16_DENSE_FLOPS, 4)
            r["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            rows.append({"model": "Qwen3-VL-8B shape, random init", "device": torch.cuda.get_device_name(),
                         "params": n_params, "pixel_budget": budget, **r})
            print(json.dumps(rows[-1]))
            del model
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-sizes", default="2,8")
    ap.add_argument("--full-logits", action="store_true",
                    help="Logits at every position (the collator's output before it kept only the "
                         "positions the loss reads), for comparison.")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        rows = cpu_bench(args.steps, [int(b) for b in args.batch_sizes.split(",")], Path(tmp), args.full_logits)
        if torch.cuda.is_available():
            rows += cuda_bench(max(5, args.steps // 4), Path(tmp))
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "torch": torch.__version__, "threads": torch.get_num_threads()}, "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
