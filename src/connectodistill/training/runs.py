"""What every training recipe (``sft``, ``dpo``, ``grpo``) shares about a run folder.

A run folder is what ``eval`` and ``report`` read, whatever recipe wrote it: the adapter
(plain peft, at the folder root), the processor (chat template + pixel budget), every sample's
prompt (``prompts.parquet``, ``prompt_templates.json``), ``loss_history.json``, ``checkpoints/``
and, written last (so its presence means "finished"), ``training_config.json``.

This module owns:

- the folder: its name, where ``--resume`` continues, the last checkpoint, multi-process naming;
- the parent of a continued run (``--from RUN``): checked, its settings, its student and
  processor loaded as they were trained, its merged data read with its prompt settings;
- what the TRL recipes share: training arguments, selection on the val samples, a dataset
  whose images are decoded only when a batch needs them;
- writing the folder: ``run_config`` (the provenance every recipe records) and ``save_run``.

Heavy imports (torch, transformers, peft, datasets) happen inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..core.config import TrainConfig
from ..core.errors import UserError
from .trainers import gradient_checkpointing

RUN_CONFIG = "training_config.json"
SAMPLE_PROMPTS = "prompts.parquet"  # every sample's prompt, as training chose it
PROMPT_TEMPLATES = "prompt_templates.json"
LOSS_HISTORY = "loss_history.json"
ADAPTER_CONFIG = "adapter_config.json"
# The answer-only ("no-thinking") variant: the generation prompt ends with an empty analysis,
# so the student's turn is the answer alone (as Qwen3's enable_thinking=False empties <think>).
ANSWER_ONLY_PREFILL = "<analysis></analysis>\n"


# ----------------------------------------------------------------------------- the folder
def run_folder_name(cfg: TrainConfig, teacher_models: list[str], n_train: int, *,
                    model: str | None = None, lora_r: int | None = None) -> str:
    """Like the original scripts: model, run name, teacher tag, [method], timestamp, samples,
    epochs, lr, rank. ``model``/``lora_r``: a continued run's own (its parent's) values."""
    model_short = Path((model or cfg.model).rstrip("/")).name
    teacher = "gt" if cfg.target == "ground-truth" else _teacher_tag(teacher_models)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S")
    samples = cfg.num_samples if cfg.num_samples else "all"
    method = cfg.method if cfg.method != "sft" else None
    parts = [model_short, cfg.run_name, teacher, method, stamp, f"samples{samples}",
             f"epochs{cfg.epochs:g}", f"lr{cfg.learning_rate:g}", f"r{lora_r or cfg.lora_r}"]
    return "_".join(_safe(p) for p in parts if p)


def _safe(part) -> str:
    return re.sub(r"[^\w.-]+", "-", str(part))


def _teacher_tag(models: list[str]) -> str:
    names = {m.lower() for m in models if m}
    if names and all("claude" in m for m in names):
        return "claude"
    return names.pop().split("-")[0] if len(names) == 1 else "teacher"


def _method_matches(name: str, method: str) -> bool:
    tagged = {m for m in ("dpo", "grpo") if f"_{m}_" in name}
    return (method in tagged) if method != "sft" else not tagged


def find_resume_dir(cfg: TrainConfig) -> Path:
    """The run folder to continue: ``run_dir`` if given, else the newest matching one
    (same run name, same method)."""
    if cfg.run_dir is not None:
        return Path(cfg.run_dir)
    runs = sorted(
        (p for p in Path(cfg.output_dir).glob("*") if (p / "checkpoints").is_dir()
         and (cfg.run_name is None or f"_{_safe(cfg.run_name)}_" in p.name)
         and _method_matches(p.name, cfg.method)),
        key=lambda p: p.stat().st_mtime,
    )
    if not runs:
        raise UserError(
            f"--resume: no {cfg.method} run folder with checkpoints under {cfg.output_dir}"
            + (f" named *_{cfg.run_name}_*" if cfg.run_name else "")
            + "; pass --run-dir or train without --resume"
        )
    return runs[-1]


def last_checkpoint(run_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    ckpts = Path(run_dir) / "checkpoints"
    return get_last_checkpoint(str(ckpts)) if ckpts.is_dir() else None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("connectodistill", "torch", "transformers", "peft", "accelerate", "datasets", "trl"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def shared_run_dir(local: Path) -> Path:
    """Under several processes (accelerate), every rank must use rank 0's folder name."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    if state.num_processes == 1:
        return local
    box = [str(local)]
    broadcast_object_list(box, from_process=0)
    return Path(box[0])


def choose_run_dir(cfg: TrainConfig, name: str) -> tuple[Path, str | None]:
    """(run folder, checkpoint to resume from): ``--resume`` finds it, ``--run-dir`` fixes it,
    else ``output_dir/name``."""
    if cfg.resume:
        run_dir = find_resume_dir(cfg)
    elif cfg.run_dir is not None:
        run_dir = Path(cfg.run_dir)
    else:
        run_dir = Path(cfg.output_dir) / name
    run_dir = shared_run_dir(run_dir)
    resume_from = last_checkpoint(run_dir) if cfg.resume else None
    if cfg.resume and resume_from is None:
        raise UserError(f"--resume: {run_dir} has no checkpoint to continue from")
    return run_dir, resume_from


# ----------------------------------------------------------------------------- the parent run
@dataclass
class ParentRun:
    """A finished run folder that a dpo/grpo run continues (``--from``)."""

    path: Path
    config: dict  # its training_config.json
    adapter: dict  # its adapter_config.json

    @property
    def settings(self) -> dict:
        return self.config.get("settings") or {}

    @property
    def base_model(self) -> str:
        from ..core.paths import locate

        return locate(self.config, "base_model", self.path, what="the parent run's base model")

    @property
    def merged_file(self) -> str | None:
        from ..core.paths import locate

        return locate(self.config, "merged_file", self.path)

    @property
    def method(self) -> str:
        return self.config.get("method", "sft")

    @property
    def lora_r(self) -> int | None:
        return self.adapter.get("r")


def load_parent(path: Path | None, method: str) -> ParentRun:
    """The run folder ``path`` (checked: adapter, processor settings, splits), or UserError."""
    if path is None:
        raise UserError(f"--method {method} continues an SFT student: pass --from RUN_DIR (a folder "
                        "written by `connectodistill train`)")
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"--from {p}: no such folder; pass a run folder written by `connectodistill train`")
    missing = [f for f in (RUN_CONFIG, ADAPTER_CONFIG) if not (p / f).is_file()]
    if not any((p / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        missing.append("adapter_model.safetensors")
    if missing:
        raise UserError(f"--from {p}: not a finished run folder (no {', '.join(missing)}); pass a folder "
                        "written by `connectodistill train`")
    try:
        config = json.loads((p / RUN_CONFIG).read_text())
        adapter = json.loads((p / ADAPTER_CONFIG).read_text())
        config["base_model"], config["pixel_budget"]["max_pixels"], config["pixel_budget"]["min_pixels"]  # noqa: B018
        config["splits"]["train"]  # noqa: B018
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"--from {p}: {RUN_CONFIG} unreadable or incomplete ({e}); re-run train") from e
    return ParentRun(path=p, config=config, adapter=adapter)


def continued_settings(cfg: TrainConfig) -> TrainConfig:
    """A dpo/grpo config with the parent's base model and merged file where left at their
    defaults (checked: ``--from`` must be a run), so that ``--remote`` uploads the right inputs."""
    from ..core.task import DEFAULT_MODEL

    parent = load_parent(cfg.from_run, cfg.method)
    updates: dict = {}
    if cfg.model == DEFAULT_MODEL:
        updates["model"] = parent.base_model
    default = TrainConfig.model_fields["augmented_dataset"].default
    if Path(cfg.augmented_dataset) == default and not default.is_file() and parent.merged_file:
        updates["augmented_dataset"] = parent.merged_file
    return TrainConfig(**{**cfg.model_dump(), **updates}) if updates else cfg


def _split_sets(splits: dict) -> dict[str, set]:
    return {k: {tuple(int(x) for x in pair) for pair in v} for k, v in (splits or {}).items()}


def parent_training_data(parent: ParentRun, cfg: TrainConfig):
    """The merged data read exactly as the parent read it: same prompt source and setting, same
    fold, the same split lists (else UserError), and every sample's prompt from the parent's
    own ``prompts.parquet``. ``--data`` defaults to the parent's merged file."""
    from ..core.prompts import SamplePrompt
    from .examples import load_training_data

    merged = Path(cfg.augmented_dataset)
    default = TrainConfig.model_fields["augmented_dataset"].default
    if merged == default and not merged.is_file() and parent.merged_file:
        merged = Path(parent.merged_file)
    s = parent.settings
    fold = s.get("fold", parent.config.get("fold"))
    if cfg.fold is not None and cfg.fold != fold:
        raise UserError(f"--fold {cfg.fold} differs from the parent run's fold ({fold}); drop the flag")
    if cfg.folds:
        raise UserError("--folds trains every fold with SFT; continue each fold's run with --from instead")
    kwargs = {"fold": fold} if fold is not None else {}
    data = load_training_data(merged, prompt=parent.config.get("prompt_source", s.get("prompt", "teacher")),
                              with_description=s.get("with_description"),
                              allow_mixed_prompts=bool(s.get("allow_mixed_prompts", False)), **kwargs)
    if _split_sets(data.splits) != _split_sets(parent.config["splits"]):
        raise UserError(f"{merged}: its split lists differ from those of the run {parent.path}; pass the "
                        "merged file the run was trained on (--data)")
    if parent.config.get("prompt_setting") and data.setting != parent.config["prompt_setting"]:
        raise UserError(f"{merged}: prompt setting {data.setting} differs from the run's "
                        f"{parent.config['prompt_setting']}")
    prompts_file = parent.path / SAMPLE_PROMPTS
    if prompts_file.is_file():
        import pandas as pd

        t = pd.read_parquet(prompts_file)
        for p, c, text, src, lay in zip(t["proofread_root_id"], t["current_root_id"], t["prompt"],
                                        t["prompt_source"], t["prompt_layout"], strict=True):
            data.sample_prompts[(int(p), int(c))] = SamplePrompt(text, src, lay if isinstance(lay, str) else None)
    templates_file = parent.path / PROMPT_TEMPLATES
    if templates_file.is_file():
        data.templates = json.loads(templates_file.read_text())
    return data


def continue_parent(parent: ParentRun, cfg: TrainConfig):
    """(PeftModel with the parent's adapter trainable, processor, pixel budget): the student as
    the parent trained and saved it (processor and chat template from the run folder)."""
    from ..core.modeling import load_model, load_processor
    from ..core.task import DEFAULT_MODEL

    budget = parent.config["pixel_budget"]
    for flag, value in (("min_pixels", cfg.min_pixels), ("max_pixels", cfg.max_pixels)):
        if value is not None and value != budget[flag]:
            raise UserError(f"--{flag.replace('_', '-')} {value} differs from the parent run's {budget[flag]}; "
                            "a continued run keeps its parent's pixel budget")
    from ..core.paths import same_input

    if cfg.model != DEFAULT_MODEL and not same_input(cfg.model, parent.base_model):
        raise UserError(f"--model {cfg.model} differs from the parent run's base model {parent.base_model}; "
                        "drop the flag")
    processor, budget = load_processor(parent.path, min_pixels=budget["min_pixels"], max_pixels=budget["max_pixels"])
    want = parent.config.get("chat_template_sha256")
    if want and chat_template_sha256(processor) != want:
        raise UserError(f"{parent.path}: the saved processor's chat template does not match the run's record")
    model = load_model(parent.base_model, load_in_4bit=cfg.load_in_4bit)
    if getattr(model, "is_loaded_in_4bit", False):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(gradient_checkpointing(cfg)),
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    from ..core.modeling import load_adapter

    model = load_adapter(model, parent.path, is_trainable=True)
    return model, processor, budget


def chat_template_sha256(processor) -> str:
    return hashlib.sha256((processor.chat_template or "").encode()).hexdigest()


def answer_only_template(processor) -> str:
    """The processor's chat template with ``ANSWER_ONLY_PREFILL`` at the end of the generation
    prompt, after whatever the template writes there (Qwen3.5: an empty think block); checked
    by rendering (UserError when the prompt does not end as asked, or the conversation changes)."""
    template = processor.chat_template or ""
    prefill = ANSWER_ONLY_PREFILL.replace("\n", "\\n")
    # A template writes its generation prompt last, so text added at its very end follows it.
    new = template + "{%- if add_generation_prompt -%}{{- '" + prefill + "' -}}{%- endif -%}"
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    full = messages + [{"role": "assistant", "content": [{"type": "text", "text": "y"}]}]

    def render(tmpl, msgs, gen):
        return processor.apply_chat_template(msgs, chat_template=tmpl, add_generation_prompt=gen, tokenize=False)

    prompt = render(template, messages, True) if template else ""
    if not template or prompt.rfind("<|im_start|>assistant\n") < prompt.rfind("<|im_end|>") \
            or render(new, messages, True) != prompt + ANSWER_ONLY_PREFILL \
            or render(new, full, False) != render(template, full, False):
        raise UserError("--answer-only: cannot add an empty analysis to this model's chat template "
                        "(no '<|im_start|>assistant\\n' generation prompt)")
    return new


# ----------------------------------------------------------------------------- writing the folder
def run_config(cfg: TrainConfig, *, method: str, data, processor, model, budget: dict, merged_path: Path,
               teacher_models: list[str], rows: dict, prompt_sources: dict, trainer, select_by: str,
               resume_from: str | None, train_seconds: float, base_model: str, fold: int | None = None,
               **extra) -> dict:
    """The provenance every recipe records in ``training_config.json`` (what eval and report read:
    base model, dataset, prompt source and setting, chat template, pixel budget, splits), plus
    the recipe's own ``extra`` keys."""
    from ..core.conversation import PROMPT_TEMPLATE_ID, prompt_template_hash
    from ..core.data import sha256_file
    from ..core.modeling import model_kind
    from ..core.paths import PATHS_KEY, locate
    from .examples import source_counts

    report = data.report
    # The inputs as found now; save_run records them absolute and relative to the run folder.
    inputs = {"base_model": base_model, "merged_file": str(merged_path),
              "dataset_name": locate(report, "dataset_name", Path(merged_path).parent)}
    return {
        "method": method,
        "settings": cfg.model_dump(mode="json"),
        "base_model": base_model,
        "model_kind": model_kind(model),
        "merged_file": str(merged_path),
        "merged_sha256": sha256_file(merged_path),
        "dataset_name": report.get("dataset_name"),
        "config_name": report.get("config_name"),
        "dataset_split": report.get("dataset_split"),
        "teacher_models": teacher_models,
        "rows": rows,
        # What the student was asked: the teacher's prompt (or the builtin one), per row.
        "prompt_source": data.prompt,
        "prompt_setting": data.setting,
        "prompt_setting_counts": data.setting_counts,
        "allow_mixed_prompts": data.allow_mixed,
        "prompt_sources": {**prompt_sources, "samples": source_counts(list(data.sample_prompts.values()))},
        "rows_other_prompt_setting": data.dropped_other_setting,
        "prompt_template_id": PROMPT_TEMPLATE_ID,
        "prompt_template_hash": prompt_template_hash(),
        "with_description": data.setting != "without_description",
        "chat_template_sha256": chat_template_sha256(processor),
        "pixel_budget": budget,
        "image_columns": list(data.image_cols),
        # What really chose the kept weights: without val rows there is nothing to select on.
        "select_by": select_by,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,
        "global_step": trainer.state.global_step,
        "resumed_from": resume_from,
        "train_seconds": round(train_seconds, 2),
        "dataloader_workers": trainer.args.dataloader_num_workers,
        "fold": fold,
        "splits": data.splits,
        **extra,
        "library_versions": library_versions(),
        PATHS_KEY: inputs,
    }


def save_run(run_dir: Path, *, model, processor, data, trainer, config: dict) -> Path:
    """Adapter (the trained one only, at the root), processor, loss history, every sample's
    prompt and the templates, then ``training_config.json`` last."""
    from ..core.paths import PATHS_KEY, record_paths
    from .examples import write_sample_prompts

    run_dir = Path(run_dir)
    config = {**config, PATHS_KEY: record_paths(config.get(PATHS_KEY) or {}, run_dir)}
    names = list(getattr(model, "peft_config", {}) or {})
    model.save_pretrained(run_dir, **({"selected_adapters": ["default"]} if "default" in names else {}))
    # A batched call (TRL pads left) leaves padding switched on in the fast tokenizer's backend,
    # which tokenizer.json would keep: every caller pads per call, so save it off.
    backend = getattr(getattr(processor, "tokenizer", None), "backend_tokenizer", None)
    if backend is not None and backend.padding is not None:
        backend.no_padding()
    processor.save_pretrained(run_dir)
    (run_dir / LOSS_HISTORY).write_text(json.dumps(trainer.state.log_history, indent=1))
    write_sample_prompts(data, run_dir / SAMPLE_PROMPTS)
    (run_dir / PROMPT_TEMPLATES).write_text(json.dumps(data.templates, indent=1))
    (run_dir / RUN_CONFIG).write_text(json.dumps(config, indent=1))
    return run_dir


def print_summary(title: str, run_dir: Path, rows: list[tuple[str, str]], train_seconds: float,
                  total_seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_header=False)
    for k, v in rows:
        t.add_row(k, v)
    t.add_row("time", f"{train_seconds:.1f} s training, {total_seconds:.1f} s total")
    console = Console(stderr=True)
    console.print(t)
    # Whole, on a line of its own (a table cell would cut it): the next command needs it.
    console.print(f"run folder: {run_dir}", soft_wrap=True, highlight=False, markup=False)


def teacher_models_of(df) -> list[str]:
    return sorted({m for m in df.get("teacher_model", []) if isinstance(m, str)})

