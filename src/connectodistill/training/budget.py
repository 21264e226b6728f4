"""What a DPO or GRPO run will take on a GPU, before it starts: optimizer steps x completion budget.

GRPO generates a group of completions for every prompt of every step with plain ``generate``
before it can train on them; with the defaults (3 epochs, 8 completions of up to 512 tokens) that
is most of the run, and it can outrun a Modal timeout (the remote layer refuses such a run up
front: ``remote.app.guard_budget``). DPO trains on fixed pairs, plus, with ``--on-policy K``, one
sampling pass over the train samples first.

The per-token and per-sequence seconds are guesses for the 8B student (Qwen3-VL-8B, bf16, three
1024-token views) on one H100-class GPU, not measurements: ``bench/gpu.py``'s generation and
training rows are where the real figures come from. A smaller student runs faster than this says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.config import TrainConfig

# One decode step (one new token for every sequence of a generation batch of up to ~16) with
# transformers' generate, the LoRA unmerged, as GRPO and the on-policy sampling run it.
DECODE_S_PER_TOKEN = 0.03
PREFILL_S_PER_SEQUENCE = 0.15  # the prompt of one sequence: ~3.3k tokens, most of them the views
TRAIN_S_PER_SEQUENCE = 0.6  # forward + backward of one ~3.6k-token sequence, gradient checkpointing
NO_GRAD_S_PER_SEQUENCE = 0.2  # a forward pass alone (DPO's reference, GRPO's KL reference)
ASSUMED = "at 8B on one H100-class GPU, per-token figures guessed, not measured"


@dataclass
class Estimate:
    method: str
    steps: int  # optimizer steps of the whole run
    completions_per_step: int  # generated (GRPO) or pairs trained on (DPO), all GPUs together
    completion_tokens: int  # the budget of each generated completion
    seconds: float
    parts: dict  # seconds by part: generation, training, sampling, val

    def line(self) -> str:
        what = ("completions of <= {t} tokens" if self.method == "grpo" else "pairs").format(t=self.completion_tokens)
        parts = ", ".join(f"{k} {v / 3600:.1f} h" for k, v in self.parts.items() if v >= 36)
        return (f"{self.method}: {self.steps} steps x {self.completions_per_step} {what} = about "
                f"{self.seconds / 3600:.1f} h ({parts}; {ASSUMED})")


def completion_tokens(cfg: TrainConfig) -> int:
    """The sampled completions' budget (grpo.py and dpo.py say the same)."""
    return cfg.max_completion_length or (16 if cfg.answer_only else 512)


def estimate(cfg: TrainConfig, *, train_letters: list[str], val_samples: int, gpus: int = 1) -> Estimate | None:
    """Seconds a dpo/grpo run of ``cfg`` takes (None for sft), from its train samples' classes
    (``train_letters``, one per train-split sample) and the number of val samples."""
    if cfg.method not in ("dpo", "grpo"):
        return None
    per_gpu = cfg.batch_size * cfg.gradient_accumulation  # sequences (GRPO) or pairs (DPO) per GPU and step
    tokens = completion_tokens(cfg)
    # Greedy val answers each epoch when the kept weights are chosen on val accuracy (GRPO's
    # val_loss means that too: it has no held-out loss; DPO's val loss is a cheap forward pass).
    greedy_val = cfg.select_by == "val_accuracy" or (cfg.method == "grpo" and cfg.select_by != "last")
    val_batches = -(-val_samples // max(cfg.batch_size, 4)) if greedy_val else 0
    val = cfg.epochs * val_batches * cfg.max_new_tokens * DECODE_S_PER_TOKEN
    if cfg.method == "grpo":
        counts = {x: train_letters.count(x) for x in set(train_letters)}
        prompts = len(counts) * max(counts.values(), default=0) if cfg.balance_classes else len(train_letters)
        prompts = min(prompts, cfg.num_samples) if cfg.num_samples else prompts
        steps = math.ceil(prompts * cfg.epochs * cfg.num_generations / (per_gpu * gpus))
        generation = steps * (tokens * DECODE_S_PER_TOKEN + per_gpu * PREFILL_S_PER_SEQUENCE)
        training = steps * per_gpu * (TRAIN_S_PER_SEQUENCE + (NO_GRAD_S_PER_SEQUENCE if cfg.kl_beta else 0.0))
        parts = {"generation": generation, "training": training, "val": val}
        return Estimate("grpo", steps, per_gpu * gpus, tokens, sum(parts.values()), parts)
    samples = len(train_letters)
    pairs = samples * cfg.pairs_per_sample + samples * cfg.on_policy  # at most
    pairs = min(pairs, cfg.num_samples) if cfg.num_samples else pairs
    steps = math.ceil(pairs * cfg.epochs / (per_gpu * gpus))
    batch = max(cfg.batch_size, 4)  # on_policy_pairs samples at this batch, K sequences each, on one GPU
    sampling = (-(-samples // batch) * (tokens * DECODE_S_PER_TOKEN + batch * cfg.on_policy * PREFILL_S_PER_SEQUENCE)
                if cfg.on_policy else 0.0)
    training = steps * per_gpu * 2 * (TRAIN_S_PER_SEQUENCE + NO_GRAD_S_PER_SEQUENCE)  # chosen and rejected
    parts = {"sampling": sampling, "training": training, "val": val}
    return Estimate("dpo", steps, per_gpu * gpus, tokens, sum(parts.values()), parts)


def estimate_run(cfg: TrainConfig, gpus: int = 1) -> Estimate | None:
    """:func:`estimate` for a dpo/grpo config as given (its parent run's split lists, the merged
    file's ground truth); reads only the ids and label columns."""
    if cfg.method not in ("dpo", "grpo"):
        return None
    import pyarrow.parquet as pq

    from ..core.data import read_merged
    from ..core.scoring import ground_truth_letters
    from ..core.task import ID_COLUMNS, label_column
    from .runs import load_parent

    parent = load_parent(cfg.from_run, cfg.method)
    splits = parent.config.get("splits") or {}
    label = label_column(pq.read_schema(cfg.augmented_dataset).names)
    table = read_merged(cfg.augmented_dataset, columns=[*ID_COLUMNS, label])[0].to_pandas()
    table = table.drop_duplicates(list(ID_COLUMNS))
    train = {tuple(int(x) for x in p) for p in splits.get("train", [])}
    keep = [(int(a), int(b)) in train for a, b in zip(table[ID_COLUMNS[0]], table[ID_COLUMNS[1]], strict=True)]
    letters = ground_truth_letters(table[keep][label].tolist())
    return estimate(cfg, train_letters=letters, val_samples=len(splits.get("val", [])), gpus=gpus)
