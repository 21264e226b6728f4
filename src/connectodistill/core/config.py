"""One pydantic config per command: the only knobs each recipe has.

Every CLI verb builds its config from (in increasing priority) the defaults here, an
optional ``--config FILE`` (YAML or JSON), and the flags given on the command line.
Notebook users build the same objects, or pass keyword arguments to the verb function.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError
from .task import DEFAULT_CONFIG, DEFAULT_DATASET, DEFAULT_DATASET_SPLIT, DEFAULT_MODEL


class _Config(BaseModel):
    # Unknown keys in a config file are an error, not silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MergeConfig(_Config):
    csv_files: list[Path] = Field(default_factory=list, description="Teacher response CSVs.")
    output: Path = Field(Path("merged.parquet"), description="Merged parquet to write.")
    dataset_name: str = Field(DEFAULT_DATASET, description="Hub id or local parquet/folder.")
    config_name: str = DEFAULT_CONFIG
    dataset_split: str = DEFAULT_DATASET_SPLIT
    filter_correct_only: bool = False
    filter_matched_only: bool = False
    # None means every response of a sample ("all" on the command line).
    responses_per_sample: int | None = Field(1, ge=1)
    test_size: float = Field(0.1, ge=0.0, lt=1.0)
    val_size: float = Field(0.1, ge=0.0, lt=1.0)
    # K-fold cross-validation: every sample tested once (test_size is then unused).
    folds: int | None = Field(None, ge=2)
    seed: int = 42
    force: bool = False

    @field_validator("responses_per_sample", mode="before")
    @classmethod
    def _all_means_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.lower() == "all" else v


# Continuing a trained student takes smaller steps than SFT from scratch (bench/README.md, methods).
METHOD_LEARNING_RATE = {"sft": 2e-4, "dpo": 5e-5, "grpo": 1e-4}
# Optimizer steps between checkpoints besides each epoch's end (None: epoch ends only). A GRPO
# step of the 8B student generates its completions first (~20 s); a DPO step is a few seconds.
METHOD_SAVE_STEPS = {"sft": None, "dpo": 100, "grpo": 20}


class TrainConfig(_Config):
    augmented_dataset: Path = Field(Path("merged.parquet"), description="Output of merge.")
    model: str = DEFAULT_MODEL
    output_dir: Path = Path("runs")
    run_name: str | None = None
    # Exact run folder to write (or, with resume, to continue); default: a new named folder.
    run_dir: Path | None = None
    num_samples: int | None = Field(None, ge=1)
    epochs: float = Field(3, gt=0)
    batch_size: int = Field(2, ge=1)
    gradient_accumulation: int = Field(4, ge=1)
    # None on input: the method's default (METHOD_LEARNING_RATE); a float once validated.
    learning_rate: float = Field(None, gt=0, validate_default=True)
    warmup_steps: int = Field(5, ge=0)
    weight_decay: float = 0.01
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    max_pixels: int | None = Field(None, ge=1)
    min_pixels: int | None = Field(None, ge=1)
    tune_vision: bool = False
    tune_merger: bool = False
    load_in_4bit: bool = False
    target: Literal["teacher", "ground-truth"] = "teacher"
    fill_missing: bool = False
    # Whose question the student answers: the teacher's stored prompt (default) or the
    # project's builtin template (prompts.py has the rule and the fallbacks).
    prompt: Literal["teacher", "builtin"] = "teacher"
    # None: the prompt setting most train rows carry (teacher), refusing a mix; True/False
    # picks the setting with (or without) the species guidance paragraph.
    with_description: bool | None = None
    allow_mixed_prompts: bool = False
    # Cross-validation (a `merge --folds K` file): one fold, or all of them (train --folds).
    fold: int | None = Field(None, ge=0)
    folds: bool = False
    # A grid of settings, e.g. {"learning_rate": [1e-4, 2e-4], "lora_r": [8, 16]}; chosen on val.
    sweep: dict[str, list] | None = None
    select_by: Literal["val_loss", "val_accuracy", "last"] = "val_loss"
    max_new_tokens: int = Field(1024, ge=1, description="Generation budget for val_accuracy.")
    max_length: int = Field(16384, ge=16, description="Longest sequence allowed; never truncated.")
    use_wandb: bool = False
    wandb_project: str = "connectodistill"
    resume: bool = False
    seed: int = 42
    gradient_checkpointing: bool | None = None  # None: on for CUDA, off on CPU
    # Processes that decode the views and run the image processor beside the training loop, so the
    # GPU does not wait for them. None: from the CPU count on a GPU (training.trainers), 0 on the CPU.
    num_workers: int | None = Field(None, ge=0, description="Data loader worker processes.")
    logging_steps: int = Field(5, ge=1)
    # A checkpoint every N optimizer steps too, so that a retried attempt resumes near where the
    # last one stopped. None: the method's default (METHOD_SAVE_STEPS); 0: epoch ends only.
    save_steps: int | None = Field(None, ge=0)
    progress: bool = True
    # The recipe: sft (training.py), dpo (dpo.py) or grpo (grpo.py). dpo and grpo continue the
    # SFT student of `from_run` (its adapter, base model, processor, prompts, splits).
    method: Literal["sft", "dpo", "grpo"] = "sft"
    from_run: Path | None = Field(None, description="Run folder whose student dpo/grpo continue.")
    # dpo: pairs of teacher responses to one sample (chosen right, rejected wrong).
    pairs_per_sample: int = Field(4, ge=1)
    on_policy: int = Field(0, ge=0, description="dpo: sampled student answers per train sample, wrong ones rejected.")
    rpo_alpha: float | None = Field(None, ge=0.0, description="dpo: weight of the NLL term on chosen.")
    dpo_beta: float = Field(0.1, gt=0.0)
    # grpo (and dpo --on-policy sampling): group size, sampling, KL, completion budget, rewards.
    num_generations: int = Field(8, ge=2)
    temperature: float = Field(0.5, gt=0.0)
    kl_beta: float = Field(0.0, ge=0.0)
    # None: 512 tokens (an analysis and an answer), 16 with answer_only.
    max_completion_length: int | None = Field(None, ge=1)
    answer_only: bool = False
    format_reward: float = Field(0.1, ge=0.0)
    balance_classes: bool = False
    # Multi-task SFT (docs/methods.md): beside the rationale rows of this share of the train
    # samples (1.0: all), answer rows: the same question -> only the answer block, so that
    # one-pass answers (eval/predict --one-pass) read the letter without a rationale. With
    # rationale_rows False the student learns the answer rows alone.
    answer_rows: float = Field(0.0, ge=0.0, le=1.0)
    rationale_rows: bool = True

    @model_validator(mode="after")
    def _some_rows(self) -> TrainConfig:
        if not self.rationale_rows and not self.answer_rows:
            raise ValueError("without rationale rows the student needs answer rows: set answer_rows > 0")
        return self

    @model_validator(mode="before")
    @classmethod
    def _method_learning_rate(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("learning_rate") is None:
            data = {**data, "learning_rate": METHOD_LEARNING_RATE.get(data.get("method") or "sft", 2e-4)}
        return data


class EvalConfig(_Config):
    adapter_path: Path | None = None
    # A folder written by `export` (the adapter merged in); settings come from its manifest.
    model: Path | None = None
    base_model: str | None = None
    dataset_name: str | None = None
    config_name: str | None = None
    dataset_split: str | None = None
    merged: Path | None = None
    split: Literal["train", "val", "test", "all"] | None = None
    num_samples: int | None = Field(None, ge=1)
    # None: from the GPU's free memory on CUDA, 4 on the CPU (modeling.generation_batch).
    batch_size: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(1024, ge=1)
    max_pixels: int | None = Field(None, ge=1)
    min_pixels: int | None = Field(None, ge=1)
    blank_images: bool = False
    simple_prompt: bool = False
    # None: the adapter's own prompt source; for a base model, the teacher's with --merged.
    prompt: Literal["teacher", "builtin"] | None = None
    with_description: bool | None = None
    allow_train_samples: bool = False
    allow_config_mismatch: bool = False
    output_dir: Path = Path("results")
    name: str | None = Field(None, description="Name of this result (folder under output_dir).")
    load_in_4bit: bool = False
    # Self-consistency: K sampled responses per sample besides the greedy one (0: none).
    votes: int = Field(0, ge=0, description="Sampled responses per sample for a majority vote.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the votes.")
    # Triage: the smallest confidence threshold whose val accuracy reaches this, applied here.
    target_accuracy: float | None = Field(None, gt=0, le=1)
    # One-pass answers: one forward pass over the question and an opened answer block, the
    # letter its argmax; no rationale is generated.
    one_pass: bool = False
    seed: int = 0
    progress: bool = True


class ExportConfig(_Config):
    run: Path = Field(..., description="Run folder (or a CV run with fold, or a sweep) to export.")
    output: Path = Field(..., description="Folder to write the merged model to.")
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    fold: int | None = Field(None, ge=0)
    report: Path | None = Field(None, description="report.csv whose table goes into the model card.")
    force: bool = False


class PredictConfig(_Config):
    # What to classify: a dataset in the benchmark's schema (hub id, parquet file or folder,
    # save_to_disk folder), or a segment table (CSV/parquet) with images_dir.
    input: str | None = None
    images_dir: Path | None = None
    config_name: str | None = None  # hub ids only  [default: the benchmark's]
    dataset_split: str | None = None  # hub ids / save_to_disk / parquet folders  [default: train]
    # The student: a run (or CV run, or sweep) folder, or a folder written by `export`.
    adapter_path: Path | None = None
    model: Path | None = None
    ensemble: bool = False  # a CV run: average the fold students' letter probabilities
    fold: int | None = Field(None, ge=0)  # a CV run: this fold's student
    output: Path = Field(Path("predictions"), description="Output folder (resumed when rerun).")
    csv: bool = False  # also predictions.csv
    threshold: float | None = Field(None, ge=0, le=1)  # triage: auto when confidence >= threshold
    triage_from: Path | None = None  # an eval result folder whose summary.json holds the threshold
    # Segments per chunk: decoded views of one chunk are held at once (64 x 3 views of 1024x1024
    # RGB is ~0.6 GB); results are written, and resumed, a chunk at a time.
    chunk_size: int = Field(64, ge=1)
    batch_size: int | None = Field(None, ge=1)  # None: from GPU memory on CUDA, 4 on the CPU
    max_new_tokens: int = Field(1024, ge=1)
    # One-pass answers (no rationale); None: one-pass for a run trained with answer rows.
    one_pass: bool | None = None
    # With one-pass triage: generate rationales for the segments sent to a human ("human").
    explain: Literal["none", "human"] = "none"
    load_in_4bit: bool = False
    dry_run: bool = False  # read, check and prompt every segment; no model
    force: bool = False  # start over in an output folder holding another prediction
    shards: int | None = Field(None, ge=1)  # --remote: containers at once
    row_offset: int = Field(0, ge=0)  # a shard's first row in the whole input (set by --remote)
    progress: bool = True


class ReportConfig(_Config):
    results: list[Path] = Field(default_factory=list)
    merged: Path | None = None
    output: Path | None = None  # default: report.md / report.csv beside the first result


class DemoConfig(_Config):
    output_dir: Path = Path("demo-run")
    seed: int = 0
    # fewer leaves val and test (10% each, by neuron) too few samples to choose or score on
    samples: int = Field(3000, ge=100)
    image_size: int = Field(64, ge=32)  # one merged visual token is 32 pixels a side
    # 0.8 of an epoch over every correct teacher draw (~4 per segment) fits the 5 minutes.
    epochs: float = Field(0.8, gt=0)
    max_new_tokens: int = Field(64, ge=1)
    # Sampled votes per test sample for the student's majority-of-K row (0: none).
    votes: int = Field(0, ge=0)
    force: bool = False
    progress: bool = True


class RemoteConfig(_Config):
    gpu: str = "A100-80GB"  # training; eval takes one GPU of this type unless eval_gpu is set
    # Seconds one attempt may run before Modal stops it; None: 4 h for train, 1 h for eval.
    timeout: int | None = Field(None, ge=60, description="Seconds before Modal stops a training attempt.")
    eval_gpu: str | None = None
    eval_timeout: int | None = Field(None, ge=60, description="Seconds before Modal stops an eval attempt.")
    # The job always runs detached on Modal; without detach the command waits for it.
    detach: bool = False
    # Fan-out (folds, sweep points): how many containers at once (None: all), and no question.
    max_parallel: int | None = Field(None, ge=1)
    yes: bool = False
    app_name: str = "connectodistill"
    models_volume: str = "connectodistill-models"
    datasets_volume: str = "connectodistill-datasets"
    runs_volume: str = "connectodistill-runs"
    hf_secret: str | None = "huggingface-secret"
    wandb_secret: str | None = "wandb-secret"


def load_config_file(path: Path | None) -> dict[str, Any]:
    """Read a YAML or JSON mapping of option names (underscores or dashes) to values."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the user's file
        raise UserError(f"could not parse config file {path}: {e}".splitlines()[0]) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(cls: type[_Config], file_values: dict[str, Any], overrides: dict[str, Any]):
    """Defaults < config file < explicit overrides (None in ``overrides`` means 'not given')."""
    values = {**file_values, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return cls(**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "?"
        raise UserError(f"invalid option {where}: {err['msg']}") from e


def resolve(cls: type[_Config], config: _Config | None, overrides: dict[str, Any]):
    """A config from an optional base config plus keyword overrides (how notebooks call verbs)."""
    base = config.model_dump() if config is not None else {}
    return build_config(cls, base, overrides)
