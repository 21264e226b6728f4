"""Reading what `predict` classifies, in chunks: datasets and segment tables, rows checked one by one.

Two kinds of input:

- a **dataset** in the benchmark's schema, labels optional (a hub id, a parquet file, a folder
  of parquet files, a ``save_to_disk`` folder): ids, ``species``, the six box columns and the
  three view columns (``option_1_{front,side,top}_image`` or ``..._path``);
- a **segment table** (CSV or parquet): the two ids, ``species`` and the six box columns, as
  the benchmark's rendering step writes them (the teacher CSVs' spellings, e.g.
  ``proofread root id``, work too, and so does a teacher CSV itself: other columns, quoted
  newlines included, are ignored), plus an images folder holding
  ``<proofread_root_id>_<current_root_id>_{front,side,top}.png``.

Everything streams: parquet through ``ParquetFile.iter_batches`` (buffered reads, so a huge
row group is not loaded whole), CSV through ``pyarrow.csv.open_csv`` (every cell as text, ids
converted exactly, never through float), in-memory tables (hub, ``save_to_disk``: memory-mapped
arrow) by slices. A chunk is exactly ``chunk_size`` input rows (the last one fewer), whatever
the files' row groups, so chunk ``i`` is the same rows on every run. Images are decoded only
for the chunk at hand. A row that cannot be used (missing image, unreadable PNG, box not
numbers, ids not integers, no species) is skipped with its row number, ids and reason.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from ..core.errors import UserError
from ..core.task import BBOX_COLUMNS, ID_COLUMNS, VIEWS, image_columns

__all__ = ["Chunk", "Source", "TABLE_COLUMNS", "image_name", "open_source"]

TABLE_COLUMNS = (*ID_COLUMNS, "species", *BBOX_COLUMNS)  # what a segment table must have
INT64_MAX = 2**63 - 1
_BUFFER = 1 << 20  # parquet: buffered column-chunk reads (0 would read a whole row group at once)


def image_name(pid: int, cid: int, view: str) -> str:
    return f"{pid}_{cid}_{view}.png"


def normalise(name: str) -> str:
    """A header as the teacher CSVs spell it (``proofread root id``) -> ``proofread_root_id``."""
    return re.sub(r"\s+", "_", str(name).strip()).lower()


class BadRow(Exception):
    """One input row that cannot be classified (its reason is the message)."""


@dataclass
class Chunk:
    """One chunk of input rows, checked: the usable rows (ids, species, box), their images and
    input row numbers, and the rows skipped ({row, ids as given, reason})."""

    index: int
    start: int  # row number of its first input row
    n_input: int  # input rows in the chunk, skipped ones included
    rows: list[dict] = field(default_factory=list)
    images: list[list] = field(default_factory=list)
    row_numbers: list[int] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)


@dataclass
class Source:
    """An opened input: what it is, how many rows, a fingerprint, and where its rows come from."""

    kind: str  # "dataset" or "table"
    label: str  # the input as given
    total: int
    fingerprint: str
    columns: dict[str, str]  # canonical name -> name in the input
    image_cols: tuple[str, ...] | None = None  # dataset: the three view columns
    images_dir: Path | None = None  # table: the images folder
    files: list[Path] = field(default_factory=list)  # parquet files, or the CSV
    table: pa.Table | None = None  # hub / save_to_disk: the (memory-mapped) arrow table
    csv: bool = False
    row_offset: int = 0  # row numbers reported: this plus the position in this input
    bad_lines: list[dict] = field(default_factory=list)  # CSV lines with the wrong number of cells

    # ------------------------------------------------------------------ raw rows
    def raw_tables(self, size: int, first_row: int = 0) -> Iterator[tuple[int, pa.Table]]:
        """(first row number, table) of ``size`` input rows each (the last one fewer), from
        ``first_row`` (a multiple of ``size``) on; the columns under their canonical names."""
        wanted = list(self.columns.values())
        canon = list(self.columns)
        if self.table is not None:
            batches = ((s, self.table.slice(s, min(size, self.total - s)).select(wanted))
                       for s in range(first_row, self.total, size))
            for start, t in batches:
                yield start, t.rename_columns(canon)
            return
        buffer: list[pa.RecordBatch] = []
        have, start = 0, first_row
        for batch in (self._csv_batches() if self.csv else self._parquet_batches(first_row)):
            if batch[0] < first_row:  # parquet starts at the row group holding first_row
                skip = first_row - batch[0]
                if skip >= batch[1].num_rows:
                    continue
                batch = (first_row, batch[1].slice(skip))
            buffer.append(batch[1].select(wanted))
            have += batch[1].num_rows
            while have >= size:
                t = pa.Table.from_batches(buffer)
                yield start, t.slice(0, size).rename_columns(canon)
                rest = t.slice(size)
                buffer, have, start = rest.to_batches(), rest.num_rows, start + size
        if have:
            yield start, pa.Table.from_batches(buffer).rename_columns(canon)

    def _parquet_batches(self, first_row: int) -> Iterator[tuple[int, pa.RecordBatch]]:
        import pyarrow.parquet as pq

        offset = 0
        for path in self.files:
            with pq.ParquetFile(path, buffer_size=_BUFFER, pre_buffer=False) as f:
                meta = f.metadata
                groups, pos = [], offset
                for g in range(meta.num_row_groups):
                    n = meta.row_group(g).num_rows
                    if pos + n > first_row:
                        groups.append(g)
                    else:
                        offset += n  # a whole row group before first_row: never read
                    pos += n
                if groups:
                    for b in f.iter_batches(batch_size=256, row_groups=groups,
                                            columns=list(self.columns.values())):
                        yield offset, b
                        offset += b.num_rows
                offset = pos

    def _csv_batches(self, record: bool = False) -> Iterator[tuple[int, pa.RecordBatch]]:
        """The CSV's rows as text; a line with the wrong number of cells is skipped (and, with
        ``record``, listed in ``bad_lines``: the first pass, which counts the rows, records them)."""
        import pyarrow.csv as pacsv

        def bad(row) -> str:
            if record:
                cells = (row.text or "").split(",")
                self.bad_lines.append({"row": None, ID_COLUMNS[0]: cells[0] if cells else None,
                                       ID_COLUMNS[1]: cells[1] if len(cells) > 1 else None,
                                       "reason": f"malformed line {(row.text or '')[:60]!r}: {row.actual_columns} "
                                                 f"cells, the header has {row.expected_columns}"})
            return "skip"

        names = list(self.columns.values())
        reader = pacsv.open_csv(
            self.files[0], read_options=pacsv.ReadOptions(block_size=1 << 20, use_threads=False),  # no read-ahead
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=bad),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 include_columns=names, strings_can_be_null=False))
        offset = 0
        for b in reader:
            yield offset, b
            offset += b.num_rows

    # ------------------------------------------------------------------ checked rows
    def chunks(self, size: int, todo: set[int] | None = None, first_chunk: int = 0) -> Iterator[Chunk | None]:
        """Chunk by chunk from ``first_chunk``: a checked :class:`Chunk`, or None for a chunk not
        in ``todo`` (its rows are read past, not decoded)."""
        for start, raw in self.raw_tables(size, first_chunk * size):
            index = start // size
            if todo is not None and index not in todo:
                yield None
                continue
            yield self.check(index, start, raw)

    def check(self, index: int, start: int, raw: pa.Table) -> Chunk:
        chunk = Chunk(index, start, raw.num_rows)
        first = self.row_offset + start
        for i, rec in enumerate(raw.to_pylist()):
            try:
                row = _segment(rec)
                images = self._images(rec, row)
            except BadRow as e:
                chunk.errors.append({"row": first + i, ID_COLUMNS[0]: _text(rec.get(ID_COLUMNS[0])),
                                     ID_COLUMNS[1]: _text(rec.get(ID_COLUMNS[1])), "reason": str(e)})
                continue
            chunk.rows.append(row)
            chunk.images.append(images)
            chunk.row_numbers.append(first + i)
        return chunk

    def _images(self, rec: dict, row: dict) -> list:
        from ..core.conversation import load_image

        out = []
        if self.images_dir is not None:
            for view in VIEWS:
                name = image_name(row[ID_COLUMNS[0]], row[ID_COLUMNS[1]], view)
                path = self.images_dir / name
                if not path.is_file():
                    raise BadRow(f"missing image {name}")
                out.append(_decode(lambda p=path: load_image(p), name))
            return out
        for col in self.image_cols:
            value = rec.get(col)
            if value is None or (isinstance(value, dict) and not value.get("bytes") and not value.get("path")):
                raise BadRow(f"missing image ({col})")
            out.append(_decode(lambda v=value, c=col: load_image(v, where=c), col))
        return out


def _decode(load, what: str):
    from PIL import Image

    try:
        return load()
    except UserError as e:
        raise BadRow(str(e).split(": ", 1)[-1]) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BadRow(f"unreadable image {what}: {line}") from None


def _text(v) -> str | None:
    return None if v is None else str(v)


def _int_id(v, col: str) -> int:
    if isinstance(v, bool):
        raise BadRow(f"{col} is not an integer: {v!r}")
    if isinstance(v, int):
        if v < 0:
            raise BadRow(f"{col} is negative: {v}")
        return v
    s = "" if v is None else str(v).strip()
    if not s:
        raise BadRow(f"{col} is missing")
    if not re.fullmatch(r"[0-9]{1,19}", s) or int(s) > INT64_MAX:
        raise BadRow(f"{col} is not an integer: {s!r}")
    return int(s)


def _number(v, col: str) -> float:
    try:
        x = float(v) if not isinstance(v, str) else float(v.strip())
    except (TypeError, ValueError):
        raise BadRow(f"box column {col} is not a number: {_text(v)!r}") from None
    if not math.isfinite(x):
        raise BadRow(f"box column {col} is not a finite number: {_text(v)!r}")
    return x


def _segment(rec: dict) -> dict:
    row = {c: _int_id(rec.get(c), c) for c in ID_COLUMNS}
    species = rec.get("species")
    if species is None or not str(species).strip():
        raise BadRow("species is missing")
    row["species"] = str(species)
    row.update({c: _number(rec.get(c), c) for c in BBOX_COLUMNS})
    return row


# ============================================================================ opening an input
def open_source(name: str | None, images_dir: Path | None = None, *, config_name: str | None = None,
                split: str | None = None) -> Source:
    """Check an input and say what it is; nothing is decoded yet. Bad input is a UserError."""
    from ..core import data
    from ..core.task import DEFAULT_CONFIG, DEFAULT_DATASET_SPLIT

    if not name:
        raise UserError("no input given: pass a dataset (hub id, parquet, save_to_disk folder) or a "
                        "segment table (CSV/parquet) with --images-dir DIR")
    split = split or DEFAULT_DATASET_SPLIT
    path = Path(name).expanduser()
    if images_dir is not None:
        images_dir = Path(images_dir)
        if not images_dir.is_dir():
            raise UserError(f"--images-dir {images_dir}: no such folder")
        if not path.is_file() or path.suffix.lower() not in (".csv", ".parquet"):
            raise UserError(f"{name}: with --images-dir the input is a segment table: a .csv or .parquet file")
        return _open_table(path, images_dir)
    if not data._looks_local(name):
        return _open_table_like(data.load_benchmark(name, config_name or DEFAULT_CONFIG, split), name,
                                f"hub:{name}:{config_name or DEFAULT_CONFIG}:{split}")
    if not path.exists():
        raise UserError(f"input not found: {name}")
    if path.is_file() and path.suffix.lower() == ".csv" and data.refuse_binary(path, "a CSV", ("parquet",)) is None:
        raise UserError(f"{name} is a segment table: pass --images-dir DIR holding "
                        "<proofread_root_id>_<current_root_id>_{front,side,top}.png")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        return _open_table_like(data.load_benchmark(str(path), split=split), name, None, files=_all_files(path))
    files = [path] if path.is_file() else _parquet_files(path, split)
    import pyarrow.parquet as pq

    try:
        schemas = [pq.read_schema(f) for f in files]
        total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"could not read parquet {name}: {data._first_line(e)}") from e
    columns = _columns(schemas[0].names, name, dataset=True)
    if image_columns(columns) is None:
        if set(TABLE_COLUMNS) <= set(columns):
            raise UserError(f"{name} has no image columns, so it is a segment table: pass --images-dir DIR "
                            "holding <proofread_root_id>_<current_root_id>_{front,side,top}.png")
        raise _unknown(name, schemas[0].names, dataset=True)
    for s in schemas[1:]:
        if not set(columns.values()) <= set(s.names):
            raise UserError(f"parquet files in {name} have different columns")
    _check_types(schemas[0], columns, name)
    return Source("dataset", name, total, fingerprint_files(files), columns,
                  image_cols=image_columns(columns), files=files)


def _open_table(path: Path, images_dir: Path) -> Source:
    from ..core import data

    # a parquet file named .csv is read as parquet; Excel, gzip, zip are one line (core/data.py)
    csv = path.suffix.lower() == ".csv" and data.refuse_binary(path, "a CSV segment table", ("parquet",)) is None
    try:
        if csv:
            import pyarrow.csv as pacsv

            names = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 16, use_threads=False),
                                   parse_options=pacsv.ParseOptions(newlines_in_values=True,
                                                                    invalid_row_handler=lambda row: "skip"),
                                   ).schema.names
            schema = None
        else:
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
            names = schema.names
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"could not read segment table {path}: {data._first_line(e)}") from e
    columns = _columns(names, str(path), dataset=False)
    if schema is not None:
        _check_types(schema, columns, str(path))
    src = Source("table", str(path), 0, fingerprint_files([path]), columns, images_dir=images_dir,
                 files=[path], csv=csv)
    src.total = _count_rows(src)
    return src


def _open_table_like(table: pa.Table, name: str, tag: str | None, files: list[Path] | None = None) -> Source:
    columns = _columns(table.column_names, name, dataset=True)
    if image_columns(columns) is None:
        raise UserError(f"{name} has no image columns (option_1_front_image ...); a segment table "
                        "needs --images-dir")
    _check_types(table.schema, columns, name)
    if files:
        fp = fingerprint_files(files)
    else:
        h = hashlib.sha256(f"{tag}:{table.num_rows}".encode())
        for c in ID_COLUMNS:
            for chunk in table.column(columns[c]).chunks:
                h.update(chunk.to_numpy(zero_copy_only=False).tobytes())
        fp = h.hexdigest()
    return Source("dataset", name, table.num_rows, fp, columns, image_cols=image_columns(columns), table=table)


def _columns(names: list[str], where: str, *, dataset: bool) -> dict[str, str]:
    """canonical name -> the input's own name, for the columns predict reads."""
    found: dict[str, str] = {}
    for n in names:
        canon = normalise(n)
        if canon in found and found[canon] != n:
            raise UserError(f"{where}: columns {found[canon]!r} and {n!r} both read as {canon}; keep one")
        found.setdefault(canon, n)
    missing = [c for c in TABLE_COLUMNS if c not in found]
    if missing:
        raise _unknown(where, names, dataset=dataset, missing=missing)
    wanted = list(TABLE_COLUMNS)
    if dataset and (views := image_columns(found)) is not None:
        wanted += list(views)
    return {c: found[c] for c in wanted}


def _unknown(where: str, names: list[str], *, dataset: bool, missing: list[str] | None = None) -> UserError:
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    need = "the two ids, species, xmin ymin zmin xmax ymax zmax" + (
        " and option_1_{front,side,top}_image" if dataset else "")
    what = f"missing column(s) {', '.join(missing)}" if missing else "no image columns"
    return UserError(f"{where}: {what} (its columns: {shown}); predict needs {need} "
                     "(teacher-CSV spellings such as `proofread root id` work too)")


def _check_types(schema: pa.Schema, columns: dict[str, str], where: str) -> None:
    for c in ID_COLUMNS:
        t = schema.field(columns[c]).type
        if pa.types.is_floating(t):
            raise UserError(f"{where}: column {columns[c]} is {t}: 18-digit ids are not exact in floating "
                            "point; store them as int64 (or as text)")


def _count_rows(src: Source) -> int:
    if not src.csv:
        import pyarrow.parquet as pq

        return pq.ParquetFile(src.files[0]).metadata.num_rows
    n = 0
    try:
        for _, b in src._csv_batches(record=True):
            n += b.num_rows
    except pa.ArrowException as e:
        from ..core.data import _first_line

        raise UserError(f"could not read segment table {src.files[0]}: {_first_line(e)}") from e
    return n


def _parquet_files(path: Path, split: str) -> list[Path]:
    """The parquet files of a folder, as ``data.load_benchmark`` picks them (the split's, if named)."""
    files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise UserError(f"no parquet files in folder {path}; pass a parquet file, a folder of parquet "
                        "files, a save_to_disk folder or a hub id")
    word = re.compile(rf"(^|[/_.\-]){re.escape(split)}([/_.\-]|$)")
    named = [f for f in files if word.search(f.relative_to(path).as_posix())]
    return named or files


def _all_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def fingerprint_files(paths: list[Path]) -> str:
    """sha256 over each file's name, size and first and last MiB (whole files under 8 MiB):
    cheap on large inputs, and any rewrite of a parquet file changes its footer."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        size = p.stat().st_size
        h.update(f"{p.name}\0{size}\0".encode())
        with open(p, "rb") as f:
            if size <= 8 << 20:
                h.update(f.read())
            else:
                h.update(f.read(1 << 20))
                f.seek(size - (1 << 20))
                h.update(f.read())
    return h.hexdigest()
