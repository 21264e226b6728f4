"""What an eval scores and how: the run's settings (or the flags'), the samples, their prompts.

``run_settings`` reads an adapter's ``training_config.json`` (or an exported model's manifest)
so that a student is scored exactly as it was trained, refusing a conflicting flag unless
``allow_config_mismatch``; ``select_samples`` picks the split's rows and refuses train samples;
``choose_prompts`` gives each sample the prompt its training recorded (prompts.py has the rule).
Shared by ``evaluation`` and ``prediction``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..core.config import EvalConfig
from ..core.conversation import SIMPLE_PROMPT, build_prompt, prompt_template_hash
from ..core.errors import UserError
from ..core.paths import locate, same_input
from ..core.prompts import SamplePrompt, choose_setting, first_stored, sample_prompts
from ..core.task import (
    DEFAULT_CONFIG,
    DEFAULT_DATASET,
    DEFAULT_DATASET_SPLIT,
    ID_COLUMNS,
    label_column,
)
from ..training.run_folders import EXPORT_MANIFEST
from ..training.runs import PROMPT_TEMPLATES, RUN_CONFIG, SAMPLE_PROMPTS

_INPUTS = ("base_model", "dataset_name")  # compared by what they are, not by spelling

__all__ = ["choose_prompts", "default_name", "mismatch", "run_settings", "select_samples", "train_keys"]


def run_settings(cfg: EvalConfig) -> dict[str, Any]:
    """What to evaluate and how: from the adapter's training_config.json (or an exported
    model's connectodistill_export.json, the same fields), or from the flags. Predict reads a
    run through this too, so it sees the run exactly as eval does."""
    if cfg.adapter_path is not None and cfg.model is not None:
        raise UserError("pass either --adapter-path RUN or --model EXPORTED_FOLDER, not both")
    if cfg.adapter_path is not None or cfg.model is not None:
        run_dir = Path(cfg.adapter_path if cfg.adapter_path is not None else cfg.model)
        config_file = RUN_CONFIG if cfg.adapter_path is not None else EXPORT_MANIFEST
        if not (run_dir / config_file).is_file():
            what = "a run folder written by `connectodistill train`" if cfg.adapter_path is not None else \
                "a folder written by `connectodistill export`"
            raise UserError(f"{run_dir}: no {config_file}; pass {what}")
        try:
            run = json.loads((run_dir / config_file).read_text())
            run["base_model"], run["pixel_budget"]["max_pixels"], run["splits"]  # noqa: B018
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{run_dir / config_file}: unreadable or incomplete ({e}); re-run train") from e
        # Recorded inputs found from here, even after the run and its inputs moved (core/paths.py);
        # one given as a flag replaces it below, so only then is a missing one not an error.
        s = {
            # an exported folder is its own base model: the adapter is merged into it
            "base_model": locate(run, "base_model", run_dir, what=None if cfg.base_model else "base model")
            if cfg.adapter_path is not None else str(run_dir),
            # as recorded: remote calls link an uploaded copy under it (remote/predict.py)
            "recorded_base_model": run["base_model"] if cfg.adapter_path is not None else str(run_dir),
            "dataset_name": locate(run, "dataset_name", run_dir, what=None if cfg.dataset_name else "benchmark"),
            "config_name": run.get("config_name"),
            "dataset_split": run.get("dataset_split"),
            "with_description": run.get("with_description", True),
            "min_pixels": run["pixel_budget"]["min_pixels"],
            "max_pixels": run["pixel_budget"]["max_pixels"],
            "splits": run["splits"],
            "processor_from": str(run_dir),
            "chat_template_sha256": run.get("chat_template_sha256"),
            # runs from before prompt sources were recorded used the builtin template
            "prompt": run.get("prompt_source", "builtin"),
            "prompt_setting": run.get("prompt_setting") or (
                "with_description" if run.get("with_description", True) else "without_description"),
            "prompts_file": run_dir / SAMPLE_PROMPTS,
            "templates_file": run_dir / PROMPT_TEMPLATES,
            # share of the train samples that had answer rows (one-pass answers were trained)
            "answer_rows": float((run.get("settings") or {}).get("answer_rows") or 0.0),
        }
        if cfg.prompt is not None and cfg.prompt != s["prompt"]:
            mismatch(cfg, "--prompt", s["prompt"], cfg.prompt)
            s["prompt"] = cfg.prompt
        if run.get("prompt_template_hash") != prompt_template_hash() and s["prompt"] == "builtin":
            mismatch(cfg, "prompt template", run.get("prompt_template_hash"), prompt_template_hash())
        if cfg.merged is not None:  # a different merge would mean different split lists
            from ..core.data import read_merged

            if read_merged(cfg.merged, columns=[])[1].get("splits") != run["splits"]:
                mismatch(cfg, "--merged split lists", "the run's", str(cfg.merged))
        for flag, key in (("base_model", "base_model"), ("dataset_name", "dataset_name"),
                          ("config_name", "config_name"), ("dataset_split", "dataset_split"),
                          ("with_description", "with_description"), ("min_pixels", "min_pixels"),
                          ("max_pixels", "max_pixels")):
            given = getattr(cfg, flag)
            # the same input by another spelling (an absolute path, a copy) is no mismatch
            if given is not None and given != s[key] and not (key in _INPUTS and same_input(given, s[key])):
                mismatch(cfg, f"--{flag.replace('_', '-')}", s[key], given)
                s[key] = given
        return s
    if cfg.base_model is None:
        raise UserError("nothing to evaluate: pass --adapter-path RUN_DIR or --base-model ID_OR_PATH")
    report: dict[str, Any] = {}
    responses = None
    setting = "with_description"
    if cfg.merged is not None:
        from ..core.data import read_merged

        # Only the report: the images are not needed here.
        report = read_merged(cfg.merged, columns=[])[1]
        responses = _merged_responses(Path(cfg.merged))
        # The same rule as train: the setting asked for, else the one most responses carry.
        flags = list(responses["teacher_with_description"]) if responses is not None else []
        setting = choose_setting(flags, cfg.with_description)[0]
    elif cfg.with_description is not None:
        setting = "with_description" if cfg.with_description else "without_description"
    prompt = cfg.prompt or ("teacher" if responses is not None else "builtin")
    if prompt == "teacher" and responses is None:
        raise UserError("--prompt teacher needs the teacher's prompts: pass --merged MERGED.parquet")
    return {
        "base_model": cfg.base_model,
        "dataset_name": cfg.dataset_name or locate(report, "dataset_name", Path(cfg.merged or ".").parent)
        or DEFAULT_DATASET,
        "config_name": cfg.config_name or report.get("config_name") or DEFAULT_CONFIG,
        "dataset_split": cfg.dataset_split or report.get("dataset_split") or DEFAULT_DATASET_SPLIT,
        "with_description": setting != "without_description",
        "min_pixels": cfg.min_pixels,
        "max_pixels": cfg.max_pixels,
        "splits": report.get("splits"),
        "processor_from": cfg.base_model,
        "chat_template_sha256": None,
        "prompt": prompt,
        "prompt_setting": setting,
        "responses": responses,
        "templates": report.get("prompt_templates") or {},
    }


def _merged_responses(merged: Path):
    """The responses file merge wrote beside ``merged`` (ids, prompts, settings), or None."""
    import pandas as pd

    from ..merging.recipe import output_paths

    path = output_paths(merged)[1]
    if not path.is_file():
        return None
    cols = ["proofread_root_id", "current_root_id", "teacher_prompt", "teacher_prompt_layout",
            "teacher_with_description", "teacher_order"]
    import pyarrow.parquet as pq

    have = set(pq.read_schema(path).names)
    if "teacher_prompt" not in have:
        return None
    return pd.read_parquet(path, columns=[c for c in cols if c in have])


def choose_prompts(rows: list[dict], settings: dict, cfg: EvalConfig) -> list[SamplePrompt]:
    """The prompt each evaluated sample is given (prompts.py has the rule).

    An adapter's samples get exactly the prompt its training recorded for them (its
    ``prompts.parquet``); other samples the run's template, else the builtin prompt. A base
    model with ``--merged`` gets the teacher's stored prompts the same way train chooses them.
    """
    guidance = settings["with_description"]
    if cfg.simple_prompt:
        return [SamplePrompt(SIMPLE_PROMPT, "builtin") for _ in rows]

    def builtin(row):
        return build_prompt(row, with_description=guidance)

    if settings["prompt"] == "builtin":
        return [SamplePrompt(builtin(r), "builtin") for r in rows]
    stored: dict = {}
    templates = settings.get("templates") or {}
    recorded: dict = {}
    if settings.get("prompts_file") is not None:
        pf, tf = Path(settings["prompts_file"]), Path(settings["templates_file"])
        if pf.is_file():
            import pandas as pd

            t = pd.read_parquet(pf)
            for p, c, text, src, lay in zip(t["proofread_root_id"], t["current_root_id"], t["prompt"],
                                            t["prompt_source"], t["prompt_layout"], strict=True):
                recorded[(int(p), int(c))] = SamplePrompt(text, src, lay if isinstance(lay, str) else None)
        if tf.is_file():
            templates = json.loads(tf.read_text())
    else:
        stored = first_stored(settings.get("responses"), settings["prompt_setting"])[0]
    chosen = sample_prompts(rows, stored, templates, settings["prompt_setting"], builtin)
    keys = [(int(r[ID_COLUMNS[0]]), int(r[ID_COLUMNS[1]])) for r in rows]
    return [recorded.get(k, p) for k, p in zip(keys, chosen, strict=True)]


def mismatch(cfg: EvalConfig, what: str, trained: Any, given: Any) -> None:
    if not cfg.allow_config_mismatch:
        raise UserError(
            f"{what} differs from the adapter's training ({trained!r} vs {given!r}); "
            "drop the flag or pass --allow-config-mismatch"
        )


def select_samples(bench, settings: dict, cfg: EvalConfig):
    """Benchmark rows to score (pandas), the split name, and whether train samples are included."""
    import pyarrow as pa

    for col in ID_COLUMNS:
        if col not in bench.column_names or not pa.types.is_integer(bench.schema.field(col).type):
            raise UserError(
                f"benchmark {settings['dataset_name']}: column {col} missing or not integer "
                "(18-digit ids must be stored as int64)"
            )
    if label_column(bench.column_names) is None:
        raise UserError(f"benchmark {settings['dataset_name']}: no ground_truth/class_description column")
    df = bench.to_pandas()
    splits = settings["splits"]
    split = cfg.split or ("test" if splits else "all")
    if split != "all":
        if not splits:
            raise UserError(f"--split {split} needs the split lists: pass --merged or --adapter-path")
        keys = {tuple(int(x) for x in pair) for pair in splits.get(split, [])}
        mask = [(int(p), int(c)) in keys for p, c in zip(df[ID_COLUMNS[0]], df[ID_COLUMNS[1]], strict=True)]
        df = df[mask]
    trained = train_keys(settings)
    includes_train = (cfg.adapter_path is not None or cfg.model is not None) and any(
        (int(p), int(c)) in trained for p, c in zip(df[ID_COLUMNS[0]], df[ID_COLUMNS[1]], strict=True)
    )
    if includes_train and not cfg.allow_train_samples:
        raise UserError(
            f"--split {split} includes samples this adapter trained on; "
            "evaluate on test/val or pass --allow-train-samples (results are then flagged)"
        )
    if split == "all" and not splits:
        from rich.console import Console

        Console(stderr=True).print(
            f"[yellow]no split lists (no --merged, no adapter): scoring all {len(df)} samples of "
            f"{settings['dataset_name']}[/]"
        )
    if cfg.num_samples:
        df = df.head(cfg.num_samples)
    if df.empty:
        raise UserError(f"no samples selected (split {split!r} of {settings['dataset_name']})")
    return df, split, includes_train


def train_keys(settings: dict) -> set[tuple[int, int]]:
    return {tuple(int(x) for x in p) for p in (settings["splits"] or {}).get("train", [])}


def default_name(cfg: EvalConfig, settings: dict, split: str) -> str:
    student = cfg.adapter_path or cfg.model
    base = Path(student).name if student else "base_" + Path(settings["base_model"].rstrip("/")).name
    tags = [base, split] + (["blank-images"] if cfg.blank_images else []) + (["simple-prompt"] if cfg.simple_prompt else [])
    return re.sub(r"[^\w.-]+", "-", "_".join(tags))
