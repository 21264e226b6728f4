"""Generation throughput: batched (batch 8) vs one at a time, same samples, same process.

Uses the offline kit's tiny Qwen3-VL (untrained, so every response runs to max_new_tokens and
both modes do the same amount of work) and the project's own `generate_answers`.
Target: batched at least 3x the samples/s of one at a time.

    python bench/eval.py [--samples 32] [--max-new-tokens 32] [--out bench/results/eval.json]
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
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import pyarrow.parquet as pq
    import torch

    from connectodistill.core.conversation import build_prompt, load_images
    from connectodistill.core.modeling import load_model, load_processor
    from connectodistill.core.task import image_columns
    from connectodistill.evaluation.recipe import generate_answers
    from connectodistill.synthetic import make_benchmark, make_tiny_student

    with tempfile.TemporaryDirectory() as tmp:
        student = make_tiny_student(Path(tmp) / "student", kind="qwen3-vl")
        bench = make_benchmark(Path(tmp) / "bench.parquet", n=args.samples, seed=0)
        table = pq.read_table(bench)
        rows = table.to_pylist()
        cols = image_columns(table.column_names)
        prompts = [build_prompt(r) for r in rows]
        images = [load_images(r, cols) for r in rows]
        processor, _ = load_processor(str(student))
        model = load_model(str(student))
        generate_answers(model, processor, prompts[:2], images[:2], batch_size=2, max_new_tokens=4)  # warm-up

        result = {"samples": args.samples, "max_new_tokens": args.max_new_tokens,
                  "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
        outputs = {}
        for bs in (1, 8):
            t0 = time.perf_counter()
            outputs[bs] = generate_answers(model, processor, prompts, images, batch_size=bs,
                                           max_new_tokens=args.max_new_tokens)
            seconds = time.perf_counter() - t0
            result[f"batch_{bs}"] = {"seconds": round(seconds, 2), "samples_per_s": round(args.samples / seconds, 2)}
        result["speedup"] = round(result["batch_8"]["samples_per_s"] / result["batch_1"]["samples_per_s"], 2)
        result["identical_outputs"] = outputs[1] == outputs[8]
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
