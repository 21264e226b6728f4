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
from .config import (
    DemoConfig,
    EvalConfig,
    MergeConfig,
    RemoteConfig,
    ReportConfig,
    TrainConfig,
    build_config,
    load_config_file,
)
from .errors import UserError

app = typer.Typer(
    name="connectodistill",
    help="Distil a teacher's ConnectomeBench answers into a small Qwen-VL student.\n\n"
    "Pipeline: merge -> train -> eval -> report. `connectodistill demo` runs it all offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

CONFIG_HELP = "YAML/JSON file of options (names as the flags, with _ or -); flags given here win."
REMOTE_HELP = "Run on a Modal GPU instead of this machine (needs `modal setup`)."
GPU_HELP = "Modal GPU: H100, A100-80GB, A100-40GB, L40S, A10G, ... with :N for several (H100:2)."


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
    remote_flags = {k: flags.pop(k) for k in ("gpu", "timeout", "detach") if k in flags}
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
        from .matching import merge as merge_fn

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
    learning_rate: float = typer.Option(None, help="Peak learning rate.  [default: 2e-4]"),
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
    with_description: bool = typer.Option(
        None, "--with-description/--without-description",
        help="Species guidance in the prompt.  [default: as the teacher had it]",
    ),
    select_by: str = typer.Option(None, help="Kept checkpoint: val_loss, val_accuracy or last.  [default: val_loss]"),
    use_wandb: bool = typer.Option(None, "--use-wandb", help="Log to Weights & Biases (honours WANDB_MODE)."),
    resume: bool = typer.Option(None, "--resume", help="Continue the named run from its last checkpoint."),
    seed: int = typer.Option(None, help="Seed.  [default: 42]"),
    remote: bool = typer.Option(False, "--remote", help=REMOTE_HELP),
    gpu: str = typer.Option(None, help=GPU_HELP),
    timeout: int = typer.Option(None, help="Seconds before Modal stops the remote call."),
    detach: bool = typer.Option(None, "--detach", help="With --remote: start and return; fetch later."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """LoRA fine-tune the student on merge's train rows; select on val rows; never touch test."""
    flags = dict(locals())
    for k in ("config", "remote"):
        flags.pop(k)

    def go():
        cfg, remote_cfg = _configs(TrainConfig, config, flags)
        if remote:
            from .remote import train_remote

            train_remote(cfg, remote_cfg)
        else:
            from .training import train as train_fn

            train_fn(cfg)

    _run(go)


# ---------------------------------------------------------------- eval
@app.command("eval")
def eval_(
    adapter_path: Path = typer.Option(None, help="Run folder from `train` (settings come from it)."),
    base_model: str = typer.Option(None, help="Evaluate this model without an adapter (baseline)."),
    dataset_name: str = typer.Option(None, help="Benchmark: hub id or local path.  [default: the run's]"),
    config_name: str = typer.Option(None, help="Dataset configuration.  [default: the run's]"),
    dataset_split: str = typer.Option(None, help="The dataset's own split.  [default: the run's]"),
    merged: Path = typer.Option(None, help="Merged parquet whose split lists choose the samples."),
    split: str = typer.Option(None, help="train, val, test or all.  [default: test]"),
    test_set_only: bool = typer.Option(None, "--test-set-only", help="Same as --split test."),
    num_samples: int = typer.Option(None, help="Evaluate only the first N selected samples."),
    batch_size: int = typer.Option(None, help="Generation batch size.  [default: 4]"),
    max_new_tokens: int = typer.Option(None, help="Generation budget.  [default: 1024]"),
    max_pixels: int = typer.Option(None, help="Max pixels per view.  [default: the run's]"),
    min_pixels: int = typer.Option(None, help="Min pixels per view.  [default: the run's]"),
    blank_images: bool = typer.Option(None, "--blank-images", help="Ablation: grey images."),
    simple_prompt: bool = typer.Option(None, "--simple-prompt", help="Ablation: a trivial prompt."),
    with_description: bool = typer.Option(
        None, "--with-description/--without-description",
        help="Species guidance in the prompt.  [default: the run's; for a base model, as the teacher had it]",
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
    remote: bool = typer.Option(False, "--remote", help=REMOTE_HELP),
    gpu: str = typer.Option(None, help=GPU_HELP),
    timeout: int = typer.Option(None, help="Seconds before Modal stops the remote call."),
    detach: bool = typer.Option(None, "--detach", help="With --remote: start and return; fetch later."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Greedy batched generation on held-out samples: accuracy, intervals, confusion matrix."""
    flags = dict(locals())
    for k in ("config", "remote", "test_set_only"):
        flags.pop(k)
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
            from .evaluation import evaluate

            evaluate(cfg)

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
        from .reporting import report as report_fn

        cfg, _ = _configs(ReportConfig, config, flags)
        if not cfg.results:
            raise UserError("no result given: pass one or more eval output folders")
        report_fn(cfg)

    _run(go)


# ---------------------------------------------------------------- demo
@app.command()
def demo(
    output_dir: Path = typer.Option(None, help="Folder for every stage's outputs.  [default: demo-run]"),
    seed: int = typer.Option(None, help="Seed of the synthetic data and training.  [default: 0]"),
    samples: int = typer.Option(None, help="Synthetic benchmark size.  [default: 3000]"),
    epochs: float = typer.Option(None, help="Training epochs.  [default: 3]"),
    force: bool = typer.Option(None, "--force", help="Reuse a non-empty output folder."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """The whole pipeline offline on CPU: synthetic data -> merge -> train -> eval -> report."""
    flags = dict(locals())
    flags.pop("config")

    def go():
        from .demo import demo as demo_fn

        cfg, _ = _configs(DemoConfig, config, flags)
        demo_fn(cfg)

    _run(go)


# ---------------------------------------------------------------- fetch
@app.command()
def fetch(
    name: str = typer.Argument(None, help="Run or result folder on the runs volume; omit to list."),
    output_dir: Path = typer.Option(Path("."), help="Where to download it."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Download a run (or eval output) from Modal's runs volume, or list what is there."""

    def go():
        from .remote import fetch as fetch_fn

        values = load_config_file(config).get("remote") or {}
        fetch_fn(name, output_dir, build_config(RemoteConfig, values, {}))

    _run(go)


def main() -> None:
    app(prog_name="connectodistill")


if __name__ == "__main__":
    sys.exit(main())
