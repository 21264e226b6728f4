"""One-pass answers against generated rationales, on the kit with K-fold cross-validation.

    .venv/bin/python bench/onepass.py [--samples 377] [--folds 5] [--epochs 3] [--seed 0] \
        --out bench/results/onepass.json

Builds the offline kit (``--samples`` segments, five teacher draws each, ~85% right), merges it
with ``--folds`` folds (every correct draw a train row), and trains three cross-validated
students with the demo's recipe (LoRA on language and vision, lr 3e-3, batch 16):

- (a) today's SFT: rationale rows only, answered by generation;
- (b) multi-task SFT (``--answer-rows all``), answered by generation;
- (c) the same students as (b), answered in one pass (``--one-pass``);
- (d) answer-only SFT (``--answer-rows only``), answered in one pass.

Each is evaluated on every fold's own test part (pooled: every sample once), with a triage for
95% accuracy whose threshold each fold chooses on its own val part. Printed per variant:
accuracy and balanced accuracy (group-bootstrap intervals), the paired difference against (a)
on the same samples, ECE before and after the temperature (fit on val), coverage and realised
accuracy of the 95% triage on test. Then the speed of one fold's student (b) on the same test
segments: one-pass against a bare forward pass over the same prepared inputs (its floor), and
against generation at the kit's rationale length and at 200 new tokens (the real analyses').
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

VARIANTS = {  # name: (training, one_pass)
    "a_sft_generate": ("sft", False),
    "b_multitask_generate": ("multitask", False),
    "c_multitask_one_pass": ("multitask", True),
    "d_answer_only_one_pass": ("answer_only", True),
}
TRAININGS = {"sft": {}, "multitask": {"answer_rows": 1.0}, "answer_only": {"answer_rows": 1.0, "rationale_rows": False}}


def build(work: Path, samples: int, folds: int, seed: int):
    from connectodistill import merge
    from connectodistill.synthetic import make_benchmark, make_teacher_csvs, make_tiny_student

    bench = make_benchmark(work / "benchmark.parquet", n=samples, seed=seed, image_size=64)
    csvs = make_teacher_csvs(bench, work / "teacher", k=5, accuracy=0.85, seed=seed)
    student = make_tiny_student(work / "student", kind="qwen3-vl", image_size=64, seed=seed)
    merged = work / "merged.parquet"
    merge(csv_files=csvs, output=merged, dataset_name=str(bench), filter_correct_only=True,
          responses_per_sample=None, folds=folds, force=True, quiet=True)
    return merged, student


def train_all(work: Path, merged: Path, student: Path, epochs: float, seed: int) -> dict[str, tuple[Path, float]]:
    from connectodistill import train
    from connectodistill.offline_demo import TRAIN_SETTINGS

    runs = {}
    for name, extra in TRAININGS.items():
        t0 = time.time()
        run = train(augmented_dataset=merged, model=str(student), output_dir=work / "runs" / name, run_name=name,
                    folds=True, epochs=epochs, seed=seed, max_new_tokens=64, progress=False,
                    **TRAIN_SETTINGS, **extra)
        runs[name] = (run, round(time.time() - t0, 1))
        print(f"trained {name} in {runs[name][1]} s", file=sys.stderr)
    return runs


def evaluate_all(work: Path, runs: dict) -> dict[str, Path]:
    from connectodistill import evaluate

    out = {}
    for name, (training, one_pass) in VARIANTS.items():
        out[name] = evaluate(adapter_path=runs[training][0], one_pass=one_pass, target_accuracy=0.95,
                             output_dir=work / "results", name=name, max_new_tokens=64, batch_size=32,
                             progress=False)
    return out


def figures(results: dict[str, Path]) -> dict:
    from connectodistill.core.statistics import paired_delta
    from connectodistill.evaluation.results import read_predictions

    preds = {k: read_predictions(p / "predictions.csv").sort_values(["proofread_root_id", "current_root_id"])
             .reset_index(drop=True) for k, p in results.items()}
    ref = preds["a_sft_generate"]
    rows = {}
    for name, path in results.items():
        s = json.loads((path / "summary.json").read_text())
        p = preds[name]
        assert (p[["proofread_root_id", "current_root_id"]].to_numpy() == ref[["proofread_root_id", "current_root_id"]]
                .to_numpy()).all()
        d = paired_delta(p["correct"].to_numpy(float), ref["correct"].to_numpy(float), p["split_group"].to_numpy())
        tri = s.get("triage") or {}
        rows[name] = {
            "n": s["n"], "accuracy": s["accuracy"], "accuracy_ci": s["accuracy_ci"],
            "balanced_accuracy": s["balanced_accuracy"], "balanced_accuracy_ci": s["balanced_accuracy_ci"],
            "delta_vs_a": d["delta"], "delta_vs_a_ci": d["ci"],
            "ece_uncalibrated": (s.get("uncalibrated") or {}).get("ece"), "ece_calibrated": s.get("ece"),
            "brier_uncalibrated": (s.get("uncalibrated") or {}).get("brier"), "brier_calibrated": s.get("brier"),
            "temperatures": [round((f or {}).get("temperature", float("nan")), 3)
                             for f in (s.get("calibration") or {}).get("per_fold", [])],
            "triage_coverage": tri.get("coverage"), "triage_accuracy": tri.get("accuracy"),
            "share_at_p_above_0.99": float((p["confidence_raw"] > 0.99).mean()),
            "unparsed_rate": s["unparsed_rate"],
        }
    return rows


def speed(runs: dict, merged: Path, n: int = 377, batch: int = 16, repeats: int = 5) -> dict:
    """Segments/s of one fold's multi-task student on ``n`` segments (fold 0's test part first,
    then others: a speed needs no held-out data, and fold 0's ~75 make too short a timing)."""
    import torch
    from peft import PeftModel

    from connectodistill.core.conversation import load_images
    from connectodistill.core.data import read_merged
    from connectodistill.core.generation import (
        ANSWER_TAG,
        _batch_inputs,
        generate_answers,
        one_pass_probabilities,
        render_prompts,
    )
    from connectodistill.core.modeling import load_model, load_processor
    from connectodistill.core.task import image_columns

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    run = runs["multitask"][0] / "fold-0"
    cfg = json.loads((run / "training_config.json").read_text())
    df = read_merged(cfg["dataset_name"])[0].to_pandas()  # the benchmark, images included
    test = {tuple(k) for k in read_merged(merged, columns=[])[1]["fold_splits"][0]["test"]}
    records = df.to_dict("records")
    rows = sorted(records, key=lambda r: (r["proofread_root_id"], r["current_root_id"]) not in test)[:n]
    cols = image_columns(df.columns)
    import pandas as pd

    prompts_df = pd.read_parquet(run / "prompts.parquet").set_index(
        ["proofread_root_id", "current_root_id"])
    prompts = [prompts_df.loc[(r["proofread_root_id"], r["current_root_id"]), "prompt"] for r in rows]
    layouts = [prompts_df.loc[(r["proofread_root_id"], r["current_root_id"]), "prompt_layout"] for r in rows]
    images = [load_images(r, cols) for r in rows]
    processor, _ = load_processor(str(run))
    model = PeftModel.from_pretrained(load_model(cfg["base_model"]), str(run)).eval()
    tok = processor.tokenizer

    def timed(fn) -> float:
        fn()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    opening = tok(ANSWER_TAG, add_special_tokens=False)["input_ids"]
    tok.padding_side = "left"
    prepared = []
    for s in range(0, len(rows), batch):
        texts = render_prompts(processor, prompts[s:s + batch], images[s:s + batch], layouts[s:s + batch])
        prepared.append(_batch_inputs(processor, texts, [im for ims in images[s:s + batch] for im in ims], opening))

    def bare():
        with torch.no_grad():
            for inputs in prepared:
                model(**inputs, logits_to_keep=1)

    def prepare_and_forward():
        with torch.no_grad():
            for s in range(0, len(rows), batch):
                texts = render_prompts(processor, prompts[s:s + batch], images[s:s + batch], layouts[s:s + batch])
                model(**_batch_inputs(processor, texts, [im for ims in images[s:s + batch] for im in ims], opening),
                      logits_to_keep=1)

    def one_pass(prefetch: bool = False):  # prefetch: the next batch prepared in a thread (a GPU's default)
        one_pass_probabilities(model, processor, prompts, images, layouts=layouts, batch_size=batch,
                               prefetch=prefetch)

    def generate(tokens: int | None):
        extra = {} if tokens is None else {"min_new_tokens": tokens}
        gen = model.generate

        def patched(**kw):
            return gen(**kw, **extra)

        model.generate = patched
        try:
            generate_answers(model, processor, prompts, images, layouts=layouts, batch_size=batch,
                             max_new_tokens=tokens or 64)
        finally:
            model.generate = gen

    t = {"bare_forward": timed(bare), "prepare_and_forward": timed(prepare_and_forward), "one_pass": timed(one_pass),
         "one_pass_prefetch": timed(lambda: one_pass(True)),
         "generate_kit_length": timed(lambda: generate(None)), "generate_200_tokens": timed(lambda: generate(200))}
    sps = {k: round(len(rows) / v, 2) for k, v in t.items()}
    return {"segments": len(rows), "batch": batch, "threads": torch.get_num_threads(), "seconds": t,
            "segments_per_second": sps,
            "one_pass_vs_bare_forward": round(t["bare_forward"] / t["one_pass"], 3),
            "one_pass_vs_prepare_and_forward": round(t["prepare_and_forward"] / t["one_pass"], 3),
            "one_pass_speedup_vs_generate_kit": round(t["generate_kit_length"] / t["one_pass"], 2),
            "one_pass_speedup_vs_generate_200": round(t["generate_200_tokens"] / t["one_pass"], 2)}


def print_speed(fast: dict) -> None:
    print(f"\nspeed ({fast['segments']} segments, batch {fast['batch']}, {fast['threads']} threads), segments/s: "
          + ", ".join(f"{k} {v}" for k, v in fast["segments_per_second"].items()))
    print(f"one-pass / bare forward: {fast['one_pass_vs_bare_forward']:.2f} (prepare+forward: "
          f"{fast['one_pass_vs_prepare_and_forward']:.2f}); one-pass is {fast['one_pass_speedup_vs_generate_kit']}x "
          f"generation at the kit's length, {fast['one_pass_speedup_vs_generate_200']}x at 200 new tokens")


def speed_only(args) -> int:
    """The speed section again on the runs an earlier full run left in ``--workdir``."""
    if args.workdir is None or args.out is None or not args.out.is_file():
        raise SystemExit("--speed-only needs --workdir of a full run and --out of its figures")
    runs = {"multitask": (next((args.workdir / "runs" / "multitask").glob("*_cv*")), None)}
    load0 = os.getloadavg()[0]
    fast = speed(runs, args.workdir / "merged.parquet")
    doc = json.loads(args.out.read_text())
    doc["speed"] = {**fast, "command": " ".join(sys.argv), "load_at_start": load0, "load_at_end": os.getloadavg()[0]}
    args.out.write_text(json.dumps(doc, indent=1))
    print_speed(fast)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=377)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--speed-only", action="store_true",
                    help="time the multi-task student of an earlier run in --workdir; add to --out's figures")
    args = ap.parse_args()
    if args.speed_only:
        return speed_only(args)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="onepass-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    load0 = os.getloadavg()[0]
    merged, student = build(work, args.samples, args.folds, args.seed)
    runs = train_all(work, merged, student, args.epochs, args.seed)
    results = evaluate_all(work, runs)
    rows = figures(results)
    fast = speed(runs, merged)
    doc = {"command": " ".join(sys.argv), "samples": args.samples, "folds": args.folds, "epochs": args.epochs,
           "seed": args.seed, "train_seconds": {k: v[1] for k, v in runs.items()}, "variants": rows, "speed": fast,
           "wall_seconds": round(time.time() - t0, 1), "load_at_start": load0, "load_at_end": os.getloadavg()[0]}
    print(f"\n{args.samples} samples, {args.folds}-fold CV, {args.epochs} epochs, seed {args.seed}; "
          f"{doc['wall_seconds']} s (load {load0:.1f} -> {doc['load_at_end']:.1f})\n")
    print("| variant | accuracy [95% CI] | balanced | vs (a), paired [95% CI] | ECE raw -> calibrated | "
          "triage at 95%: coverage (accuracy) on test |")
    print("| --- | --- | --- | --- | --- | --- |")
    def f(x, spec=".3f"):
        return "-" if x is None else format(x, spec)

    for k, r in rows.items():
        ci, dci = r["accuracy_ci"], r["delta_vs_a_ci"]
        cov = f(r["triage_coverage"], ".0%") + (f" ({f(r['triage_accuracy'], '.1%')})" if r["triage_coverage"] else "")
        print(f"| {k} | {r['accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | {r['balanced_accuracy']:.3f} | "
              f"{100 * r['delta_vs_a']:+.1f} pp [{100 * dci[0]:+.1f}, {100 * dci[1]:+.1f}] | "
              f"{f(r['ece_uncalibrated'])} -> {f(r['ece_calibrated'])} | {cov} |")
    print_speed(fast)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
