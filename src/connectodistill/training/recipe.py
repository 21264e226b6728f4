"""The `train` verb: one entry point for every recipe (the CLI and the Modal container call it).

It resolves the config and hands over: a sweep (``sweeps.py``), DPO or GRPO continuing an SFT
run (``dpo.py``, ``grpo.py``), one student per cross-validation fold (``cross_validation.py``),
or a single SFT run (``sft.py``).
"""

from __future__ import annotations

from pathlib import Path

from ..core.config import TrainConfig, resolve
from ..core.errors import UserError
from .sft import train_sft

__all__ = ["train"]


def train(config: TrainConfig | None = None, *, callbacks: list | None = None, **overrides) -> Path:
    """Fine-tune the student with LoRA; return the run folder (adapter + training_config.json).

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (the Modal layer uses one
    to commit checkpoints to its volume).
    """
    cfg = resolve(TrainConfig, config, overrides)
    if cfg.sweep:  # a grid of settings, chosen on val
        from .sweeps import train_sweep

        return train_sweep(cfg, train, callbacks=callbacks)
    if cfg.method != "sft":  # the sibling recipes continue an SFT run (--from): dpo.py, grpo.py
        from .dpo import train_dpo
        from .grpo import train_grpo

        return {"dpo": train_dpo, "grpo": train_grpo}[cfg.method](cfg, callbacks=callbacks)
    if cfg.from_run is not None:
        raise UserError("--from continues a run with --method dpo or grpo; SFT starts from --model")
    if cfg.folds:  # one student per cross-validation fold, each a run like this one
        from .cross_validation import train_cv

        return train_cv(cfg, train, callbacks=callbacks)
    return train_sft(cfg, callbacks=callbacks)
