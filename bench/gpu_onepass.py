"""bench/gpu.py's one-pass section: prefill-only answers against generated rationales, at the
8B shape (issue 28).

One-pass answers (``generation.one_pass_probabilities``) cost one forward pass over the
question, its three views and an opened answer block; a generated answer adds a decode step
per new token. Rows: segments/s of one-pass by pixel budget (the views' tokens are most of
the prefill) and batch, and of generation at 200 new tokens (the real analyses' length) at the
default budget, both with the LoRA merged as eval and predict load it on CUDA.
"""

from __future__ import annotations

import time

from gpu_machine import is_oom, release
from gpu_sections import Ctx, build_student, collator_for, fmt, print_row

GEN_NEW_TOKENS = 200


def section_one_pass(ctx: Ctx, sec: dict, report) -> None:
    from connectodistill.core.conversation import build_prompt, load_images
    from connectodistill.core.generation import one_pass_probabilities

    ctx.args._train_model = None
    release()
    model = ctx.modeling.merge_lora(build_student(ctx, gradient_checkpointing=False))
    n_max = max(ctx.args.onepass_batch_sizes)
    prompts = [build_prompt(r) for r in ctx.rows[:n_max]]
    images = [load_images(r, ctx.image_cols) for r in ctx.rows[:n_max]]
    for pixels in ctx.args.onepass_pixels:
        _, processor, budget = collator_for(ctx, pixels)
        one_pass_probabilities(model, processor, prompts[:1], images[:1], batch_size=1)  # warm-up
        for bs in ctx.args.onepass_batch_sizes:
            if ctx.budget.left() < 15:
                sec.setdefault("notes", []).append(f"{pixels} px, batch {bs}: skipped, out of time")
                continue
            ps = [prompts[i % len(prompts)] for i in range(bs)]
            ims = [images[i % len(images)] for i in range(bs)]
            ctx.mem.reset()
            t = time.perf_counter()
            try:
                one_pass_probabilities(model, processor, ps, ims, batch_size=bs)
                ctx.mem.sync()
                wall = time.perf_counter() - t
                row = {"what": "one-pass", "pixel_budget": budget, "batch_size": bs, "wall_s": round(wall, 3),
                       "samples_per_s": round(bs / wall, 2), **ctx.mem.peak()}
            except RuntimeError as e:
                if not is_oom(e):
                    raise
                row = {"what": "one-pass", "pixel_budget": budget, "batch_size": bs, "error": "out of memory"}
                release()
            sec["rows"].append(row)
            print_row({**row, "new_tokens_per_s": None}, kind="gen")
            report.save()
    # Generation at the default budget and the largest batch: the rationale's cost per segment.
    _, processor, budget = collator_for(ctx, ctx.args.max_pixels)
    gen_cfg = model.generation_config
    gen_cfg.eos_token_id = None  # random weights: every sample generates all its new tokens
    gen_cfg.pad_token_id = processor.tokenizer.pad_token_id
    new_tokens = ctx.args.onepass_gen_tokens
    bs = n_max
    if ctx.budget.left() < 30:
        sec.setdefault("notes", []).append("generation row: skipped, out of time")
    else:
        t = time.perf_counter()
        try:
            ctx.generate_answers(model, processor, prompts[:bs], images[:bs], batch_size=bs, max_new_tokens=new_tokens)
            ctx.mem.sync()
            wall = time.perf_counter() - t
            row = {"what": f"generate {new_tokens} new tokens", "pixel_budget": budget, "batch_size": bs,
                   "wall_s": round(wall, 3), "samples_per_s": round(bs / wall, 2), **ctx.mem.peak()}
        except RuntimeError as e:
            if not is_oom(e):
                raise
            row = {"what": f"generate {new_tokens} new tokens", "batch_size": bs, "error": "out of memory"}
            release()
        sec["rows"].append(row)
        same = [r for r in sec["rows"] if r.get("what") == "one-pass" and r.get("batch_size") == bs
                and r.get("pixel_budget") == budget and "samples_per_s" in r]
        if same and "samples_per_s" in row:
            sec["one_pass_speedup_at_default_budget"] = round(same[0]["samples_per_s"] / row["samples_per_s"], 1)
            print(f"  one-pass is {sec['one_pass_speedup_at_default_budget']}x generation of {new_tokens} tokens "
                  f"(batch {bs}, peak {fmt(row.get('peak_memory_gib'))} GiB)", flush=True)
        report.save()
    del model
    release()
