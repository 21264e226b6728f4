"""What DPO and GRPO runs of the 8B student come to in GPU hours, by ``training.budget``'s estimate:
the default GRPO run against the 4 h default timeout, and the settings that bring it under.

    python bench/budget.py [--out bench/results/budget.json]      # instant, no GPU

The real benchmark's size: 377 samples, 80/10/10 by group, so ~301 train and 38 val samples
(the class mix does not matter without --balance-classes). The per-token and per-sequence
seconds are the guesses in ``connectodistill/training/budget.py`` for 8B on one H100-class GPU;
the step counts are exact.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TRAIN_SAMPLES, VAL_SAMPLES = 301, 38
ROWS = [
    ("grpo, defaults", dict(method="grpo"), 1),
    ("grpo, 1 epoch", dict(method="grpo", epochs=1), 1),
    ("grpo, 4 completions of <= 256 tokens", dict(method="grpo", num_generations=4, max_completion_length=256), 1),
    ("grpo, defaults on H100:2", dict(method="grpo"), 2),
    ("grpo, answer-only (16 tokens)", dict(method="grpo", answer_only=True), 1),
    ("dpo, defaults", dict(method="dpo"), 1),
    ("dpo, --on-policy 4", dict(method="dpo", on_policy=4), 1),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from connectodistill.core.config import TrainConfig
    from connectodistill.remote.app import TRAIN_TIMEOUT
    from connectodistill.training.budget import estimate

    letters = list("abcdefg" * (TRAIN_SAMPLES // 7 + 1))[:TRAIN_SAMPLES]
    rows = []
    print(f"{'run':<40}{'steps':>7}{'per step':>10}{'hours':>7}  parts (h)")
    for label, settings, gpus in ROWS:
        est = estimate(TrainConfig(**settings), train_letters=letters, val_samples=VAL_SAMPLES, gpus=gpus)
        parts = {k: round(v / 3600, 2) for k, v in est.parts.items()}
        rows.append({"run": label, "settings": settings, "gpus": gpus, "steps": est.steps,
                     "per_step": est.completions_per_step, "completion_tokens": est.completion_tokens,
                     "hours": round(est.seconds / 3600, 2), "parts_h": parts,
                     "over_default_timeout": est.seconds > TRAIN_TIMEOUT})
        flag = "  > 4 h timeout" if est.seconds > TRAIN_TIMEOUT else ""
        print(f"{label:<40}{est.steps:>7}{est.completions_per_step:>10}{est.seconds / 3600:>7.1f}  {parts}{flag}")
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "train_samples": TRAIN_SAMPLES,
                                        "val_samples": VAL_SAMPLES, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
