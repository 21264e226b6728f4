"""Loading the benchmark, reading and writing parquet with metadata, atomic writes.

- ``load_benchmark``: the ConnectomeBench table from a hub id, a parquet file, a folder of
  parquet files or a ``save_to_disk`` folder, always as a ``pyarrow.Table`` with the
  dataset's columns untouched and images left encoded (``struct<bytes, path>``).
- ``write_parquet`` / ``read_merged``: parquet files carrying two schema metadata keys:
  ``huggingface`` (datasets features, so ``datasets.load_dataset("parquet")`` decodes the
  views as images) and ``connectodistill`` (our report as JSON).
- ``atomic_path`` / ``atomic_paths`` / ``atomic_write_text`` / ``atomic_write_json``: write to
  a temporary file in the same folder, then ``os.replace``, so a reader never sees a
  half-written file and a failed run leaves nothing behind.

``datasets`` is imported only where it is needed (hub ids, ``save_to_disk`` folders, exotic
column types): it costs about a second at import.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

from .errors import UserError
from .task import DEFAULT_CONFIG, DEFAULT_DATASET_SPLIT

__all__ = [
    "METADATA_KEY",
    "atomic_path",
    "atomic_paths",
    "atomic_write_json",
    "atomic_write_text",
    "is_image_type",
    "load_benchmark",
    "read_merged",
    "write_parquet",
]

# Schema metadata key of our own report in parquet files we write.
METADATA_KEY = "connectodistill"
HF_KEY = "huggingface"

# --------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Temporary paths for ``paths``; all are renamed into place only if the block succeeds.

    Parent folders are created. On an exception the temporary files are removed and the
    targets are untouched. Use it to publish several outputs together.
    """
    targets = [Path(p) for p in paths]
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
    temps = [_temp_name(t) for t in targets]
    try:
        yield temps
        for tmp, target in zip(temps, targets, strict=True):
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            if tmp.exists():
                tmp.unlink()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it when the block succeeds."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------
# loading the benchmark
# --------------------------------------------------------------------------------------


def _looks_local(name: str) -> bool:
    """A hub id is ``owner/name``; anything with a path shape or a file suffix is local."""
    return (
        name.startswith(("/", ".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or name.lower().endswith((".parquet", ".arrow", ".json", ".csv"))
        or Path(name).exists()
        or ("/" in name and Path(name.split("/")[0]).expanduser().is_dir())  # owner/name: `owner` is a folder here
    )


# What a file is, by its first bytes (a parquet file named .csv prints its binary header as text).
_MAGIC = ((b"PAR1", "parquet"), (b"\x1f\x8b", "gzip"), (b"PK\x03\x04", "zip"),
          (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "excel"))
_BINARY_FIX = {
    "parquet": ("a parquet file", "convert it (pandas: read_parquet(f).to_csv(out, index=False)) or pass a "
                "command that reads parquet"),
    "excel": ("an Excel workbook", "save it as CSV (UTF-8) from the spreadsheet, with the id columns "
              "formatted as text"),
    "gzip": ("gzip-compressed", "decompress it first (gunzip)"),
    "zip": ("a zip archive", "unzip it and pass the CSV inside"),
}


def file_kind(path: str | os.PathLike) -> str | None:
    """``parquet``, ``excel``, ``gzip`` or ``zip`` by the file's first bytes; None for anything else
    (text, presumably). An .xlsx is a zip archive holding ``xl/``."""
    with open(path, "rb") as f:
        head = f.read(8)
    kind = next((k for magic, k in _MAGIC if head.startswith(magic)), None)
    if kind == "zip":
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                if any(n.startswith("xl/") for n in z.namelist()):
                    kind = "excel"
        except zipfile.BadZipFile:
            pass
    return kind


def refuse_binary(path: str | os.PathLike, what: str = "a CSV", allow: tuple[str, ...] = ()) -> str | None:
    """UserError when ``path`` is a parquet, Excel, gzip or zip file where ``what`` (text) is
    expected, unless its kind is in ``allow``; returns the kind found (None: text)."""
    kind = file_kind(path)
    if kind is not None and kind not in allow:
        desc, fix = _BINARY_FIX[kind]
        raise UserError(f"{path} is {desc}, not {what} (by its first bytes, whatever its name); {fix}")
    return kind


def is_image_type(t: pa.DataType) -> bool:
    """True for ``struct<bytes: binary, path: string>``, the storage of a datasets ``Image``."""
    if not pa.types.is_struct(t) or t.num_fields != 2:
        return False
    names = {t.field(i).name: t.field(i).type for i in range(2)}
    return (
        set(names) == {"bytes", "path"}
        and (pa.types.is_binary(names["bytes"]) or pa.types.is_large_binary(names["bytes"]))
        and (pa.types.is_string(names["path"]) or pa.types.is_large_string(names["path"]))
    )


def load_benchmark(
    dataset_name: str,
    config_name: str = DEFAULT_CONFIG,
    split: str = DEFAULT_DATASET_SPLIT,
) -> pa.Table:
    """The benchmark as a ``pyarrow.Table``, columns untouched, images as struct<bytes, path>.

    ``dataset_name`` is a hub id (loaded with ``datasets.load_dataset(name, config_name,
    split=split)``, images cast to ``Image(decode=False)``), a parquet file, a folder of
    parquet files (read recursively; when some paths name ``split`` as a word, e.g.
    ``data/train-00000-of-00001.parquet``, only those), or a ``save_to_disk`` folder (a
    ``DatasetDict`` is indexed by ``split``). ``config_name`` only applies to hub ids.
    A local-looking path that does not exist, or a hub id that cannot be loaded
    (e.g. offline), raises UserError.
    """
    if _looks_local(dataset_name):
        path = Path(dataset_name).expanduser()
        if not path.exists():
            raise UserError(
                f"dataset not found: {dataset_name} (no such file or folder); pass a parquet file, "
                "a folder of parquet files, a save_to_disk folder or a Hugging Face dataset id"
            )
        if path.is_file():
            return _read_parquet_file(path)
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _load_saved(path, split)
        return _read_parquet_folder(path, split)
    return _load_hub(dataset_name, config_name, split)


def _read_parquet_file(path: Path) -> pa.Table:
    try:
        return _read_parquet(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"could not read parquet file {path}: {_first_line(e)}") from e


def _read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One parquet file, schema metadata kept (ParquetFile: no pyarrow.dataset/pandas import)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as f:
        if columns is not None:
            columns = [c for c in columns if c in f.schema_arrow.names]
        return f.read(columns=columns)


def _read_parquet_folder(path: Path, split: str) -> pa.Table:
    files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise UserError(
            f"no parquet files in folder {path}; pass a parquet file, a folder of parquet files "
            "or a save_to_disk folder"
        )
    word = re.compile(rf"(^|[/_.\-]){re.escape(split)}([/_.\-]|$)")
    named = [f for f in files if word.search(f.relative_to(path).as_posix())]
    tables = [_read_parquet_file(f) for f in (named or files)]
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException as e:
        raise UserError(f"parquet files in {path} have different columns: {_first_line(e)}") from e
    return table.replace_schema_metadata(tables[0].schema.metadata)


def _load_saved(path: Path, split: str) -> pa.Table:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - any failure here is the user's folder
        raise UserError(f"could not load save_to_disk folder {path}: {_first_line(e)}") from e
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(
                f"split {split!r} not in {path} (has {', '.join(ds)}); pass --dataset-split"
            )
        ds = ds[split]
    return _dataset_to_table(ds)


def _load_hub(name: str, config_name: str, split: str) -> pa.Table:
    import datasets

    try:
        ds = datasets.load_dataset(name, config_name, split=split)
    except Exception as e:  # noqa: BLE001 - network, unknown id, unknown config: all user-facing
        raise UserError(
            f"could not load dataset {name!r} (config {config_name!r}, split {split!r}): "
            f"{_first_line(e)}; check the id and network (HF_HUB_OFFLINE), or pass a local "
            "parquet file/folder as --dataset-name"
        ) from e
    return _dataset_to_table(ds)


def _dataset_to_table(ds) -> pa.Table:
    """The arrow table under a ``datasets.Dataset``, images left encoded, features attached."""
    import datasets

    for col, feat in ds.features.items():
        if isinstance(feat, datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))  # metadata only, no decoding
    if getattr(ds, "_indices", None) is not None:
        ds = ds.flatten_indices()
    table = ds.data.table
    meta = dict(table.schema.metadata or {})
    meta[HF_KEY.encode()] = json.dumps({"info": {"features": ds.features.to_dict()}}).encode()
    return table.replace_schema_metadata(meta)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else type(e).__name__
    return msg if len(msg) <= 300 else msg[:297] + "..."


# --------------------------------------------------------------------------------------
# parquet with metadata
# --------------------------------------------------------------------------------------

_VALUE_DTYPES = {
    "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
    "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "halffloat": "float16", "float": "float32", "double": "float64", "bool": "bool",
    "string": "string", "large_string": "large_string", "binary": "binary",
    "large_binary": "large_binary", "null": "null",
}


def _features(table: pa.Table) -> dict:
    """datasets features (as a dict) for ``table``: images as ``Image``, the rest as stored.

    Columns the table's own ``huggingface`` metadata already describes keep that feature
    (e.g. a ClassLabel); plain columns are mapped by hand; anything else asks ``datasets``.
    """
    existing: dict = {}
    raw = (table.schema.metadata or {}).get(HF_KEY.encode())
    if raw:
        try:
            existing = json.loads(raw)["info"]["features"] or {}
        except (ValueError, KeyError, TypeError):
            existing = {}
    out: dict[str, Any] = {}
    rest = []
    for field in table.schema:
        if is_image_type(field.type):
            out[field.name] = {"_type": "Image"}  # decode=True: readers get PIL images
        elif field.name in existing and existing[field.name].get("_type") != "Image":
            out[field.name] = existing[field.name]
        elif str(field.type) in _VALUE_DTYPES:
            out[field.name] = {"dtype": _VALUE_DTYPES[str(field.type)], "_type": "Value"}
        else:
            rest.append(field)
    if rest:
        import datasets

        extra = datasets.Features.from_arrow_schema(pa.schema(rest)).to_dict()
        out.update(extra)
    return {f.name: out[f.name] for f in table.schema}


def write_parquet(table: pa.Table, path: str | os.PathLike, report: dict | str | None = None) -> Path:
    """Write ``table`` to ``path`` atomically, with ``huggingface`` and ``connectodistill`` metadata.

    ``report`` is a JSON-able dict (or its JSON text, to serialise a large report once).
    """
    import pyarrow.parquet as pq

    meta = dict(table.schema.metadata or {})
    meta[HF_KEY.encode()] = json.dumps({"info": {"features": _features(table)}}).encode()
    meta.pop(METADATA_KEY.encode(), None)
    if report is not None:
        text = report if isinstance(report, str) else json.dumps(report, ensure_ascii=False)
        meta[METADATA_KEY.encode()] = text.encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_merged(path: str | os.PathLike, columns: list[str] | None = None) -> tuple[pa.Table, dict]:
    """(table, merge report) of a parquet written by ``merge`` (report ``{}`` if absent).

    ``columns``: read only these (names the file lacks are skipped), e.g. ``[]`` for the report
    alone, without decoding the image columns.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"merged parquet not found: {path}; run `connectodistill merge` first or fix the path")
    try:
        table = _read_parquet(path, columns)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"could not read parquet file {path}: {_first_line(e)}") from e
    raw = (table.schema.metadata or {}).get(METADATA_KEY.encode())
    try:
        report = json.loads(raw) if raw else {}
    except ValueError as e:
        raise UserError(f"{path}: the {METADATA_KEY!r} schema metadata is not valid JSON") from e
    return table, report


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sample_ids_hash(pids, cids) -> str:
    """A short hash of the sorted (proofread_root_id, current_root_id) pairs of a sample set,
    so results on different samples are never silently compared."""
    pairs = sorted(f"{int(p)}:{int(c)}" for p, c in zip(pids, cids, strict=True))
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()[:16]
