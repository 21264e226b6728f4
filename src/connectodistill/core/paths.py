"""Paths a folder records (a run's training_config.json, an export's manifest, merge's report),
kept so that they resolve from any working folder and after the folders move together.

A recorded value stays as the user gave it (``demo-run/student``: the record), and beside it,
under ``paths``, the same input as an absolute path and relative to the folder holding the
record. ``locate`` tries, in order: the absolute path, the path relative to the folder (the
run and its inputs moved together), the value as given (relative to here), then the value
relative to each parent of the folder (older records, made where the run folder lay below the
working folder). Hub ids are recorded as they are.

``same_input`` compares two inputs by what they are (one resolved path, or the same bytes),
never by the string typed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import UserError

__all__ = ["PATHS_KEY", "locate", "rebase_paths", "record_paths", "same_input"]

PATHS_KEY = "paths"


def record_paths(values: dict[str, object], folder: str | os.PathLike) -> dict[str, dict]:
    """``{key: {"absolute": ..., "relative": ...}}`` for each value that is an existing local
    path (``relative``: from ``folder``); hub ids and missing paths are left out."""
    out: dict[str, dict] = {}
    base = os.path.abspath(folder)
    for key, value in values.items():
        if value is None or not str(value).strip():
            continue
        path = Path(str(value)).expanduser()
        if not path.exists():
            continue
        absolute = os.path.abspath(path)
        out[key] = {"absolute": absolute, "relative": os.path.relpath(absolute, base)}
    return out


def rebase_paths(record: dict, folder: str | os.PathLike, new_folder: str | os.PathLike) -> dict[str, dict]:
    """``record``'s paths found from ``folder``, recorded for a copy of it at ``new_folder``."""
    keys = set(record.get(PATHS_KEY) or {}) | {k for k in ("base_model", "merged_file", "dataset_name") if k in record}
    found = {k: locate(record, k, folder) for k in sorted(keys)}
    return record_paths(found, new_folder)


def _candidates(record: dict, key: str, folder: Path) -> list[str]:
    value = record.get(key)
    entry = (record.get(PATHS_KEY) or {}).get(key) or {}
    found = []
    if entry.get("absolute"):
        found.append(entry["absolute"])
    if entry.get("relative"):
        found.append(os.path.abspath(os.path.join(folder, entry["relative"])))
    if value is not None:
        given = Path(str(value)).expanduser()
        found.append(str(given))
        # a record from before `paths` was kept: relative to where the command ran, a parent
        if PATHS_KEY not in record and not given.is_absolute():
            found += [os.path.join(parent, given) for parent in Path(os.path.abspath(folder)).parents]
    return found


def locate(record: dict, key: str, folder: str | os.PathLike, *, what: str | None = None) -> str | None:
    """The recorded input ``key`` as a path that exists here, else the value as recorded.

    ``what`` (e.g. "base model"): a value recorded as a local path (it has an entry under
    ``paths``) that exists nowhere raises UserError naming the missing path, so that it is
    never taken for a Hub id.
    """
    value = record.get(key)
    if value is None:
        return None
    for candidate in _candidates(record, key, Path(folder)):
        if Path(candidate).exists():
            return str(candidate)
    entry = (record.get(PATHS_KEY) or {}).get(key)
    if entry and what:
        relative = os.path.abspath(os.path.join(folder, entry["relative"])) if entry.get("relative") else None
        also = f" nor {relative}" if relative and relative != entry.get("absolute") else ""
        raise UserError(f"{what} not found: {entry.get('absolute')}{also} (recorded in {folder} as {value}); "
                        "move it back, or pass its new path")
    return str(value)


def same_input(a: str | os.PathLike | None, b: str | os.PathLike | None) -> bool:
    """True when ``a`` and ``b`` name the same input: the same string, the same resolved path,
    or two files (folders) with the same bytes."""
    if a is None or b is None:
        return a is b
    if str(a) == str(b):
        return True
    pa, pb = Path(str(a)).expanduser(), Path(str(b)).expanduser()
    if not (pa.exists() and pb.exists()):
        return False
    if pa.resolve() == pb.resolve():
        return True
    fa, fb = _files(pa), _files(pb)
    if [(n, p.stat().st_size) for n, p in fa] != [(n, p.stat().st_size) for n, p in fb]:
        return False  # names and sizes first: no hashing where they already differ
    return all(_sha256(x) == _sha256(y) for (_, x), (_, y) in zip(fa, fb, strict=True))


def _files(path: Path) -> list[tuple[str, Path]]:
    if path.is_file():
        return [("", path)]
    return sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
