"""bench/gpu.py's inputs: the project's own functions and benchmark-like samples to feed them.

The benchmark measures the path users pay for, so it imports the project's collator,
processor budget, model building, LoRA and generation instead of re-typing them, and renders
its samples with the offline kit (three PNG views and a teacher-like analysis per sample).
"""

from __future__ import annotations

from pathlib import Path


def project_api():
    """The project's own functions, from the package layout of docs/architecture.md."""
    from connectodistill.core import modeling
    from connectodistill.core.generation import generate_answers
    from connectodistill.training.collator import DistillCollator
    from connectodistill.training.examples import Example

    return modeling, generate_answers, Example, DistillCollator


def train_defaults() -> dict:
    """LoRA / collator defaults of ``connectodistill train`` (TrainConfig), not re-typed here."""
    from connectodistill.core.config import TrainConfig

    f = TrainConfig.model_fields
    return {k: f[k].default for k in ("lora_r", "lora_alpha", "lora_dropout", "max_length")}


def analysis_text(letter: str, chars: int, k: int) -> str:
    """A teacher-like analysis of about ``chars`` characters (the kit's phrases, repeated)."""
    from connectodistill.synthetic import ANALYSIS_DETAIL, ANALYSIS_PHRASES

    phrases = list(ANALYSIS_PHRASES.get(letter) or ["The segment is shown in three views."])
    parts, i = [], k
    while sum(len(p) + 1 for p in parts) < chars:
        parts.append(phrases[i % len(phrases)])
        parts.append(ANALYSIS_DETAIL.format(n=5 + (i * 7) % 50))
        i += 1
    return " ".join(parts)[: max(chars, 1)]


def make_samples(workdir: Path, n: int, image_size: int, target_chars: int, Example):
    """n benchmark-like rows with three ``image_size`` PNG views each, and their examples."""
    import pyarrow.parquet as pq

    from connectodistill.core.conversation import build_prompt, target_text
    from connectodistill.core.task import DESCRIPTION_TO_LETTER, image_columns, label_column
    from connectodistill.synthetic import make_benchmark

    path = make_benchmark(workdir / f"bench_{image_size}.parquet", n=n, seed=0, image_size=image_size)
    table = pq.read_table(path)
    rows = table.to_pylist()
    cols = image_columns(table.column_names)
    label = label_column(table.column_names)
    examples = []
    for i, row in enumerate(rows):
        letter = DESCRIPTION_TO_LETTER[row[label]]
        examples.append(Example(
            row=row, prompt=build_prompt(row),
            target=target_text(letter, analysis_text(letter, target_chars, i)),
            key=(int(row["proofread_root_id"]), int(row["current_root_id"]))))
    return rows, cols, examples
