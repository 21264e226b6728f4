"""Every student family of the table (core/families.py) on the offline kit: seconds per training
step and test accuracy after the same short training.

The demo's recipe (offline_demo.TRAIN_SETTINGS: LoRA r=16 on language, vision blocks and merger,
lr 3e-3, batch 16, 64 px views) on one synthetic benchmark and its teacher CSVs, merged once;
then one tiny student per family (``make_tiny_student``, default sizes), trained for the same
epochs with the same seed, and evaluated greedily on the same test ids. Seconds per step are the
recipe's own training time over its optimizer steps (collator + model, CPU).

    python bench/families.py [--samples 1200] [--epochs 0.8] [--kinds qwen3-vl qwen3.5] [--out bench/results/families.json]
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
os.environ.setdefault("WANDB_MODE", "disabled")


def main() -> int:
    from connectodistill.core.families import kinds

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1200, help="synthetic benchmark size (the demo: 3000)")
    ap.add_argument("--epochs", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", nargs="*", default=list(kinds()))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from connectodistill.evaluation import evaluate
    from connectodistill.merging import merge
    from connectodistill.offline_demo import TRAIN_SETTINGS
    from connectodistill.synthetic import make_benchmark, make_teacher_csvs, make_tiny_student
    from connectodistill.training import train

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        bench = make_benchmark(d / "benchmark.parquet", n=args.samples, seed=args.seed, image_size=64)
        csvs = make_teacher_csvs(bench, d / "teacher", k=5, accuracy=0.85, seed=args.seed)
        merged = d / "merged.parquet"
        merge(csv_files=csvs, output=merged, dataset_name=str(bench), filter_correct_only=True,
              responses_per_sample=None, force=True)
        for kind in args.kinds:
            t0 = time.perf_counter()
            student = make_tiny_student(d / "students" / kind, kind=kind, image_size=64, seed=args.seed)
            build_s = time.perf_counter() - t0
            run = train(augmented_dataset=merged, model=str(student), output_dir=d / "runs" / kind, run_name=kind,
                        epochs=args.epochs, seed=args.seed, progress=False, **TRAIN_SETTINGS)
            cfg = json.loads((run / "training_config.json").read_text())
            t1 = time.perf_counter()
            result = evaluate(adapter_path=run, output_dir=d / "results", name=kind, max_new_tokens=64,
                              batch_size=32, progress=False)
            eval_s = time.perf_counter() - t1
            summary = json.loads((result / "summary.json").read_text())
            params = sum(p.numel() for p in
                         __import__("transformers").AutoModelForImageTextToText.from_pretrained(student).parameters())
            row = {"kind": kind, "parameters": params, "build_seconds": round(build_s, 2),
                   "steps": cfg["global_step"], "train_seconds": cfg["train_seconds"],
                   "seconds_per_step": round(cfg["train_seconds"] / cfg["global_step"], 3),
                   "test_samples": summary["n"], "accuracy": summary["accuracy"],
                   "balanced_accuracy": summary["balanced_accuracy"],
                   "unparsed": summary.get("unparsed"), "eval_seconds": round(eval_s, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    doc = {"command": "python bench/families.py " + " ".join(
               f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
               for k, v in vars(args).items() if k != "out" and v is not None),
           "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "python": platform.python_version(), "torch": torch.__version__,
                       "transformers": __import__("transformers").__version__},
           "settings": {"samples": args.samples, "epochs": args.epochs, "seed": args.seed, **TRAIN_SETTINGS},
           "families": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
