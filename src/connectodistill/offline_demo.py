"""The whole pipeline offline, on CPU, in a few minutes (the `demo` recipe).

1. a synthetic benchmark whose images show the class, teacher CSVs (K=5, ~85% right);
2. merge with the default split; the train rows are every correct teacher draw (``filter_correct_only``,
   all K responses per sample rather than one);
3. train a tiny Qwen3-VL student with LoRA on the train rows, each train sample also as an
   answer row (multi-task SFT: the student learns to answer in one pass);
4. evaluate on the held-out test ids: the untrained base, the student in one pass (with a
   triage for 95% accuracy whose threshold is chosen on val), the same student writing its
   rationale first (``votes=K`` adds K sampled votes), and the student with blank images (it
   must fall to about the majority-class rate without images);
5. report: one table with the teacher on the same ids, with calibration and triage rows;
   ``report.json`` with the headline numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .core.config import DemoConfig, resolve
from .core.errors import UserError

# Settings chosen so a tiny student learns the synthetic shapes in under four minutes on 2 CPU
# cores (measurements in bench/README.md, "demo"): the vision tower of a random tiny model carries
# little class signal, so LoRA also adapts the vision blocks and the vision->language merger; a
# high learning rate; 0.8 epochs over every correct teacher draw (the K analyses of a segment
# differ, so repeated images come with fresh text: better than epochs over one draw each), in
# batches of 16 (half the optimizer steps of batches of 8 at about the same CPU time per sample).
TRAIN_SETTINGS = dict(batch_size=16, gradient_accumulation=1, learning_rate=3e-3, lora_r=16,
                      lora_alpha=32, lora_dropout=0.0, warmup_steps=20, tune_vision=True,
                      tune_merger=True, select_by="last", logging_steps=25)
# Every train sample also as an answer row, answered in one pass: on the kit's 5-fold CV this
# beat rationale-first answers by 12.5 points with better-ranked confidence (bench/README.md,
# "onepass"), so the demo's student answers that way; its rationale-first answers are a row too.
ANSWER_ROWS = 1.0


CONFIDENCE_KEYS = ("confidence", "ece", "brier", "aurc", "coverage_at_0.95", "triage_threshold",
                   "triage_coverage", "triage_accuracy", "reading")


def _plain(v):
    """A report.csv cell as JSON: NaN (an empty cell) -> None."""
    return None if isinstance(v, float) and v != v else v


def check_stages(cfg: DemoConfig, out: Path) -> None:
    """Every stage's config built from ``cfg`` before anything is written: a bad value (say
    --epochs -1) is one line now, not an error after two stages and a folder a rerun refuses."""
    from .core.config import EvalConfig, MergeConfig, TrainConfig, build_config

    build_config(MergeConfig, {}, dict(output=out / "merged.parquet", filter_correct_only=True,
                                       responses_per_sample=None, force=True))
    build_config(TrainConfig, {}, dict(augmented_dataset=out / "merged.parquet", model=str(out / "student"),
                                       output_dir=out / "runs", run_name="demo", epochs=cfg.epochs, seed=cfg.seed,
                                       answer_rows=ANSWER_ROWS, **TRAIN_SETTINGS))
    build_config(EvalConfig, {}, dict(output_dir=out / "results", max_new_tokens=cfg.max_new_tokens, batch_size=32,
                                      votes=cfg.votes, target_accuracy=0.95))


def demo(config: DemoConfig | None = None, **overrides) -> dict:
    """Run every stage under ``output_dir``; return the report.json contents."""
    from rich.console import Console

    from .evaluation.recipe import evaluate
    from .evaluation.reporting import report
    from .merging.recipe import merge
    from .synthetic import make_benchmark, make_teacher_csvs, make_tiny_student
    from .training.recipe import train

    cfg = resolve(DemoConfig, config, overrides)
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()) and not cfg.force:
        raise UserError(f"{out} is not empty: pass --force or choose another --output-dir")
    check_stages(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    t0 = time.time()
    stage_seconds = {}

    def stage(name: str):
        console.rule(f"[bold]{name}")
        stage_seconds[name] = time.time()

    def done(name: str):
        stage_seconds[name] = round(time.time() - stage_seconds[name], 1)

    # 1. Offline kit.
    stage("1/5 synthetic data and tiny student")
    bench = make_benchmark(out / "data" / "benchmark.parquet", n=cfg.samples, seed=cfg.seed,
                           image_size=cfg.image_size)
    csvs = make_teacher_csvs(bench, out / "data" / "teacher", k=5, accuracy=0.85, seed=cfg.seed)
    student = make_tiny_student(out / "student", kind="qwen3-vl", image_size=cfg.image_size, seed=cfg.seed)
    done("1/5 synthetic data and tiny student")

    # 2. Merge: default split; every correct teacher answer of a train sample is a training row.
    stage("2/5 merge")
    merged = out / "merged.parquet"
    merge(csv_files=csvs, output=merged, dataset_name=str(bench), filter_correct_only=True,
          responses_per_sample=None, force=True)
    done("2/5 merge")

    # 3. Train.
    stage("3/5 train")
    run_dir = train(augmented_dataset=merged, model=str(student), output_dir=out / "runs", run_name="demo",
                    epochs=cfg.epochs, seed=cfg.seed, progress=cfg.progress, answer_rows=ANSWER_ROWS,
                    max_new_tokens=cfg.max_new_tokens, **TRAIN_SETTINGS)
    done("3/5 train")

    # 4. Evaluate on the held-out test ids, all with the same generation budget.
    stage("4/5 eval")
    common = dict(output_dir=out / "results", max_new_tokens=cfg.max_new_tokens, batch_size=32,
                  progress=cfg.progress)
    base = evaluate(base_model=str(student), merged=merged, split="test", name="base", **common)
    # The student in one pass, with a triage for 95% accuracy chosen on val; the same student
    # writing its rationale first (and, if asked, sampled votes: each vote is a full sampled
    # generation, so 5 votes make that eval ~10x longer).
    student_res = evaluate(adapter_path=run_dir, name="student", one_pass=True, target_accuracy=0.95, **common)
    rationale = evaluate(adapter_path=run_dir, name="student_rationale-first", votes=cfg.votes,
                         target_accuracy=0.95, **common)
    blank = evaluate(adapter_path=run_dir, blank_images=True, one_pass=True, name="student_blank-images",
                     **common)
    done("4/5 eval")

    # 5. Report: the teacher on exactly the same ids.
    stage("5/5 report")
    table_path = report(results=[base, student_res, rationale, blank], merged=merged, output=out / "report")
    done("5/5 report")

    import pandas as pd

    table = pd.read_csv(table_path.with_suffix(".csv"))
    by_model = {r["model"]: r for r in table.to_dict("records")}
    summaries = {p.name: json.loads((p / "summary.json").read_text()) for p in (base, student_res, rationale, blank)}
    result = {
        "teacher_accuracy": by_model["teacher (single response)"]["accuracy"],
        "teacher_majority_vote_accuracy": by_model["teacher (majority vote)"]["accuracy"],
        "base_accuracy": summaries["base"]["accuracy"],
        "student_accuracy": summaries["student"]["accuracy"],
        "student_accuracy_ci": summaries["student"]["accuracy_ci"],
        "student_balanced_accuracy": summaries["student"]["balanced_accuracy"],
        "student_rationale_first_accuracy": summaries["student_rationale-first"]["accuracy"],
        "student_blank_images_accuracy": summaries["student_blank-images"]["accuracy"],
        "majority_class_rate": summaries["student"]["majority_class_rate"],
        "student_majority_of_votes_accuracy": summaries["student_rationale-first"].get("vote_accuracy"),
        # calibration and triage per row (teacher by vote share, student by letter probability)
        "confidence": {m: {k: _plain(by_model[m].get(k)) for k in CONFIDENCE_KEYS}
                       for m in ("teacher (majority vote)", "student", "student_rationale-first",
                                 f"student_rationale-first (majority of {cfg.votes})")
                       if m in by_model},
        "test_samples": summaries["student"]["n"],
        "samples": cfg.samples,
        "seed": cfg.seed,
        "run_dir": str(run_dir),
        "stage_seconds": {k: v for k, v in stage_seconds.items()},
        "total_seconds": round(time.time() - t0, 1),
    }
    result["targets"] = {
        "student_at_least_0.8": result["student_accuracy"] >= 0.8,
        "blank_images_at_most_majority_plus_0.1":
            result["student_blank_images_accuracy"] <= result["majority_class_rate"] + 0.1,
        "under_5_minutes": result["total_seconds"] < 300,
    }
    from .core.data import atomic_write_json

    atomic_write_json(out / "report.json", result, indent=1)
    console.print(
        f"[bold]demo done in {result['total_seconds']:.0f} s[/]: student {result['student_accuracy']:.3f} in one pass "
        f"({result['student_rationale_first_accuracy']:.3f} rationale first), "
        f"base {result['base_accuracy']:.3f}, blank images {result['student_blank_images_accuracy']:.3f}, "
        f"majority class {result['majority_class_rate']:.3f}, teacher {result['teacher_accuracy']:.3f} "
        f"on {result['test_samples']} held-out samples -> {out / 'report.json'}"
    )
    if "student" in result["confidence"]:
        console.print(f"student triage: {result['confidence']['student']['reading']}")
    return result
