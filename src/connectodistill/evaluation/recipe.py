"""Held-out evaluation (the `eval` recipe): batched greedy generation (or one-pass answers),
parsed answers, calibrated confidence, metrics.

Settings that shape what the model sees (base model, benchmark, prompt template, guidance,
chat template, pixel budget, split lists) come from the adapter's ``training_config.json``,
so a student is scored exactly as it was trained; a conflicting flag is refused unless
``allow_config_mismatch``. Unparsed answers count as wrong. Confidence is the letter
probability at the run's temperature for the answer mode, fit on val (``calibration.json``,
``training/calibrate.py``); a run without one is fit here on its val split, and says so.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..core.config import EvalConfig, resolve
from ..core.conversation import (
    PROMPT_TEMPLATE_ID,
    load_images,
    prompt_template_hash,
    sample_name,
)
from ..core.errors import UserError
from ..core.generation import generate_answers, letter_probabilities, one_pass_probabilities
from ..core.paths import PATHS_KEY, record_paths
from ..core.task import (
    ID_COLUMNS,
    image_columns,
    label_column,
)
from ..training.run_folders import chosen_run, is_cv_run, is_sweep
from .inputs import (
    choose_prompts,
    default_name,
    mismatch,
    run_settings,
    select_samples,
    train_keys,
)
from .results import (  # noqa: F401 - importable from here too
    _json_default,
    confidence_summary,
    plot_confidence,
    plot_confusion,
    print_summary,
    read_predictions,
    sample_ids_hash,
    write_predictions,
)

PREDICTION_COLUMNS = (
    "proofread_root_id", "current_root_id", "species", "ground_truth_letter", "predicted_letter",
    "parsed", "correct", "analysis", "response", "in_train", "prompt_source", "prompt_sha256", "split_group",
    "p_a", "p_b", "p_c", "p_d", "p_e", "p_f", "p_g", "confidence",  # calibrated (the run's temperature)
    "confidence_raw", "temperature", "mode",  # with --votes: vote_letter, vote_share, vote_letters
)


# ----------------------------------------------------------------------------- the recipe
def evaluate(config: EvalConfig | None = None, **overrides) -> Path:
    """Score a student (adapter) or a base model on held-out samples; return the output folder."""
    cfg = resolve(EvalConfig, config, overrides)
    from .pooled import evaluate_cv

    if is_sweep(cfg.adapter_path):  # a sweep folder: its chosen point (chosen on val)
        cfg = cfg.model_copy(update={"adapter_path": chosen_run(cfg.adapter_path)})

    if is_cv_run(cfg.adapter_path):  # each fold on its own test fold, pooled
        return evaluate_cv(cfg, evaluate_folds=lambda cfgs: [evaluate(c) for c in cfgs])

    # 1. Settings and samples: the adapter's test ids by default, from the full benchmark.
    settings = run_settings(cfg)
    from ..core.data import load_benchmark

    bench = load_benchmark(settings["dataset_name"], settings["config_name"], settings["dataset_split"])
    df, split, includes_train = select_samples(bench, settings, cfg)
    if cfg.target_accuracy is not None and not (settings["splits"] or {}).get("val"):
        raise UserError("--target-accuracy chooses its threshold on the val split, and there are no val "
                        "samples: pass --adapter-path RUN or --merged MERGED.parquet with a val split")
    # Leak-proof groups over the whole benchmark (samples sharing either id): intervals
    # resample whole groups, since a neuron's segments are correlated.
    from ..merging.splits import leak_groups

    groups = leak_groups(bench.column(ID_COLUMNS[0]).to_numpy(), bench.column(ID_COLUMNS[1]).to_numpy())
    groups = groups[df.index.to_numpy()]
    image_cols = image_columns(df.columns)
    if image_cols is None:
        raise UserError(f"benchmark {settings['dataset_name']} has no image columns; eval needs the views")
    out_dir = Path(cfg.output_dir) / (cfg.name or default_name(cfg, settings, split))

    from ..core.scoring import classification_metrics, ground_truth_letters, parse_response

    truth = ground_truth_letters(df[label_column(df.columns)].tolist())
    rows = df.to_dict("records")
    chosen = choose_prompts(rows, settings, cfg)
    prompts = [p.text for p in chosen]
    images = [load_images(r, image_cols, blank=cfg.blank_images) for r in rows]
    if settings["prompt"] == "teacher" and any(p.source == "builtin" for p in chosen) and not cfg.simple_prompt:
        from rich.console import Console

        n = sum(p.source == "builtin" for p in chosen)
        Console(stderr=True).print(f"[yellow]{n} of {len(chosen)} samples have no teacher prompt or template: "
                                   "they get the builtin prompt (prompt_source=builtin)[/]")

    # 2. Model: base, plus the adapter; the processor (template, budget) as trained.
    from ..core.modeling import generation_batch, load_for_inference, load_processor

    processor, budget = load_processor(settings["processor_from"], min_pixels=settings["min_pixels"],
                                       max_pixels=settings["max_pixels"])
    if settings["chat_template_sha256"]:
        got = hashlib.sha256((processor.chat_template or "").encode()).hexdigest()
        if got != settings["chat_template_sha256"]:
            mismatch(cfg, "chat template", settings["chat_template_sha256"][:12], got[:12])
    model, inference = load_for_inference(settings["base_model"], cfg.adapter_path, load_in_4bit=cfg.load_in_4bit)
    batch, inference["batch"] = generation_batch(model, cfg.batch_size, views=len(image_cols),
                                                 max_pixels=budget["max_pixels"], new_tokens=cfg.max_new_tokens)
    cfg = cfg.model_copy(update={"batch_size": batch})

    # 3. Answers, batched, with a progress bar: a generated rationale then the letter (and the
    #    letter distribution at its answer position), or one pass over the question and an
    #    opened answer block (no generation).
    import time

    from rich.progress import Progress

    mode = "one_pass" if cfg.one_pass else "generate"
    layouts = [p.layout for p in chosen]
    t0 = time.time()
    if cfg.one_pass:
        _warn_one_pass(settings)
        with Progress(disable=not cfg.progress, transient=True) as bar:
            task = bar.add_task(f"one-pass {out_dir.name}", total=len(rows))
            probs = one_pass_probabilities(model, processor, prompts, images, layouts=layouts,
                                           batch_size=cfg.batch_size, progress=lambda n: bar.advance(task, n))
        responses = [""] * len(rows)
        seconds = confidence_seconds = time.time() - t0
    else:
        with Progress(disable=not cfg.progress, transient=True) as bar:
            task = bar.add_task(f"eval {out_dir.name}", total=len(rows))
            responses = generate_answers(model, processor, prompts, images, layouts=layouts,
                                         batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                                         progress=lambda n: bar.advance(task, n))
        seconds = time.time() - t0
        # 3b. The letter distribution at each response's answer position: one forward pass each.
        t0 = time.time()
        probs = _letter_probs(model, processor, prompts, images, chosen, responses, cfg, out_dir.name)
        confidence_seconds = time.time() - t0
    # 3c. Self-consistency: K sampled responses per sample besides the greedy one.
    t0 = time.time()
    sampled = _sampled_letters(model, processor, prompts, images, chosen, cfg, out_dir.name) if cfg.votes else None
    vote_seconds = time.time() - t0

    # 4. Score: the teacher's extraction and answer rule (shared with merge); unparsed = wrong.
    from ..core.scoring import option_descriptions
    from ..core.task import LETTERS

    parsed = ([(None, LETTERS[i]) for i in probs.argmax(1)] if cfg.one_pass else
              [parse_response(r, option_descriptions(p)) for r, p in zip(responses, prompts, strict=True)])
    student = cfg.adapter_path is not None or cfg.model is not None
    trained = train_keys(settings) if student else set()  # flagged per row
    predicted = [letter for _, letter in parsed]
    metrics = classification_metrics(truth, predicted, seed=cfg.seed, groups=groups)
    # 4b. Calibration: the run's temperature for this mode, fit on val (here, if the run has
    #     none). The val pass also serves the triage below.
    calibration = _stored_calibration(cfg, mode)
    val = val_probs = None
    has_val = bool((settings["splits"] or {}).get("val"))
    if (calibration is None and has_val) or cfg.target_accuracy is not None:
        t_val = time.time()
        val, val_probs = _val_pass(model, processor, bench, settings, cfg, image_cols, mode)
        val_seconds = time.time() - t_val
    if calibration is None:
        calibration = _fit_now(val, val_probs)
    from ..core.calibration import apply_temperature

    calibrated = apply_temperature(probs, calibration["temperature"])
    import pandas as pd

    preds = pd.DataFrame({
        "proofread_root_id": df[ID_COLUMNS[0]].astype("int64").to_numpy(),
        "current_root_id": df[ID_COLUMNS[1]].astype("int64").to_numpy(),
        "species": df["species"].to_numpy() if "species" in df else None,
        "ground_truth_letter": truth,
        "predicted_letter": predicted,
        "parsed": [p is not None for p in predicted],
        "correct": [p == t for p, t in zip(predicted, truth, strict=True)],
        "analysis": [a for a, _ in parsed],
        "response": responses,
        "in_train": [(int(p), int(c)) in trained for p, c in
                     zip(df[ID_COLUMNS[0]], df[ID_COLUMNS[1]], strict=True)],
        "prompt_source": [p.source for p in chosen],
        "prompt_sha256": [p.sha256 for p in chosen],
        "split_group": groups,
        **confidence_columns(calibrated, predicted),
        "confidence_raw": confidence_columns(probs, predicted)["confidence"],
        "temperature": calibration["temperature"],
        "mode": mode,
        **(vote_columns(sampled) if sampled is not None else {}),
    })
    counts = pd.Series(truth).value_counts()
    summary = {
        "name": out_dir.name,
        **metrics,
        "majority_class_rate": float(counts.iloc[0] / len(truth)),
        "sample_ids_hash": sample_ids_hash(preds["proofread_root_id"], preds["current_root_id"]),
        "includes_train_samples": includes_train,
        "prompt_source_counts": preds["prompt_source"].value_counts().to_dict(),
        "distinct_prompts": int(preds["prompt_sha256"].nunique()),
        "interval_method": "percentile bootstrap over leak-proof groups (samples sharing an id)",
        "model": settings["base_model"],
        "adapter": str(cfg.adapter_path) if cfg.adapter_path else None,
        "exported_model": str(cfg.model) if cfg.model else None,
        PATHS_KEY: record_paths({"adapter": cfg.adapter_path, "exported_model": cfg.model}, out_dir),
        "settings": {
            "split": split, "dataset_name": settings["dataset_name"], "config_name": settings["config_name"],
            "dataset_split": settings["dataset_split"], "blank_images": cfg.blank_images,
            "simple_prompt": cfg.simple_prompt, "with_description": settings["with_description"],
            "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size, "pixel_budget": budget,
            "prompt": settings["prompt"], "prompt_setting": settings["prompt_setting"],
            "prompt_template_id": PROMPT_TEMPLATE_ID, "prompt_template_hash": prompt_template_hash(),
            "votes": cfg.votes, "temperature": cfg.temperature if cfg.votes else None,
            "target_accuracy": cfg.target_accuracy, "mode": mode,
        },
        "calibration": calibration,
        "generation": inference,  # LoRA merged or not, the batch and what chose it
        "generation_seconds": round(seconds, 2),
        "samples_per_second": round(len(rows) / seconds, 3) if seconds else None,
        **confidence_summary(preds, seed=cfg.seed),
        "confidence_seconds": round(confidence_seconds, 2),
    }
    if sampled is not None:
        summary["votes"].update(k=cfg.votes, temperature=cfg.temperature, seconds=round(vote_seconds, 2))
    # 3d. Triage: the threshold is chosen on the val samples (never these), on their calibrated
    #     confidence, then applied here.
    triage = None
    if cfg.target_accuracy is not None:
        val = val.assign(**confidence_columns(apply_temperature(val_probs, calibration["temperature"]),
                                              val["predicted_letter"].tolist()))
        triage, summary["triage"] = choose_triage(val, preds, cfg.target_accuracy)
        summary["triage"]["val_seconds"] = round(val_seconds, 2)

    # 5. Outputs, written whole or not at all.
    from ..core.data import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(preds, out_dir / "predictions.csv")
    if triage is not None:
        write_predictions(triage, out_dir / "triage.csv")
        write_predictions(val, out_dir / "triage_val.csv")
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1, default=_json_default))
    plot_confusion(summary, out_dir / "confusion.png")
    plot_confidence(summary, preds, out_dir)
    print_summary(summary)
    return out_dir


# ----------------------------------------------------------------------------- confidence
def _letter_probs(model, processor, prompts, images, chosen, responses, cfg: EvalConfig, label: str):
    from rich.progress import Progress

    with Progress(disable=not cfg.progress, transient=True) as bar:
        task = bar.add_task(f"confidence {label}", total=len(prompts))
        return letter_probabilities(model, processor, prompts, images, responses,
                                    layouts=[p.layout for p in chosen], batch_size=cfg.batch_size,
                                    progress=lambda n: bar.advance(task, n))


def _sampled_letters(model, processor, prompts, images, chosen, cfg: EvalConfig, label: str) -> list[list]:
    """The parsed letters of ``cfg.votes`` sampled responses per sample (seeded; each response
    ends at its first ``</answer>``, all the answer rule reads)."""
    import torch
    from rich.progress import Progress

    from ..core.scoring import option_descriptions, parse_response

    torch.manual_seed(cfg.seed)
    with Progress(disable=not cfg.progress, transient=True) as bar:
        task = bar.add_task(f"votes {label}", total=len(prompts))
        out = generate_answers(model, processor, prompts, images, layouts=[p.layout for p in chosen],
                               batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                               stop_at_answer=True, do_sample=True, temperature=cfg.temperature,
                               num_return_sequences=cfg.votes, progress=lambda n: bar.advance(task, n))
    out = [r if isinstance(r, list) else [r] for r in out]  # K = 1 gives one string per sample
    return [[parse_response(r, option_descriptions(p))[1] for r in rs] for rs, p in zip(out, prompts, strict=True)]


def confidence_columns(probs, predicted) -> dict:
    """``p_a`` ... ``p_g`` and ``confidence``: the probability of the parsed letter (0.0 unparsed)."""
    from ..core.calibration import LETTER_COLUMNS
    from ..core.task import LETTERS

    out = {col: probs[:, j] for j, col in enumerate(LETTER_COLUMNS)}
    out["confidence"] = [float(probs[i, LETTERS.index(x)]) if isinstance(x, str) else 0.0
                         for i, x in enumerate(predicted)]
    return out


def vote_columns(sampled: list[list]) -> dict:
    """``vote_letter`` / ``vote_share`` (scoring.majority_vote over the K sampled letters, the
    unparsed ones counted in the denominator) and ``vote_letters`` (the K letters, ``-`` = unparsed)."""
    from ..core.scoring import majority_vote

    votes = [majority_vote(letters) for letters in sampled]
    return {"vote_letter": [v[0] for v in votes], "vote_share": [v[1] for v in votes],
            "vote_letters": ["".join(x or "-" for x in letters) for letters in sampled]}


def _val_pass(model, processor, bench, settings: dict, cfg: EvalConfig, image_cols, mode: str) -> tuple[Any, Any]:
    """(per-sample frame, raw letter distributions) of the val split (all of it, never test) in
    answer ``mode``: what a temperature and a triage threshold are chosen on."""
    import pandas as pd

    from ..core.scoring import ground_truth_letters, option_descriptions, parse_response
    from ..core.task import LETTERS

    df, _, _ = select_samples(bench, settings, cfg.model_copy(update={"split": "val", "num_samples": None}))
    rows = df.to_dict("records")
    chosen = choose_prompts(rows, settings, cfg)
    prompts = [p.text for p in chosen]
    images = [load_images(r, image_cols, blank=cfg.blank_images) for r in rows]
    layouts = [p.layout for p in chosen]
    if mode == "one_pass":
        probs = one_pass_probabilities(model, processor, prompts, images, layouts=layouts, batch_size=cfg.batch_size)
        predicted = [LETTERS[i] for i in probs.argmax(1)]
    else:
        responses = generate_answers(model, processor, prompts, images, layouts=layouts,
                                     batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens)
        probs = _letter_probs(model, processor, prompts, images, chosen, responses, cfg, "val")
        predicted = [parse_response(r, option_descriptions(p))[1] for r, p in zip(responses, prompts, strict=True)]
    truth = ground_truth_letters(df[label_column(df.columns)].tolist())
    frame = pd.DataFrame({
        "proofread_root_id": df[ID_COLUMNS[0]].astype("int64").to_numpy(),
        "current_root_id": df[ID_COLUMNS[1]].astype("int64").to_numpy(),
        "ground_truth_letter": truth, "predicted_letter": predicted,
        "correct": [p == t for p, t in zip(predicted, truth, strict=True)],
    })
    return frame, probs


def _stored_calibration(cfg: EvalConfig, mode: str) -> dict | None:
    """The temperature the run (or exported model) was calibrated with for ``mode``, if any."""
    from ..training.calibrate import read_calibration

    stored = read_calibration(cfg.adapter_path if cfg.adapter_path is not None else cfg.model)
    if stored is None or mode not in stored:
        return None
    return {**stored[mode], "mode": mode, "fit_on": stored.get("fit_on", "val"), "n_val": stored.get("n_val"),
            "source": "the run's calibration.json (fit on its val split when training ended)"}


def _fit_now(val, val_probs) -> dict:
    """A temperature fit here on the val split (a run from before calibration.json, a base
    model); T = 1 when there are no val samples. Never the evaluated samples."""
    from ..core.calibration import fit_temperature

    if val is None or not len(val):
        return {"temperature": 1.0, "n": 0, "fit_on": None, "source": "none: no val split to fit a temperature on"}
    fit = fit_temperature(val_probs, val["ground_truth_letter"].tolist())
    from rich.console import Console

    Console(stderr=True).print(f"[yellow]no calibration.json for this answer mode: temperature "
                               f"{fit['temperature']:.3g} fit now on {len(val)} val samples[/]")
    return {**fit, "fit_on": "val", "n_val": len(val), "source": "fit at eval time on the val split "
            "(the run has no calibration.json for this answer mode)"}


def _warn_one_pass(settings: dict) -> None:
    """One-pass answers from a student never trained on answer rows are little better than
    chance: say so, once, before the numbers do."""
    if not settings.get("answer_rows"):
        from rich.console import Console

        Console(stderr=True).print(f"[yellow]{ONE_PASS_UNTRAINED}[/]", soft_wrap=True)


ONE_PASS_UNTRAINED = ("one-pass answers from a model never trained with answer rows: it was taught to write a "
                      "rationale first, so its letter right after the question is close to a guess (bench/README.md, "
                      "onepass); train with --answer-rows to use --one-pass")


def choose_triage(val, preds, target: float, column: str = "confidence") -> tuple[Any, dict]:
    """(per-sample triage frame, summary) for ``preds``, at the threshold chosen on ``val``.

    The threshold (``calibration.threshold_for``) sees only ``val``; each sample of ``preds``
    then goes ``auto`` (its predicted letter is accepted) when its confidence reaches it
    (``calibration.accepted``: never an unparsed answer), else ``human``. Without a threshold
    reaching ``target`` on val, every sample goes to a human.
    """
    import pandas as pd

    from ..core.calibration import accepted, selective, threshold_for

    threshold = threshold_for(val[column].to_numpy(float), val["correct"].to_numpy(float), target)
    on_val = selective(val[column].to_numpy(float), val["correct"].to_numpy(float), threshold)
    here = selective(preds[column].to_numpy(float), preds["correct"].to_numpy(float), threshold)
    auto = accepted(preds[column].to_numpy(float), threshold)  # never an answer without a letter
    triage = pd.DataFrame({
        "proofread_root_id": preds["proofread_root_id"].to_numpy(),
        "current_root_id": preds["current_root_id"].to_numpy(),
        column: preds[column].to_numpy(float),
        "decision": ["auto" if a else "human" for a in auto],
        "letter": [x if a else None for x, a in zip(preds["predicted_letter"], auto, strict=True)],
    })
    val_keys = set(zip(val["proofread_root_id"], val["current_root_id"], strict=True))
    overlap = sum(k in val_keys for k in zip(preds["proofread_root_id"], preds["current_root_id"], strict=True))
    return triage, {
        "target_accuracy": target, "confidence_column": column, "threshold": threshold,
        "chosen_on": "val", "val": {**on_val, "sample_ids_hash": sample_ids_hash(val["proofread_root_id"],
                                                                                  val["current_root_id"])},
        **here, "evaluated_samples_in_val": overlap,
    }


__all__ = ["evaluate", "generate_answers", "select_samples", "sample_name"]
