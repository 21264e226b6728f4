"""LoRA fine-tuning of the Qwen-VL student on merge's train rows (the `train` recipe).

Read top to bottom: resolve the config, pick the train/val rows from the merged parquet's
split lists, build conversations, load the student with LoRA, let the transformers Trainer
run the loop, save a plain peft adapter plus everything evaluation needs to reproduce the
exact prompt, template and pixel budget.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import TrainConfig, resolve
from .conversation import PROMPT_TEMPLATE_ID, build_messages, load_images, prompt_template_hash
from .errors import UserError
from .examples import (
    Example,
    build_examples,
    load_training_data,
    source_counts,
    write_sample_prompts,
)

RUN_CONFIG = "training_config.json"
SAMPLE_PROMPTS = "prompts.parquet"  # every sample's prompt, as training chose it
PROMPT_TEMPLATES = "prompt_templates.json"
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- collator
class DistillCollator:
    """Examples -> model inputs with labels only on the assistant answer and its end token.

    The prompt is rendered with the generation prompt and run through the processor with the
    images (so image tokens are expanded exactly as at eval time); the answer is tokenized
    on its own and appended. Labels are -100 on the prompt, the images and the padding.
    Image tokens are never truncated: an over-long sample is an error.
    """

    def __init__(self, processor, image_cols: tuple[str, ...], max_length: int | None = None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_cols = image_cols
        self.max_length = max_length
        self.end_token = "<|im_end|>"
        self.end_id = self.tokenizer.convert_tokens_to_ids(self.end_token)
        self.pad_id = self.tokenizer.pad_token_id

    def encode(self, ex: Example) -> dict:
        import torch

        tmpl = self.processor.apply_chat_template
        n_images = len(self.image_cols)
        prompt_text = tmpl(build_messages(ex.prompt, n_images=n_images, layout=ex.layout),
                           add_generation_prompt=True, tokenize=False)
        full_text = tmpl(build_messages(ex.prompt, ex.target, n_images=n_images, layout=ex.layout), tokenize=False)
        # The label boundary relies on the template rendering the prompt as a strict prefix.
        if not full_text.startswith(prompt_text + ex.target + self.end_token):
            raise UserError(
                "the model's chat template does not render the prompt as a prefix of the "
                "conversation; cannot place the loss mask safely"
            )
        images = load_images(ex.row, self.image_cols)
        enc = self.processor(text=[prompt_text], images=images, return_tensors="pt")
        answer = self.tokenizer(ex.target, add_special_tokens=False)["input_ids"] + [self.end_id]
        n_prompt = enc["input_ids"].shape[1]
        out = {}
        for k, v in enc.items():
            if torch.is_tensor(v) and v.dim() == 2 and v.shape == enc["input_ids"].shape:
                extra = {"input_ids": answer, "attention_mask": [1] * len(answer)}.get(k, [0] * len(answer))
                out[k] = torch.cat([v[0], torch.tensor(extra, dtype=v.dtype)])
            else:
                out[k] = v
        out["labels"] = torch.cat(
            [torch.full((n_prompt,), IGNORE_INDEX), torch.tensor(answer)]
        )
        if self.max_length and out["input_ids"].shape[0] > self.max_length:
            raise UserError(
                f"sample {ex.key[0]}/{ex.key[1]} needs {out['input_ids'].shape[0]} tokens "
                f"({n_prompt} prompt incl. images + {len(answer)} answer) > max_length "
                f"{self.max_length}; lower --max-pixels or raise max_length"
            )
        return out

    def __call__(self, examples: list[Example]) -> dict:
        import torch

        encoded = [self.encode(ex) for ex in examples]
        width = max(e["input_ids"].shape[0] for e in encoded)
        batch: dict[str, Any] = {}
        for k in encoded[0]:
            vals = [e[k] for e in encoded]
            if vals[0].dim() == 1:  # per-token: right-pad to the batch width
                fill = {"input_ids": self.pad_id, "labels": IGNORE_INDEX}.get(k, 0)
                batch[k] = torch.stack(
                    [torch.cat([v, torch.full((width - len(v),), fill, dtype=v.dtype)]) for v in vals]
                )
            else:  # pixel_values / image_grid_thw: concatenated over all images of the batch
                batch[k] = torch.cat(vals, dim=0)
        if not (batch["labels"] != IGNORE_INDEX).any():
            raise ValueError("batch has no label tokens: the loss would be NaN")
        return batch


# ----------------------------------------------------------------------------- run folder
def run_folder_name(cfg: TrainConfig, teacher_models: list[str], n_train: int) -> str:
    """Like the original scripts: model, run name, teacher tag, timestamp, samples, epochs, lr, rank."""
    model_short = Path(cfg.model.rstrip("/")).name
    teacher = "gt" if cfg.target == "ground-truth" else _teacher_tag(teacher_models)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S")
    samples = cfg.num_samples if cfg.num_samples else "all"
    parts = [model_short, cfg.run_name, teacher, stamp, f"samples{samples}",
             f"epochs{cfg.epochs:g}", f"lr{cfg.learning_rate:g}", f"r{cfg.lora_r}"]
    return "_".join(_safe(p) for p in parts if p)


def _safe(part) -> str:
    return re.sub(r"[^\w.-]+", "-", str(part))


def _teacher_tag(models: list[str]) -> str:
    names = {m.lower() for m in models if m}
    if names and all("claude" in m for m in names):
        return "claude"
    return names.pop().split("-")[0] if len(names) == 1 else "teacher"


def find_resume_dir(cfg: TrainConfig) -> Path:
    """The run folder to continue: ``run_dir`` if given, else the newest matching one."""
    if cfg.run_dir is not None:
        return Path(cfg.run_dir)
    runs = sorted(
        (p for p in Path(cfg.output_dir).glob("*") if (p / "checkpoints").is_dir()
         and (cfg.run_name is None or f"_{_safe(cfg.run_name)}_" in p.name)),
        key=lambda p: p.stat().st_mtime,
    )
    if not runs:
        raise UserError(
            f"--resume: no run folder with checkpoints under {cfg.output_dir}"
            + (f" named *_{cfg.run_name}_*" if cfg.run_name else "")
            + "; pass --run-dir or train without --resume"
        )
    return runs[-1]


def last_checkpoint(run_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    ckpts = run_dir / "checkpoints"
    return get_last_checkpoint(str(ckpts)) if ckpts.is_dir() else None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("connectodistill", "torch", "transformers", "peft", "accelerate", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _shared_run_dir(local: Path) -> Path:
    """Under several processes (accelerate), every rank must use rank 0's folder name."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    if state.num_processes == 1:
        return local
    box = [str(local)]
    broadcast_object_list(box, from_process=0)
    return Path(box[0])


# ----------------------------------------------------------------------------- the recipe
def train(config: TrainConfig | None = None, *, callbacks: list | None = None, **overrides) -> Path:
    """Fine-tune the student with LoRA; return the run folder (adapter + training_config.json).

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (the Modal layer uses one
    to commit checkpoints to its volume).
    """
    cfg = resolve(TrainConfig, config, overrides)
    if cfg.folds:  # one student per cross-validation fold, each a run like this one
        from .cross_validation import train_cv

        return train_cv(cfg, callbacks=callbacks)
    t_start = time.time()

    # 1. Data: merge's split lists come from the parquet's own metadata, not from its rows,
    #    which may be filtered. Test rows are never read into the training set. Every example
    #    gets the teacher's own prompt (prompts.py: the rule and the fallbacks).
    from .data import sha256_file

    merged_path = Path(cfg.augmented_dataset)
    data = load_training_data(merged_path, prompt=cfg.prompt, with_description=cfg.with_description,
                              allow_mixed_prompts=cfg.allow_mixed_prompts, fold=cfg.fold)
    df, splits, image_cols, merge_report = data.df, data.splits, data.image_cols, data.report
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
    test_keys = {tuple(p) for p in splits.get("test", [])}
    if any(ex.key in test_keys for ex in train_ex + val_ex):  # cannot happen; guards the split logic
        raise RuntimeError("a test sample reached the training data")

    # 2. Student: processor with the pixel budget, base model, LoRA on the language model.
    import torch
    from transformers import TrainingArguments

    from .modeling import add_lora, load_model, load_processor

    processor, budget = load_processor(cfg.model, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    model = load_model(cfg.model, load_in_4bit=cfg.load_in_4bit)
    cuda = torch.cuda.is_available()
    gradient_checkpointing = cuda if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing
    model = add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                     tune_vision=cfg.tune_vision, tune_merger=cfg.tune_merger,
                     gradient_checkpointing=gradient_checkpointing)
    collator = DistillCollator(processor, image_cols, cfg.max_length)
    # Fail now, not hours into a GPU run, if the longest conversations do not fit max_length.
    for ex in sorted(train_ex + val_ex, key=lambda e: len(e.prompt) + len(e.target))[-4:]:
        collator.encode(ex)

    # 3. Run folder (fixed when resuming) and the Trainer.
    teacher_models = sorted({m for m in df.get("teacher_model", []) if isinstance(m, str)})
    if cfg.resume:
        run_dir = find_resume_dir(cfg)
    elif cfg.run_dir is not None:
        run_dir = Path(cfg.run_dir)
    else:
        run_dir = Path(cfg.output_dir) / run_folder_name(cfg, teacher_models, len(train_ex))
    run_dir = _shared_run_dir(run_dir)
    resume_from = last_checkpoint(run_dir) if cfg.resume else None
    if cfg.resume and resume_from is None:
        raise UserError(f"--resume: {run_dir} has no checkpoint to continue from")

    has_val = bool(val_ex) and cfg.select_by != "last"
    if cfg.select_by != "last" and not val_ex:
        from rich.console import Console

        Console(stderr=True).print(f"[yellow]no val rows: --select-by {cfg.select_by} falls back to the last checkpoint[/]")
    metric = {"val_loss": "eval_loss", "val_accuracy": "eval_val_accuracy"}.get(cfg.select_by)
    if cfg.use_wandb:
        os.environ.setdefault("WANDB_PROJECT", cfg.wandb_project)
    bf16 = cuda and torch.cuda.is_bf16_supported()
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="linear",
        weight_decay=cfg.weight_decay,
        bf16=bf16,
        logging_steps=cfg.logging_steps,
        eval_strategy="epoch" if has_val else "no",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=has_val,
        metric_for_best_model=metric if has_val else None,
        greater_is_better=cfg.select_by == "val_accuracy" if has_val else None,
        gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        report_to=["wandb"] if cfg.use_wandb else [],
        run_name=run_dir.name,
        seed=cfg.seed,
        remove_unused_columns=False,  # the collator needs the raw examples
        label_names=["labels"],
        dataloader_num_workers=0,
        disable_tqdm=not cfg.progress,
        ddp_find_unused_parameters=False,
    )
    trainer = DistillTrainer(
        model=model, args=args, train_dataset=train_ex, eval_dataset=val_ex if has_val else None,
        data_collator=collator, callbacks=callbacks or [],
        val_accuracy=(processor, cfg.max_new_tokens) if cfg.select_by == "val_accuracy" else None,
    )
    t_train = time.time()
    result = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.time() - t_train

    # 4. Save: plain peft adapter, the processor (chat template + pixel budget), the settings.
    if trainer.is_world_process_zero():
        model.save_pretrained(run_dir)
        processor.save_pretrained(run_dir)
        history = trainer.state.log_history
        (run_dir / "loss_history.json").write_text(json.dumps(history, indent=1))
        write_sample_prompts(data, run_dir / SAMPLE_PROMPTS)
        (run_dir / PROMPT_TEMPLATES).write_text(json.dumps(data.templates, indent=1))
        run_config = {
            "settings": cfg.model_dump(mode="json"),
            "base_model": cfg.model,
            "model_kind": _kind(model),
            "merged_file": str(merged_path),
            "merged_sha256": sha256_file(merged_path),
            "dataset_name": merge_report.get("dataset_name"),
            "config_name": merge_report.get("config_name"),
            "dataset_split": merge_report.get("dataset_split"),
            "teacher_models": teacher_models,
            "rows": {"train_examples": len(train_ex), "val_examples": len(val_ex),
                     "skipped_without_analysis": skipped, "train_split_rows": len(train_df)},
            # What the student was asked: the teacher's prompt (or the builtin one), per row.
            "prompt_source": cfg.prompt,
            "prompt_setting": data.setting,
            "prompt_setting_counts": data.setting_counts,
            "allow_mixed_prompts": cfg.allow_mixed_prompts,
            "prompt_sources": {"train_examples": source_counts(train_ex), "val_examples": source_counts(val_ex),
                               "samples": source_counts(list(data.sample_prompts.values()))},
            "rows_other_prompt_setting": data.dropped_other_setting,
            "prompt_template_id": PROMPT_TEMPLATE_ID,
            "prompt_template_hash": prompt_template_hash(),
            "with_description": data.setting != "without_description",
            "chat_template_sha256": hashlib.sha256((processor.chat_template or "").encode()).hexdigest(),
            "pixel_budget": budget,
            "image_columns": list(image_cols),
            # What really chose the kept weights: without val rows there is nothing to select on.
            "select_by": cfg.select_by if has_val else "last",
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "best_metric": trainer.state.best_metric,
            "global_step": trainer.state.global_step,
            "resumed_from": resume_from,
            "train_seconds": round(train_seconds, 2),
            "fold": cfg.fold,
            "splits": splits,
            "library_versions": library_versions(),
        }
        (run_dir / RUN_CONFIG).write_text(json.dumps(run_config, indent=1))
        _print_summary(run_dir, result, trainer, len(train_ex), train_seconds, time.time() - t_start)
    return run_dir


def _kind(model) -> str:
    from .modeling import model_kind

    return model_kind(model)


def _print_summary(run_dir, result, trainer, n_train, train_seconds, total_seconds) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="train", show_header=False)
    t.add_row("run folder", str(run_dir))
    t.add_row("train examples", str(n_train))
    t.add_row("optimizer steps", str(trainer.state.global_step))
    t.add_row("train loss", f"{result.training_loss:.4f}")
    t.add_row("samples/s", f"{result.metrics.get('train_samples_per_second', 0):.2f}")
    if trainer.state.best_metric is not None:
        t.add_row("best val metric", f"{trainer.state.best_metric:.4f}")
    t.add_row("time", f"{train_seconds:.1f} s training, {total_seconds:.1f} s total")
    Console(stderr=True).print(t)


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
                from .generation import generate_answers
                from .scoring import option_descriptions, parse_response

                processor, max_new_tokens = self._val_accuracy
                examples = self.eval_dataset
                # Short budget, stop at the answer tag: val scoring stays affordable per epoch.
                responses = generate_answers(
                    self.model, processor, [ex.prompt for ex in examples],
                    [load_images(ex.row, self.data_collator.image_cols) for ex in examples],
                    layouts=[ex.layout for ex in examples], stop_at_answer=True,
                    batch_size=self.args.per_device_eval_batch_size, max_new_tokens=max_new_tokens,
                )
                truth = [re.search(r"<answer>(.)</answer>", ex.target).group(1) for ex in examples]
                hits = [parse_response(r, option_descriptions(ex.prompt))[1] == t
                        for r, t, ex in zip(responses, truth, examples, strict=True)]
                metrics[f"{metric_key_prefix}_val_accuracy"] = sum(hits) / len(hits)
                self.log({f"{metric_key_prefix}_val_accuracy": metrics[f"{metric_key_prefix}_val_accuracy"]})
            return metrics

    return _DistillTrainer


def DistillTrainer(*args, **kwargs):  # noqa: N802 - a class built lazily (transformers import)
    return _make_trainer_class()(*args, **kwargs)
