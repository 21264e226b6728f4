"""merge: match teacher responses to the benchmark, score them, split, filter, write.

The recipe (``merge``) reads top to bottom; each step is a small function below it:

1. ``read_teacher_csvs``: the teacher CSVs, ids as exact int64 (read as text, validated,
   converted by pyarrow, never through float); malformed rows are skipped and reported
   with file and line; the base64-heavy ``prompt`` column is read but only the text part of
   the rows we output is ever decoded.
2. ``describe_benchmark``: ids, boxes and ground-truth letters of the benchmark, and which
   rows are copies of the same segment (equal ids, boxes within tolerance).
3. ``match_responses``: a join on the two ids, then the box decides (nearest within the
   float32-printing tolerance); identical responses to one segment count once.
4. ``score_responses`` / ``vote``: the one answer parser (``scoring.parse_answer``), right or
   wrong per response, majority vote per segment.
5. ``assign_splits`` on every benchmark sample, before any filtering.
6. ``select_rows``: (sample, response) pairs, correct responses first, up to N per sample,
   then the filters.
7. ``build_table`` / ``build_responses`` / ``build_report``, and ``write_outputs`` (all three
   files renamed into place together at the very end, so a failed run writes nothing).

Everything is vectorised (pyarrow joins and compute, numpy); Python only loops over files,
distinct answer strings and the prompts of output rows.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import data
from .config import MergeConfig
from .errors import UserError
from .scoring import UNPARSED, parse_answer
from .splits import assign_splits
from .task import (
    BBOX_COLUMNS,
    CLASSES,
    DESCRIPTION_TO_LETTER,
    ID_COLUMNS,
    LETTERS,
    MISSING_ANALYSIS,
    SPLITS,
    image_columns,
    label_column,
)

__all__ = ["MergeResult", "merge", "prompt_text", "read_teacher_csvs"]

# Teacher CSV columns (after header normalisation). Required ones are named in the error.
REQUIRED_CSV_COLUMNS = (*ID_COLUMNS, *BBOX_COLUMNS, "analysis", "llm_answer")
OPTIONAL_CSV_COLUMNS = ("model", "index", "with_description", "prompt")

# Columns merge appends to the benchmark's, in this order.
TEACHER_COLUMNS = (
    "teacher_analysis", "teacher_answer", "teacher_answer_raw", "teacher_correct",
    "teacher_model", "teacher_prompt", "teacher_source", "teacher_index", "teacher_votes",
    "teacher_with_description", "split",
)

# Per coordinate, boxes match when |a - b| <= REL_TOL * max(|a|, |b|) + ABS_TOL_NM. float32
# keeps ~7 significant digits, so its printing differs from float64 by ~6e-8 relative.
REL_TOL = 1e-6
ABS_TOL_NM = 1e-3

_N_CODES = len(LETTERS) + 1  # letters 0..6, then "unparsed"
_NO_ANALYSIS = rf"^\s*(?:{re.escape(MISSING_ANALYSIS)})?\s*$"
_UNPARSED_CODE = len(LETTERS)
_INT64_MAX = "9223372036854775807"
_FLOAT_RE = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_PROGRESS_MIN_BYTES = 16 << 20  # show a progress bar only for files worth waiting for
_MAX_REPORTED_MALFORMED = 100


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
    Writes OUT (the merged rows), ``<stem>_responses.parquet`` (every matched response) and
    ``<stem>_metadata.json`` (the report), all at the end and atomically. ``progress``
    shows bars while reading large CSVs; ``quiet`` also silences the summary table.
    Bad input raises UserError before anything is written.
    """
    from rich.console import Console

    cfg = _resolve_config(config, overrides)
    console = Console(stderr=True, quiet=quiet)
    clock = _Clock()

    # Check the cheap things first, so a typo fails before minutes of reading.
    outputs = output_paths(cfg.output)
    _check_inputs(cfg.csv_files, outputs, cfg.force)

    # The benchmark: every sample, its ground-truth letter and its segment (duplicates share one).
    bench = describe_benchmark(
        data.load_benchmark(cfg.dataset_name, cfg.config_name, cfg.dataset_split), cfg.dataset_name
    )
    clock("load benchmark")

    # The teacher: every well-formed CSV row, files in the order given, rows in file order.
    teacher = read_teacher_csvs(cfg.csv_files, progress=progress and not quiet, console=console)
    clock("read CSVs")

    # Join on the ids, let the box decide, count identical responses once.
    teacher = match_responses(bench, teacher)
    _require_some_match(bench, teacher, cfg)
    clock("match")

    # One parser for every answer; right or wrong against the segment's ground truth.
    teacher = score_responses(bench, teacher)
    votes = vote(bench, teacher)
    clock("score")

    # Splits over all samples before any filtering, so the test set keeps the segments the
    # teacher got wrong and a filtered parquet still knows the whole split.
    split = assign_splits(
        bench.prid, np.asarray(LETTERS)[bench.truth],
        test_size=cfg.test_size, val_size=cfg.val_size, seed=cfg.seed,
    )
    clock("split")

    # (sample, response) rows: correct first, then input order; up to N; then the filters.
    rows, resp = select_rows(bench, teacher, cfg)
    table = build_table(bench, teacher, votes, split, rows, resp)
    responses = build_responses(bench, teacher, split)
    report = build_report(cfg, bench, teacher, votes, split, table.num_rows)
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
# the benchmark
# ======================================================================================


@dataclass
class Benchmark:
    """The benchmark table and the per-row arrays matching needs."""

    table: pa.Table
    name: str
    label_column: str
    prid: np.ndarray  # int64
    crid: np.ndarray  # int64
    box: np.ndarray  # (n, 6) float64
    truth: np.ndarray  # ground-truth letter codes 0..6
    segment: np.ndarray  # row of the segment's first copy (== own row unless a duplicate)

    @property
    def n(self) -> int:
        return len(self.prid)


def describe_benchmark(table: pa.Table, name: str) -> Benchmark:
    """Ids, boxes, ground-truth letters and segments of the benchmark table."""
    label = label_column(table.column_names)
    missing = [c for c in (*ID_COLUMNS, *BBOX_COLUMNS) if c not in table.column_names]
    if label is None:
        missing.append("class_description (or ground_truth)")
    if missing:
        raise UserError(f"dataset {name} lacks column(s) {', '.join(missing)}; pass the "
                        "ConnectomeBench segment-classification table as --dataset-name")
    if table.num_rows == 0:
        raise UserError(f"dataset {name} has no rows; check --dataset-name/--dataset-split")
    taken = [c for c in TEACHER_COLUMNS if c in table.column_names]
    if taken:
        raise UserError(f"dataset {name} already has column(s) {', '.join(taken)} (a merged file?); "
                        "pass the original benchmark as --dataset-name")
    prid = _dataset_ids(table, ID_COLUMNS[0], name)
    crid = _dataset_ids(table, ID_COLUMNS[1], name)
    box = np.empty((table.num_rows, len(BBOX_COLUMNS)))
    for k, col in enumerate(BBOX_COLUMNS):
        arr = table.column(col)
        if arr.null_count or not (pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type)):
            raise UserError(f"dataset {name} column {col} must be numbers without gaps (is {arr.type}, "
                            f"{arr.null_count} empty)")
        box[:, k] = arr.cast(pa.float64()).to_numpy()
    truth = _truth_codes(table.column(label), label, name)
    return Benchmark(table, name, label, prid, crid, box, truth, _segments(prid, crid, box))


def _dataset_ids(table: pa.Table, col: str, name: str) -> np.ndarray:
    """An id column as exact int64; floats and gaps are refused (they cannot be exact)."""
    arr = table.column(col)
    if arr.null_count:
        raise UserError(f"dataset {name} column {col} has {arr.null_count} empty cells; ids must be integers")
    if pa.types.is_integer(arr.type):
        if arr.type == pa.uint64() and len(arr) and pc.max(arr).as_py() > int(_INT64_MAX):
            raise UserError(f"dataset {name} column {col} has ids above the int64 range")
        return arr.cast(pa.int64()).to_numpy()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        ok, ints = _parse_int_strings(arr)
        if not ok.all():
            bad = arr.to_pylist()[int(np.flatnonzero(~ok)[0])]
            raise UserError(f"dataset {name} column {col} holds a non-integer id {bad!r}")
        return ints
    raise UserError(f"dataset {name} column {col} is {arr.type}; ids must be int64 (an 18-digit id is "
                    "not exact as a float): regenerate the table with integer ids")


def _truth_codes(values: pa.ChunkedArray, col: str, name: str) -> np.ndarray:
    """Ground-truth letter codes (0..6), via the distinct strings; unknown -> UserError."""
    if pa.types.is_dictionary(values.type):  # e.g. a pandas categorical written to parquet
        values = values.cast(values.type.value_type)
    uniq = pc.unique(values).to_pylist()
    for v in uniq:
        if DESCRIPTION_TO_LETTER.get(v) is None:
            known = "; ".join(f"{k}={d!r}" for k, d in CLASSES.items())
            raise UserError(f"unknown ground-truth label {v!r} in column {col} of dataset {name}; "
                            f"expected one of the seven ConnectomeBench descriptions exactly: {known}")
    code_of = np.array([LETTERS.index(DESCRIPTION_TO_LETTER[v]) for v in uniq], dtype=np.int64)
    return code_of[pc.index_in(values, value_set=pa.array(uniq, values.type)).to_numpy()]


def _segments(prid: np.ndarray, crid: np.ndarray, box: np.ndarray) -> np.ndarray:
    """For each row, the first row of the same segment (equal ids, boxes within tolerance)."""
    i, j = _id_pairs(prid, crid, prid, crid)
    ok = _boxes_match(box[i], box[j])
    seg = np.arange(len(prid))
    np.minimum.at(seg, i[ok], j[ok])
    while True:  # follow chains a~b~c to their first row
        nxt = seg[seg]
        if np.array_equal(nxt, seg):
            return seg
        seg = nxt


def _id_pairs(p1, c1, p2, c2) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j) with p1[i] == p2[j] and c1[i] == c2[j]: an exact hash join on int64."""
    left = pa.table({"p": p1, "c": c1, "i": np.arange(len(p1))})
    right = pa.table({"p": p2, "c": c2, "j": np.arange(len(p2))})
    joined = left.join(right, keys=["p", "c"], join_type="inner")
    return joined.column("i").to_numpy(), joined.column("j").to_numpy()


def _boxes_match(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise: every coordinate equal within float32-printing tolerance (never exact equality)."""
    tol = REL_TOL * np.maximum(np.abs(a), np.abs(b)) + ABS_TOL_NM
    return (np.abs(a - b) <= tol).all(axis=1)


# ======================================================================================
# reading the teacher CSVs
# ======================================================================================


@dataclass
class Teacher:
    """Well-formed teacher rows (one pyarrow table) and what was skipped."""

    table: pa.Table  # normalised columns + source (file name) + order (global input order)
    malformed: list[dict]  # {file, line, reason} of the first _MAX_REPORTED_MALFORMED
    malformed_count: int
    files: list[dict]  # per file: path, rows, malformed
    # filled by match_responses / score_responses (arrays over table rows):
    segment: np.ndarray | None = None  # matched benchmark segment row, -1 if none
    keep: np.ndarray | None = None  # False for a repeat of an identical response
    code: np.ndarray | None = None  # answer letter code, 7 = unparsed
    correct: np.ndarray | None = None  # bool, False when unmatched

    @property
    def n(self) -> int:
        return self.table.num_rows


def _normalise_header(name: str) -> str:
    return re.sub(r"\s+", "_", name.strip()).lower()


def read_teacher_csvs(paths: list[Path], *, progress: bool = False, console=None) -> Teacher:
    """Every teacher CSV row with exact int64 ids; malformed rows skipped and listed.

    Only the columns merge uses are read. ``order`` numbers the rows files-first in the
    order given; ``source`` is the file name. A file passed twice is parsed once.
    """
    tables: list[pa.Table] = []
    malformed: list[dict] = []
    malformed_count = 0
    files: list[dict] = []
    cache: dict[Path, tuple[pa.Table, list[dict], int]] = {}
    offset = 0
    for path in map(Path, paths):
        key = path.resolve()
        if key not in cache:
            cache[key] = _read_one_csv(path, progress=progress, console=console)
        table, bad, n_bad = cache[key]
        n = table.num_rows
        table = table.append_column("source", pa.array([path.name] * n, pa.string()))
        table = table.append_column("order", pa.array(np.arange(offset, offset + n)))
        offset += n
        tables.append(table)
        malformed_count += n_bad
        room = _MAX_REPORTED_MALFORMED - len(malformed)
        malformed.extend({"file": str(path), **b} for b in bad[:max(room, 0)])
        files.append({"path": str(path), "rows": n + n_bad, "malformed": n_bad})
    # zero-copy: the columns stay in their read chunks (``take`` handles chunked arrays)
    return Teacher(pa.concat_tables(tables), malformed, malformed_count, files)


def _pool() -> pa.MemoryPool:
    """The memory pool for the large text buffers: jemalloc where pyarrow has it.

    On Linux with transparent huge pages in ``madvise`` mode (common on cloud VMs) the
    default mimalloc pool spent 2-3x more system time on the ~1 GB a large merge reads
    (bench/README.md). A pool the user chose (ARROW_DEFAULT_MEMORY_POOL) is respected.
    """
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return pa.default_memory_pool()
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:
        return pa.default_memory_pool()


def _read_one_csv(path: Path, *, progress: bool, console) -> tuple[pa.Table, list[dict], int]:
    """(well-formed rows, first malformed rows as {line, reason}, malformed count) of one CSV."""
    import pyarrow.csv as pacsv

    if path.stat().st_size == 0:
        raise UserError(f"empty CSV file: {path} (no header); pass the teacher's results CSV")
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        header = next(csv.reader(f), [])
    columns: dict[str, str] = {}
    for original in header:
        columns.setdefault(_normalise_header(original), original)
    missing = [c for c in REQUIRED_CSV_COLUMNS if c not in columns]
    if missing:
        raise UserError(f"teacher CSV {path} lacks column(s) {', '.join(missing)} (header: "
                        f"{', '.join(header)[:200]}); pass a results CSV of segment classification")
    wanted = [c for c in (*REQUIRED_CSV_COLUMNS, *OPTIONAL_CSV_COLUMNS) if c in columns]

    skipped: list[dict] = []

    def on_bad_row(row) -> str:  # rows with the wrong number of cells
        skipped.append({"line": row.number, "reason": f"expected {row.expected_columns} cells, "
                        f"got {row.actual_columns}: {row.text[:60]!r}"})
        return "skip"

    read_options = pacsv.ReadOptions(block_size=8 << 20)
    parse_options = pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_bad_row)
    convert_options = pacsv.ConvertOptions(
        include_columns=[columns[c] for c in wanted],
        column_types={columns[c]: pa.string() for c in wanted},  # ids as text: never via float
        strings_can_be_null=False,
    )
    try:
        if progress and path.stat().st_size >= _PROGRESS_MIN_BYTES:
            from rich.progress import Progress

            with Progress(console=console, transient=True) as bar, bar.open(
                path, "rb", description=f"reading {path.name}"
            ) as f:
                table = pacsv.read_csv(f, read_options, parse_options, convert_options, memory_pool=_pool())
        else:
            table = pacsv.read_csv(path, read_options, parse_options, convert_options, memory_pool=_pool())
    except pa.ArrowInvalid as e:
        raise UserError(f"could not parse teacher CSV {path}: {data._first_line(e)}") from e
    table = table.rename_columns(wanted)
    if table.num_rows == 0 and not skipped:
        raise UserError(f"teacher CSV {path} has a header but no rows; pass a results CSV with answers")
    return _validate_rows(table, path, skipped)


def _parse_int_strings(arr) -> tuple[np.ndarray, np.ndarray]:
    """(valid mask, int64 values) of decimal integer text, exactly (0 where invalid)."""
    try:  # the usual case, a clean column: one exact cast (text -> int64, never via float)
        ints = _np(pc.cast(arr, pa.int64()), np.int64)
        if (ints >= 0).all():
            return np.ones(len(ints), dtype=bool), ints
    except pa.ArrowInvalid:
        pass
    s = pc.utf8_trim_whitespace(arr)
    ok = pc.match_substring_regex(s, r"^[0-9]{1,19}$")
    n_chars = pc.utf8_length(s)
    ok = pc.and_(ok, pc.or_(pc.less(n_chars, 19), pc.less_equal(s, _INT64_MAX)))
    ok = pc.fill_null(ok, False)
    ints = pc.cast(pc.if_else(ok, s, "0"), pa.int64())
    return _np(ok, bool), _np(ints, np.int64)


def _parse_float_strings(arr) -> tuple[np.ndarray, np.ndarray]:
    """(valid mask, float64 values) of decimal number text (no nan/inf)."""
    try:  # the usual case, a clean column: one cast
        vals = _np(pc.cast(arr, pa.float64()), np.float64)
        if np.isfinite(vals).all():
            return np.ones(len(vals), dtype=bool), vals
    except pa.ArrowInvalid:
        pass
    s = pc.utf8_trim_whitespace(arr)
    ok = _np(pc.fill_null(pc.match_substring_regex(s, _FLOAT_RE), False), bool)
    vals = _np(pc.cast(pc.if_else(pa.array(ok), s, "0"), pa.float64()), np.float64)
    ok &= np.isfinite(vals)  # 1e999 is a number too, but not a coordinate
    return ok, np.where(ok, vals, 0.0)


def _np(arr, dtype) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=dtype)


def _validate_rows(table: pa.Table, path: Path, skipped: list[dict]) -> tuple[pa.Table, list[dict], int]:
    """Exact ids and numeric boxes; a row with a blank or garbage cell there is malformed."""
    n = table.num_rows
    ok = np.ones(n, dtype=bool)
    first_bad = np.full(n, -1)  # which id/box column made a row malformed
    cols: dict[str, np.ndarray] = {}
    for k, col in enumerate((*ID_COLUMNS, *BBOX_COLUMNS)):
        valid, values = (_parse_int_strings if col in ID_COLUMNS else _parse_float_strings)(table[col])
        first_bad[(~valid) & ok] = k
        ok &= valid
        cols[col] = values

    index = None
    if "index" in table.column_names:
        valid, values = _parse_int_strings(table["index"])
        index = pa.array(values, mask=~valid)
    with_desc = None
    if "with_description" in table.column_names:
        s = pc.utf8_lower(pc.utf8_trim_whitespace(table["with_description"]))
        yes = _np(pc.is_in(s, value_set=pa.array(["true", "1", "yes"])), bool)
        no = _np(pc.is_in(s, value_set=pa.array(["false", "0", "no"])), bool)
        with_desc = pa.array(yes, mask=~(yes | no))

    def text(col: str):
        return table[col] if col in table.column_names else pa.nulls(n, pa.string())

    out = pa.table({
        **{c: cols[c] for c in (*ID_COLUMNS, *BBOX_COLUMNS)},
        "llm_answer": text("llm_answer"),
        "analysis": text("analysis"),
        "model": text("model"),
        "index": index if index is not None else pa.nulls(n, pa.int64()),
        "with_description": with_desc if with_desc is not None else pa.nulls(n, pa.bool_()),
        "prompt": text("prompt"),
    })

    bad_rows = np.flatnonzero(~ok)
    details = list(skipped)
    if len(bad_rows):
        lines = _line_numbers(table, bad_rows[:_MAX_REPORTED_MALFORMED])
        names = (*ID_COLUMNS, *BBOX_COLUMNS)
        for r, line in zip(bad_rows[:_MAX_REPORTED_MALFORMED], lines, strict=True):
            col = names[first_bad[r]]
            value = table[col][int(r)].as_py()
            what = "blank" if not value.strip() else f"not a {'integer' if col in ID_COLUMNS else 'number'}: {value[:40]!r}"
            details.append({"line": line, "reason": f"{col} {what}"})
        out = out.filter(pa.array(ok))
    details.sort(key=lambda d: (d["line"] is None, d["line"] or 0))
    return out, details, len(bad_rows) + len(skipped)


def _line_numbers(table: pa.Table, rows: np.ndarray) -> list[int]:
    """1-based line where each row starts (header = line 1), counting newlines inside cells."""
    newlines = np.zeros(table.num_rows, dtype=np.int64)
    for col in table.column_names:
        newlines += _np(pc.count_substring(table[col], "\n"), np.int64)
    before = np.cumsum(newlines) - newlines
    return (2 + rows + before[rows]).tolist()


# ======================================================================================
# matching and scoring
# ======================================================================================


def match_responses(bench: Benchmark, teacher: Teacher) -> Teacher:
    """Set ``teacher.segment`` (benchmark segment row or -1) and ``teacher.keep`` (de-dup).

    A join on the two ids proposes candidates; the box decides: the nearest (sum of
    absolute differences) among those within tolerance, none within tolerance = unmatched.
    """
    t = teacher.table
    tbox = np.column_stack([t[c].to_numpy() for c in BBOX_COLUMNS])
    reps = np.flatnonzero(bench.segment == np.arange(bench.n))  # one row per segment
    ti, bj = _id_pairs(t["proofread_root_id"].to_numpy(), t["current_root_id"].to_numpy(),
                       bench.prid[reps], bench.crid[reps])
    bj = reps[bj]
    ok = _boxes_match(tbox[ti], bench.box[bj])
    ti, bj = ti[ok], bj[ok]
    dist = np.abs(tbox[ti] - bench.box[bj]).sum(axis=1)
    o = np.lexsort((bj, dist, ti))  # per response: nearest first, then the earlier row
    ti, bj = ti[o], bj[o]
    first = np.unique(ti, return_index=True)[1]
    segment = np.full(teacher.n, -1, dtype=np.int64)
    segment[ti[first]] = bj[first]
    teacher.segment = segment
    teacher.keep = _first_of_identical(t, segment)
    return teacher


def _first_of_identical(t: pa.Table, segment: np.ndarray) -> np.ndarray:
    """True for the first of identical responses (same segment, answer text and analysis).

    Unmatched rows have no segment; their exact ids and box stand in for it. Comparing
    ~1 KB analyses for 200k rows is the costly part, so a cheap numeric key (segment, answer,
    analysis length) first finds the rows that could be identical; only those are compared
    in full (a hash group-by), the rest are unique already.
    """
    n = len(segment)
    matched = segment >= 0
    answers = t["llm_answer"]
    keys = [
        segment,
        _np(pc.index_in(answers, value_set=pc.unique(answers)), np.int64),
        _np(pc.binary_length(t["analysis"]), np.int64),
        *(np.where(matched, 0, t[c].to_numpy()) for c in ID_COLUMNS),
        *(np.where(matched, 0, t[c].to_numpy().view(np.int64)) for c in BBOX_COLUMNS),
    ]
    o = np.lexsort(keys[::-1])
    same = np.ones(max(n - 1, 0), dtype=bool)
    for k in keys:
        ks = k[o]
        same &= ks[1:] == ks[:-1]
    candidate = np.zeros(n, dtype=bool)
    candidate[o[1:][same]] = True
    candidate[o[:-1][same]] = True
    keep = np.ones(n, dtype=bool)
    rows = np.flatnonzero(candidate)
    if len(rows):
        idx = pa.array(rows)
        g = pa.table({f"k{i}": pa.array(k[rows]) for i, k in enumerate(keys)} | {
            "llm_answer": answers.take(idx), "analysis": t["analysis"].take(idx), "order": rows})
        firsts = g.group_by([f"k{i}" for i in range(len(keys))] + ["llm_answer", "analysis"],
                            use_threads=False).aggregate([("order", "min")])
        keep[rows] = False
        keep[firsts["order_min"].to_numpy()] = True  # order is the row number
    return keep


def _require_some_match(bench: Benchmark, teacher: Teacher, cfg: MergeConfig) -> None:
    if (teacher.segment >= 0).any():
        return
    if teacher.n == 0:
        raise UserError(f"no usable teacher rows in {', '.join(map(str, cfg.csv_files))} "
                        f"({teacher.malformed_count} malformed); check the files")
    t = teacher.table
    example = (t["proofread_root_id"][0].as_py(), t["current_root_id"][0].as_py())
    raise UserError(
        f"no teacher response matched dataset {cfg.dataset_name!r} (config {cfg.config_name!r}, "
        f"split {cfg.dataset_split!r}, {bench.n} samples) on ids and bounding box; e.g. CSV ids "
        f"{example[0]}/{example[1]} are not in it: check --dataset-name/--config-name and the CSV files"
    )


def score_responses(bench: Benchmark, teacher: Teacher) -> Teacher:
    """Set ``teacher.code`` (parsed letter, 7 = unparsed) and ``teacher.correct``.

    The parser runs once per distinct answer string (there are few), via ``index_in``.
    """
    answers = teacher.table["llm_answer"]
    uniq = pc.unique(answers)
    letter_code = {x: i for i, x in enumerate(LETTERS)}
    codes = np.array([letter_code.get(parse_answer(a), _UNPARSED_CODE) for a in uniq.to_pylist()],
                     dtype=np.int64)
    teacher.code = codes[_np(pc.index_in(answers, value_set=uniq), np.int64)]
    seg = teacher.segment
    truth = np.where(seg >= 0, bench.truth[np.maximum(seg, 0)], -1)
    teacher.correct = (seg >= 0) & (teacher.code == truth)
    return teacher


@dataclass
class Votes:
    """Per benchmark row (through its segment): counts and the majority vote."""

    responses: np.ndarray  # number of (de-duplicated) responses
    correct: np.ndarray  # of which correct
    majority: np.ndarray  # majority letter code, -1 when no parsed answer
    share: np.ndarray  # majority votes / responses (0.0 when none)
    summary: pa.Array  # "a:3 c:1 unparsed:1" (majority first, unparsed last), null if none


def vote(bench: Benchmark, teacher: Teacher) -> Votes:
    """Majority vote per segment, as ``scoring.majority_vote`` (ties: first appearance)."""
    use = teacher.keep & (teacher.segment >= 0)
    seg, code = teacher.segment[use], teacher.code[use]
    order = teacher.table["order"].to_numpy()[use]
    n = bench.n
    cell = seg * _N_CODES + code
    counts = np.bincount(cell, minlength=n * _N_CODES).reshape(n, _N_CODES)
    first = np.full(n * _N_CODES, np.iinfo(np.int64).max)
    np.minimum.at(first, cell, order)
    first = first.reshape(n, _N_CODES)

    parsed = counts[:, :_UNPARSED_CODE]
    best = parsed.max(axis=1)
    tied = (parsed == best[:, None]) & (best[:, None] > 0)
    majority = np.where(best > 0, np.where(tied, first[:, :_UNPARSED_CODE], np.iinfo(np.int64).max).argmin(1), -1)
    total = counts.sum(axis=1)
    share = np.divide(best, total, out=np.zeros(n), where=total > 0)
    n_correct = np.bincount(seg[teacher.correct[use]], minlength=n)

    # vote summary strings, built column-wise: pieces "a:3", letters by count (ties: first
    # seen) so the majority comes first, "unparsed:n" last
    cells = np.flatnonzero(counts.ravel())
    s, c = cells // _N_CODES, cells % _N_CODES
    cnt, fst = counts.ravel()[cells], first.ravel()[cells]
    o = np.lexsort((fst, -cnt, c == _UNPARSED_CODE, s))
    names = np.array([*LETTERS, UNPARSED])
    pieces = pc.binary_join_element_wise(pa.array(names[c[o]]), pa.array(cnt[o].astype(str)), ":")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(s, minlength=n))]).astype(np.int32)
    summary = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), pieces), " ")
    summary = pc.if_else(pa.array(total > 0), summary, pa.scalar(None, pa.string()))

    # every row of a duplicated segment reads its segment's numbers
    sg = bench.segment
    return Votes(total[sg], n_correct[sg], majority[sg], share[sg], summary.take(pa.array(sg)))


# ======================================================================================
# output rows
# ======================================================================================


def select_rows(bench: Benchmark, teacher: Teacher, cfg: MergeConfig) -> tuple[np.ndarray, np.ndarray]:
    """(benchmark row, teacher row or -1) per output row, in benchmark order.

    Per sample: its segment's responses, correct ones first, then input order, at most
    ``responses_per_sample`` (None = all); a sample without any appears once with -1.
    Then ``filter_matched_only`` drops the -1 rows and ``filter_correct_only`` keeps only
    correct responses.
    """
    use = np.flatnonzero(teacher.keep & (teacher.segment >= 0))
    seg = teacher.segment[use]
    order = teacher.table["order"].to_numpy()[use]
    ranked = use[np.lexsort((order, ~teacher.correct[use], seg))]  # by segment, correct first
    per_seg = np.bincount(seg, minlength=bench.n)
    start = np.cumsum(per_seg) - per_seg

    available = per_seg[bench.segment]
    limit = cfg.responses_per_sample
    take = available if limit is None else np.minimum(available, limit)
    reps = np.maximum(take, 1)
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
    return rows[keep], resp[keep]


def build_table(bench: Benchmark, teacher: Teacher, votes: Votes, split: np.ndarray,
                rows: np.ndarray, resp: np.ndarray) -> pa.Table:
    """Benchmark columns byte-identical (``take``), then the teacher columns and ``split``."""
    out = bench.table.take(pa.array(rows, pa.int64()))
    t = teacher.table
    idx = pa.array(resp, mask=resp < 0)
    letters = pa.array([*LETTERS, None], pa.string())
    # the placeholder for missing analysis tags (or an empty cell) is no analysis; the answer
    # is still scored. Taking through a null index avoids copying the texts twice.
    no_analysis = _np(pc.match_substring_regex(t["analysis"], _NO_ANALYSIS), bool)
    analysis_rows = np.where((resp >= 0) & ~no_analysis[np.maximum(resp, 0)], resp, -1)
    columns = {
        "teacher_analysis": pc.take(t["analysis"], pa.array(analysis_rows, mask=analysis_rows < 0),
                                    memory_pool=_pool()),
        "teacher_answer": letters.take(pa.array(teacher.code)).take(idx),
        "teacher_answer_raw": t["llm_answer"].take(idx),
        "teacher_correct": pa.array(teacher.correct).take(idx),
        "teacher_model": t["model"].take(idx),
        "teacher_prompt": _prompt_texts(pc.take(t["prompt"], idx, memory_pool=_pool())),
        "teacher_source": t["source"].take(idx),
        "teacher_index": t["index"].take(idx),
        "teacher_votes": pc.if_else(pa.array(resp >= 0), votes.summary.take(pa.array(rows)),
                                    pa.scalar(None, pa.string())),
        "teacher_with_description": t["with_description"].take(idx),
        "split": pa.array(split[rows], pa.string()),
    }
    for name in TEACHER_COLUMNS:
        col = columns[name]
        out = out.append_column(name, col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
    return out


def build_responses(bench: Benchmark, teacher: Teacher, split: np.ndarray) -> pa.Table:
    """Every matched response once (after de-dup), in input order, unfiltered."""
    use = np.flatnonzero(teacher.keep & (teacher.segment >= 0))
    seg = teacher.segment[use]
    t = teacher.table
    idx = pa.array(use)
    letters = np.array([*LETTERS, None], dtype=object)
    return pa.table({
        "proofread_root_id": pa.array(bench.prid[seg]),
        "current_root_id": pa.array(bench.crid[seg]),
        "sample_index": pa.array(seg),
        "split": pa.array(split[seg], pa.string()),
        "teacher_answer": pa.array(letters[teacher.code[use]], pa.string()),
        "ground_truth_letter": pa.array(np.asarray(LETTERS)[bench.truth[seg]], pa.string()),
        "teacher_correct": pa.array(teacher.correct[use]),
        "teacher_model": t["model"].take(idx),
        "teacher_source": t["source"].take(idx),
        "teacher_index": t["index"].take(idx),
        "teacher_answer_raw": t["llm_answer"].take(idx),
        "teacher_with_description": t["with_description"].take(idx),
    })


# --------------------------------------------------------------------------------------
# the prompt's text block
# --------------------------------------------------------------------------------------

# The text block of a content-block list written with repr() (or JSON): the marker is found
# with str.find (fast over hundreds of KB of base64), then this pattern reads the literal.
_TEXT_MARKERS = ("'type': 'text'", '"type": "text"', "'type': 'input_text'", '"type": "input_text"')
_TEXT_LITERAL = re.compile(  # a quoted literal, "unrolled" so a 2 KB text is one fast scan
    r"""\s*,\s*(['"])text\1\s*:\s*('[^'\\]*(?:\\.[^'\\]*)*'|"[^"\\]*(?:\\.[^"\\]*)*")""", re.S
)


def _decode_literal(lit: str) -> str:
    """The value of a Python string literal (quotes included), without a parser if possible."""
    return _decode_body(lit[1:-1], lit[0])


def _decode_body(body: str, quote: str) -> str:
    """The value of a string literal's inside ``body`` (``quote`` is its quote character)."""
    if "\\" not in body:
        return body
    # The usual escapes only: if no backslash is left after undoing them, none was anything
    # else (an escaped backslash always leaves one behind, and falls to the exact path).
    quick = body.replace("\\n", "\n")
    if "\\'" in quick:
        quick = quick.replace("\\'", "'")
    if "\\" not in quick:
        return quick
    if body.isascii():  # every Python escape, exactly
        return body.encode("ascii").decode("unicode_escape")
    return ast.literal_eval(quote + body + quote)  # safe: a string literal only


_USUAL_MARKER = "'type': 'text', 'text': "


def _last_text_block(cell: str) -> str | None:
    """The usual layout, checked cheaply: repr() of blocks ending in the only text block.

    ``...{'type': 'text', 'text': '<text>'}]``: the literal runs to the end, and holds no
    unescaped quote of its own kind. Anything else returns None (the general path decides).
    """
    i = cell.rfind(_USUAL_MARKER)
    if i < 0:
        return None
    start = i + len(_USUAL_MARKER)
    q = cell[start:start + 1]
    end = len(cell.rstrip()) - 2  # before "}]"
    if q not in ("'", '"') or cell[end - 1:end + 2] != q + "}]" or end - 1 <= start:
        return None
    body = cell[start + 1:end - 1]
    # repr() escapes every quote of the literal's own kind inside it (and writes "..." only
    # for text without any "), so a bare one means the literal ended earlier
    if body.count(q) != (body.count("\\" + q) if q == "'" else 0):
        return None
    if cell.count("'type': 'text'") != 1:
        return None
    return _decode_body(body, q)


def prompt_text(cell: str | None) -> str | None:
    """The text part of a teacher ``prompt`` cell, without evaluating anything.

    The cell is the ``repr`` of a list of content blocks (images as base64, then a text
    block). A targeted pattern reads the text block's string literal; where that fails, a
    safe literal parser (``ast.literal_eval``) reads the whole list. A cell that is not a
    literal at all is taken as the prompt text itself. Several text blocks are joined by a
    blank line. None when there is no text.
    """
    if cell is None or not cell.strip():
        return None
    fast = _last_text_block(cell)
    if fast is not None:
        return fast or None
    texts = []
    done = 0  # everything before this index is read (a marker inside a literal is text)
    while True:
        hits = [(p, mk) for mk in _TEXT_MARKERS if (p := cell.find(mk, done)) >= 0]
        if not hits:
            break
        pos, marker = min(hits)
        m = _TEXT_LITERAL.match(cell, pos + len(marker))
        done = m.end() if m else pos + len(marker)
        if m:
            texts.append(_decode_literal(m.group(2)))
    if texts:
        return "\n\n".join(texts) or None
    stripped = cell.strip()
    if not stripped.startswith(("[", "{")):
        return stripped
    try:
        blocks = ast.literal_eval(stripped)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        try:
            blocks = json.loads(stripped)
        except ValueError:
            return None
    if isinstance(blocks, dict):
        blocks = [blocks]
    found = [b["text"] for b in blocks if isinstance(b, dict) and isinstance(b.get("text"), str)
             and b.get("type", "text") in ("text", "input_text")] if isinstance(blocks, list) else []
    return "\n\n".join(found) if found else None


def _prompt_texts(cells) -> pa.Array:
    """``prompt_text`` of each cell (null stays null)."""
    return pa.array([prompt_text(c) for c in cells.to_pylist()], pa.string())


# ======================================================================================
# the report
# ======================================================================================


def build_report(cfg: MergeConfig, bench: Benchmark, teacher: Teacher, votes: Votes,
                 split: np.ndarray, output_rows: int) -> dict:
    """The metadata JSON (also stored in the parquet schema). Ids are plain ints."""
    matched_resp = teacher.keep & (teacher.segment >= 0)
    unmatched_resp = teacher.keep & (teacher.segment < 0)
    n_matched = int(matched_resp.sum())
    n_correct = int(teacher.correct[matched_resp].sum())
    has = votes.responses > 0
    majority_right = has & (votes.majority == bench.truth)
    resp_truth = bench.truth[teacher.segment[matched_resp]]
    resp_right = teacher.correct[matched_resp]

    per_class = {}
    for k, letter in enumerate(LETTERS):
        here = bench.truth == k
        per_class[letter] = {
            "samples": int(here.sum()),
            "matched_samples": int((here & has).sum()),
            "responses": int((resp_truth == k).sum()),
            "correct": int(resp_right[resp_truth == k].sum()),
        }
    splits = {
        s: np.column_stack([bench.prid[split == s], bench.crid[split == s]]).tolist() for s in SPLITS
    }
    unmatched_examples = []
    if unmatched_resp.any():
        t = teacher.table
        for r in np.flatnonzero(unmatched_resp)[:5].tolist():
            unmatched_examples.append({
                "file": t["source"][r].as_py(),
                **{c: t[c][r].as_py() for c in (*ID_COLUMNS, *BBOX_COLUMNS)},
            })
    n = bench.n
    matched_samples = int(has.sum())
    return {
        "total_samples": n,
        "matched_samples": matched_samples,
        "unmatched_samples": n - matched_samples,
        "match_rate": matched_samples / n,
        "duplicate_samples": int(n - len(np.unique(bench.segment))),
        "teacher_responses": teacher.n,
        "malformed_rows": teacher.malformed_count,
        "duplicate_responses": int((~teacher.keep).sum()),
        "matched_responses": n_matched,
        "unmatched_responses": int(unmatched_resp.sum()),
        "correct_responses": n_correct,
        "unparsed_responses": int((teacher.code[matched_resp] == _UNPARSED_CODE).sum()),
        "response_accuracy": n_correct / n_matched if n_matched else 0.0,
        "majority_accuracy": int(majority_right.sum()) / matched_samples if matched_samples else 0.0,
        # how much the K responses of a sample agree: 1.0 = always the same letter
        "mean_majority_share": float(votes.share[has].mean()) if matched_samples else 0.0,
        "samples_with_correct_response": int((votes.correct > 0).sum()),
        "output_rows": output_rows,
        "per_class": per_class,
        "split_sizes": {s: int((split == s).sum()) for s in SPLITS},
        "csv_files": [str(p) for p in cfg.csv_files],
        "csv_file_rows": teacher.files,
        "malformed": teacher.malformed,
        "unmatched_examples": unmatched_examples,
        "dataset_name": cfg.dataset_name,
        "config_name": cfg.config_name,
        "dataset_split": cfg.dataset_split,
        "label_column": bench.label_column,
        "image_columns": list(image_columns(bench.table.column_names) or []),
        "responses_per_sample": cfg.responses_per_sample,
        "filter_correct_only": cfg.filter_correct_only,
        "filter_matched_only": cfg.filter_matched_only,
        "test_size": cfg.test_size,
        "val_size": cfg.val_size,
        "seed": cfg.seed,
        "split_group_column": ID_COLUMNS[0],
        "splits": splits,
    }


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


# ======================================================================================
# the summary
# ======================================================================================


def print_summary(console, report: dict, outputs: tuple[Path, ...]) -> None:
    """A readable table of what matched, how often the teacher was right, and the splits."""
    from rich.table import Table

    r = report
    t = Table(title="merge", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_column()
    t.add_row("dataset", f"{r['total_samples']} samples", f"{r['dataset_name']} ({r['dataset_split']})")
    t.add_row("matched samples", f"{r['matched_samples']}",
              f"{r['match_rate']:.1%}; {r['unmatched_samples']} without a response")
    if r["duplicate_samples"]:
        t.add_row("duplicate samples", f"{r['duplicate_samples']}", "rows repeating another row's segment")
    t.add_row("teacher rows", f"{r['teacher_responses']}", f"from {len(r['csv_files'])} file(s)")
    t.add_row("malformed rows", f"{r['malformed_rows']}", "skipped (see metadata 'malformed')")
    t.add_row("repeated responses", f"{r['duplicate_responses']}", "identical to an earlier one, counted once")
    t.add_row("matched responses", f"{r['matched_responses']}", f"{r['unmatched_responses']} unmatched")
    t.add_row("response accuracy", f"{r['response_accuracy']:.1%}",
              f"{r['correct_responses']} correct, {r['unparsed_responses']} unparsed")
    t.add_row("majority accuracy", f"{r['majority_accuracy']:.1%}",
              f"{r['samples_with_correct_response']} samples with a correct response")
    sizes = r["split_sizes"]
    t.add_row("splits", f"{sum(sizes.values())}", "  ".join(f"{k} {v}" for k, v in sizes.items()))
    t.add_row("output rows", f"{r['output_rows']}", str(outputs[0]))
    console.print(t)
    for m in r["malformed"][:5]:
        console.print(f"[yellow]malformed[/] {m['file']} line {m['line'] or '?'}: {m['reason']}")
    if r["malformed_rows"] > 5:
        console.print(f"[yellow]... {r['malformed_rows'] - 5} more malformed rows[/]")
