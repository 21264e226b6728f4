"""What every training recipe's Trainer shares (SFT's transformers Trainer, TRL's DPO and GRPO
trainers): the common arguments, how the kept weights are selected on val, greedy val
accuracy as an evaluation, and a dataset whose views are decoded per batch."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..core.config import TrainConfig

__all__ = ["data_workers", "default_workers", "gradient_checkpointing", "lazy_image_dataset", "save_steps",
           "selection", "step_checkpoints", "trainer_arguments", "val_accuracy", "with_val_accuracy"]

# Enough to keep one GPU fed: the collator takes ~0.6 s per batch of two 1024 px samples on one
# core (bench/README.md, loader) against a ~0.7 s 8B step per GPU; more only costs memory.
MAX_WORKERS = 4


def default_workers(*, cuda: bool, cpus: int, ranks: int = 1) -> int:
    """Data loader workers per training process: none on the CPU (they would take the cores the
    model's own ops use), else the process's share of the cores less two (the training loop and
    the rest), at most MAX_WORKERS. A 2-core machine gets 0."""
    if not cuda:
        return 0
    return max(0, min(MAX_WORKERS, cpus // max(1, ranks) - 2))


def usable_cpus() -> int:
    """Cores this process may use: its affinity, capped by a cgroup v2 CPU quota (a container)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def data_workers(cfg: TrainConfig) -> int:
    """``cfg.num_workers``, else :func:`default_workers` for this machine and process count."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    import torch

    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return default_workers(cuda=torch.cuda.is_available(), cpus=usable_cpus(), ranks=ranks)


def gradient_checkpointing(cfg: TrainConfig) -> bool:
    import torch

    return torch.cuda.is_available() if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing


def trainer_arguments(cfg: TrainConfig, run_dir: Path, *, metric: str | None, greater: bool | None) -> dict:
    """Keyword arguments every TRL recipe's config takes, as SFT's TrainingArguments (bf16 only on
    a GPU that has it: TRL's own default is bf16 everywhere)."""
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    gc = gradient_checkpointing(cfg)
    workers = data_workers(cfg)
    # transformers 5 renamed gradient_checkpointing* to activation_checkpointing* (the old names warn)
    ckpt = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
            else "gradient_checkpointing")
    return dict(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="linear",
        weight_decay=cfg.weight_decay,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        logging_steps=cfg.logging_steps,
        eval_strategy="epoch" if metric else "no",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=bool(metric),
        metric_for_best_model=metric,
        greater_is_better=greater if metric else None,
        **{ckpt: gc, f"{ckpt}_kwargs": {"use_reentrant": False} if gc else None},
        report_to=["wandb"] if cfg.use_wandb else [],
        run_name=run_dir.name,
        seed=cfg.seed,
        remove_unused_columns=False,  # the images are added to each batch from the merged rows
        # The views are decoded and processed in worker processes beside the loop, kept between
        # epochs (starting them again each epoch costs a fork of the whole process).
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,
        # pinned memory only helps copies to a GPU; on CPU torch warns on every DataLoader
        dataloader_pin_memory=cuda,
        disable_tqdm=not cfg.progress,
    )


def save_steps(cfg: TrainConfig) -> int | None:
    """Optimizer steps between checkpoints (None: only at epoch ends)."""
    from ..core.config import METHOD_SAVE_STEPS

    n = METHOD_SAVE_STEPS.get(cfg.method) if cfg.save_steps is None else cfg.save_steps
    return n or None


def step_checkpoints(cfg: TrainConfig) -> list:
    """A callback saving a checkpoint every :func:`save_steps` optimizer steps, on top of the epoch
    ends (a retried attempt resumes from the last one). A callback, not ``save_strategy="steps"``:
    with the kept weights chosen on val (``load_best_model_at_end``) the Trainer wants evaluation
    on the same schedule as saving, and an evaluation (greedy val answers) every few steps would
    cost more than the checkpoints save."""
    n = save_steps(cfg)
    if not n:
        return []
    from transformers import TrainerCallback

    class EveryNSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % n == 0:
                control.should_save = True
            return control

    return [EveryNSteps()]


def selection(cfg: TrainConfig, *, val_samples: int, val_loss: bool) -> tuple[str, str | None, bool | None]:
    """(what selects the kept weights, Trainer metric, greater is better).

    ``val_loss`` needs a loss on held-out data (DPO's on val pairs; GRPO has none, so there it
    means val accuracy); ``val_accuracy`` is greedy accuracy on the val samples, as in SFT.
    Without val data: the last checkpoint, said on stderr.
    """
    want = cfg.select_by
    if want == "val_loss" and not val_loss and cfg.method == "grpo":
        want = "val_accuracy"  # documented: GRPO has no loss on held-out data
    if (want == "val_loss" and not val_loss) or (want == "val_accuracy" and not val_samples):
        from rich.console import Console

        Console(stderr=True).print(f"[yellow]no val data for --select-by {cfg.select_by}: the last checkpoint is kept[/]")
        want = "last"
    if want == "val_loss":
        return want, "eval_loss", False
    if want == "val_accuracy":
        return want, "eval_val_accuracy", True
    return "last", None, None


def val_accuracy(model, processor, examples, image_cols, *, batch_size: int, max_new_tokens: int) -> float:
    """Greedy accuracy on val ``examples`` (answers stop at ``</answer>``), parsed by the one rule."""
    from ..core.conversation import load_images
    from ..core.generation import generate_answers
    from ..core.scoring import option_descriptions, parse_response

    responses = generate_answers(
        model, processor, [ex.prompt for ex in examples], [load_images(ex.row, image_cols) for ex in examples],
        layouts=[ex.layout for ex in examples], stop_at_answer=True, batch_size=batch_size,
        max_new_tokens=max_new_tokens,
    )
    truth = [re.search(r"<answer>(.)</answer>", ex.target).group(1) for ex in examples]
    hits = [parse_response(r, option_descriptions(ex.prompt))[1] == t
            for r, t, ex in zip(responses, truth, examples, strict=True)]
    return sum(hits) / len(hits)


def with_val_accuracy(trainer_class):
    """``trainer_class`` whose evaluation is greedy val accuracy (``eval_val_accuracy``) when
    given ``val_accuracy=(processor, examples, image_cols, batch_size, max_new_tokens)``."""

    class _Trainer(trainer_class):
        def __init__(self, *args, val_accuracy=None, **kwargs):
            super().__init__(*args, **kwargs)
            self._val_accuracy = val_accuracy

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            if self._val_accuracy is None:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            processor, examples, cols, batch_size, max_new_tokens = self._val_accuracy
            acc = val_accuracy(self.model, processor, examples, cols, batch_size=batch_size,
                               max_new_tokens=max_new_tokens)
            metrics = {f"{metric_key_prefix}_val_accuracy": acc}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    _Trainer.__name__ = trainer_class.__name__
    return _Trainer


def lazy_image_dataset(records: list[dict], rows: list[dict], image_cols: tuple[str, ...]):
    """A ``datasets.Dataset`` of ``records`` (each with ``row``: an index into ``rows``) whose
    ``images`` column (the three views, ``conversation.load_images``) is decoded per batch, so
    that N pairs of one sample never hold N copies of its views."""
    import datasets

    return datasets.Dataset.from_list(records).with_transform(_AddImages(rows, image_cols))


class _AddImages:
    """The transform of :func:`lazy_image_dataset`: a class, not a closure, so that data loader
    workers started with ``spawn`` (not ``fork``) can receive it pickled."""

    def __init__(self, rows: list[dict], image_cols: tuple[str, ...]):
        self.rows, self.image_cols = rows, image_cols

    def __call__(self, batch):
        from ..core.conversation import load_images

        batch["images"] = [load_images(self.rows[i], self.image_cols) for i in batch["row"]]
        return batch
