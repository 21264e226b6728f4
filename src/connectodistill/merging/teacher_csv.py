"""Reading the teacher CSVs: well-formed rows with exact ids, and the prompt each row answered.

The first step of merge. ``read_teacher_csvs`` reads every file given (a file whose bytes
repeat an earlier one is skipped whole and reported), keeps only the columns merge uses,
reads ids as text and converts them exactly to int64 (never through float), checks the
boxes are numbers, and lists every malformed row with file and line. Nothing here knows the
benchmark: matching is the next step (``matching.py``).

The ``prompt`` column holds the content blocks the teacher was sent, as a Python literal
(three base64 image blocks, then a text block). ``prompt_text`` reads the text block without
evaluating anything; ``prompt_layout`` records where the images stood relative to it.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..core import data
from ..core.errors import UserError
from ..core.task import BBOX_COLUMNS, ID_COLUMNS

__all__ = ["Prompts", "Teacher", "decode_prompts", "prompt_layout", "prompt_text", "prompt_texts", "read_teacher_csvs"]

# Teacher CSV columns (after header normalisation). Required ones are named in the error.
REQUIRED_CSV_COLUMNS = (*ID_COLUMNS, *BBOX_COLUMNS, "analysis", "llm_answer")
OPTIONAL_CSV_COLUMNS = ("species", "model", "index", "with_description", "prompt")

INT64_MAX = "9223372036854775807"
_FLOAT_RE = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_PROGRESS_MIN_BYTES = 16 << 20  # show a progress bar only for files worth waiting for
_MAX_REPORTED_MALFORMED = 100



@dataclass
class Teacher:
    """Well-formed teacher rows (one pyarrow table) and what was skipped."""

    table: pa.Table  # normalised columns + source (file name) + order (global input order)
    malformed: list[dict]  # {file, line, reason} of the first _MAX_REPORTED_MALFORMED
    malformed_count: int
    files: list[dict]  # per file read: path, sha256, rows, malformed
    skipped_files: list[dict] = field(default_factory=list)  # {path, same_content_as}
    # why rows were malformed: kind -> {count, example: {file, line, column, cell}} (malformed_kind)
    malformed_kinds: dict[str, dict] = field(default_factory=dict)
    # filled by match_responses / score_responses (arrays over table rows):
    segment: np.ndarray | None = None  # matched benchmark segment row, -1 if none
    keep: np.ndarray | None = None  # False for a row repeated inside its own file
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
    order given; ``source`` is the file name and ``file`` its position among the files
    read. A file whose bytes equal an earlier file's (the same file passed twice, or a copy
    under another name) is skipped whole and listed in ``skipped_files``: its rows are not
    independent draws.
    """
    from ..core.data import sha256_file

    tables: list[pa.Table] = []
    malformed: list[dict] = []
    malformed_count = 0
    kinds: dict[str, dict] = {}
    files: list[dict] = []
    skipped_files: list[dict] = []
    seen: dict[str, Path] = {}
    offset = 0
    for path in map(Path, paths):
        digest = sha256_file(path)
        if digest in seen:
            skipped_files.append({"path": str(path), "same_content_as": str(seen[digest])})
            continue
        seen[digest] = path
        table, bad, n_bad, file_kinds = _read_one_csv(path, progress=progress, console=console)
        for kind, k in file_kinds.items():
            into = kinds.setdefault(kind, {"count": 0, "example": {"file": str(path), **k["example"]}})
            into["count"] += k["count"]
        n = table.num_rows
        table = table.append_column("source", pa.array([path.name] * n, pa.string()))
        table = table.append_column("file", pa.array(np.full(n, len(files), dtype=np.int64)))
        table = table.append_column("order", pa.array(np.arange(offset, offset + n)))
        offset += n
        tables.append(table)
        malformed_count += n_bad
        room = _MAX_REPORTED_MALFORMED - len(malformed)
        malformed.extend({"file": str(path), **b} for b in bad[:max(room, 0)])
        files.append({"path": str(path), "sha256": digest, "rows": n + n_bad, "malformed": n_bad})
    # zero-copy: the columns stay in their read chunks (``take`` handles chunked arrays)
    return Teacher(pa.concat_tables(tables), malformed, malformed_count, files, skipped_files, kinds)


def memory_pool() -> pa.MemoryPool:
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


def _read_one_csv(path: Path, *, progress: bool, console) -> tuple[pa.Table, list[dict], int, dict]:
    """(well-formed rows, first malformed rows as {line, reason}, malformed count, why) of one CSV."""
    import pyarrow.csv as pacsv

    if path.stat().st_size == 0:
        raise UserError(f"empty CSV file: {path} (no header); pass the teacher's results CSV")
    data.refuse_binary(path, "a teacher CSV")
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
                        f"got {row.actual_columns}: {row.text[:60]!r}", "kind": "cells",
                        "cell": f"{row.actual_columns} cells, header {row.expected_columns}"})
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
                table = pacsv.read_csv(f, read_options, parse_options, convert_options, memory_pool=memory_pool())
        else:
            table = pacsv.read_csv(path, read_options, parse_options, convert_options, memory_pool=memory_pool())
    except pa.ArrowInvalid as e:
        raise UserError(f"could not parse teacher CSV {path}: {data._first_line(e)}") from e
    table = table.rename_columns(wanted)
    if table.num_rows == 0 and not skipped:
        raise UserError(f"teacher CSV {path} has a header but no rows; pass a results CSV with answers")
    return _validate_rows(table, path, skipped)


def parse_int_strings(arr) -> tuple[np.ndarray, np.ndarray]:
    """(valid mask, int64 values) of decimal integer text, exactly (0 where invalid)."""
    try:  # the usual case, a clean column: one exact cast (text -> int64, never via float)
        ints = as_numpy(pc.cast(arr, pa.int64()), np.int64)
        if (ints >= 0).all():
            return np.ones(len(ints), dtype=bool), ints
    except pa.ArrowInvalid:
        pass
    s = pc.utf8_trim_whitespace(arr)
    ok = pc.match_substring_regex(s, r"^[0-9]{1,19}$")
    n_chars = pc.utf8_length(s)
    ok = pc.and_(ok, pc.or_(pc.less(n_chars, 19), pc.less_equal(s, INT64_MAX)))
    ok = pc.fill_null(ok, False)
    ints = pc.cast(pc.if_else(ok, s, "0"), pa.int64())
    return as_numpy(ok, bool), as_numpy(ints, np.int64)


def _parse_float_strings(arr) -> tuple[np.ndarray, np.ndarray]:
    """(valid mask, float64 values) of decimal number text (no nan/inf)."""
    try:  # the usual case, a clean column: one cast
        vals = as_numpy(pc.cast(arr, pa.float64()), np.float64)
        if np.isfinite(vals).all():
            return np.ones(len(vals), dtype=bool), vals
    except pa.ArrowInvalid:
        pass
    s = pc.utf8_trim_whitespace(arr)
    ok = as_numpy(pc.fill_null(pc.match_substring_regex(s, _FLOAT_RE), False), bool)
    vals = as_numpy(pc.cast(pc.if_else(pa.array(ok), s, "0"), pa.float64()), np.float64)
    ok &= np.isfinite(vals)  # 1e999 is a number too, but not a coordinate
    return ok, np.where(ok, vals, 0.0)


def as_numpy(arr, dtype) -> np.ndarray:
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
        valid, values = (parse_int_strings if col in ID_COLUMNS else _parse_float_strings)(table[col])
        first_bad[(~valid) & ok] = k
        ok &= valid
        cols[col] = values

    index = None
    if "index" in table.column_names:
        valid, values = parse_int_strings(table["index"])
        index = pa.array(values, mask=~valid)
    with_desc = None
    if "with_description" in table.column_names:
        s = pc.utf8_lower(pc.utf8_trim_whitespace(table["with_description"]))
        yes = as_numpy(pc.is_in(s, value_set=pa.array(["true", "1", "yes"])), bool)
        no = as_numpy(pc.is_in(s, value_set=pa.array(["false", "0", "no"])), bool)
        with_desc = pa.array(yes, mask=~(yes | no))

    def text(col: str):
        return table[col] if col in table.column_names else pa.nulls(n, pa.string())

    out = pa.table({
        **{c: cols[c] for c in (*ID_COLUMNS, *BBOX_COLUMNS)},
        "llm_answer": text("llm_answer"),
        "analysis": text("analysis"),
        "species": text("species"),
        "model": text("model"),
        "index": index if index is not None else pa.nulls(n, pa.int64()),
        "with_description": with_desc if with_desc is not None else pa.nulls(n, pa.bool_()),
        "prompt": text("prompt"),
    })

    bad_rows = np.flatnonzero(~ok)
    kinds: dict[str, dict] = {}
    for d in skipped:  # wrong cell counts: their own kind
        k = kinds.setdefault("cells", {"count": 0, "example": {"line": d["line"], "column": None, "cell": d["cell"]}})
        k["count"] += 1
    details = [{"line": d["line"], "reason": d["reason"]} for d in skipped]
    if len(bad_rows):
        names = (*ID_COLUMNS, *BBOX_COLUMNS)
        # why (the first _MAX_CLASSIFIED are enough to name the commonest reason)
        for r in bad_rows[:_MAX_CLASSIFIED]:
            col = names[first_bad[r]]
            value = table[col][int(r)].as_py()
            k = kinds.setdefault(malformed_kind(col, value), {"count": 0, "example": {"row": int(r), "column": col,
                                                                                      "cell": value[:40]}})
            k["count"] += 1
        examples = [k["example"] for k in kinds.values() if "row" in k["example"]]
        for ex, line in zip(examples, _line_numbers(table, np.array([e.pop("row") for e in examples], dtype=np.int64)),
                            strict=True):
            ex["line"] = line
        lines = _line_numbers(table, bad_rows[:_MAX_REPORTED_MALFORMED])
        for r, line in zip(bad_rows[:_MAX_REPORTED_MALFORMED], lines, strict=True):
            col = names[first_bad[r]]
            value = table[col][int(r)].as_py()
            what = "blank" if not value.strip() else f"not a {'integer' if col in ID_COLUMNS else 'number'}: {value[:40]!r}"
            details.append({"line": line, "reason": f"{col} {what}"})
        out = out.filter(pa.array(ok))
    details.sort(key=lambda d: (d["line"] is None, d["line"] or 0))
    return out, details, len(bad_rows) + len(skipped), kinds


_MAX_CLASSIFIED = 10_000
_SCIENTIFIC_RE = re.compile(r"^[+-]?[0-9]+(?:\.[0-9]*)?[eE][+-]?[0-9]+$")
_DECIMAL_RE = re.compile(r"^[+-]?[0-9]+\.[0-9]*$")

# kind -> (what it means, how to fix it): the commonest kind is named when no row is usable.
MALFORMED_KINDS = {
    "scientific": ("ids in scientific notation (a spreadsheet rounded them)",
                   "re-export the CSV without a spreadsheet, or keep the id columns as text"),
    "decimal": ("ids written as decimals", "write the id columns as whole numbers (no .0)"),
    "blank": ("blank cells", "fill the id and box columns of every row"),
    "negative": ("negative or too large ids", "ids are positive 64-bit integers: check the id columns"),
    "text": ("cells that are not numbers", "check that the id and box columns hold numbers"),
    "cells": ("rows with another number of cells than the header",
              "check the delimiter (a comma) and the quoting of text cells"),
}


def malformed_kind(column: str, value: str) -> str:
    """Why an id or box cell is not usable: a key of ``MALFORMED_KINDS``."""
    v = value.strip()
    if not v:
        return "blank"
    if column in ID_COLUMNS:
        if _SCIENTIFIC_RE.match(v):
            return "scientific"
        if _DECIMAL_RE.match(v):
            return "decimal"
        if re.fullmatch(r"[+-]?[0-9]+", v):
            return "negative"
    return "text"


def malformed_summary(teacher: Teacher) -> str:
    """The commonest reason rows were malformed, with an example cell and the fix (one line)."""
    if not teacher.malformed_kinds:
        return "check the files"
    kind, k = max(teacher.malformed_kinds.items(), key=lambda kv: kv[1]["count"])
    what, fix = MALFORMED_KINDS[kind]
    ex = k["example"]
    where = f"{ex['file']} line {ex.get('line') or '?'}"
    cell = f"{ex['column']} {ex['cell']!r}" if ex.get("column") else ex["cell"]
    return f"most ({k['count']}) have {what}, e.g. {where}: {cell}; {fix}"


def _line_numbers(table: pa.Table, rows: np.ndarray) -> list[int]:
    """1-based line where each row starts (header = line 1), counting newlines inside cells."""
    newlines = np.zeros(table.num_rows, dtype=np.int64)
    for col in table.column_names:
        newlines += as_numpy(pc.count_substring(table[col], "\n"), np.int64)
    before = np.cumsum(newlines) - newlines
    return (2 + rows + before[rows]).tolist()


# --------------------------------------------------------------------------------------
# the prompt's text block
# --------------------------------------------------------------------------------------

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


_IMAGE_MARKERS = ("'type': 'image'", '"type": "image"', "'type': 'image_url'", '"type": "image_url"',
                  "'type': 'input_image'", '"type": "input_image"')
DEFAULT_LAYOUT = "image,image,image,text"


_BLOCK_MARKER = re.compile("|".join(re.escape(m) for m in _TEXT_MARKERS + _IMAGE_MARKERS))


def prompt_layout(cell: str | None) -> str | None:
    """Where the content blocks stood, e.g. ``"image,image,image,text"``; None without a text block.

    Block markers are found by position; a marker inside the text block's own literal is
    not counted (the text block's span is skipped).
    """
    if cell is None or not cell.strip():
        return None
    kinds = []
    skip_until = -1
    for m in _BLOCK_MARKER.finditer(cell):  # no marker is a prefix of another: none overlap
        if m.start() < skip_until:
            continue
        if m.group() in _TEXT_MARKERS:
            kinds.append("text")
            lit = _TEXT_LITERAL.match(cell, m.end())
            skip_until = lit.end() if lit else m.end()
        else:
            kinds.append("image")
    return ",".join(kinds) if "text" in kinds else None


def _usual_layout(cell: str) -> str | None:
    """The layout of a cell in the usual form (``_last_text_block`` read it: one text block,
    last): one entry per image marker before it. None where another text marker stands
    before it (the general path decides)."""
    end = cell.rfind(_USUAL_MARKER)
    if any(cell.count(m, 0, end) for m in _TEXT_MARKERS):
        return None
    return ",".join(["image"] * sum(cell.count(m, 0, end) for m in _IMAGE_MARKERS) + ["text"])


def prompt_texts(cells) -> tuple[pa.Array, pa.Array]:
    """(``prompt_text``, ``prompt_layout``) of each cell of a pyarrow array (null stays null)."""
    texts, layouts = [], []
    for c in cells.to_pylist():
        fast = _last_text_block(c) if c else None
        layout = _usual_layout(c) if fast else None  # the usual form: counted, not parsed
        text = fast if layout else prompt_text(c)
        texts.append(text)
        layouts.append(None if text is None else layout or prompt_layout(c))
    return pa.array(texts, pa.string()), pa.array(layouts, pa.string())


SETTINGS = ("with_description", "without_description", "unknown")  # core.prompts.setting_name's


def setting_codes(teacher: Teacher) -> np.ndarray:
    """Per teacher row, its prompt setting as an index into ``SETTINGS`` (the boolean
    ``with_description`` column; null, as ``setting_name`` says, is unknown)."""
    flag = teacher.table["with_description"]
    value = as_numpy(pc.fill_null(flag, False), bool)
    return np.where(as_numpy(flag.is_null(), bool), 2, np.where(value, 0, 1))


@dataclass
class Prompts:
    """The decoded prompts. The K draws of a segment store one identical prompt cell, so each
    distinct cell is decoded once: ``code`` maps every teacher row to its distinct cell (-1
    where nothing was decoded: unmatched or repeated rows), ``texts``/``layouts`` hold the
    decoded text and block layout per distinct cell (null when it has no text block)."""

    code: np.ndarray
    texts: pa.Array
    layouts: pa.Array

    def take(self, rows: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """(text, layout) per row of ``rows`` (teacher row indices; -1 gives null)."""
        c = np.where(rows >= 0, self.code[np.maximum(rows, 0)], -1)
        idx = pa.array(c, mask=c < 0)
        return self.texts.take(idx), self.layouts.take(idx)

    def distinct_texts(self) -> list[str]:
        """Every decoded prompt text once, sorted."""
        return sorted(set(self.texts.to_pylist()) - {None})

    def text_code(self) -> np.ndarray:
        """Per teacher row, an id of its decoded text (equal texts, equal ids); -1 without one."""
        if not len(self.texts):
            return np.full(len(self.code), -1, dtype=np.int64)
        ids = np.asarray(pc.dictionary_encode(self.texts).indices.fill_null(-1).to_numpy(zero_copy_only=False),
                         dtype=np.int64)
        return np.where(self.code >= 0, ids[np.maximum(self.code, 0)], -1)


def decode_prompts(teacher: Teacher) -> Prompts:
    """The text block and layout of every matched, kept response's prompt (others: none),
    each distinct stored cell decoded once."""
    use = np.flatnonzero(teacher.keep & (teacher.segment >= 0))
    code = np.full(teacher.n, -1, dtype=np.int64)
    if not len(use):
        return Prompts(code, pa.array([], pa.string()), pa.array([], pa.string()))
    # Hashing the whole column is ~20x cheaper than copying the used rows' cells out of it
    # (they can carry base64 images); the chunks share one dictionary.
    cells = pc.dictionary_encode(teacher.table["prompt"]).combine_chunks()
    index = np.asarray(cells.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)[use]
    # decode only the cells the used rows hold; a null cell decodes to nothing (code -1)
    has = index >= 0
    wanted, code[use[has]] = np.unique(index[has], return_inverse=True)
    texts, layouts = prompt_texts(cells.dictionary.take(pa.array(wanted)))
    return Prompts(code, texts, layouts)
