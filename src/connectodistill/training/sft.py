"""SFT: LoRA fine-tuning of the student on the teacher's right rationales (merge's train rows).

Read top to bottom: resolve the config, pick the train/val rows from the merged parquet's
split lists, build conversations, load the student with LoRA, let the transformers Trainer
run the loop, save a plain peft adapter plus everything evaluation needs to reproduce the
exact prompt, template and pixel budget.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..core.config import TrainConfig
from ..core.errors import UserError
from . import runs, trainers
from .calibrate import calibrate_run
from .collator import IGNORE_INDEX, DistillCollator
from .examples import answer_rows, build_examples, load_training_data, source_counts
from .runs import run_folder_name


# ----------------------------------------------------------------------------- the recipe
def train_sft(cfg: TrainConfig, *, callbacks: list | None = None) -> Path:
    """One SFT run (``train`` dispatches here); return its run folder."""
    t_start = time.time()

    # 1. Data: merge's split lists come from the parquet's own metadata, not from its rows,
    #    which may be filtered. Test rows are never read into the training set. Every example
    #    gets the teacher's own prompt (prompts.py: the rule and the fallbacks).
    merged_path = Path(cfg.augmented_dataset)
    data = load_training_data(merged_path, prompt=cfg.prompt, with_description=cfg.with_description,
                              allow_mixed_prompts=cfg.allow_mixed_prompts, fold=cfg.fold)
    df, splits, image_cols = data.df, data.splits, data.image_cols
    train_df = data.train_df
    train_ex, skipped = build_examples(train_df, data, target=cfg.target, fill_missing=cfg.fill_missing)
    # Validation scores every val sample once, whatever the teacher said about it.
    val_ex, _ = build_examples(data.val_df, data, target=cfg.target, fill_missing=True, sample_level=True)
    if cfg.num_samples:
        train_ex = train_ex[: cfg.num_samples]
    if not train_ex:
        raise UserError(
            f"{merged_path}: no training rows ({len(train_df)} train-split rows, {skipped} without a "
            "correct teacher analysis); use --fill-missing or --target ground-truth"
        )
    # Multi-task: answer-only twins of the rows of a share of the samples (one-pass answers).
    n_rationale = len(train_ex) if cfg.rationale_rows else 0
    if cfg.answer_rows:
        train_ex = (train_ex if cfg.rationale_rows else []) + answer_rows(train_ex, cfg.answer_rows, cfg.seed)
    test_keys = {tuple(p) for p in splits.get("test", [])}
    if any(ex.key in test_keys for ex in train_ex + val_ex):  # cannot happen; guards the split logic
        raise RuntimeError("a test sample reached the training data")

    # 2. Student: processor with the pixel budget, base model, LoRA on the language model.
    from transformers import TrainingArguments, set_seed

    from ..core.modeling import add_lora, load_model, load_processor

    # Seed before LoRA is created: torch's start-up seed is random per process, and the
    # Trainer only seeds later, so unseeded adapters made identical runs differ by points.
    set_seed(cfg.seed)
    processor, budget = load_processor(cfg.model, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    model = load_model(cfg.model, load_in_4bit=cfg.load_in_4bit)
    gradient_checkpointing = trainers.gradient_checkpointing(cfg)
    model = add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                     tune_vision=cfg.tune_vision, tune_merger=cfg.tune_merger,
                     gradient_checkpointing=gradient_checkpointing)
    collator = DistillCollator(processor, image_cols, cfg.max_length,
                               multi_task=bool(cfg.answer_rows) and cfg.rationale_rows)
    # Fail now, not hours into a GPU run, if the longest conversations do not fit max_length.
    for ex in sorted(train_ex + val_ex, key=lambda e: len(e.prompt) + len(e.target))[-4:]:
        collator.encode(ex)

    # 3. Run folder (fixed when resuming) and the Trainer.
    teacher_models = runs.teacher_models_of(df)
    run_dir, resume_from = runs.choose_run_dir(cfg, run_folder_name(cfg, teacher_models, len(train_ex)))

    has_val = bool(val_ex) and cfg.select_by != "last"
    if cfg.select_by != "last" and not val_ex:
        from rich.console import Console

        Console(stderr=True).print(f"[yellow]no val rows: --select-by {cfg.select_by} falls back to the last checkpoint[/]")
    metric = {"val_loss": "eval_loss", "val_accuracy": "eval_val_accuracy"}.get(cfg.select_by)
    if cfg.use_wandb:
        os.environ.setdefault("WANDB_PROJECT", cfg.wandb_project)
    # The arguments every recipe shares (trainers.trainer_arguments), plus what the collator needs.
    args = TrainingArguments(
        **trainers.trainer_arguments(cfg, run_dir, metric=metric if has_val else None,
                                 greater=cfg.select_by == "val_accuracy"),
        label_names=["labels"],
        ddp_find_unused_parameters=False,
        # val_loss needs the loss only; gathering every val batch's logits costs GPU memory.
        prediction_loss_only=True,
    )
    trainer = DistillTrainer(
        model=model, args=args, train_dataset=train_ex, eval_dataset=val_ex if has_val else None,
        data_collator=collator, callbacks=[*(callbacks or []), *trainers.step_checkpoints(cfg)],
        val_accuracy=(processor, cfg.max_new_tokens) if cfg.select_by == "val_accuracy" else None,
    )
    t_train = time.time()
    result = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.time() - t_train

    # 4. Save: plain peft adapter, the processor (chat template + pixel budget), the settings.
    if trainer.is_world_process_zero():
        config = runs.run_config(
            cfg, method="sft", data=data, processor=processor, model=model, budget=budget,
            merged_path=merged_path, teacher_models=teacher_models, base_model=cfg.model,
            rows={"train_examples": len(train_ex), "rationale_rows": n_rationale,
                  "answer_rows": len(train_ex) - n_rationale, "val_examples": len(val_ex),
                  "skipped_without_analysis": skipped, "train_split_rows": len(train_df)},
            prompt_sources={"train_examples": source_counts(train_ex), "val_examples": source_counts(val_ex)},
            trainer=trainer, select_by=cfg.select_by if has_val else "last", resume_from=resume_from,
            train_seconds=train_seconds, fold=cfg.fold,
        )
        runs.save_run(run_dir, model=model, processor=processor, data=data, trainer=trainer, config=config)
        calibrate_run(run_dir, model, processor, data, batch_size=max(cfg.batch_size, 4),
                      max_new_tokens=cfg.max_new_tokens)
        _print_summary(run_dir, result, trainer, len(train_ex), train_seconds, time.time() - t_start)
    return run_dir


def _print_summary(run_dir, result, trainer, n_train, train_seconds, total_seconds) -> None:
    rows = [("train examples", str(n_train)), ("optimizer steps", str(trainer.state.global_step)),
            ("train loss", f"{result.training_loss:.4f}"),
            ("samples/s", f"{result.metrics.get('train_samples_per_second', 0):.2f}")]
    if trainer.state.best_metric is not None:
        rows.append(("best val metric", f"{trainer.state.best_metric:.4f}"))
    runs.print_summary("train", run_dir, rows, train_seconds, total_seconds)


def _make_trainer_class():
    from transformers import Trainer

    class _DistillTrainer(Trainer):
        """Trainer that can also score greedy answers on the val rows (``select_by=val_accuracy``)."""

        def __init__(self, *args, val_accuracy=None, **kwargs):
            super().__init__(*args, **kwargs)
            self._val_accuracy = val_accuracy

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            if self._val_accuracy is not None and self.eval_dataset:
                from .trainers import val_accuracy

                processor, max_new_tokens = self._val_accuracy
                # Short budget, stop at the answer tag: val scoring stays affordable per epoch.
                metrics[f"{metric_key_prefix}_val_accuracy"] = val_accuracy(
                    self.model, processor, self.eval_dataset, self.data_collator.image_cols,
                    batch_size=self.args.per_device_eval_batch_size, max_new_tokens=max_new_tokens)
                self.log({f"{metric_key_prefix}_val_accuracy": metrics[f"{metric_key_prefix}_val_accuracy"]})
            return metrics

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # Multi-task runs: each task's mean over its own tokens in the micro-batch, summed
            # (distilling step-by-step's L_label + L_rationale), so a 3-token answer row weighs
            # as much as a rationale row of hundreds; a plain token mean would drown it. Every
            # micro-batch of such a run takes this path, one task or two, so that a task's
            # weight does not depend on what the shuffle put beside it.
            task = inputs.pop("answer_row", None)
            if task is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            import torch

            inputs.pop("labels", None)
            shift = inputs.pop("shift_labels")
            outputs = model(**inputs)
            per_token = torch.nn.functional.cross_entropy(
                outputs.logits.float().transpose(1, 2), shift.to(outputs.logits.device),
                ignore_index=IGNORE_INDEX, reduction="none")
            valid = shift.to(per_token.device) != IGNORE_INDEX
            rows = task.to(per_token.device)[:, None]
            loss = sum(per_token[valid & m].mean() for m in (rows, ~rows) if (valid & m).any())
            # the Trainer divides by the accumulation steps only a loss it thinks unscaled; this
            # one is a per-micro-batch mean, so scale it here when the Trainer will not
            if self.model_accepts_loss_kwargs and num_items_in_batch is not None and model.training:
                loss = loss / self.current_gradient_accumulation_steps
            return (loss, outputs) if return_outputs else loss

    return _DistillTrainer


def DistillTrainer(*args, **kwargs):  # noqa: N802 - a class built lazily (transformers import)
    return _make_trainer_class()(*args, **kwargs)
