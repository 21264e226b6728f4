"""Reinforcement of an SFT student with a verifiable reward: the ground truth (the `grpo` recipe).

Read top to bottom:

1. the parent run (``--from RUN``): its student, processor, prompts, split lists (runs.py);
2. prompts: one per train-split sample with views in the merged file, its ground-truth letter
   beside it; ``balance_classes`` repeats the rarer classes' samples so that every class is
   drawn equally often;
3. rewards, by the project's one answer parser (``scoring.parse_response`` with the prompt's
   own option wording): 1.0 for the right letter, plus ``format_reward`` x 1.0 for a
   well-formed analysis and answer. ``answer_only`` (the "no-thinking" variant): the
   generation prompt ends with an empty ``<analysis></analysis>`` (saved in the run's chat
   template, so eval asks the same), a short budget, the letter alone is rewarded;
4. TRL's ``GRPOTrainer`` (vLLM off): groups of ``num_generations`` sampled completions at
   ``temperature``, KL to the SFT student (a frozen copy of its adapter) when ``kl_beta`` > 0.
   Left padding (with right padding the image positions of half the rows misalign, silently).
   A generation batch whose rewards are all equal teaches nothing: warned on stderr, counted;
5. the run folder, as SFT's, plus ``rewards.jsonl`` (every scored completion).

TRL is imported only inside ``train_grpo``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..core.config import TrainConfig, resolve
from ..core.conversation import build_messages
from ..core.errors import UserError
from ..core.task import ID_COLUMNS, label_column
from .calibrate import calibrate_run
from .examples import build_examples

REWARDS_FILE = "rewards.jsonl"


# ----------------------------------------------------------------------------- rewards
def completion_text(completion) -> str:
    """TRL hands conversational completions as ``[{"role": "assistant", "content": text}]``."""
    if isinstance(completion, list):
        return "".join(m["content"] if isinstance(m.get("content"), str) else
                       "".join(b.get("text") or "" for b in m.get("content") or []) for m in completion)
    return str(completion)


def score(text: str, answer: str, prompt_text: str) -> tuple[float, float]:
    """(right letter, well-formed analysis + answer) of one completion, 1.0 or 0.0 each."""
    from ..core.scoring import option_descriptions, parse_response

    analysis, letter = parse_response(text, option_descriptions(prompt_text))
    return float(letter == answer), float(letter is not None and bool(analysis))


class Rewards:
    """The reward functions TRL calls (``correct``, and ``format`` unless answer-only), a log of
    every scored completion, and the zero-spread check on each group of completions."""

    def __init__(self, *, format_weight: float, answer_only: bool, log_path: Path | None, main: bool,
                 num_generations: int):
        self.format_weight = 0.0 if answer_only else format_weight
        self.log_path = log_path if main else None
        self.num_generations = num_generations
        self.zero_spread = 0  # groups whose completions all got the same reward
        self.groups = 0
        self.batches = 0
        self._scores: list[tuple[float, float]] = []

        def correct(prompts, completions, answer, prompt_text, sample, trainer_state=None, **_):
            self._scores = [score(completion_text(c), a, p)
                            for c, a, p in zip(completions, answer, prompt_text, strict=True)]
            if not self.format_weight:
                self._finish(completions, answer, sample, trainer_state)
            return [s[0] for s in self._scores]

        def format(prompts, completions, answer, sample, trainer_state=None, **_):  # noqa: A001
            out = [s[1] for s in self._scores]
            self._finish(completions, answer, sample, trainer_state)
            return out

        self.funcs = [correct] + ([format] if self.format_weight else [])
        self.weights = [1.0] + ([self.format_weight] if self.format_weight else [])

    def _finish(self, completions, answer, sample, state) -> None:
        totals = [c + self.format_weight * f for c, f in self._scores]
        step = getattr(state, "global_step", None)
        self.batches += 1
        # TRL normalises each prompt's num_generations completions against each other (its
        # RepeatSampler yields them consecutively; grpo_trainer views rewards as (-1, G)): a
        # group whose rewards are all equal gets zero advantages, whatever the rest of the batch.
        g = self.num_generations if len(totals) % self.num_generations == 0 else len(totals)
        groups = [totals[i:i + g] for i in range(0, len(totals), g)]
        flat = sum(len(set(x)) <= 1 for x in groups)
        self.groups += len(groups)
        self.zero_spread += flat
        if flat:
            from rich.console import Console

            Console(stderr=True, soft_wrap=True).print(
                f"[yellow]grpo step {step}: {flat} of {len(groups)} groups of {g} completions got equal rewards: "
                "no learning signal from them (a student that cannot answer yet, a too short "
                "--max-completion-length, or a too low --temperature)[/]")
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                for c, a, s, (right, fmt) in zip(completions, answer, sample, self._scores, strict=True):
                    f.write(json.dumps({"step": step, "sample": s, "answer": a, "completion": completion_text(c),
                                        "correct": right, "format": fmt}) + "\n")


# ----------------------------------------------------------------------------- prompts
def prompt_records(data, rows: list[dict], letters: list[str]) -> list[dict]:
    n_images = len(data.image_cols)
    records = []
    for i, (row, letter) in enumerate(zip(rows, letters, strict=True)):
        key = (int(row[ID_COLUMNS[0]]), int(row[ID_COLUMNS[1]]))
        prompt = data.sample_prompts[key]
        records.append({"row": i, "prompt": build_messages(prompt.text, n_images=n_images, layout=prompt.layout),
                        "answer": letter, "prompt_text": prompt.text, "sample": f"{key[0]}/{key[1]}"})
    return records


def balanced_order(letters: list[str], seed: int) -> list[int]:
    """Indices in which every class present appears as often as the most frequent one: the
    classes in turn (so any prefix is balanced too), each class's samples shuffled with
    ``seed`` and repeated in that order when it runs out."""
    import random

    by_class: dict[str, list[int]] = {}
    for i, x in enumerate(letters):
        by_class.setdefault(x, []).append(i)
    rng = random.Random(seed)
    for idx in by_class.values():
        rng.shuffle(idx)
    most = max((len(v) for v in by_class.values()), default=0)
    return [by_class[x][j % len(by_class[x])] for j in range(most) for x in sorted(by_class)]


# ----------------------------------------------------------------------------- the recipe
def train_grpo(config: TrainConfig | None = None, *, callbacks: list | None = None, **overrides) -> Path:
    """Continue the SFT student of ``from_run`` with GRPO on the ground-truth reward; return the run folder."""
    from ..core.scoring import ground_truth_letters
    from . import runs, trainers
    from .examples import pick_rows

    cfg = resolve(TrainConfig, config, overrides)
    t_start = time.time()
    budget_tokens = cfg.max_completion_length or (16 if cfg.answer_only else 512)
    generation_batch = cfg.batch_size * cfg.gradient_accumulation
    if generation_batch % cfg.num_generations:
        raise UserError(
            f"--batch-size {cfg.batch_size} x --gradient-accumulation {cfg.gradient_accumulation} = {generation_batch} "
            f"completions per step is not a multiple of --num-generations {cfg.num_generations} (whole groups only)"
        )

    # 1. The parent run and the data exactly as it read them.
    parent = runs.load_parent(cfg.from_run, "grpo")
    data = runs.parent_training_data(parent, cfg)

    # 2. Prompts: every train-split sample with views, once (or class-balanced).
    train_rows = pick_rows(data.df, data.splits, "train").drop_duplicates(list(ID_COLUMNS))
    rows = train_rows.to_dict("records")
    letters = ground_truth_letters(train_rows[label_column(train_rows.columns)].tolist())
    order = balanced_order(letters, cfg.seed) if cfg.balance_classes else list(range(len(rows)))
    if cfg.num_samples:
        order = order[: cfg.num_samples]
    if not order:
        raise UserError(f"{data.path}: no train-split sample with views in the merged file")
    rows, letters = [rows[i] for i in order], [letters[i] for i in order]
    train_keys = {tuple(int(x) for x in p) for p in data.splits.get("train", [])}
    if any((int(r[ID_COLUMNS[0]]), int(r[ID_COLUMNS[1]])) not in train_keys for r in rows):
        raise RuntimeError("a sample outside the train split reached the GRPO prompts")  # guards the split logic

    # 3. The student (the parent's adapter, trainable), its processor with left padding.
    model, processor, budget = runs.continue_parent(parent, cfg)
    tokenizer = processor.tokenizer
    saved_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # required: right padding misaligns the image positions
    if cfg.answer_only:
        processor.chat_template = runs.answer_only_template(processor)
    teacher_models = runs.teacher_models_of(data.df)
    name = runs.run_folder_name(cfg, teacher_models, len(rows), model=parent.base_model, lora_r=parent.lora_r)
    run_dir, resume_from = runs.choose_run_dir(cfg, name)

    # 4. TRL: GRPO with the parser's rewards; selection on greedy val accuracy.
    from accelerate import PartialState
    from trl import GRPOConfig, GRPOTrainer

    main = PartialState().is_main_process
    rewards = Rewards(format_weight=cfg.format_reward, answer_only=cfg.answer_only,
                      log_path=run_dir / REWARDS_FILE, main=main, num_generations=cfg.num_generations)
    train_ds = trainers.lazy_image_dataset(prompt_records(data, rows, letters), rows, data.image_cols)
    val_ex, _ = build_examples(data.val_df, data, target="teacher", fill_missing=True, sample_level=True)
    select_by, metric, greater = trainers.selection(cfg, val_samples=len(val_ex), val_loss=False)
    common = trainers.trainer_arguments(cfg, run_dir, metric=metric, greater=greater)
    common["per_device_eval_batch_size"] = cfg.num_generations  # TRL checks it even when unused
    args = GRPOConfig(
        **common, num_generations=cfg.num_generations, temperature=cfg.temperature, beta=cfg.kl_beta,
        max_completion_length=budget_tokens, reward_weights=rewards.weights, use_vllm=False,
        shuffle_dataset=True,
    )
    trainer = trainers.with_val_accuracy(GRPOTrainer)(
        model=model, reward_funcs=rewards.funcs, args=args, train_dataset=train_ds,
        eval_dataset=train_ds if metric else None, processing_class=processor,
        callbacks=[*(callbacks or []), *trainers.step_checkpoints(cfg)],
        val_accuracy=(processor, val_ex, data.image_cols, max(cfg.batch_size, 4), cfg.max_new_tokens)
        if metric else None,
    )
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    t_train = time.time()
    from ..core.modeling import quiet_checkpointing_alias

    with quiet_checkpointing_alias():  # TRL's generation reads the deprecated alias
        result = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.time() - t_train
    tokenizer.padding_side = saved_side  # the saved processor keeps the student's own padding

    # 5. The run folder: as SFT's, plus the reward settings and what they saw.
    if trainer.is_world_process_zero():
        history = trainer.state.log_history
        logged = [h["reward"] for h in history if "reward" in h]
        config = runs.run_config(
            cfg, method="grpo", data=data, processor=processor, model=model, budget=budget,
            merged_path=data.path, teacher_models=teacher_models, base_model=parent.base_model,
            rows={"train_examples": len(rows), "val_examples": len(val_ex),
                  "train_split_samples": len(data.splits.get("train", []))},
            prompt_sources={"val_examples": _counts(val_ex)},
            trainer=trainer, select_by=select_by, resume_from=resume_from, train_seconds=train_seconds,
            fold=parent.settings.get("fold"),
            parent_run=str(parent.path), parent_method=parent.method,
            lora={k: parent.adapter.get(k) for k in ("r", "lora_alpha", "lora_dropout", "target_modules")},
            grpo={
                "prompts": len(rows), "prompts_per_class": {x: letters.count(x) for x in sorted(set(letters))},
                "balance_classes": cfg.balance_classes, "num_generations": cfg.num_generations,
                "temperature": cfg.temperature, "kl_beta": cfg.kl_beta, "max_completion_length": budget_tokens,
                "answer_only": cfg.answer_only,
                "generation_prompt_prefill": runs.ANSWER_ONLY_PREFILL if cfg.answer_only else None,
                "rewards": {"correct": 1.0, **({"format": rewards.format_weight} if rewards.format_weight else {})},
                "reward_parser": "scoring.parse_response with the prompt's option wording",
                "generation_batches": rewards.batches, "generation_groups": rewards.groups,
                "zero_spread_groups": rewards.zero_spread,
                "first_reward": logged[0] if logged else None, "last_reward": logged[-1] if logged else None,
                "use_vllm": False, "loss_type": args.loss_type,
            },
        )
        runs.save_run(run_dir, model=model, processor=processor, data=data, trainer=trainer, config=config)
        calibrate_run(run_dir, model, processor, data, batch_size=max(cfg.batch_size, 4),
                      max_new_tokens=cfg.max_new_tokens)
        runs.print_summary("train --method grpo", run_dir, [
            ("prompts", f"{len(rows)} x {cfg.num_generations} completions"),
            ("optimizer steps", str(trainer.state.global_step)),
            ("reward", f"{logged[0]:.3f} -> {logged[-1]:.3f}" if logged else "-"),
            ("zero-spread groups", f"{rewards.zero_spread} of {rewards.groups}"),
            ("train loss", f"{result.training_loss:.4f}"),
        ], train_seconds, time.time() - t_start)
    return run_dir


def _counts(examples) -> dict:
    from .examples import source_counts

    return source_counts(examples)
