"""The `connectodistill` command line: parse flags, build a config, call one library function.

Each verb maps to one function a notebook can call (``connectodistill.merge`` etc.). Heavy
libraries are imported inside the commands, so ``--help`` answers at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from . import __version__
from .core.config import (
    DemoConfig,
    EvalConfig,
    MergeConfig,
    RemoteConfig,
    ReportConfig,
    TrainConfig,
    build_config,
    load_config_file,
)
from .core.errors import UserError

app = typer.Typer(
    name="connectodistill",
    help="Distil a teacher's ConnectomeBench answers into a small Qwen-VL student.\n\n"
    "Pipeline: merge -> train -> eval -> report. `connectodistill demo` runs it all offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: it keeps `[default: X]` (rich markup ate it), wraps at the terminal's width and
    # never cuts an option's name; docs/cli.md is then plain Markdown, without HTML entities.
    rich_markup_mode=None,
)

CONFIG_HELP = "YAML/JSON file of options (names as the flags, with _ or -); flags given here win."
REMOTE_HELP = "Run on a Modal GPU instead of this machine (needs `modal setup`)."
GPU_HELP = "Modal GPU: H100, A100-80GB, A100-40GB, L40S, A10G, ... with :N for several (H100:2)."
EVAL_GPU_HELP = GPU_HELP + "  [default: one GPU of the training type (remote: gpu)]"
DETACH_HELP = ("With --remote: start and return. The job runs detached on Modal either way; "
               "`connectodistill fetch` shows it, follows it, downloads it.")
REMOTE_FLAGS = ("gpu", "timeout", "detach", "eval_gpu", "eval_timeout", "max_parallel", "yes")  # -> RemoteConfig


def _version(value: bool) -> None:
    if value:
        typer.echo(f"connectodistill {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    pass


@contextmanager
def _user_errors():
    """Bad input -> one line on stderr and exit code 2; Ctrl-C -> exit 130; no tracebacks."""
    try:
        yield
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def _configs(cls: type, config_file: Path | None, flags: dict[str, Any]):
    """(command config, remote config) from defaults < file < flags."""
    values = load_config_file(config_file)
    remote_values = {str(k).replace("-", "_"): v for k, v in (values.pop("remote", None) or {}).items()}
    remote_flags = {k: flags.pop(k) for k in REMOTE_FLAGS if k in flags}
    cfg = build_config(cls, values, flags)
    remote = build_config(RemoteConfig, remote_values, remote_flags)
    return cfg, remote


def _run(fn: Callable[[], Any]) -> Any:
    with _user_errors():
        return fn()


# ---------------------------------------------------------------- merge
@app.command()
def merge(
    csv: list[Path] = typer.Argument(None, help="Teacher response CSV files.", show_default=False),
    csv_files: list[Path] = typer.Option(
        None, "--csv-files", help="Same as the positional CSVs (the original script's spelling)."
    ),
    output: Path = typer.Option(None, "--output", "-o", help="Merged parquet to write."),
    dataset_name: str = typer.Option(
        None, help="Hub id, or a local parquet file / parquet folder / save_to_disk folder."
    ),
    config_name: str = typer.Option(None, help="Dataset configuration on the Hub."),
    dataset_split: str = typer.Option(None, help="The dataset's own split (the real one: train)."),
    filter_correct_only: bool = typer.Option(
        None, "--filter-correct-only", help="Keep only rows whose teacher answer is right."
    ),
    filter_matched_only: bool = typer.Option(
        None, "--filter-matched-only", help="Drop samples without any teacher response."
    ),
    responses_per_sample: str = typer.Option(
        None, help="Responses kept per sample (correct ones first), or 'all'.  [default: 1]"
    ),
    test_size: float = typer.Option(None, help="Share of neurons held out for test.  [default: 0.1]"),
    val_size: float = typer.Option(None, help="Share of neurons held out for validation.  [default: 0.1]"),
    folds: int = typer.Option(
        None, help="K-fold cross-validation: every sample tested by one of K folds (K >= 2); see `train --folds`."
    ),
    seed: int = typer.Option(None, help="Seed of the train/val/test assignment.  [default: 42]"),
    force: bool = typer.Option(None, "--force", help="Overwrite existing outputs."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Match teacher CSVs to the benchmark, score every response, split by neuron, filter.

    Writes OUT.parquet (rows = sample x response), OUT_responses.parquet (every matched
    response) and OUT_metadata.json (counts, accuracies, the full split id lists).
    """
    flags = dict(locals())
    files = [*(flags.pop("csv_files") or []), *(flags.pop("csv") or [])]
    flags.pop("config")
    if files:
        flags["csv_files"] = files

    def go():
        from .merging.recipe import merge as merge_fn

        cfg, _ = _configs(MergeConfig, config, flags)
        if not cfg.csv_files:
            raise UserError("no teacher CSV given: pass one or more CSV files (see --help)")
        merge_fn(cfg)

    _run(go)


# ---------------------------------------------------------------- train
@app.command()
def train(
    augmented_dataset: Path = typer.Option(
        None, "--augmented-dataset", "--data", help="Merged parquet written by `merge`."
    ),
    model: str = typer.Option(None, help="Student: hub id or local folder.  [default: Qwen/Qwen3-VL-8B-Instruct]"),
    output_dir: Path = typer.Option(None, help="Where run folders go.  [default: runs]"),
    run_name: str = typer.Option(None, help="Name used in the run folder and W&B."),
    run_dir: Path = typer.Option(None, help="Exact run folder to write or, with --resume, continue."),
    num_samples: int = typer.Option(None, help="Use only the first N training rows (quick tries)."),
    epochs: float = typer.Option(None, help="Epochs.  [default: 3]"),
    batch_size: int = typer.Option(None, help="Per-device batch size.  [default: 2]"),
    gradient_accumulation: int = typer.Option(None, help="Gradient accumulation steps.  [default: 4]"),
    learning_rate: float = typer.Option(None, help="Peak learning rate.  [default: 2e-4 for sft, 5e-5 for dpo, 1e-4 for grpo]"),
    lora_r: int = typer.Option(None, help="LoRA rank.  [default: 16]"),
    lora_alpha: int = typer.Option(None, help="LoRA alpha.  [default: 16]"),
    lora_dropout: float = typer.Option(None, help="LoRA dropout.  [default: 0.05]"),
    max_pixels: int = typer.Option(None, help="Max pixels per view.  [default: model's own, capped at 1024x1024]"),
    min_pixels: int = typer.Option(None, help="Min pixels per view.  [default: model's own]"),
    tune_vision: bool = typer.Option(None, "--tune-vision", help="Also adapt the vision blocks."),
    tune_merger: bool = typer.Option(None, "--tune-merger", help="Also adapt the vision->language merger."),
    load_in_4bit: bool = typer.Option(None, "--load-in-4bit", help="QLoRA: 4-bit base (CUDA only)."),
    target: str = typer.Option(None, help="teacher (teacher analyses) or ground-truth (templated).  [default: teacher]"),
    fill_missing: bool = typer.Option(
        None, "--fill-missing", help="Rows without a teacher analysis get a templated rationale."
    ),
    prompt: str = typer.Option(
        None, help="Whose prompt: teacher (the stored text each response answered) or builtin.  [default: teacher]"
    ),
    with_description: bool = typer.Option(
        None, "--with-description/--without-description",
        help="Prompt setting: the teacher's prompts with (without) species guidance.  [default: the train rows' own; a mix is refused]",
    ),
    allow_mixed_prompts: bool = typer.Option(
        None, "--allow-mixed-prompts", help="Train rows of both prompt settings, each on its own prompt."
    ),
    select_by: str = typer.Option(None, help="Kept checkpoint: val_loss, val_accuracy or last.  [default: val_loss]"),
    use_wandb: bool = typer.Option(None, "--use-wandb", help="Log to Weights & Biases (honours WANDB_MODE)."),
    resume: bool = typer.Option(None, "--resume", help="Continue the named run from its last checkpoint."),
    folds: bool = typer.Option(
        None, "--folds", help="Cross-validation: one student per fold of a `merge --folds K` file (reruns skip finished folds)."
    ),
    fold: int = typer.Option(None, help="With --folds: train only this fold of the cross-validation run."),
    sweep: list[str] = typer.Option(
        None, help="NAME=V1,V2: train the grid (repeat for more axes), choose on val; e.g. learning_rate=1e-4,2e-4."
    ),
    method: str = typer.Option(
        None, help="sft (LoRA on the teacher's rationales), or dpo / grpo continuing the SFT run --from.  [default: sft]"
    ),
    from_run: Path = typer.Option(
        None, "--from", help="dpo/grpo: the run folder whose student to continue (its model, prompts, splits, pixels)."
    ),
    pairs_per_sample: int = typer.Option(None, help="dpo: distinct (right, wrong) teacher pairs per sample.  [default: 4]"),
    on_policy: int = typer.Option(
        None, help="dpo: sample K answers per train sample from the SFT student; its wrong ones are rejected too.  [default: 0]"
    ),
    rpo_alpha: float = typer.Option(None, help="dpo: weight of the NLL term on the chosen responses (RPO).  [default: off]"),
    dpo_beta: float = typer.Option(None, help="dpo: beta, how far the student may move from the SFT one.  [default: 0.1]"),
    num_generations: int = typer.Option(None, help="grpo: completions per prompt (group size).  [default: 8]"),
    temperature: float = typer.Option(None, help="grpo and dpo --on-policy: sampling temperature.  [default: 0.5]"),
    kl_beta: float = typer.Option(None, help="grpo: KL weight to the SFT student (0: no reference pass).  [default: 0]"),
    max_completion_length: int = typer.Option(
        None, help="grpo and dpo --on-policy: tokens per sampled completion.  [default: 512; 16 with --answer-only]"
    ),
    answer_only: bool = typer.Option(
        None, "--answer-only", help="grpo: no thinking: an empty analysis is prefilled, the letter alone is rewarded."
    ),
    format_reward: float = typer.Option(None, help="grpo: reward for a well-formed analysis + answer.  [default: 0.1]"),
    balance_classes: bool = typer.Option(
        None, "--balance-classes", help="grpo: draw every class's samples equally often (rare classes repeated)."
    ),
    answer_rows: str = typer.Option(
        None, help="Multi-task SFT for one-pass answers: answer-only rows (the question -> only the answer block) "
        "beside the rationale rows of this share of the train samples: a number in (0, 1], all, or only "
        "(answer rows alone).  [default: none]"),
    seed: int = typer.Option(None, help="Seed.  [default: 42]"),
    num_workers: int = typer.Option(None, help="Data loader processes decoding the views.  [default: from the CPU count on a GPU, 0 on the CPU]"),
    save_steps: int = typer.Option(None, help="Also a checkpoint every N optimizer steps (0: epoch ends only).  [default: 20 for grpo, 100 for dpo, 0 for sft]"),
    remote: bool = typer.Option(False, "--remote", help=REMOTE_HELP),
    gpu: str = typer.Option(None, help=GPU_HELP),
    timeout: int = typer.Option(None, help="Seconds before Modal stops one remote attempt.  [default: 14400, 4 h]"),
    detach: bool = typer.Option(None, "--detach", help=DETACH_HELP),
    max_parallel: int = typer.Option(None, help="With --remote and --folds/--sweep: containers at once.  [default: all]"),
    yes: bool = typer.Option(None, "--yes", "-y", help="With --remote: start a fan-out without asking, or a dpo/grpo run estimated to outrun --timeout."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """LoRA fine-tune the student on merge's train rows; select on val rows; never touch test."""
    flags = dict(locals())
    for k in ("config", "remote"):
        flags.pop(k)

    def go():
        from .training.examples import parse_answer_rows
        from .training.sweeps import parse_sweep

        flags["sweep"] = parse_sweep(flags.get("sweep")) or None
        if flags.get("answer_rows") is not None:
            flags["answer_rows"], flags["rationale_rows"] = parse_answer_rows(flags["answer_rows"])
        cfg, remote_cfg = _configs(TrainConfig, config, flags)
        if cfg.method != "sft":  # check --from now; a remote run needs its model and data paths
            from .training.runs import continued_settings

            cfg = continued_settings(cfg)
        if remote:
            from .remote import train_remote

            train_remote(cfg, remote_cfg)
        else:
            from .training.recipe import train as train_fn

            train_fn(cfg)

    _run(go)


# ---------------------------------------------------------------- eval
@app.command("eval")
def eval_(
    adapter_path: Path = typer.Option(None, help="Run folder from `train` (settings come from it); a CV run or sweep too."),
    model: Path = typer.Option(None, help="A folder written by `export` (settings come from it)."),
    base_model: str = typer.Option(None, help="Evaluate this model without an adapter (baseline)."),
    dataset_name: str = typer.Option(None, help="Benchmark: hub id or local path.  [default: the run's]"),
    config_name: str = typer.Option(None, help="Dataset configuration.  [default: the run's]"),
    dataset_split: str = typer.Option(None, help="The dataset's own split.  [default: the run's]"),
    merged: Path = typer.Option(None, help="Merged parquet whose split lists choose the samples."),
    split: str = typer.Option(None, help="train, val, test or all.  [default: test]"),
    test_set_only: bool = typer.Option(None, "--test-set-only", help="Same as --split test."),
    num_samples: int = typer.Option(None, help="Evaluate only the first N selected samples."),
    batch_size: int = typer.Option(None, help="Generation batch size.  [default: from GPU memory on CUDA, 4 on the CPU]"),
    max_new_tokens: int = typer.Option(None, help="Generation budget.  [default: 1024]"),
    max_pixels: int = typer.Option(None, help="Max pixels per view.  [default: the run's]"),
    min_pixels: int = typer.Option(None, help="Min pixels per view.  [default: the run's]"),
    blank_images: bool = typer.Option(None, "--blank-images", help="Ablation: grey images."),
    simple_prompt: bool = typer.Option(None, "--simple-prompt", help="Ablation: a trivial prompt."),
    prompt: str = typer.Option(
        None, help="teacher or builtin.  [default: the run's; for a base model: teacher with --merged, else builtin]"
    ),
    with_description: bool = typer.Option(
        None, "--with-description/--without-description",
        help="Prompt setting.  [default: the run's; for a base model, the one most teacher responses carry]",
    ),
    allow_train_samples: bool = typer.Option(
        None, "--allow-train-samples", help="Allow samples the adapter trained on (flagged)."
    ),
    allow_config_mismatch: bool = typer.Option(
        None, "--allow-config-mismatch", help="Allow flags that differ from the run's settings."
    ),
    output_dir: Path = typer.Option(None, help="Where result folders go.  [default: results]"),
    name: str = typer.Option(None, help="Result folder name.  [default: derived]"),
    load_in_4bit: bool = typer.Option(None, "--load-in-4bit", help="4-bit base (CUDA only)."),
    votes: int = typer.Option(
        None, help="Also draw K sampled responses per sample: majority vote and vote share.  [default: 0]"
    ),
    temperature: float = typer.Option(None, help="Sampling temperature of --votes.  [default: 1.0]"),
    target_accuracy: float = typer.Option(
        None, help="Triage: threshold chosen on the val split to reach this accuracy, applied to the "
        "evaluated samples (triage.csv)."
    ),
    one_pass: bool = typer.Option(
        None, "--one-pass", help="One-pass answers: one forward pass over the question and an opened answer "
        "block, the letter its argmax; no rationale is generated (train with --answer-rows for it)."),
    remote: bool = typer.Option(False, "--remote", help=REMOTE_HELP),
    gpu: str = typer.Option(None, help=EVAL_GPU_HELP),
    timeout: int = typer.Option(None, help="Seconds before Modal stops one remote attempt.  [default: 3600, 1 h]"),
    detach: bool = typer.Option(None, "--detach", help=DETACH_HELP),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Greedy batched generation on held-out samples: accuracy, intervals, confusion matrix."""
    flags = dict(locals())
    for k in ("config", "remote", "test_set_only"):
        flags.pop(k)
    # On eval, --gpu and --timeout are the eval call's own (RemoteConfig.eval_gpu / eval_timeout).
    flags["eval_gpu"], flags["eval_timeout"] = flags.pop("gpu"), flags.pop("timeout")
    if test_set_only:
        if split not in (None, "test"):
            typer.echo("error: --test-set-only contradicts --split " + split, err=True)
            raise typer.Exit(2)
        flags["split"] = "test"

    def go():
        cfg, remote_cfg = _configs(EvalConfig, config, flags)
        if remote:
            from .remote import evaluate_remote

            evaluate_remote(cfg, remote_cfg)
        else:
            from .evaluation.recipe import evaluate

            evaluate(cfg)

    _run(go)


# ---------------------------------------------------------------- predict
@app.command()
def predict(
    input: str = typer.Argument(
        None, help="A dataset (hub id, parquet file or folder, save_to_disk folder), or a segment table "
        "(CSV/parquet: ids, species, box) with --images-dir.", show_default=False),
    images_dir: Path = typer.Option(
        None, help="For a segment table: folder of `<proofread_root_id>_<current_root_id>_{front,side,top}.png`."),
    adapter_path: Path = typer.Option(None, help="Run folder from `train` (a CV run needs --ensemble or --fold; a sweep: its chosen point)."),
    model: Path = typer.Option(None, help="A folder written by `connectodistill export` (instead of --adapter-path)."),
    ensemble: bool = typer.Option(None, "--ensemble", help="CV run: average the fold students' letter probabilities."),
    fold: int = typer.Option(None, help="CV run: use this fold's student."),
    output: Path = typer.Option(None, "--output", "-o", help="Output folder; rerun to resume.  [default: predictions]"),
    csv: bool = typer.Option(None, "--csv", help="Also write predictions.csv."),
    threshold: float = typer.Option(None, help="Triage: confidence >= T is auto, the rest goes to a human."),
    triage_from: Path = typer.Option(None, help="Triage with the threshold of this eval result (eval --target-accuracy)."),
    chunk_size: int = typer.Option(None, help="Segments per chunk written (and resumed).  [default: 64]"),
    batch_size: int = typer.Option(None, help="Generation batch size.  [default: from GPU memory on CUDA, 4 on the CPU]"),
    max_new_tokens: int = typer.Option(None, help="Generation budget.  [default: 1024]"),
    one_pass: bool = typer.Option(
        None, "--one-pass/--generate", help="One-pass answers (one forward pass, no rationale), or a generated "
        "rationale then the letter.  [default: one-pass for a run trained with --answer-rows]"),
    explain: str = typer.Option(
        None, help="none, or human: with --one-pass and a triage, generate rationales for the segments sent to a "
        "human (and only them).  [default: none]"),
    config_name: str = typer.Option(None, help="Dataset configuration (hub ids).  [default: the benchmark's]"),
    dataset_split: str = typer.Option(None, help="The dataset's own split.  [default: train]"),
    load_in_4bit: bool = typer.Option(None, "--load-in-4bit", help="4-bit base (CUDA only)."),
    dry_run: bool = typer.Option(None, "--dry-run", help="Read and check every row, choose prompts; no model."),
    force: bool = typer.Option(None, "--force", help="Start over in an output folder holding another prediction."),
    remote: bool = typer.Option(False, "--remote", help=REMOTE_HELP),
    shards: int = typer.Option(None, help="With --remote: split the input over N GPU containers at once."),
    gpu: str = typer.Option(None, help=EVAL_GPU_HELP),
    timeout: int = typer.Option(None, help="Seconds before Modal stops one shard's attempt.  [default: 3600, 1 h]"),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """The student's answers for new segments: predictions.parquet with letter, analysis, letter
    probabilities, prompt source (and triage); streamed in chunks, resumable."""
    flags = dict(locals())
    for k in ("config", "remote"):
        flags.pop(k)
    flags["eval_gpu"], flags["eval_timeout"] = flags.pop("gpu"), flags.pop("timeout")

    def go():
        from .core.config import PredictConfig

        cfg, remote_cfg = _configs(PredictConfig, config, flags)
        if remote:
            from .remote.predict import predict_remote

            predict_remote(cfg, remote_cfg)
        else:
            from .prediction.recipe import predict as predict_fn

            predict_fn(cfg)

    _run(go)


# ---------------------------------------------------------------- report
@app.command()
def report(
    results: list[Path] = typer.Argument(None, help="Result folders (or their summary.json).", show_default=False),
    merged: Path = typer.Option(None, help="Merged parquet: adds the teacher on the same ids."),
    output: Path = typer.Option(None, help="Table path stem: writes STEM.md and STEM.csv.  [default: ./report]"),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """One table: every evaluated model, plus the teacher scored on exactly the same samples."""
    flags = dict(locals())
    flags.pop("config")

    def go():
        from .evaluation.reporting import report as report_fn

        cfg, _ = _configs(ReportConfig, config, flags)
        if not cfg.results:
            raise UserError("no result given: pass one or more eval output folders")
        report_fn(cfg)

    _run(go)


# ---------------------------------------------------------------- export
@app.command()
def export(
    run: Path = typer.Argument(..., help="Run folder (a CV run with --fold, or a sweep: its chosen point)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write the merged model to."),
    dtype: str = typer.Option(None, help="bfloat16, float16 or float32.  [default: bfloat16]"),
    fold: int = typer.Option(None, help="Which fold of a cross-validation run to export."),
    report: Path = typer.Option(None, help="report.csv from `connectodistill report`: its table goes into the model card."),
    force: bool = typer.Option(None, "--force", help="Replace an existing output folder."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Merge the run's LoRA into its base: a plain Hugging Face model folder with a model card."""
    flags = dict(locals())
    flags.pop("config")

    def go():
        from .core.config import ExportConfig
        from .prediction.exporting import export as export_fn

        cfg, _ = _configs(ExportConfig, config, flags)
        export_fn(cfg)

    _run(go)


# ---------------------------------------------------------------- demo
@app.command()
def demo(
    output_dir: Path = typer.Option(None, help="Folder for every stage's outputs.  [default: demo-run]"),
    seed: int = typer.Option(None, help="Seed of the synthetic data and training.  [default: 0]"),
    samples: int = typer.Option(None, help="Synthetic benchmark size.  [default: 3000]"),
    epochs: float = typer.Option(None, help="Training epochs over every correct teacher draw.  [default: 0.8]"),
    votes: int = typer.Option(None, help="Also K sampled votes per test sample (a majority-of-K row; "
                              "~10x the eval time at 5).  [default: 0]"),
    force: bool = typer.Option(None, "--force", help="Reuse a non-empty output folder."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """The whole pipeline offline on CPU: synthetic data -> merge -> train -> eval -> report."""
    flags = dict(locals())
    flags.pop("config")

    def go():
        from .offline_demo import demo as demo_fn

        cfg, _ = _configs(DemoConfig, config, flags)
        demo_fn(cfg)

    _run(go)


# ---------------------------------------------------------------- fetch
@app.command()
def fetch(
    name: str = typer.Argument(None, help="Run or result on the runs volume; omit to list them all."),
    output_dir: Path = typer.Option(None, help="Download to OUTPUT_DIR/NAME (default: where it was started, else ./NAME)."),
    follow: bool = typer.Option(False, "--follow", help="If it is running: stream its logs, wait, download."),
    cancel: bool = typer.Option(False, "--cancel", help="Stop it on Modal (a run's checkpoints stay)."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Status of every remote run (and download of the finished ones started here), or one run:
    download it, follow it, or cancel it."""

    def go():
        from .remote import fetch as fetch_fn

        if follow and cancel:
            raise UserError("--follow and --cancel exclude each other")
        if (follow or cancel) and name is None:
            raise UserError("--follow and --cancel need a NAME (see `connectodistill fetch`)")
        values = load_config_file(config).get("remote") or {}
        fetch_fn(name, output_dir, build_config(RemoteConfig, values, {}), follow=follow, cancel=cancel)

    _run(go)


# ---------------------------------------------------------------- remote
remote_app = typer.Typer(help="Modal account tools.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(remote_app, name="remote")


@remote_app.command("check")
def remote_check(
    gpu: str = typer.Option(None, help="Also check CUDA on this GPU (a GPU-minute); default: CPU only."),
    model: str = typer.Option(None, help="Hub id the token must be able to read (default: the default student)."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Check Modal for cents: the image builds, the package imports and its CLI runs from a
    temporary folder, each volume takes a committed file a second container reads back, the Hub
    lets the token read the student; prints the image's library versions."""

    def go():
        from .core.task import DEFAULT_MODEL
        from .remote import remote_check as check_fn

        values = load_config_file(config).get("remote") or {}
        check_fn(build_config(RemoteConfig, values, {}), gpu=gpu, model=model or DEFAULT_MODEL)

    _run(go)


def _show_defaults() -> None:
    from .cli_help import show_defaults
    from .core.config import ExportConfig, PredictConfig

    show_defaults(app, {"merge": MergeConfig, "train": TrainConfig, "eval": EvalConfig, "predict": PredictConfig,
                        "report": ReportConfig, "export": ExportConfig, "demo": DemoConfig}, RemoteConfig, REMOTE_FLAGS)


_show_defaults()


def main() -> None:
    app(prog_name="connectodistill")


if __name__ == "__main__":
    sys.exit(main())
