"""Preference tuning of an SFT student on the teacher's own disagreements (the `dpo` recipe).

Where the teacher's K draws on one segment disagree there are real preference pairs: a right
analysis and a wrong one, same views, same question. Read top to bottom:

1. the parent run (``--from RUN``): its student (adapter, base model, processor with the
   pixel budget and chat template), its prompts, its split lists (runs.py);
2. pairs, from merge's ``<stem>_responses.parquet`` (every response; the merged file's train
   rows may be filtered) on the samples of the train split: chosen = a right response with an
   analysis, rejected = a wrong one with an analysis and a parsed letter, both written as SFT
   targets (``<analysis>…</analysis>\\n<answer>x</answer>``); at most ``pairs_per_sample``
   distinct pairs per sample in a fixed order (each side's responses in turn: every one used
   once before any is used twice); optionally (``on_policy`` K) the SFT student's own wrong sampled
   answers as further rejected ones (iterative-RPO style);
3. TRL's ``DPOTrainer``: the SFT adapter trains, a frozen copy of it (TRL's ``ref`` adapter)
   is the reference; ``rpo_alpha`` adds the NLL of the chosen responses (TRL's ``sft`` loss);
4. the run folder, as SFT's (eval and report read it the same way) plus ``pairs.parquet``.

TRL is imported only inside ``train_dpo``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.config import TrainConfig, resolve
from ..core.conversation import build_messages, target_text
from ..core.errors import UserError
from ..core.prompts import setting_name
from ..core.task import ID_COLUMNS
from .calibrate import calibrate_run
from .examples import Example, build_examples

PAIRS_FILE = "pairs.parquet"


@dataclass(frozen=True)
class Pair:
    key: tuple[int, int]
    chosen: str
    rejected: str
    source: str  # "teacher" or "on-policy"
    chosen_order: int  # teacher_order of the chosen response
    rejected_order: int  # teacher_order of the rejected one; -1 for the student's own


# ----------------------------------------------------------------------------- pairs
def _text(value) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


@dataclass
class Candidates:
    """One sample's usable teacher responses: (teacher_order, target text), in teacher order."""

    truth: str
    chosen: list[tuple[int, str]]  # right, with an analysis
    rejected: list[tuple[int, str]]  # wrong, with an analysis and a parsed letter


def candidates(responses, keys: set, setting: str | None = None) -> dict[tuple[int, int], Candidates]:
    """The responses of every sample in ``keys``, identical texts once. ``setting``: only
    responses to prompts of that setting (a run on one setting is asked that question)."""
    from .examples import _is_true

    out: dict[tuple[int, int], Candidates] = {}
    r = responses.sort_values("teacher_order", kind="stable")
    for row in r.to_dict("records"):
        key = (int(row[ID_COLUMNS[0]]), int(row[ID_COLUMNS[1]]))
        if key not in keys or (setting is not None and setting_name(row.get("teacher_with_description")) != setting):
            continue
        c = out.setdefault(key, Candidates(row["ground_truth_letter"], [], []))
        analysis, letter = _text(row.get("teacher_analysis")), row.get("teacher_answer")
        if analysis is None:
            continue
        if _is_true(row.get("teacher_correct")):
            text, into = target_text(c.truth, analysis), c.chosen
        elif isinstance(letter, str):
            text, into = target_text(letter, analysis), c.rejected
        else:
            continue
        if all(t != text for _, t in c.chosen + c.rejected):
            into.append((int(row["teacher_order"]), text))
    return out


def pair_order(n_chosen: int, n_rejected: int) -> list[tuple[int, int]]:
    """All (chosen, rejected) index pairs, both sides in turn: the k-th pair is (k mod n_chosen,
    k mod n_rejected), shifted by one rejected after every lcm(n_chosen, n_rejected) pairs, so
    every chosen (every rejected) response is used once before any is used twice."""
    cycle = math.lcm(n_chosen, n_rejected) if n_chosen and n_rejected else 1
    return [(k % n_chosen, (k + k // cycle) % n_rejected) for k in range(n_chosen * n_rejected)]


def teacher_pairs(cands: dict, per_sample: int) -> list[Pair]:
    pairs = []
    for key in sorted(cands):
        chosen, rejected = cands[key].chosen, cands[key].rejected
        for i, j in pair_order(len(chosen), len(rejected))[:per_sample]:
            pairs.append(Pair(key, chosen[i][1], rejected[j][1], "teacher", chosen[i][0], rejected[j][0]))
    return pairs


def on_policy_pairs(model, processor, cands: dict, samples: dict, data, cfg: TrainConfig) -> list[Pair]:
    """The student's own wrong answers (K sampled per train sample with a chosen response) as
    rejected, each paired with the sample's chosen responses in turn."""
    from transformers import set_seed

    from ..core.conversation import load_images
    from ..core.generation import generate_answers
    from ..core.scoring import option_descriptions, parse_response

    keys = [k for k in sorted(cands) if cands[k].chosen and k in samples]
    if not keys:
        return []
    set_seed(cfg.seed)
    prompts = [data.sample_prompts[k] for k in keys]
    sampled = generate_answers(
        model, processor, [p.text for p in prompts], [load_images(samples[k], data.image_cols) for k in keys],
        layouts=[p.layout for p in prompts], batch_size=max(cfg.batch_size, 4),
        max_new_tokens=completion_budget(cfg), stop_at_answer=True, do_sample=True,
        temperature=cfg.temperature, num_return_sequences=cfg.on_policy,
    )
    pairs = []
    for key, prompt, texts in zip(keys, prompts, sampled, strict=True):
        texts = [texts] if isinstance(texts, str) else texts
        chosen, truth = cands[key].chosen, cands[key].truth
        known = {t for _, t in cands[key].rejected}
        own = []
        for text in texts:
            analysis, letter = parse_response(text, option_descriptions(prompt.text))
            wrong = letter is not None and letter != truth and _text(analysis) is not None
            if wrong and (t := target_text(letter, analysis)) not in known:
                known.add(t)
                own.append(t)
        for j, t in enumerate(own):
            c = chosen[j % len(chosen)]
            pairs.append(Pair(key, c[1], t, "on-policy", c[0], -1))
    return pairs


def sampled_once(pairs: list[Pair], sample, path: Path) -> list[Pair]:
    """``pairs`` plus the on-policy ones, sampled by the main process alone and written to
    ``path`` (pairs.parquet), which every process then reads. Ranks sampling on their own draw
    different pairs, so different counts, so different numbers of steps: DDP then waits forever
    for the rank that stopped first."""
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_pairs(pairs + sample(), path)
    state.wait_for_everyone()
    return read_pairs(path)


def completion_budget(cfg: TrainConfig) -> int:
    """Generation budget for sampled answers: an analysis and an answer (the answer alone)."""
    return cfg.max_completion_length or (16 if cfg.answer_only else 512)


def read_responses(data):
    """merge's responses file beside the merged parquet (every response, unfiltered)."""
    import pandas as pd

    from ..merging.recipe import output_paths

    path = output_paths(data.path)[1]
    if not path.is_file():
        raise UserError(f"{data.path}: no {path.name} beside it; DPO pairs come from merge's responses "
                        "file (re-run merge)")
    return pd.read_parquet(path)


def write_pairs(pairs: list[Pair], path: Path) -> None:
    import pyarrow as pa

    from ..core.data import write_parquet

    table = pa.table({
        ID_COLUMNS[0]: pa.array([p.key[0] for p in pairs], pa.int64()),
        ID_COLUMNS[1]: pa.array([p.key[1] for p in pairs], pa.int64()),
        "source": pa.array([p.source for p in pairs], pa.string()),
        "chosen_order": pa.array([p.chosen_order for p in pairs], pa.int64()),
        "rejected_order": pa.array([p.rejected_order for p in pairs], pa.int64()),
        "chosen": pa.array([p.chosen for p in pairs], pa.string()),
        "rejected": pa.array([p.rejected for p in pairs], pa.string()),
    })
    write_parquet(table, path)


def read_pairs(path: Path) -> list[Pair]:
    import pandas as pd

    t = pd.read_parquet(path)
    return [Pair((int(a), int(b)), c, r, s, int(co), int(ro)) for a, b, s, co, ro, c, r in zip(
        t[ID_COLUMNS[0]], t[ID_COLUMNS[1]], t["source"], t["chosen_order"], t["rejected_order"],
        t["chosen"], t["rejected"], strict=True)]


def pair_records(pairs: list[Pair], data, samples: dict) -> tuple[list[dict], list[dict]]:
    """(records for the trainer's dataset, the sample rows they index for their views)."""
    keys = sorted({p.key for p in pairs})
    index = {k: i for i, k in enumerate(keys)}
    n_images = len(data.image_cols)
    records = []
    for p in pairs:
        prompt = data.sample_prompts[p.key]
        records.append({
            "row": index[p.key],
            "prompt": build_messages(prompt.text, n_images=n_images, layout=prompt.layout),
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        })
    return records, [samples[k] for k in keys]


def _samples(df) -> dict[tuple[int, int], dict]:
    """Sample ids -> its first merged row (the views)."""
    rows = df.drop_duplicates(list(ID_COLUMNS)).to_dict("records")
    return {(int(r[ID_COLUMNS[0]]), int(r[ID_COLUMNS[1]])): r for r in rows}


# ----------------------------------------------------------------------------- the recipe
def train_dpo(config: TrainConfig | None = None, *, callbacks: list | None = None, **overrides) -> Path:
    """Continue the SFT student of ``from_run`` with DPO on the teacher's pairs; return the run folder."""
    from . import runs, trainers
    from .examples import pick_rows

    cfg = resolve(TrainConfig, config, overrides)
    t_start = time.time()

    # 1. The parent run and the data exactly as it read them.
    parent = runs.load_parent(cfg.from_run, "dpo")
    data = runs.parent_training_data(parent, cfg)
    responses = read_responses(data)
    setting = data.setting if data.prompt == "teacher" and not data.allow_mixed else None
    train_keys = {tuple(int(x) for x in p) for p in data.splits.get("train", [])}
    val_keys = {tuple(int(x) for x in p) for p in data.splits.get("val", [])}
    train_samples = _samples(pick_rows(data.df, data.splits, "train"))  # samples with views
    val_samples = _samples(data.val_df)

    # 2. Pairs from the teacher's disagreements (train split only; val pairs only select).
    cands = {k: v for k, v in candidates(responses, train_keys, setting).items() if k in train_samples}
    pairs = teacher_pairs(cands, cfg.pairs_per_sample)
    if not pairs and not cfg.on_policy:
        n_right = sum(bool(c.chosen) for c in cands.values())
        raise UserError(
            f"{data.path}: no train sample has both a right and a wrong teacher response with an analysis "
            f"({len(cands)} train samples, {n_right} with a right one); nothing to prefer: add --on-policy K "
            "or use --method grpo"
        )
    val_pairs = teacher_pairs({k: v for k, v in candidates(responses, val_keys, setting).items()
                               if k in val_samples}, cfg.pairs_per_sample)

    # 3. The student (the parent's adapter, trainable) and its processor.
    model, processor, budget = runs.continue_parent(parent, cfg)
    teacher_models = runs.teacher_models_of(data.df)
    name = runs.run_folder_name(cfg, teacher_models, len(pairs), model=parent.base_model, lora_r=parent.lora_r)
    run_dir, resume_from = runs.choose_run_dir(cfg, name)
    if resume_from and (run_dir / PAIRS_FILE).is_file():  # the same pairs, sampled ones included
        pairs = read_pairs(run_dir / PAIRS_FILE)
    elif cfg.on_policy:
        pairs = sampled_once(pairs, lambda: on_policy_pairs(model, processor, cands, train_samples, data, cfg),
                             run_dir / PAIRS_FILE)
    if cfg.num_samples:
        pairs = pairs[: cfg.num_samples]
    if not pairs:
        raise UserError(f"{data.path}: no preference pairs: no train sample has both a right and a wrong "
                        f"answer, the teacher's or the student's ({cfg.on_policy} sampled each)")
    test_keys = {tuple(int(x) for x in p) for p in data.splits.get("test", [])}
    if any(p.key in test_keys or p.key not in train_keys for p in pairs):  # guards the split logic
        raise RuntimeError("a sample outside the train split reached the DPO pairs")
    image_cols = data.image_cols
    # Fail now, not hours into a GPU run, if the longest conversations do not fit max_length.
    from .collator import DistillCollator

    collator = DistillCollator(processor, image_cols, cfg.max_length)
    longest = sorted(((p, t) for p in pairs for t in (p.chosen, p.rejected)),
                     key=lambda x: len(data.sample_prompts[x[0].key].text) + len(x[1]))[-4:]
    for p, text in longest:
        prompt = data.sample_prompts[p.key]
        collator.encode(Example(row=train_samples[p.key], prompt=prompt.text, target=text, key=p.key,
                                layout=prompt.layout))

    # 4. TRL: DPO on the pairs; selection on the val pairs (val_loss) or val answers (val_accuracy).
    from trl import DPOConfig, DPOTrainer

    records, rows = pair_records(pairs, data, train_samples)
    train_ds = trainers.lazy_image_dataset(records, rows, image_cols)
    val_ex, _ = build_examples(data.val_df, data, target="teacher", fill_missing=True, sample_level=True)
    select_by, metric, greater = trainers.selection(cfg, val_samples=len(val_ex), val_loss=bool(val_pairs))
    eval_ds = None
    if metric:
        v_records, v_rows = pair_records(val_pairs or pairs[:1], data, {**train_samples, **val_samples})
        eval_ds = trainers.lazy_image_dataset(v_records, v_rows, image_cols)
    loss_type, loss_weights = (["sigmoid", "sft"], [1.0, cfg.rpo_alpha]) if cfg.rpo_alpha else (["sigmoid"], None)
    args = DPOConfig(
        **trainers.trainer_arguments(cfg, run_dir, metric=metric, greater=greater),
        beta=cfg.dpo_beta, loss_type=loss_type, loss_weights=loss_weights,
        max_length=None,  # never truncate: the views sit in the prompt (checked above instead)
        precompute_ref_log_probs=False,
    )
    trainer = trainers.with_val_accuracy(DPOTrainer)(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=processor,
        callbacks=[*(callbacks or []), *trainers.step_checkpoints(cfg)],
        val_accuracy=(processor, val_ex, image_cols, max(cfg.batch_size, 4), cfg.max_new_tokens)
        if select_by == "val_accuracy" else None,
    )
    if trainer.is_world_process_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_pairs(pairs, run_dir / PAIRS_FILE)
    t_train = time.time()
    from ..core.modeling import quiet_checkpointing_alias

    with quiet_checkpointing_alias():  # TRL's generation reads the deprecated alias
        result = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.time() - t_train

    # 5. The run folder: as SFT's, plus the pairs and the DPO settings.
    if trainer.is_world_process_zero():
        keyed = {p.key for p in pairs}
        sources = {s: sum(p.source == s for p in pairs) for s in ("teacher", "on-policy")}
        config = runs.run_config(
            cfg, method="dpo", data=data, processor=processor, model=model, budget=budget,
            merged_path=data.path, teacher_models=teacher_models, base_model=parent.base_model,
            rows={"train_examples": len(pairs), "val_examples": len(val_ex), "train_split_samples": len(train_keys)},
            prompt_sources={"val_examples": _counts(val_ex)},
            trainer=trainer, select_by=select_by, resume_from=resume_from, train_seconds=train_seconds,
            fold=parent.settings.get("fold"),
            parent_run=str(parent.path), parent_method=parent.method, lora=_lora(parent),
            dpo={
                "pairs": len(pairs), "teacher_pairs": sources["teacher"], "on_policy_pairs": sources["on-policy"],
                "samples_with_pairs": len(keyed),
                "samples_with_teacher_pairs": len({p.key for p in pairs if p.source == "teacher"}),
                "train_samples": len(train_samples),
                "samples_with_right_response": sum(bool(c.chosen) for c in cands.values()),
                "samples_with_wrong_response": sum(bool(c.rejected) for c in cands.values()),
                "val_pairs": len(val_pairs), "pairs_per_sample": cfg.pairs_per_sample,
                "on_policy": cfg.on_policy, "temperature": cfg.temperature if cfg.on_policy else None,
                "beta": cfg.dpo_beta, "rpo_alpha": cfg.rpo_alpha, "loss_type": loss_type,
                "loss_weights": loss_weights, "responses_file": str(read_responses_path(data)),
            },
        )
        runs.save_run(run_dir, model=model, processor=processor, data=data, trainer=trainer, config=config)
        calibrate_run(run_dir, model, processor, data, batch_size=max(cfg.batch_size, 4),
                      max_new_tokens=cfg.max_new_tokens)
        runs.print_summary("train --method dpo", run_dir, [
            ("pairs", f"{len(pairs)} ({sources['teacher']} teacher, {sources['on-policy']} on-policy) "
                      f"on {len(keyed)} of {len(train_samples)} train samples"),
            ("optimizer steps", str(trainer.state.global_step)),
            ("train loss", f"{result.training_loss:.4f}"),
        ], train_seconds, time.time() - t_start)
    return run_dir


def read_responses_path(data) -> Path:
    from ..merging.recipe import output_paths

    return output_paths(data.path)[1]


def _counts(examples) -> dict:
    from .examples import source_counts

    return source_counts(examples)


def _lora(parent) -> dict:
    a = parent.adapter
    return {k: a.get(k) for k in ("r", "lora_alpha", "lora_dropout", "target_modules")}
