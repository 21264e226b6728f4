"""One comparison table: every evaluated model, plus the teacher on exactly the same samples.

The teacher is scored from merge's ``<stem>_responses.parquet`` restricted to each result's
sample ids, twice: over all its responses (K per sample) and by majority vote per sample.
Rows computed on a different sample set than the first result are marked, never silently
compared.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import ReportConfig, resolve
from .errors import UserError
from .task import ID_COLUMNS

TABLE_COLUMNS = (
    "model", "n", "accuracy", "accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci",
    "unparsed_rate", "sample_ids_hash", "same_samples", "note",
)


def _load_result(path: Path):

    folder = path.parent if path.name == "summary.json" else path
    if not (folder / "summary.json").is_file() or not (folder / "predictions.csv").is_file():
        raise UserError(f"{path}: not an eval output folder (needs summary.json and predictions.csv)")
    try:
        summary = json.loads((folder / "summary.json").read_text())
        summary["sample_ids_hash"], summary["accuracy"]  # noqa: B018 - the fields the table needs
    except (ValueError, KeyError) as e:
        raise UserError(f"{folder / 'summary.json'}: unreadable or incomplete ({e}); re-run eval") from e
    from .evaluation import read_predictions

    preds = read_predictions(folder / "predictions.csv")
    return folder, summary, preds


def responses_path(merged: Path) -> Path:
    return merged.with_name(f"{merged.stem}_responses.parquet")


def teacher_rows(responses, truth: dict[tuple[int, int], str], sample_hash: str) -> list[dict]:
    """Teacher accuracy on the samples of ``truth``: per response, and per sample by majority vote."""
    from .scoring import classification_metrics, majority_vote

    pid, cid = ID_COLUMNS
    keep = [(int(p), int(c)) in truth for p, c in zip(responses[pid], responses[cid], strict=True)]
    sel = responses[keep]
    rows = []
    if len(sel):
        m = classification_metrics(sel["ground_truth_letter"].tolist(), _none(sel["teacher_answer"].tolist()))
        m.update(cluster_bootstrap(sel))  # resample samples, not responses
        n_with = sel.groupby([pid, cid]).ngroups
        rows.append(_row("teacher (all responses)", m, sample_hash,
                         note=f"{len(sel)} responses on {n_with} of {len(truth)} samples"))
    # Majority vote per sample, over exactly the same samples: no response counts as wrong.
    votes = {(int(k[0]), int(k[1])): majority_vote(_none(g["teacher_answer"].tolist()))[0]
             for k, g in sel.groupby([pid, cid])}
    keys = list(truth)
    m = classification_metrics([truth[k] for k in keys], [votes.get(k) for k in keys])
    missing = sum(k not in votes for k in keys)
    rows.append(_row("teacher (majority vote)", m, sample_hash,
                     note=f"{missing} samples without a teacher response count as wrong" if missing else ""))
    return rows


def cluster_bootstrap(responses, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """95% intervals of response-level accuracy and balanced accuracy, resampling whole samples.

    A sample's K responses are correlated (same segment), so resampling responses one by one
    would give intervals that are too narrow.
    """
    import numpy as np

    from .task import LETTERS

    g = responses.groupby(list(ID_COLUMNS))
    n = g.size().to_numpy(float)
    correct = g["teacher_correct"].sum().to_numpy(float)
    cls = g["ground_truth_letter"].first().map({x: i for i, x in enumerate(LETTERS)}).to_numpy()
    idx = np.random.default_rng(seed).integers(0, len(n), size=(n_bootstrap, len(n)))
    nb, cb, kb = n[idx], correct[idx], cls[idx]
    acc = cb.sum(1) / nb.sum(1)
    recalls = []
    for j in range(len(LETTERS)):
        nj = np.where(kb == j, nb, 0).sum(1)
        cj = np.where(kb == j, cb, 0).sum(1)
        recalls.append(np.where(nj > 0, cj / np.maximum(nj, 1), np.nan))
    bal = np.nanmean(np.stack(recalls, 1), axis=1)
    pct = lambda a: [float(np.percentile(a, 2.5)), float(np.percentile(a, 97.5))]  # noqa: E731
    return {"accuracy_ci": pct(acc), "balanced_accuracy_ci": pct(bal)}


def _none(values):
    """NaN/None -> None (unparsed)."""
    return [v if isinstance(v, str) else None for v in values]


def _row(model: str, m: dict, sample_hash: str, note: str = "") -> dict:
    return {
        "model": model, "n": m["n"], "accuracy": m["accuracy"], "accuracy_ci": m["accuracy_ci"],
        "balanced_accuracy": m["balanced_accuracy"], "balanced_accuracy_ci": m["balanced_accuracy_ci"],
        "unparsed_rate": m["unparsed_rate"], "sample_ids_hash": sample_hash, "note": note,
    }


def report(config: ReportConfig | None = None, **overrides) -> Path:
    """Print and write (``.md`` + ``.csv``) the comparison table; return the markdown path."""
    import pandas as pd

    cfg = resolve(ReportConfig, config, overrides)
    if not cfg.results:
        raise UserError("report needs at least one eval output folder")
    loaded = [_load_result(Path(p)) for p in cfg.results]

    responses = None
    if cfg.merged is not None:
        rp = responses_path(Path(cfg.merged))
        if not rp.is_file():
            raise UserError(f"{rp} not found: `merge` writes it beside {cfg.merged}")
        responses = pd.read_parquet(rp)

    # The teacher first (the reference), once per distinct sample set; then every result.
    rows, teacher_done = [], set()
    for _, summary, preds in loaded:
        h = summary["sample_ids_hash"]
        if responses is not None and h not in teacher_done:
            teacher_done.add(h)
            truth = {(int(p), int(c)): t for p, c, t in
                     zip(preds[ID_COLUMNS[0]], preds[ID_COLUMNS[1]], preds["ground_truth_letter"], strict=True)}
            rows += teacher_rows(responses, truth, h)
    for folder, summary, _ in loaded:
        note = "INCLUDES TRAIN SAMPLES" if summary.get("includes_train_samples") else ""
        rows.append(_row(summary.get("name", folder.name), summary, summary["sample_ids_hash"], note))

    reference = loaded[0][1]["sample_ids_hash"]  # the first result's samples
    for r in rows:
        r["same_samples"] = r["sample_ids_hash"] == reference
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))

    # Default: ./report.{md,csv}, never inside results/ (a later `report results/*` would pick it up).
    out = Path(cfg.output) if cfg.output else Path("report")
    if out.suffix in (".md", ".csv"):
        out = out.with_suffix("")
    from .data import atomic_write_text

    md, csv = out.with_name(out.name + ".md"), out.with_name(out.name + ".csv")
    atomic_write_text(csv, table.to_csv(index=False))
    atomic_write_text(md, to_markdown(table))
    print_table(table)
    return md


def _fmt_ci(v, ci) -> str:
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def to_markdown(table) -> str:
    lines = ["| model | n | accuracy [95% CI] | balanced accuracy [95% CI] | unparsed | samples |",
             "| --- | ---: | --- | --- | ---: | --- |"]
    for r in table.to_dict("records"):
        mark = "same" if r["same_samples"] else f"DIFFERENT ({r['sample_ids_hash'][:8]})"
        lines.append(
            f"| {r['model']} | {r['n']} | {_fmt_ci(r['accuracy'], r['accuracy_ci'])} | "
            f"{_fmt_ci(r['balanced_accuracy'], r['balanced_accuracy_ci'])} | {r['unparsed_rate']:.3f} | "
            f"{mark}{' - ' + r['note'] if r['note'] else ''} |"
        )
    lines.append("")
    lines.append("Intervals: percentile bootstrap over samples (for 'teacher (all responses)', whole samples "
                 "with all their responses are resampled).")
    return "\n".join(lines) + "\n"


def print_table(table) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="report")
    for col in ("model", "n", "accuracy [95% CI]", "balanced acc. [95% CI]", "unparsed", "samples"):
        t.add_column(col)
    for r in table.to_dict("records"):
        mark = "same" if r["same_samples"] else "[bold red]DIFFERENT[/]"
        t.add_row(r["model"], str(r["n"]), _fmt_ci(r["accuracy"], r["accuracy_ci"]),
                  _fmt_ci(r["balanced_accuracy"], r["balanced_accuracy_ci"]), f"{r['unparsed_rate']:.3f}",
                  mark + (f" ({r['note']})" if r["note"] else ""))
    Console(stderr=True).print(t)
