"""bench/gpu.py's measurement sections: training, small budget, memory, generation, 4-bit, and
data preparation on one thread.

Each section gets the run's context (``Ctx``), appends rows to its part of the report and
saves the report after every row, so a section cut short by the budget or an OOM still
leaves what it measured. The rows are printed as they come; ``print_table`` prints the
summary last.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import tempfile
import time
from pathlib import Path

from gpu_flops import step_flops
from gpu_machine import (
    CONTEXT_HEADROOM_GIB,
    MODAL_GPUS,
    Budget,
    Memory,
    Report,
    gib,
    guarded,
    is_oom,
    release,
    smallest_modal_gpu,
)
from gpu_shapes import count_params


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
    collator = ctx.DistillCollator(processor, ctx.image_cols, max_length=ctx.lora["max_length"])
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
        print_row(sec["rows"][-1])
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
    print_row(sec["rows"][-1])
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
            if not is_oom(e):
                raise
            row = {"batch_size": bs, "error": "out of memory"}
            release()
        sec["rows"].append(row)
        print_row(row, kind="gen")
        report.save()
    sec.pop("_last_s_per_token_batch", None)
    # As eval and predict run it on CUDA: the LoRA merged into the weights at load, at the
    # largest batch above, then at the batch modeling.generation_batch chooses from the memory
    # left (for 1024 new tokens). A quarter of the new tokens: the rate per token is the figure.
    model = ctx.modeling.merge_lora(model)
    new_tokens = max(8, ctx.args.gen_new_tokens // 4)
    sizes = [("merged", max(ctx.args.gen_batch_sizes))]
    if ctx.device.startswith("cuda"):
        release()
        chosen, info = ctx.modeling.choose_batch_size(model, views=len(ctx.image_cols),
                                                      max_pixels=budget["max_pixels"], new_tokens=1024)
        sec["chosen_batch"] = {"batch_size": chosen, "for_new_tokens": 1024, **info}
        sizes.append(("merged, chosen batch", chosen))
    for label, bs in sizes:
        if ctx.budget.left() < 30:
            sec.setdefault("notes", []).append(f"{label} {bs}: skipped, out of time")
            continue
        images_bs = [images[i % len(images)] for i in range(bs)]
        prompts_bs = [prompts[i % len(prompts)] for i in range(bs)]
        ctx.mem.reset()
        t = time.perf_counter()
        try:
            ctx.generate_answers(model, processor, prompts_bs, images_bs, batch_size=bs, max_new_tokens=new_tokens)
            ctx.mem.sync()
            wall = time.perf_counter() - t
            row = {"batch_size": bs, "lora_merged": True, "what": label, "new_tokens_per_sample": new_tokens,
                   "wall_s": round(wall, 3), "samples_per_s": round(bs / wall, 3),
                   "new_tokens_per_s": round(bs * new_tokens / wall, 1), **ctx.mem.peak()}
        except RuntimeError as e:
            if not is_oom(e):
                raise
            row = {"batch_size": bs, "lora_merged": True, "what": label, "error": "out of memory"}
            release()
        sec.setdefault("merged_rows", []).append(row)
        print(f"  {label}: " + (row.get("error") or f"batch {bs}, {row['samples_per_s']} samples/s, "
                                 f"{row['new_tokens_per_s']} new tokens/s, peak {fmt(row.get('peak_memory_gib'))} GiB"),
              flush=True)
        report.save()
    del model
    release()


def section_data_prep(ctx: Ctx, sec: dict, report: Report) -> None:
    """The collator alone on ONE torch thread (accelerate's per-process setting; a Modal container
    reserving no CPU has a fraction of a core): what every step waits for with no data loader
    workers, at the run's views and budget. ``workers_to_hide`` (the train row of the same batch):
    workers needed so that batches come as fast as the GPU takes them."""
    import torch
    from loader import collator_seconds

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        collator, _, budget = collator_for(ctx, ctx.args.max_pixels)
        steps = {r["batch_size"]: r.get("model_step_s") for r in report.doc["sections"]["train"]["rows"]}
        for bs in ctx.args.batch_sizes:
            times = sorted(collator_seconds(collator, ctx.examples, bs, ctx.args.data_batches))
            median = times[len(times) // 2]
            row = {"batch_size": bs, "threads": 1, "pixel_budget": budget, "batches": len(times),
                   "collator_s": round(median, 4), "per_sample_s": round(median / bs, 4),
                   "gpu_step_s": steps.get(bs)}
            row["workers_to_hide"] = math.ceil(median / steps[bs]) if steps.get(bs) else None
            sec["rows"].append(row)
            print(f"  data prep, 1 thread, batch {bs}: {row['collator_s']} s per batch "
                  f"({row['per_sample_s']} s per sample); GPU step {fmt(row['gpu_step_s'], 3)} s", flush=True)
            report.save()
    finally:
        torch.set_num_threads(threads)


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
        sec["checkpoint_gib"] = gib(sum(p.stat().st_size for p in scratch.glob("*.safetensors")))
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
            print_row(sec["rows"][-1])
            report.save()
        del model
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        release()


# ----------------------------------------------------------------------------- printed output
def fmt(x, nd=2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def print_row(r: dict, kind: str = "train") -> None:
    if r.get("error"):
        print(f"  batch {r.get('batch_size')}: {r['error']}", flush=True)
    elif kind == "gen":
        print(f"  gen batch {r['batch_size']}: {r['samples_per_s']} samples/s, "
              f"{r['new_tokens_per_s']} new tokens/s, peak {fmt(r.get('peak_memory_gib'))} GiB", flush=True)
    else:
        print(f"  {r['pixel_budget']['max_pixels']} px, batch {r['batch_size']}"
              f"{' +vision' if r.get('tune_vision') else ''}: step {r['step_s']} s, "
              f"{r['samples_per_s']} samples/s, {r['tokens_per_s']} tokens/s, MFU {fmt(r.get('mfu'), 3)}, "
              f"peak {fmt(r.get('peak_memory_gib'))} GiB", flush=True)


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
                lines.append(f"{name:<20}{fmt(px):>9}{fmt(r.get('batch_size')):>6}  {r['error']}")
                continue
            lines.append(f"{name:<20}{fmt(px):>9}{r['batch_size']:>6}{fmt(r['step_s'], 3):>9}"
                         f"{fmt(r['samples_per_s']):>9}{fmt(r['tokens_per_s'], 0):>10}"
                         f"{fmt(r.get('mfu'), 3):>7}{fmt(r.get('peak_memory_gib')):>10}")
    for r in secs.get("generation", {}).get("rows", []):
        if r.get("error"):
            lines.append(f"{'generation':<20}{'':>9}{r['batch_size']:>6}  {r['error']}")
            continue
        lines.append(f"{'generation':<20}{r['pixel_budget']['max_pixels']:>9}{r['batch_size']:>6}"
                     f"{fmt(r['wall_s'], 2):>9}{fmt(r['samples_per_s']):>9}"
                     f"{fmt(r['new_tokens_per_s'], 0):>10}{'':>7}{fmt(r.get('peak_memory_gib')):>10}")
    for r in secs.get("generation", {}).get("merged_rows", []):
        if r.get("error"):
            lines.append(f"{'gen, LoRA merged':<20}{'':>9}{r['batch_size']:>6}  {r['error']}")
            continue
        lines.append(f"{'gen, LoRA merged':<20}{'':>9}{r['batch_size']:>6}{fmt(r['wall_s'], 2):>9}"
                     f"{fmt(r['samples_per_s']):>9}{fmt(r['new_tokens_per_s'], 0):>10}{'':>7}"
                     f"{fmt(r.get('peak_memory_gib')):>10}")
    for r in secs.get("data_prep", {}).get("rows", []):
        lines.append(f"{'data prep, 1 thread':<20}{r['pixel_budget']['max_pixels']:>9}{r['batch_size']:>6}"
                     f"{fmt(r['collator_s'], 3):>9}  collator s/batch; workers to keep up: "
                     f"{fmt(r.get('workers_to_hide'))}")
    mem = secs.get("memory", {}).get("rows", [])
    if mem:
        lines.append("peak memory GiB (allocated / reserved) by pixel budget x batch:")
        for r in mem:
            val = r["error"] or f"{fmt(r['peak_memory_gib'])} / {fmt(r['peak_reserved_gib'])}"
            lines.append(f"  {r['pixel_budget']['max_pixels']:>9} px  batch {r['batch_size']:>2}: {val}"
                         f"  -> {r.get('smallest_modal_gpu') or '-'}")
    for name, sec in secs.items():
        if not str(sec.get("status", "")).startswith("done"):
            lines.append(f"{name}: {sec.get('status')}")
    m = doc["model"].get("meta_check_9b", {})
    if m:
        lines.append(f"Qwen3.5-9B on meta: {m.get('params_total', 0) / 1e9:.3f}B params, LoRA trainable "
                     f"{m.get('lora_trainable_language_model', 0) / 1e6:.2f}M")
    m = doc["model"].get("meta_check_8b", {})
    if m:
        lines.append(f"8B on meta: {m.get('params_total', 0) / 1e9:.3f}B params, LoRA trainable "
                     f"{m.get('lora_trainable_language_model', 0) / 1e6:.2f}M")
    print("\n".join(lines), flush=True)
