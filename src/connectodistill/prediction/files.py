"""The files of a prediction folder: one parquet file per chunk as it is done, then the outputs
assembled from the chunks in input order (predictions.parquet, .csv, predict_errors.csv) and
the console lines that point at them. ``prediction.py`` decides what goes in them.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa

from ..core.task import CLASSES, ID_COLUMNS, LETTERS

MANIFEST, PREDICTIONS, ERRORS, SUMMARY = ("predict_manifest.json", "predictions.parquet", "predict_errors.csv",
                                          "predict_summary.json")
CHUNKS = "chunks"
META_KEY = b"connectodistill_predict"
P_COLUMNS = tuple(f"p_{x}" for x in LETTERS)
ERROR_COLUMNS = ("row", *ID_COLUMNS, "reason")
ROW_GROUP = 8192  # rows per row group of predictions.parquet (its footer grows per row group)


# ============================================================================ chunks
def chunk_path(out: Path, index: int) -> Path:
    return out / CHUNKS / f"chunk-{index:06d}.parquet"


def chunk_meta(path: Path) -> dict | None:
    import pyarrow.parquet as pq

    try:
        raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
        return json.loads(raw) if raw else None
    except (pa.ArrowException, OSError, ValueError):
        return None


def done_chunks(folder: Path, start: int, total: int, chunk_size: int) -> set[int]:
    """Indices of the chunks under ``folder`` already written whole for rows ``start`` ..
    ``start + total`` (``chunk_size`` rows each); a damaged or foreign chunk is not one of them.
    Shared by predict's resume and the remote shards' check."""
    done = set()
    for i, first in enumerate(range(0, total, chunk_size)):
        m = chunk_meta(folder / CHUNKS / f"chunk-{i:06d}.parquet")
        if m is not None and m.get("start") == start + first and m.get("rows") == min(chunk_size, total - first):
            done.add(i)
    return done


def _schema(ensemble: bool) -> pa.Schema:
    fields = [(ID_COLUMNS[0], pa.int64()), (ID_COLUMNS[1], pa.int64()), ("species", pa.string()),
              ("letter", pa.string()), ("description", pa.string()), ("confidence", pa.float64()),
              *[(c, pa.float64()) for c in P_COLUMNS], ("analysis", pa.string()), ("response", pa.string()),
              ("prompt_source", pa.string()), ("prompt_sha256", pa.string()), ("mode", pa.string()),
              ("row", pa.int64())]
    return pa.schema(fields + ([("fold_letters", pa.string())] if ensemble else []))


def chunk_table(chunk, chosen, answers: dict, ensemble: bool, seconds: float, row_offset: int,
                mode: str = "generate") -> pa.Table:
    n = len(chunk.rows)
    cols = {
        ID_COLUMNS[0]: [r[ID_COLUMNS[0]] for r in chunk.rows],
        ID_COLUMNS[1]: [r[ID_COLUMNS[1]] for r in chunk.rows],
        "species": [r["species"] for r in chunk.rows],
        "letter": answers["letter"],
        "description": [CLASSES.get(x) if x else None for x in answers["letter"]],
        "confidence": answers["confidence"],
        **{c: answers[c] for c in P_COLUMNS},
        "analysis": answers["analysis"], "response": answers["response"],
        "prompt_source": [p.source for p in chosen], "prompt_sha256": [p.sha256 for p in chosen],
        "mode": [mode] * n, "row": chunk.row_numbers,
    }
    if ensemble:
        cols["fold_letters"] = answers["fold_letters"]
    schema = _schema(ensemble)
    table = pa.table({f.name: pa.array(cols[f.name] if n else [], f.type) for f in schema}, schema=schema)
    meta = {"chunk": chunk.index, "start": row_offset + chunk.start, "rows": chunk.n_input, "errors": chunk.errors,
            "seconds": round(seconds, 3)}
    return table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})


# ============================================================================ outputs
def write_outputs(out: Path, chunk_files: list[Path], *, threshold: float | None, triage: bool,
                  csv_too: bool = False, extra_errors: list[dict] | None = None) -> dict:
    """predictions.parquet (+ .csv), predict_errors.csv from the chunk files, in their order,
    one chunk in memory at a time; returns the counts for the summary. ``extra_errors``: input
    lines no chunk holds (a CSV line with the wrong number of cells), listed last."""
    import pyarrow.parquet as pq

    from ..core.data import atomic_paths

    counts = {"letters": Counter(), "sources": Counter(), "triage": Counter(), "reasons": Counter()}
    n = skipped = 0
    targets = [out / PREDICTIONS, out / ERRORS] + ([out / "predictions.csv"] if csv_too else [])
    with atomic_paths(*targets) as temps, open(temps[1], "w", newline="") as ef:
        errors = csv.DictWriter(ef, fieldnames=ERROR_COLUMNS)
        errors.writeheader()
        writer = csv_file = None
        if csv_too:
            csv_file = open(temps[2], "w", newline="")  # noqa: SIM115 - closed below
        buffer: list[pa.Table] = []
        try:
            for i, path in enumerate(chunk_files):
                meta = chunk_meta(path)
                if meta is None:
                    raise RuntimeError(f"chunk {path} is missing or unreadable")  # a bug: all were written
                with pq.ParquetFile(path) as f:  # (pq.read_table would import pyarrow.dataset)
                    t = f.read().replace_schema_metadata(None)
                for e in meta["errors"]:
                    errors.writerow(e)
                    counts["reasons"][_reason_kind(e["reason"])] += 1
                skipped += len(meta["errors"])
                if triage:
                    conf = t.column("confidence").to_pylist()
                    # calibration.accepted's rule: never an answer without a letter (confidence 0)
                    decision = ["auto" if threshold is not None and c is not None and c > 0 and c >= threshold
                                else "human" for c in conf]
                    counts["triage"].update(decision)
                    t = t.add_column(t.schema.get_field_index("confidence") + 1, "triage",
                                     pa.array(decision, pa.string()))
                if writer is None:
                    writer = pq.ParquetWriter(temps[0], t.schema)
                buffer.append(t)
                if sum(b.num_rows for b in buffer) >= ROW_GROUP:  # a few large row groups, not one
                    writer.write_table(pa.concat_tables(buffer), row_group_size=ROW_GROUP)  # per chunk
                    buffer = []
                n += t.num_rows
                counts["letters"].update(x if x else "unparsed" for x in t.column("letter").to_pylist())
                counts["sources"].update(t.column("prompt_source").to_pylist())
                if csv_file is not None:
                    t.to_pandas().to_csv(csv_file, index=False, header=i == 0, quoting=csv.QUOTE_NONNUMERIC)
            if buffer:
                writer.write_table(pa.concat_tables(buffer), row_group_size=ROW_GROUP)
            for e in extra_errors or []:
                errors.writerow(e)
                counts["reasons"]["malformed line"] += 1
                skipped += 1
        finally:
            if writer is not None:
                writer.close()
            if csv_file is not None:
                csv_file.close()
    return {"rows": n + skipped, "predicted": n, "skipped": skipped, "skipped_reasons": dict(counts["reasons"]),
            "prompt_source_counts": dict(counts["sources"]), "letter_counts": dict(counts["letters"]),
            "triage": {"threshold": threshold, **{k: counts["triage"].get(k, 0) for k in ("auto", "human")}}
            if triage else None,
            "outputs": [t.name for t in targets]}


def _reason_kind(reason: str) -> str:
    for kind in ("missing image", "unreadable image", "box column", "is not an integer", "is negative",
                 "is missing"):
        if kind in reason:
            return {"box column": "box not numbers", "is not an integer": "ids not integers",
                    "is negative": "ids not integers"}.get(kind, kind)
    return "other"


def report(summary: dict, out: Path, settings: dict, console) -> None:
    """The console lines: prompt sources, skipped rows, triage, where the outputs are."""
    src = summary["prompt_source_counts"]
    line = ", ".join(f"{src.get(k, 0)} {k}" for k in ("teacher", "teacher-template", "builtin"))
    console.print(f"prompts: {line} (a segment the run recorded keeps its prompt; a new one has no stored "
                  f"teacher prompt and gets the run's teacher template, else the builtin prompt; "
                  f"run prompt source: {settings['prompt']})")
    if summary["skipped"]:
        why = ", ".join(f"{k} {v}" for k, v in sorted(summary["skipped_reasons"].items()))
        console.print(f"[yellow]skipped {summary['skipped']} of {summary['rows']} rows ({why}): listed in "
                      f"{out / ERRORS}[/]")
    if summary["dry_run"]:
        console.print("dry run: every row read and checked, prompts chosen; no model, so no letters")
    elif not summary["letter_probabilities"]:
        console.print("[yellow]letter probabilities unavailable: p_a..p_g and confidence are null[/]")
    if tri := summary.get("triage"):
        thr = "none (the eval found no threshold reaching its target: all to a human)" if tri["threshold"] is None \
            else f"{tri['threshold']:.4f}"
        console.print(f"triage at confidence threshold {thr}: {tri['auto']} auto, {tri['human']} human")
    rate = f", {summary['segments_per_second']} segments/s" if summary.get("segments_per_second") else ""
    console.print(f"wrote {out / PREDICTIONS} ({summary['predicted']} segments{rate})")
