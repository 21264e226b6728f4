"""The data side of a training step: collator seconds per batch at the real view size, with 0 data
loader workers (the loop makes each batch itself) and with workers (made beside the loop).

    python bench/loader.py --out bench/results/loader.json      # ~2 min on 2 busy cores

Samples: three 1024x1024 PNG views each (the offline kit's renders, ``gpu_inputs.make_samples``)
and a teacher-like analysis of ~800 characters. The project's ``DistillCollator`` with the kit's
Qwen3-VL processor at the default pixel budget (``modeling.DEFAULT_MAX_PIXELS``: 1024 visual
tokens per view), which runs the real image processor's resize, normalisation and patching;
the tiny model's own ops play no part here. Two measurements:

- ``collator``: seconds per batch of ``--batch-size`` samples, the collator alone on one torch
  thread (accelerate's setting per process; a Modal container's default fraction of a core
  gives no more): what a step waits for with ``dataloader_num_workers=0``;
- ``loop``: a ``torch.utils.data.DataLoader`` as the Trainer builds it (the examples, the
  collator, ``persistent_workers``) with 0 and with ``--workers`` workers, each batch followed
  by a stand-in GPU step (``--step-s`` of sleep, default 0.7 s: the estimated 8B step on an
  H100, during which the CPU is free): seconds per step spent waiting for the next batch.

The machine's load average is printed and stored beside the figures (the 2-core machine is
shared: the times move with it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


def build(work: Path, n: int, image_size: int, max_pixels: int | None = None):
    """(examples, collator) at ``image_size`` px views and the default (or given) pixel budget."""
    from gpu_inputs import make_samples

    from connectodistill.core.modeling import load_processor
    from connectodistill.synthetic.student import make_processor
    from connectodistill.training.collator import DistillCollator
    from connectodistill.training.examples import Example

    processor_dir = make_processor(work / "processor", "qwen3-vl")
    processor, budget = load_processor(str(processor_dir), max_pixels=max_pixels)
    _, image_cols, examples = make_samples(work, n, image_size, 800, Example)
    return examples, DistillCollator(processor, image_cols), budget


def collator_seconds(collator, examples, batch_size: int, batches: int) -> list[float]:
    """Seconds of each of ``batches`` batches made by the collator in this process (after one
    batch of warm-up), cycling through ``examples``."""
    times = []
    for b in range(batches + 1):
        chunk = [examples[(b * batch_size + i) % len(examples)] for i in range(batch_size)]
        t = time.perf_counter()
        collator(chunk)
        if b:
            times.append(time.perf_counter() - t)
    return times


def loop_wait(collator, examples, batch_size: int, workers: int, steps: int, step_s: float) -> list[float]:
    """Seconds the loop waits for each batch, with a ``step_s`` stand-in GPU step after each."""
    from torch.utils.data import DataLoader

    loader = DataLoader(examples, batch_size=batch_size, shuffle=False, collate_fn=collator,
                        num_workers=workers, persistent_workers=workers > 0)
    waits, it = [], iter(loader)
    next(it)  # warm-up: the workers start, the first batch comes
    for _ in range(steps):
        t = time.perf_counter()
        next(it)
        waits.append(time.perf_counter() - t)
        time.sleep(step_s)
    return waits


def summary(times: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 3), "mean_s": round(statistics.fmean(times), 3),
            "max_s": round(max(times), 3), "n": len(times)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--batches", type=int, default=8, help="timed collator batches")
    ap.add_argument("--steps", type=int, default=8, help="timed loop steps per worker count")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--step-s", type=float, default=0.7, help="stand-in GPU step (seconds of sleep)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    n = args.batch_size * (max(args.batches, args.steps) + 2)
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as work:
        examples, collator, budget = build(Path(work), n, args.image_size)
        one = collator_seconds(collator, examples, args.batch_size, args.batches)
        loops = {w: loop_wait(collator, examples, args.batch_size, w, args.steps, args.step_s)
                 for w in (0, args.workers)}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    doc = {
        "command": " ".join(["python", *sys.argv]),
        "cpus": os.cpu_count(), "load_average_1min": load,
        "views": f"3 x {args.image_size}x{args.image_size} PNG", "pixel_budget": budget,
        "batch_size": args.batch_size, "step_s": args.step_s,
        "collator_one_thread": summary(one),
        "loop_wait": {str(w): summary(t) for w, t in loops.items()},
    }
    print(f"collator, one thread: {doc['collator_one_thread']['median_s']:.3f} s per batch of {args.batch_size} "
          f"({doc['views']} each)")
    for w, s in doc["loop_wait"].items():
        print(f"loop with {w} worker(s) and a {args.step_s:g} s step: waits {s['median_s']:.3f} s per step "
              f"(median; max {s['max_s']:.3f})")
    print(f"{doc['cpus']} cores, load average {load:.1f}" if load is not None else "")
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
