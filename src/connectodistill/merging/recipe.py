"""merge: teacher CSVs -> matched, scored, split, filtered rows in one parquet (the recipe).

The recipe (``merge``) reads top to bottom over the steps of the flow:

1. ``teacher_csv.read_teacher_csvs``: well-formed teacher rows, ids exact, prompts decoded;
2. ``matching.describe_benchmark`` / ``match_responses`` / ``score_responses`` / ``vote``:
   which segment each response answered, right or wrong by the one answer rule;
3. ``splits.assign_splits`` over the leak-proof groups of every benchmark sample, before
   any filtering;
4. ``prompts.recover_templates``: the teacher's prompt as a template, checked byte for byte;
5. ``select_rows``: the filters shape the *train* rows only (correct responses first, up to
   N per sample, ``filter_correct_only``); every val and test sample keeps one row with its
   first teacher response, so validation and test score every sample, including those the
   teacher got wrong;
6. ``build_table`` / ``build_responses`` / ``merge_report.build_report`` and ``write_outputs`` (all three
   files renamed into place together at the very end, so a failed run writes nothing).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..core import data
from ..core.config import MergeConfig
from ..core.errors import UserError
from ..core.prompts import recover_templates, size_text
from ..core.task import BBOX_COLUMNS, LETTERS, MISSING_ANALYSIS
from .matching import (
    TEACHER_COLUMNS,
    Benchmark,
    Votes,
    describe_benchmark,
    match_responses,
    score_responses,
    vote,
)
from .metadata import build_report, print_summary
from .splits import assign_folds, assign_splits, fold_warnings
from .teacher_csv import (
    SETTINGS,
    Prompts,
    Teacher,
    as_numpy,
    decode_prompts,
    malformed_summary,
    memory_pool,
    read_teacher_csvs,
    setting_codes,
)

__all__ = ["MergeResult", "merge", "output_paths"]

_NO_ANALYSIS = rf"^\s*(?:{re.escape(MISSING_ANALYSIS)})?\s*$"


@dataclass
class MergeResult:
    """What ``merge`` produced: the output rows, the report (= metadata JSON), the paths."""

    table: pa.Table
    report: dict
    output: Path
    responses: pa.Table | None = None
    responses_path: Path | None = None
    metadata_path: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


# ======================================================================================
# the recipe
# ======================================================================================


def merge(
    config: MergeConfig | None = None,
    *,
    progress: bool = True,
    quiet: bool = False,
    **overrides: Any,
) -> MergeResult:
    """Match teacher CSVs to the benchmark, score, split, filter, and write three files.

    ``config`` gives the options (``MergeConfig``); keyword arguments override its fields,
    e.g. ``merge(csv_files=["a.csv"], output="m.parquet", dataset_name="bench.parquet")``.
    Writes OUT (the merged rows), ``<stem>_responses.parquet`` (every matched response, with
    the prompt it answered) and ``<stem>_metadata.json`` (the report), all at the end and
    atomically. ``progress`` shows bars while reading large CSVs; ``quiet`` also silences
    the summary table. Bad input raises UserError before anything is written.
    """
    from rich.console import Console

    cfg = _resolve_config(config, overrides)
    console = Console(stderr=True, quiet=quiet)
    clock = _Clock()

    # Check the cheap things first, so a typo fails before minutes of reading.
    outputs = output_paths(cfg.output)
    _check_inputs(cfg.csv_files, outputs, cfg.force)

    # The benchmark: every sample, its ground-truth letter, its segment and its leak-proof group.
    bench = describe_benchmark(
        data.load_benchmark(cfg.dataset_name, cfg.config_name, cfg.dataset_split), cfg.dataset_name
    )
    clock("load benchmark")

    # The teacher: every well-formed CSV row, files in the order given, rows in file order.
    teacher = read_teacher_csvs(cfg.csv_files, progress=progress and not quiet, console=console)
    clock("read CSVs")

    # Join on the ids, let the box decide; a row repeated inside its own file counts once.
    teacher = match_responses(bench, teacher)
    _require_some_match(bench, teacher, cfg)
    clock("match")

    # The prompt each matched response answered (text and block layout), decoded once.
    prompts = decode_prompts(teacher)
    clock("prompts")

    # One rule for every answer; right or wrong against the segment's ground truth.
    teacher = score_responses(bench, teacher, prompts.distinct_texts())
    votes = vote(bench, teacher)
    clock("score")

    # Splits over all samples and whole leak-proof groups, before any filtering. With K folds
    # every sample is tested by one fold and may train the others, so all are trainable.
    labels = np.asarray(LETTERS)[bench.truth]
    fold, fold_splits = None, None
    if cfg.folds:
        fold, fold_splits = assign_folds(bench.group, labels, folds=cfg.folds, val_size=cfg.val_size, seed=cfg.seed)
        for line in fold_warnings(fold_splits, bench.group, cfg.val_size):
            console.print(f"[yellow]warning: {line}[/]", soft_wrap=True)
        split = fold_splits[0]  # the default split lists: fold 0's
        trainable = np.ones(bench.n, dtype=bool)
    else:
        split = assign_splits(bench.group, labels, test_size=cfg.test_size, val_size=cfg.val_size, seed=cfg.seed)
        trainable = split == "train"
    clock("split")

    # The teacher's prompt as a template per (species, setting), kept only if exact.
    templates = teacher_templates(bench, teacher, prompts)

    # Train rows: filtered; val/test samples: one row each, never filtered.
    rows, resp, train_row = select_rows(bench, teacher, cfg, trainable=trainable)
    table = build_table(bench, teacher, votes, prompts, split, rows, resp, train_row, fold)
    responses = build_responses(bench, teacher, prompts, split, fold)
    report = build_report(cfg, bench, teacher, votes, prompts, templates, split, table, fold_splits)
    clock("build")

    write_outputs(outputs, table, responses, report)
    clock("write")

    print_summary(console, report, outputs)
    return MergeResult(
        table=table, report=report, output=outputs[0], responses=responses,
        responses_path=outputs[1], metadata_path=outputs[2], timings=clock.laps,
    )


# ======================================================================================
# options and paths
# ======================================================================================


def _resolve_config(config: MergeConfig | None, overrides: dict[str, Any]) -> MergeConfig:
    from pydantic import ValidationError

    unknown = sorted(set(overrides) - set(MergeConfig.model_fields))
    if unknown:
        raise TypeError(f"merge() got unknown option(s) {', '.join(unknown)}; "
                        f"known: {', '.join(MergeConfig.model_fields)}")
    if isinstance(overrides.get("csv_files"), str | Path):
        overrides["csv_files"] = [overrides["csv_files"]]
    values = {**(config.model_dump() if config is not None else {}), **overrides}
    try:
        return MergeConfig(**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "?"
        raise UserError(f"invalid merge option {where}: {err['msg']}") from e


def output_paths(output: Path) -> tuple[Path, Path, Path]:
    """(OUT, OUT's ``<stem>_responses.parquet``, OUT's ``<stem>_metadata.json``)."""
    output = Path(output)
    return (
        output,
        output.with_name(f"{output.stem}_responses.parquet"),
        output.with_name(f"{output.stem}_metadata.json"),
    )


def _check_inputs(csv_files: list[Path], outputs: tuple[Path, ...], force: bool) -> None:
    if not csv_files:
        raise UserError("no teacher CSV files given; pass one or more CSV paths (e.g. *_K5.csv)")
    for path in csv_files:
        if not path.exists():
            raise UserError(f"teacher CSV not found: {path}; check the path")
        if not path.is_file():
            raise UserError(f"teacher CSV is not a file: {path}; pass the CSV file itself")
    for path in outputs:
        if path.is_dir():
            raise UserError(f"output {path} is a folder; pass a file name such as merged.parquet to --output")
        if path.exists() and not force:
            raise UserError(f"output {path} already exists; pass --force to overwrite it or choose another --output")


def _require_some_match(bench: Benchmark, teacher: Teacher, cfg: MergeConfig) -> None:
    if (teacher.segment >= 0).any():
        return
    if teacher.n == 0:
        raise UserError(f"no usable teacher rows in {', '.join(map(str, cfg.csv_files))}: all "
                        f"{teacher.malformed_count} rows are malformed; {malformed_summary(teacher)}")
    t = teacher.table
    example = (t["proofread_root_id"][0].as_py(), t["current_root_id"][0].as_py())
    raise UserError(
        f"no teacher response matched dataset {cfg.dataset_name!r} (config {cfg.config_name!r}, "
        f"split {cfg.dataset_split!r}, {bench.n} samples) on ids and bounding box; e.g. CSV ids "
        f"{example[0]}/{example[1]} are not in it: check --dataset-name/--config-name and the CSV files"
    )


class _Clock:
    """Seconds per stage, for benchmarks (``MergeResult.timings``)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._t
        self._t = now


# ======================================================================================
# the teacher's prompts
# ======================================================================================


def teacher_templates(bench: Benchmark, teacher: Teacher, prompts: Prompts) -> dict[str, dict]:
    """``prompts.recover_templates`` over the matched responses: size from the CSV's own box,
    species from the CSV (else the benchmark), setting from ``with_description``.

    The K draws of a segment share their prompt, box, species and setting: each distinct
    combination (the box compared bit for bit) is one record, weighted by its rows, in order
    of first appearance."""
    t = teacher.table
    rows = np.flatnonzero(prompts.code >= 0)
    rows = rows[~as_numpy(prompts.texts.is_null(), bool)[prompts.code[rows]]]
    species = t["species"].take(pa.array(rows))
    if "species" in bench.table.column_names:  # an empty CSV cell falls back to the benchmark's
        fallback = bench.table["species"].take(pa.array(bench.segment[teacher.segment[rows]]))
        species = pc.if_else(pc.fill_null(pc.not_equal(species, ""), False), species, fallback)
    species = pc.dictionary_encode(species).combine_chunks()
    box = np.column_stack([t[c].to_numpy() for c in BBOX_COLUMNS])[rows]
    key = np.column_stack([prompts.code[rows], as_numpy(species.indices.fill_null(-1), np.int64),
                           setting_codes(teacher)[rows]]).astype(np.float64)
    key = np.ascontiguousarray(np.column_stack([key, box]))
    _, first, n = np.unique(key.view(np.dtype((np.void, key.dtype.itemsize * key.shape[1]))).ravel(),
                            return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    texts, layouts, names = prompts.texts.to_pylist(), prompts.layouts.to_pylist(), species.dictionary.to_pylist()
    sp_index = as_numpy(species.indices.fill_null(-1), np.int64)
    records = [(texts[prompts.code[rows[i]]], names[sp_index[i]] if sp_index[i] >= 0 else None, size_text(box[i]),
                SETTINGS[setting_codes_row], layouts[prompts.code[rows[i]]], int(k))
               for i, k, setting_codes_row in zip(first[order].tolist(), n[order].tolist(),
                                                  key[first[order], 2].astype(int).tolist(), strict=True)]
    return recover_templates(records)


# ======================================================================================
# output rows
# ======================================================================================


def select_rows(bench: Benchmark, teacher: Teacher, cfg: MergeConfig,
                trainable: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(benchmark row, teacher row or -1, train_row) per output row, in benchmark order.

    A ``trainable`` sample gets its segment's responses, correct ones first, then input
    order, at most ``responses_per_sample`` (None = all; a sample without any appears once
    with -1); then ``filter_matched_only`` drops the -1 rows and ``filter_correct_only``
    keeps only correct responses. These rows have ``train_row`` True.

    Every other sample (val, test) gets exactly one row, never filtered: its first response
    in input order (-1 when it has none), with ``train_row`` False. So validation and test
    keep the samples the teacher got wrong.
    """
    use = np.flatnonzero(teacher.keep & (teacher.segment >= 0))
    seg = teacher.segment[use]
    order = teacher.table["order"].to_numpy()[use]
    ranked = use[np.lexsort((order, ~teacher.correct[use], seg))]  # by segment, correct first
    per_seg = np.bincount(seg, minlength=bench.n)
    start = np.cumsum(per_seg) - per_seg
    available = per_seg[bench.segment]

    # train rows
    limit = cfg.responses_per_sample
    take = available if limit is None else np.minimum(available, limit)
    reps = np.where(trainable, np.maximum(take, 1), 0)
    rows = np.repeat(np.arange(bench.n), reps)
    within = np.arange(len(rows)) - np.repeat(np.cumsum(reps) - reps, reps)
    has = available[rows] > 0
    resp = np.full(len(rows), -1, dtype=np.int64)
    resp[has] = ranked[start[bench.segment[rows[has]]] + within[has]]
    keep = np.ones(len(rows), dtype=bool)
    if cfg.filter_matched_only:
        keep &= resp >= 0
    if cfg.filter_correct_only:
        keep &= (resp >= 0) & teacher.correct[np.maximum(resp, 0)]
    rows, resp = rows[keep], resp[keep]

    # one unfiltered row per val/test sample: its first response in input order. With folds
    # (every sample trainable) a sample the filters emptied still needs its row for testing.
    by_order = use[np.lexsort((order, seg))]
    has_row = np.zeros(bench.n, dtype=bool)
    has_row[rows] = True
    held = np.flatnonzero(~trainable | (trainable.all() & ~has_row))
    first = np.full(len(held), -1, dtype=np.int64)
    has = available[held] > 0
    first[has] = by_order[start[bench.segment[held[has]]]]

    all_rows = np.concatenate([rows, held])
    all_resp = np.concatenate([resp, first])
    train_row = np.concatenate([np.ones(len(rows), bool), np.zeros(len(held), bool)])
    o = np.argsort(all_rows, kind="stable")
    return all_rows[o], all_resp[o], train_row[o]


def build_table(bench: Benchmark, teacher: Teacher, votes: Votes, prompts: Prompts, split: np.ndarray,
                rows: np.ndarray, resp: np.ndarray, train_row: np.ndarray, fold: np.ndarray | None = None) -> pa.Table:
    """Benchmark columns byte-identical (``take``), then the teacher columns, ``split`` etc."""
    out = bench.table.take(pa.array(rows, pa.int64()))
    t = teacher.table
    idx = pa.array(resp, mask=resp < 0)
    letters = pa.array([*LETTERS, None], pa.string())
    # the placeholder for missing analysis tags (or an empty cell) is no analysis; the answer
    # is still scored. Taking through a null index avoids copying the texts twice.
    no_analysis = as_numpy(pc.match_substring_regex(t["analysis"], _NO_ANALYSIS), bool)
    analysis_rows = np.where((resp >= 0) & ~no_analysis[np.maximum(resp, 0)], resp, -1)
    prompt, layout = prompts.take(resp)
    columns = {
        "teacher_analysis": pc.take(t["analysis"], pa.array(analysis_rows, mask=analysis_rows < 0),
                                    memory_pool=memory_pool()),
        "teacher_answer": letters.take(pa.array(teacher.code)).take(idx),
        "teacher_answer_raw": t["llm_answer"].take(idx),
        "teacher_correct": pa.array(teacher.correct).take(idx),
        "teacher_model": t["model"].take(idx),
        "teacher_prompt": prompt,
        "teacher_prompt_layout": layout,
        "teacher_source": t["source"].take(idx),
        "teacher_index": t["index"].take(idx),
        "teacher_votes": pc.if_else(pa.array(resp >= 0), votes.summary.take(pa.array(rows)),
                                    pa.scalar(None, pa.string())),
        "teacher_with_description": t["with_description"].take(idx),
        "split": pa.array(split[rows], pa.string()),
        "split_group": pa.array(bench.group[rows]),
        "train_row": pa.array(train_row),
    }
    for name in TEACHER_COLUMNS:
        col = columns[name]
        out = out.append_column(name, col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
    if fold is not None:  # the fold that tests this sample
        out = out.append_column("fold", pa.array(fold[rows]))
    return out


def build_responses(bench: Benchmark, teacher: Teacher, prompts: Prompts, split: np.ndarray,
                    fold: np.ndarray | None = None) -> pa.Table:
    """Every matched response once (in-file repeats dropped), in input order, unfiltered,
    with the prompt it answered."""
    use = np.flatnonzero(teacher.keep & (teacher.segment >= 0))
    seg = teacher.segment[use]
    t = teacher.table
    idx = pa.array(use)
    letters = np.array([*LETTERS, None], dtype=object)
    no_analysis = as_numpy(pc.match_substring_regex(t["analysis"].take(idx), _NO_ANALYSIS), bool)
    prompt, layout = prompts.take(use)
    extra = {"fold": pa.array(fold[seg])} if fold is not None else {}
    return pa.table({
        "proofread_root_id": pa.array(bench.prid[seg]),
        "current_root_id": pa.array(bench.crid[seg]),
        "sample_index": pa.array(seg),
        "split": pa.array(split[seg], pa.string()),
        "split_group": pa.array(bench.group[seg]),
        "teacher_answer": pa.array(letters[teacher.code[use]], pa.string()),
        "ground_truth_letter": pa.array(np.asarray(LETTERS)[bench.truth[seg]], pa.string()),
        "teacher_correct": pa.array(teacher.correct[use]),
        "teacher_analysis": pc.if_else(pa.array(no_analysis), pa.scalar(None, pa.string()),
                                       t["analysis"].take(idx)),
        "teacher_model": t["model"].take(idx),
        "teacher_source": t["source"].take(idx),
        "teacher_index": t["index"].take(idx),
        "teacher_order": t["order"].take(idx),
        "teacher_answer_raw": t["llm_answer"].take(idx),
        "teacher_with_description": t["with_description"].take(idx),
        "teacher_prompt": prompt,
        "teacher_prompt_layout": layout,
        **extra,
    })


def write_outputs(outputs: tuple[Path, Path, Path], table: pa.Table, responses: pa.Table,
                  report: dict) -> None:
    """All three files through temporary names, renamed into place together at the end."""
    out, resp_path, meta_path = outputs
    compact = json.dumps(report)  # serialised once: the split lists can hold 40k id pairs
    # one key per line in the file, the long split lists on their own (compact) lines
    readable = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in report.items()) + "\n}\n"
    with data.atomic_paths(out, resp_path, meta_path) as (t_out, t_resp, t_meta):
        data.write_parquet(table, t_out, compact)
        data.write_parquet(responses, t_resp, compact)
        t_meta.write_text(readable, encoding="utf-8")
