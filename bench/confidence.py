"""What confidence costs: the letter-probability forward pass and `--votes 5`, next to plain eval.

The three calls `evaluate()` makes, timed one after another on the same samples in one
process, with the offline kit's tiny Qwen3-VL (untrained: it never closes an answer, so every
greedy and every sampled response runs to max_new_tokens, the worst case for the votes):

- plain eval's generation: `generate_answers`, greedy, batched;
- the extra forward pass: `letter_probabilities` over prompt + response (always on in eval);
- `--votes 5`: `generate_answers` sampling 5 responses per sample, stopped at `</answer>`.

Each is repeated (alternating) and the fastest repeat kept, since other jobs may share the
cores; the ratios to plain generation are the figures.

    python bench/confidence.py [--samples 32] [--tokens 32 128] [--repeats 3] [--out bench/results/confidence.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--tokens", type=int, nargs="+", default=[32, 128], help="max_new_tokens settings")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--votes", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import pyarrow.parquet as pq
    import torch

    from connectodistill.core.conversation import build_prompt, load_images
    from connectodistill.core.generation import generate_answers, letter_probabilities
    from connectodistill.core.modeling import load_model, load_processor
    from connectodistill.core.task import image_columns
    from connectodistill.synthetic import make_benchmark, make_tiny_student

    with tempfile.TemporaryDirectory() as tmp:
        student = make_tiny_student(Path(tmp) / "student", kind="qwen3-vl")
        table = pq.read_table(make_benchmark(Path(tmp) / "bench.parquet", n=args.samples, seed=0))
        processor, _ = load_processor(str(student))
        model = load_model(str(student))
    rows, cols = table.to_pylist(), image_columns(table.column_names)
    prompts, images = [build_prompt(r) for r in rows], [load_images(r, cols) for r in rows]
    bs = args.batch_size
    generate_answers(model, processor, prompts[:2], images[:2], batch_size=2, max_new_tokens=4)  # warm-up

    result = {"samples": args.samples, "batch_size": bs, "votes": args.votes, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "settings": []}
    for tokens in args.tokens:
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            responses = generate_answers(model, processor, prompts, images, batch_size=bs, max_new_tokens=tokens)
            t1 = time.perf_counter()
            letter_probabilities(model, processor, prompts, images, responses, batch_size=bs)
            t2 = time.perf_counter()
            torch.manual_seed(0)
            generate_answers(model, processor, prompts, images, batch_size=bs, max_new_tokens=tokens,
                             stop_at_answer=True, do_sample=True, temperature=1.0, num_return_sequences=args.votes)
            t3 = time.perf_counter()
            for key, sec in (("generation", t1 - t0), ("forward_pass", t2 - t1), ("votes", t3 - t2)):
                best[key] = min(best.get(key, float("inf")), sec)
        gen = best["generation"]
        result["settings"].append({
            "max_new_tokens": tokens, **{f"{k}_seconds": round(v, 2) for k, v in best.items()},
            "forward_pass_vs_generation": round(best["forward_pass"] / gen, 3),
            "votes_vs_generation": round(best["votes"] / gen, 2),
            "eval_vs_generation_only": round((gen + best["forward_pass"]) / gen, 2),
            "eval_with_votes_vs_eval": round((gen + best["forward_pass"] + best["votes"]) / (gen + best["forward_pass"]), 2),
        })
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
