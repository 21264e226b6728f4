"""From merge's parquet to training examples: rows, splits, and the prompt each example gets.

Shared by every training recipe (SFT here; preference and RL recipes build on the same
rows). ``load_training_data`` reads the merged file once and decides, by the documented rule
in ``prompts.py``, which prompt every sample and every training row is given:

- ``prompt="teacher"`` (default): a training row is given the exact prompt its teacher
  response answered; a sample without one (val/test, a row without a response) its first
  stored prompt in the run's prompt setting, else the recovered template, else the builtin.
  Train rows that mix prompt settings (files with and without guidance) are refused unless
  a setting is chosen (``with_description``) or ``allow_mixed_prompts`` keeps each row's own.
- ``prompt="builtin"``: the project's own prompt for everything.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..core.conversation import build_prompt, target_text
from ..core.errors import UserError
from ..core.prompts import SamplePrompt, choose_setting, first_stored, sample_prompts, setting_name
from ..core.task import ID_COLUMNS, image_columns, label_column

__all__ = ["Example", "TrainingData", "answer_rows", "build_examples", "load_training_data",
           "parse_answer_rows", "pick_rows"]

REQUIRED_COLUMNS = (*ID_COLUMNS, "split", "teacher_analysis", "teacher_correct")


@dataclass
class Example:
    """One conversation: the row (for its images), the prompt, the target text, the sample."""

    row: dict
    prompt: str
    target: str
    key: tuple[int, int]
    layout: str | None = None  # content-block order of the teacher's prompt
    prompt_source: str = "builtin"
    # An answer row: the assistant turn is only the answer block (``target`` is
    # ``<answer>x</answer>``); the collator makes ``<answer>`` context and learns the rest.
    answer_row: bool = False

    @property
    def letter(self) -> str:
        """The letter of the target's answer block."""
        return self.target[self.target.rindex("<answer>") + len("<answer>")]


@dataclass
class TrainingData:
    """What a recipe needs from the merged file: rows per split and every sample's prompt."""

    path: Path
    df: object  # pandas DataFrame of the merged rows
    report: dict
    splits: dict
    image_cols: tuple[str, ...]
    train_df: object
    val_df: object
    prompt: str  # "teacher" or "builtin"
    setting: str  # prompt setting: with_description / without_description / unknown
    setting_counts: dict[str, int]
    templates: dict[str, dict]
    sample_prompts: dict[tuple[int, int], SamplePrompt] = field(default_factory=dict)
    dropped_other_setting: int = 0
    allow_mixed: bool = False

    def prompt_for_row(self, row: dict) -> SamplePrompt:
        """The prompt a training row is given: its own response's prompt (teacher source),
        else its sample's prompt."""
        text = row.get("teacher_prompt")
        if self.prompt == "teacher" and isinstance(text, str) and text and (
                self.allow_mixed or setting_name(row.get("teacher_with_description")) == self.setting):
            layout = row.get("teacher_prompt_layout")
            return SamplePrompt(text, "teacher", layout if isinstance(layout, str) else None)
        return self.sample_prompts[_key(row)]


def _key(row) -> tuple[int, int]:
    return int(row[ID_COLUMNS[0]]), int(row[ID_COLUMNS[1]])


def pick_rows(df, splits: dict[str, list], split: str):
    """Rows of ``df`` whose (proofread_root_id, current_root_id) is in merge's ``split`` list."""
    keys = {tuple(int(x) for x in pair) for pair in splits.get(split, [])}
    mask = [(int(p), int(c)) in keys for p, c in zip(df[ID_COLUMNS[0]], df[ID_COLUMNS[1]], strict=True)]
    return df[mask]


def _is_true(value) -> bool:
    """True for True / numpy True; False for False, None, NaN and pandas NA."""
    return type(value).__name__ in ("bool", "bool_") and bool(value)


def load_training_data(merged_path: Path, *, prompt: str = "teacher", with_description: bool | None = None,
                       allow_mixed_prompts: bool = False, fold: int | None = None) -> TrainingData:
    """Read merge's parquet (and its responses file), pick train/val rows, decide the prompts.

    ``fold``: train on cross-validation fold ``fold`` of a ``merge --folds K`` file (its own
    train/val/test lists); None: the file's default split lists.
    """
    import pandas as pd

    from ..core.data import read_merged
    from ..merging.recipe import output_paths

    merged_path = Path(merged_path)
    if not merged_path.is_file():
        raise UserError(f"merged dataset not found: {merged_path} (run `connectodistill merge` first)")
    table, report = read_merged(merged_path)
    df = table.to_pandas()
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if label_column(df.columns) is None:
        missing.append("ground_truth/class_description")
    if missing:
        raise UserError(f"{merged_path}: missing column(s) {', '.join(missing)}; is it merge's output?")
    image_cols = image_columns(df.columns)
    if image_cols is None:
        raise UserError(f"{merged_path}: no image columns (option_1_front_image/_path ...); training needs the views")
    splits = report.get("splits")
    if not splits:
        raise UserError(f"{merged_path}: no split lists in the parquet metadata; re-run merge")
    if fold is not None:
        folds = report.get("fold_splits") or []
        if not folds:
            raise UserError(f"{merged_path} has no cross-validation folds; re-run merge with --folds K")
        if not 0 <= fold < len(folds):
            raise UserError(f"--fold {fold} is out of range: {merged_path} has folds 0..{len(folds) - 1}")
        splits = folds[fold]

    train_df = pick_rows(df, splits, "train")
    if "train_row" in train_df:  # merge marks the rows its filters kept for training
        train_df = train_df[train_df["train_row"].astype(bool)]
    val_df = pick_rows(df, splits, "val").drop_duplicates(list(ID_COLUMNS))

    # The prompt setting: asked for, else the one most train rows' responses carry.
    with_response = train_df[train_df["teacher_prompt"].notna()] if "teacher_prompt" in train_df else train_df[:0]
    setting, counts = choose_setting(list(with_response.get("teacher_with_description", [])), with_description)
    dropped = 0
    if prompt == "teacher" and len(counts) > 1 and not allow_mixed_prompts:
        if with_description is None:
            listing = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            raise UserError(
                f"{merged_path}: the train rows' teacher prompts mix settings ({listing} rows); pass "
                "--with-description or --without-description to train on one setting, or "
                "--allow-mixed-prompts to give each row the prompt its response answered"
            )
        other = [setting_name(v) != setting and isinstance(p, str)
                 for v, p in zip(train_df["teacher_with_description"], train_df["teacher_prompt"], strict=True)]
        dropped = int(sum(other))
        train_df = train_df[[not o for o in other]]

    responses = None
    resp_path = output_paths(merged_path)[1]
    if prompt == "teacher" and resp_path.is_file():
        responses = pd.read_parquet(resp_path, columns=[*ID_COLUMNS, "teacher_prompt", "teacher_prompt_layout",
                                                        "teacher_with_description", "teacher_order"])
    elif prompt == "teacher" and "teacher_prompt" in df:  # the merged rows themselves, in file order
        responses = df[[*ID_COLUMNS, "teacher_prompt", "teacher_with_description"]
                       + (["teacher_prompt_layout"] if "teacher_prompt_layout" in df else [])]
    templates = report.get("prompt_templates") or {}
    guidance = setting != "without_description"
    stored, _ = first_stored(responses, setting) if prompt == "teacher" else ({}, 0)
    samples = df.drop_duplicates(list(ID_COLUMNS)).to_dict("records")
    chosen = sample_prompts(samples, stored, templates if prompt == "teacher" else {}, setting,
                            lambda row: build_prompt(row, with_description=guidance))
    return TrainingData(
        path=merged_path, df=df, report=report, splits=splits, image_cols=image_cols,
        train_df=train_df, val_df=val_df, prompt=prompt, setting=setting, setting_counts=counts,
        templates=templates, sample_prompts={_key(r): p for r, p in zip(samples, chosen, strict=True)},
        dropped_other_setting=dropped, allow_mixed=allow_mixed_prompts,
    )


def build_examples(rows, data: TrainingData, *, target: str, fill_missing: bool,
                   sample_level: bool = False) -> tuple[list[Example], int]:
    """Conversations for ``rows`` (a DataFrame); returns (examples, rows skipped for lack of analysis).

    ``sample_level``: one example per sample with its sample prompt (validation), the target
    being the teacher's correct analysis where there is one, else a templated rationale.
    """
    from ..core.scoring import ground_truth_letters

    gt = ground_truth_letters(rows[label_column(rows.columns)].tolist())
    examples, skipped = [], 0
    for row, letter in zip(rows.to_dict("records"), gt, strict=True):
        analysis = None
        if target == "teacher":
            analysis = row.get("teacher_analysis")
            if not (_is_true(row.get("teacher_correct")) and isinstance(analysis, str) and analysis):
                if not fill_missing:
                    skipped += 1
                    continue
                analysis = None  # templated rationale from the ground truth
        p = data.sample_prompts[_key(row)] if sample_level else data.prompt_for_row(row)
        examples.append(Example(row=row, prompt=p.text, target=target_text(letter, analysis), key=_key(row),
                                layout=p.layout, prompt_source=p.source))
    return examples, skipped


def parse_answer_rows(value: str) -> tuple[float, bool]:
    """``--answer-rows`` -> (share of train samples with answer rows, keep the rationale rows):
    a number in (0, 1], ``all`` (1.0) or ``only`` (1.0, answer rows alone)."""
    text = str(value).strip().lower()
    if text in ("all", "only"):
        return 1.0, text == "all"
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0 < share <= 1:
        raise UserError(f"--answer-rows {value}: expected a share of the train samples in (0, 1], all, or only "
                        "(answer rows alone), e.g. --answer-rows 0.5")
    return share, True


def answer_rows(examples: list[Example], share: float, seed: int) -> list[Example]:
    """Answer-only twins of the ``examples`` of a ``share`` of their samples (1.0: all): the
    same row, views and question byte for byte, the assistant turn only ``<answer>x</answer>``
    with the example's own letter. One twin per example, so a sample weighs the same in both
    tasks; the samples are drawn with ``seed`` (sorted first: the draw is reproducible)."""
    import numpy as np

    keys = sorted({ex.key for ex in examples})
    n = round(share * len(keys))
    chosen = {keys[i] for i in np.random.default_rng(seed).choice(len(keys), size=n, replace=False)} if n else set()
    return [Example(row=ex.row, prompt=ex.prompt, target=f"<answer>{ex.letter}</answer>", key=ex.key,
                    layout=ex.layout, prompt_source=ex.prompt_source, answer_row=True)
            for ex in examples if ex.key in chosen]


def source_counts(items) -> dict[str, int]:
    """How many examples (or SamplePrompts) came from each prompt source."""
    return dict(Counter(getattr(x, "prompt_source", None) or x.source for x in items))


def write_sample_prompts(data: TrainingData, path: Path) -> Path:
    """Every sample's prompt (ids, text, source, layout, sha256) as a parquet in the run folder,
    so eval and predict give each sample exactly the prompt training chose for it."""
    import pyarrow as pa

    from ..core.data import write_parquet

    keys = list(data.sample_prompts)
    p = [data.sample_prompts[k] for k in keys]
    table = pa.table({
        ID_COLUMNS[0]: pa.array([k[0] for k in keys], pa.int64()),
        ID_COLUMNS[1]: pa.array([k[1] for k in keys], pa.int64()),
        "prompt": pa.array([x.text for x in p], pa.string()),
        "prompt_source": pa.array([x.source for x in p], pa.string()),
        "prompt_layout": pa.array([x.layout for x in p], pa.string()),
        "prompt_sha256": pa.array([x.sha256 for x in p], pa.string()),
    })
    return write_parquet(table, path)
