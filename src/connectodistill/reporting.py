"""One comparison table: every evaluated model, plus the teacher on exactly the same samples.

The teacher is scored from merge's ``<stem>_responses.parquet`` restricted to each result's
sample ids, twice: over all its responses (K per sample) and by majority vote per sample.
Rows computed on a different sample set than the first result are marked, never silently
compared.

Every model row is also compared with the teacher *on the ids they share*, as a paired
difference (``statistics.paired_delta``: the same group-bootstrap resamples for both, so
their shared difficulty cancels) and by the exact McNemar test of the paired right/wrong
outcomes: ``delta_vs_teacher`` (against the majority vote) and ``delta_vs_teacher_single``
(against the teacher's single-response accuracy, per sample its share of right responses).
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
    "paired_n", "delta_vs_teacher", "delta_vs_teacher_ci", "delta_vs_teacher_unpaired_ci", "mcnemar_p",
    "delta_vs_teacher_single", "delta_vs_teacher_single_ci",
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
    """95% intervals of response-level accuracy and balanced accuracy, resampling whole groups.

    A sample's K responses are correlated (same segment), and so are a neuron's segments:
    resampling responses one by one would give intervals that are too narrow. Groups are the
    leak-proof split groups when the responses file has them, else the samples.
    """
    import numpy as np

    from .task import LETTERS

    from .statistics import group_index, group_weights

    g = responses.groupby(list(ID_COLUMNS))
    n = g.size().to_numpy(float)
    correct = g["teacher_correct"].sum().to_numpy(float)
    cls = g["ground_truth_letter"].first().map({x: i for i, x in enumerate(LETTERS)}).to_numpy()
    groups = g["split_group"].first().to_numpy() if "split_group" in responses else None
    onehot = np.eye(len(LETTERS))[cls]
    acc, bal = [], []
    for w in group_weights(group_index(groups, len(n)), n_bootstrap, seed):  # whole groups
        nb, cb = w * n, w * correct
        acc.append(cb.sum(1) / nb.sum(1))
        nj, cj = nb @ onehot, cb @ onehot
        with np.errstate(invalid="ignore", divide="ignore"):
            bal.append(np.nanmean(np.where(nj > 0, cj / np.maximum(nj, 1e-12), np.nan), axis=1))
    acc, bal = np.concatenate(acc), np.concatenate(bal)
    pct = lambda a: [float(np.percentile(a, 2.5)), float(np.percentile(a, 97.5))]  # noqa: E731
    return {"accuracy_ci": pct(acc), "balanced_accuracy_ci": pct(bal)}


def paired_vs_teacher(preds, responses, n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """A model's per-sample right/wrong against the teacher's on the ids they share.

    Samples without a teacher response count as the teacher's wrong (as in its majority row).
    Groups for the bootstrap: the result's ``split_group`` column, else the responses'.
    """
    import numpy as np

    from .scoring import majority_vote
    from .statistics import mcnemar_exact, paired_delta

    pid, cid = ID_COLUMNS
    g = responses.groupby([pid, cid])
    major = {(int(k[0]), int(k[1])): majority_vote(_none(v["teacher_answer"].tolist()))[0] for k, v in g}
    share = {(int(k[0]), int(k[1])): float(v["teacher_correct"].mean()) for k, v in g}
    rgroup = ({(int(k[0]), int(k[1])): v for k, v in g["split_group"].first().items()}
              if "split_group" in responses else {})
    keys = [(int(p), int(c)) for p, c in zip(preds[pid], preds[cid], strict=True)]
    student = preds["correct"].astype(bool).to_numpy()
    truth = preds["ground_truth_letter"].tolist()
    teacher = np.array([major.get(k) == t for k, t in zip(keys, truth, strict=True)])
    single = np.array([share.get(k, 0.0) for k in keys])
    if "split_group" in preds:
        groups = preds["split_group"].to_numpy()
    else:
        groups = np.array([rgroup.get(k, -1 - i) for i, k in enumerate(keys)])
    d = paired_delta(student, teacher, groups, n_bootstrap=n_bootstrap, seed=seed)
    d1 = paired_delta(student, single, groups, n_bootstrap=n_bootstrap, seed=seed)
    return {"paired_n": d["n"], "delta_vs_teacher": d["delta"], "delta_vs_teacher_ci": d["ci"],
            "delta_vs_teacher_unpaired_ci": d["unpaired_ci"], "mcnemar_p": mcnemar_exact(student, teacher),
            "delta_vs_teacher_single": d1["delta"], "delta_vs_teacher_single_ci": d1["ci"]}


def describe_delta(row: dict) -> str:
    """"student - teacher: -2.1 pp [-6.0, +1.8], p = 0.31" in words a reader understands."""
    d, ci, p = row.get("delta_vs_teacher"), row.get("delta_vs_teacher_ci"), row.get("mcnemar_p")
    if d is None or ci is None or (isinstance(d, float) and d != d):
        return ""
    text = f"{row['model']} - teacher: {100 * d:+.1f} pp [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}], p = {p:.2g}"
    if ci[0] > 0:
        verdict = "better than the teacher's majority vote"
    elif ci[1] < 0:
        verdict = "worse than the teacher's majority vote"
    else:
        verdict = "no difference from the teacher's majority vote can be told at this sample size"
    single = row.get("delta_vs_teacher_single")
    sci = row.get("delta_vs_teacher_single_ci")
    extra = (f"; against one teacher response: {100 * single:+.1f} pp [{100 * sci[0]:+.1f}, {100 * sci[1]:+.1f}]"
             if single is not None and sci is not None else "")
    return f"{text} ({verdict}){extra}"


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
    for folder, summary, preds in loaded:
        note = "INCLUDES TRAIN SAMPLES" if summary.get("includes_train_samples") else ""
        row = _row(summary.get("name", folder.name), summary, summary["sample_ids_hash"], note)
        if responses is not None:  # paired against the teacher on the same ids
            row.update(paired_vs_teacher(preds, responses))
        rows.append(row)

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
    paired = [describe_delta(r) for r in table.to_dict("records") if not r["model"].startswith("teacher")]
    paired = [p for p in paired if p]
    if paired:
        lines += ["", "Paired against the teacher's majority vote, on the same samples (difference in "
                  "accuracy, 95% paired bootstrap interval, exact McNemar p):", ""]
        lines += [f"- {p}" for p in paired]
    lines.append("")
    lines.append("Intervals: percentile bootstrap over leak-proof groups (samples sharing an id); for "
                 "'teacher (all responses)' whole groups with all their responses are resampled. "
                 "docs/evaluation.md says when a difference is meaningful.")
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
    console = Console(stderr=True)
    console.print(t)
    for r in table.to_dict("records"):
        if not r["model"].startswith("teacher") and (line := describe_delta(r)):
            console.print(line)
