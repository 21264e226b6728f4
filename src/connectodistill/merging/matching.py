"""Matching: which benchmark segment each teacher response answered, and what it said.

The second step of merge, after ``teacher_csv.read_teacher_csvs``:

- ``describe_benchmark``: ids, boxes and ground-truth letters of the benchmark, which rows
  are copies of one segment (equal ids, boxes within tolerance), and the leak-proof groups
  (samples sharing either id, connected: ``splits.leak_groups``);
- ``match_responses``: a join on the two ids, then the box decides (nearest within the
  float32-printing tolerance); a row repeated inside its own file (same segment, same
  ``index``, same texts) counts once, while rows of different files or of different
  ``index`` values are independent draws and are all kept, whatever their text;
- ``score_responses`` / ``vote``: the one answer rule (``scoring.parse_answer``), right or
  wrong per response, majority vote per segment.

Everything is vectorised (pyarrow joins and compute, numpy); Python only loops over the
distinct answer strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..core.errors import UserError
from ..core.scoring import UNPARSED, option_descriptions, parse_answer
from ..core.task import (
    BBOX_COLUMNS,
    CLASSES,
    DESCRIPTION_TO_LETTER,
    ID_COLUMNS,
    LETTERS,
    label_column,
)
from .splits import leak_groups
from .teacher_csv import INT64_MAX, Teacher, as_numpy, parse_int_strings

__all__ = ["Benchmark", "Votes", "describe_benchmark", "match_responses", "score_responses", "vote"]

# Columns merge appends to the benchmark's, in this order.
TEACHER_COLUMNS = (
    "teacher_analysis", "teacher_answer", "teacher_answer_raw", "teacher_correct",
    "teacher_model", "teacher_prompt", "teacher_prompt_layout", "teacher_source", "teacher_index",
    "teacher_votes", "teacher_with_description", "split", "split_group", "train_row",
)

# Per coordinate, boxes match when |a - b| <= REL_TOL * max(|a|, |b|) + ABS_TOL_NM. float32
# keeps ~7 significant digits, so its printing differs from float64 by ~6e-8 relative.
REL_TOL = 1e-6
ABS_TOL_NM = 1e-3

N_CODES = len(LETTERS) + 1  # letters 0..6, then "unparsed"
UNPARSED_CODE = len(LETTERS)



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
    group: np.ndarray  # leak-proof group: samples sharing either id, transitively

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
    return Benchmark(table, name, label, prid, crid, box, truth, _segments(prid, crid, box),
                     leak_groups(prid, crid))


def _dataset_ids(table: pa.Table, col: str, name: str) -> np.ndarray:
    """An id column as exact int64; floats and gaps are refused (they cannot be exact)."""
    arr = table.column(col)
    if arr.null_count:
        raise UserError(f"dataset {name} column {col} has {arr.null_count} empty cells; ids must be integers")
    if pa.types.is_integer(arr.type):
        if arr.type == pa.uint64() and len(arr) and pc.max(arr).as_py() > int(INT64_MAX):
            raise UserError(f"dataset {name} column {col} has ids above the int64 range")
        return arr.cast(pa.int64()).to_numpy()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        ok, ints = parse_int_strings(arr)
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
    """True except for a row that repeats an earlier row of its own file: the same segment,
    the same ``index`` and the same answer and analysis text (a file written twice over).

    Rows of different files, or of different ``index`` values, are independent draws and are
    all kept, whatever their text; a row without an ``index`` is never a repeat. Unmatched
    rows have no segment; their exact ids and box stand in for it. Comparing ~1 KB analyses
    for 200k rows is the costly part, so a cheap numeric key first finds the rows that could
    be repeats; only those are compared in full (a hash group-by).
    """
    n = len(segment)
    matched = segment >= 0
    answers = t["llm_answer"]
    index = as_numpy(pc.fill_null(t["index"], -1), np.int64)
    order = t["order"].to_numpy()
    keys = [
        t["file"].to_numpy(),
        segment,
        np.where(index >= 0, index, -1 - order),  # no index: unique, never a repeat
        as_numpy(pc.index_in(answers, value_set=pc.unique(answers)), np.int64),
        as_numpy(pc.binary_length(t["analysis"]), np.int64),
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


def score_responses(bench: Benchmark, teacher: Teacher, prompts: list[str] | None = None) -> Teacher:
    """Set ``teacher.code`` (parsed letter, 7 = unparsed) and ``teacher.correct``.

    ``prompts``: the distinct prompt texts, whose option lists add their wording to the
    dataset's (``scoring.parse_answer``). The parser runs once per distinct answer string
    (there are few), via ``index_in``.
    """
    options: dict[str, list[str]] = {}
    for text in prompts or []:
        for letter, desc in option_descriptions(text).items():
            if desc not in options.setdefault(letter, []):
                options[letter].append(desc)
    answers = teacher.table["llm_answer"]
    uniq = pc.unique(answers)
    letter_code = {x: i for i, x in enumerate(LETTERS)}
    codes = np.array([letter_code.get(parse_answer(a, options), UNPARSED_CODE) for a in uniq.to_pylist()],
                     dtype=np.int64)
    teacher.code = codes[as_numpy(pc.index_in(answers, value_set=uniq), np.int64)]
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
    cell = seg * N_CODES + code
    counts = np.bincount(cell, minlength=n * N_CODES).reshape(n, N_CODES)
    first = np.full(n * N_CODES, np.iinfo(np.int64).max)
    np.minimum.at(first, cell, order)
    first = first.reshape(n, N_CODES)

    parsed = counts[:, :UNPARSED_CODE]
    best = parsed.max(axis=1)
    tied = (parsed == best[:, None]) & (best[:, None] > 0)
    majority = np.where(best > 0, np.where(tied, first[:, :UNPARSED_CODE], np.iinfo(np.int64).max).argmin(1), -1)
    total = counts.sum(axis=1)
    share = np.divide(best, total, out=np.zeros(n), where=total > 0)
    n_correct = np.bincount(seg[teacher.correct[use]], minlength=n)

    # vote summary strings, built column-wise: pieces "a:3", letters by count (ties: first
    # seen) so the majority comes first, "unparsed:n" last
    cells = np.flatnonzero(counts.ravel())
    s, c = cells // N_CODES, cells % N_CODES
    cnt, fst = counts.ravel()[cells], first.ravel()[cells]
    o = np.lexsort((fst, -cnt, c == UNPARSED_CODE, s))
    names = np.array([*LETTERS, UNPARSED])
    pieces = pc.binary_join_element_wise(pa.array(names[c[o]]), pa.array(cnt[o].astype(str)), ":")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(s, minlength=n))]).astype(np.int32)
    summary = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), pieces), " ")
    summary = pc.if_else(pa.array(total > 0), summary, pa.scalar(None, pa.string()))

    # every row of a duplicated segment reads its segment's numbers
    sg = bench.segment
    return Votes(total[sg], n_correct[sg], majority[sg], share[sg], summary.take(pa.array(sg)))

