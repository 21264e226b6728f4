"""Stage 2, merged parquet -> run folder: the ``train`` verb (``recipe``) over sibling recipes
(``sft``, ``dpo``, ``grpo``), the folds and sweeps that run them (``cross_validation``,
``sweeps``), and what they share: examples, the collator, the Trainer's arguments, the run
folder."""

from .recipe import train

__all__ = ["train"]
