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

from ..core.config import ReportConfig, resolve
from ..core.errors import UserError
from ..core.task import ID_COLUMNS

TABLE_COLUMNS = (
    "model", "n", "accuracy", "accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci",
    "unparsed_rate", "sample_ids_hash", "same_samples", "note",
    "paired_n", "delta_vs_teacher", "delta_vs_teacher_ci", "delta_vs_teacher_unpaired_ci", "mcnemar_p",
    "delta_vs_teacher_single", "delta_vs_teacher_single_ci",
    *("confidence", "ece", "brier", "aurc", "coverage_at_0.95", "triage_threshold", "triage_coverage",
      "triage_accuracy", "reading"),  # calibration and triage (the functions at the end)
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
    from .results import read_predictions

    preds = read_predictions(folder / "predictions.csv")
    return folder, summary, preds


def responses_path(merged: Path) -> Path:
    return merged.with_name(f"{merged.stem}_responses.parquet")


def teacher_rows(responses, truth: dict[tuple[int, int], str], sample_hash: str) -> list[dict]:
    """Teacher accuracy on the samples of ``truth``: per response, and per sample by majority vote."""
    from ..core.scoring import classification_metrics, majority_vote

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

    from ..core.statistics import group_index, group_weights
    from ..core.task import LETTERS

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

    from ..core.scoring import majority_vote
    from ..core.statistics import mcnemar_exact, paired_delta

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
            rows += with_teacher_confidence(teacher_rows(responses, truth, h), responses, preds, cfg.merged,
                                            _target(loaded))
    for folder, summary, preds in loaded:
        note = "INCLUDES TRAIN SAMPLES" if summary.get("includes_train_samples") else ""
        row = _row(summary.get("name", folder.name), summary, summary["sample_ids_hash"], note)
        if responses is not None:  # paired against the teacher on the same ids
            row.update(paired_vs_teacher(preds, responses))
        rows.append({**row, **student_confidence(folder, summary, preds)})
        if "vote_letters" in preds:  # self-consistency: the majority of its K sampled responses
            rows.append(vote_row(row, summary, preds, responses))

    reference = loaded[0][1]["sample_ids_hash"]  # the first result's samples
    for r in rows:
        r["same_samples"] = r["sample_ids_hash"] == reference
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))

    # Default: ./report.{md,csv}, never inside results/ (a later `report results/*` would pick it up).
    out = Path(cfg.output) if cfg.output else Path("report")
    if out.suffix in (".md", ".csv"):
        out = out.with_suffix("")
    from ..core.data import atomic_write_text

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
    lines += confidence_markdown(table)
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
    for r in table.to_dict("records"):
        if isinstance(r.get("reading"), str) and r["reading"]:
            console.print(f"{r['model']}: {r['reading']}")


# ----------------------------------------------------------------------------- confidence
# Per row: the confidence it is judged by (letter probability for a model, vote share for a
# majority), its ECE, Brier score, AURC and coverage at 95% accuracy (calibration.py), and a
# triage read out: the threshold chosen on val, applied to the row's samples.
def _target(loaded) -> float:
    """The triage target of the results (the first that has one), else 0.95."""
    for _, summary, _ in loaded:
        if (summary.get("triage") or {}).get("target_accuracy"):
            return float(summary["triage"]["target_accuracy"])
    return 0.95


def _figures(confidence, correct, probs, truth, unit: str = "segments") -> dict:
    """ECE, Brier, AURC and coverage at 95% of one row, and a reading at the 95% threshold set
    in hindsight on these samples (a row with a val-chosen triage replaces it)."""
    from ..core.calibration import aurc as area
    from ..core.calibration import (
        brier,
        coverage_at_accuracy,
        ece,
        reading,
        selective,
        threshold_for,
    )

    t = selective(confidence, correct, threshold_for(confidence, correct, 0.95))
    return {"ece": ece(confidence, correct), "brier": brier(probs, truth) if probs is not None else None,
            "aurc": area(confidence, correct), "coverage_at_0.95": coverage_at_accuracy(confidence, correct, 0.95),
            "reading": f"{reading(t['coverage'], t['accuracy'], unit)} (95% threshold set on these same samples)"}


def student_confidence(folder: Path, summary: dict, preds) -> dict:
    """A result's letter-probability figures, from its predictions (pooled ones too) and triage.csv."""
    from ..core.calibration import LETTER_COLUMNS

    if "confidence" not in preds:
        return {}
    out = _figures(preds["confidence"].to_numpy(float), preds["correct"].to_numpy(float),
                   preds[list(LETTER_COLUMNS)].to_numpy(float), preds["ground_truth_letter"].tolist())
    triage = summary.get("triage")
    if triage and (folder / "triage.csv").is_file():  # the accepted samples, as eval decided them
        from ..core.calibration import reading
        from .results import read_predictions

        t = read_predictions(folder / "triage.csv").merge(preds[[*ID_COLUMNS, "correct"]], on=list(ID_COLUMNS))
        auto = t["decision"] == "auto"
        cov, acc = float(auto.mean()), (float(t.loc[auto, "correct"].mean()) if auto.any() else None)
        pooled = "cross_validation" in summary
        thr = None if pooled else triage["threshold"]
        where = "each fold's own val samples" if pooled else f"{triage['val']['n']} val samples"
        out.update(triage_threshold=thr, triage_coverage=cov, triage_accuracy=acc,
                   reading=f"{reading(cov, acc)} (target {triage['target_accuracy']:.0%}, threshold chosen on {where})")
    return {"confidence": "letter probability", **out}


def vote_row(row: dict, summary: dict, preds, responses) -> dict:
    """The row of a result's majority of K sampled responses, judged by its vote share."""
    import numpy as np

    from ..core.calibration import vote_distribution

    truth = preds["ground_truth_letter"].tolist()
    letters = _none(preds["vote_letter"].tolist())
    correct = np.array([x == t for x, t in zip(letters, truth, strict=True)])
    from ..core.scoring import classification_metrics

    groups = preds["split_group"].to_numpy() if "split_group" in preds else None
    m = classification_metrics(truth, letters, groups=groups)
    k = (summary.get("votes") or {}).get("k") or len(str(preds["vote_letters"].iloc[0]))
    out = _row(f"{row['model']} (majority of {k})", m, row["sample_ids_hash"], row.get("note", ""))
    if responses is not None:
        out.update(paired_vs_teacher(preds.assign(correct=correct), responses))
    dist = np.stack([vote_distribution([c if c != "-" else None for c in str(v)]) for v in preds["vote_letters"]])
    out.update(confidence="vote share", **_figures(preds["vote_share"].to_numpy(float), correct, dist, truth))
    return out


def _answers(responses) -> dict:
    """Sample ids -> the letters (None: unparsed) of the teacher's responses to it."""
    return {(int(k[0]), int(k[1])): _none(g["teacher_answer"].tolist())
            for k, g in responses.groupby(list(ID_COLUMNS))}


def _teacher_votes(answers: dict, keys) -> tuple[list, list, list]:
    """Per sample of ``keys``: the majority letter, its vote share and the vote distribution
    (a sample without a response: None, 0 and all zeros)."""
    from ..core.calibration import vote_distribution
    from ..core.scoring import majority_vote

    votes = [majority_vote(answers.get(k, [])) for k in keys]
    return [v[0] for v in votes], [v[1] for v in votes], [vote_distribution(answers.get(k, [])) for k in keys]


def with_teacher_confidence(rows: list[dict], responses, preds, merged, target: float) -> list[dict]:
    """The teacher rows with their vote-share figures on ``preds``' samples; the majority vote
    also with a triage whose threshold is chosen on the val samples' responses only (for a
    cross-validation result, per fold on that fold's val samples)."""
    import numpy as np

    from ..core.calibration import reading, threshold_for
    from ..core.data import read_merged
    from ..core.task import LETTERS

    answers = _answers(responses)
    keys = [(int(p), int(c)) for p, c in zip(preds[ID_COLUMNS[0]], preds[ID_COLUMNS[1]], strict=True)]
    truth = preds["ground_truth_letter"].tolist()
    letters, share, dist = _teacher_votes(answers, keys)
    share = np.array(share, dtype=float)
    correct = np.array([x == t for x, t in zip(letters, truth, strict=True)], dtype=float)
    # Triage: each part of the samples gets the threshold chosen on its own val samples.
    meta = read_merged(merged, columns=[])[1]
    if "fold" in preds and meta.get("fold_splits"):
        parts = [(meta["fold_splits"][int(f)]["val"], (preds["fold"] == f).to_numpy()) for f in preds["fold"].unique()]
    else:
        parts = [((meta.get("splits") or {}).get("val") or [], np.ones(len(keys), dtype=bool))]
    gt = {(int(p), int(c)): t for p, c, t in zip(responses[ID_COLUMNS[0]], responses[ID_COLUMNS[1]],
                                                 responses["ground_truth_letter"], strict=True)}
    accept, thresholds, n_val = np.zeros(len(keys), dtype=bool), [], 0
    for val_ids, mask in parts:
        vkeys = [(int(p), int(c)) for p, c in val_ids]
        vl, vs, _ = _teacher_votes(answers, vkeys)
        vc = [x is not None and x == gt.get(k) for x, k in zip(vl, vkeys, strict=True)]
        thr = threshold_for(vs, vc, target) if vkeys else None
        thresholds.append(thr)
        n_val += len(vkeys)
        if thr is not None:
            accept |= mask & (share >= thr)
    for r in rows:
        if r["model"] == "teacher (majority vote)":
            r.update(confidence="vote share", **_figures(share, correct, np.stack(dist), truth))
            if n_val:
                cov = float(accept.mean())
                acc = float(correct[accept].mean()) if accept.any() else None
                r.update(triage_threshold=thresholds[0] if len(parts) == 1 else None, triage_coverage=cov,
                         triage_accuracy=acc, reading=f"{reading(cov, acc)} (target {target:.0%}, threshold "
                         f"chosen on {n_val} val samples' responses)")
        elif r["model"] == "teacher (all responses)":
            # Each response judged by the share of its sample's responses that name its letter.
            on = set(keys)
            sel = responses[[(int(p), int(c)) in on for p, c in
                             zip(responses[ID_COLUMNS[0]], responses[ID_COLUMNS[1]], strict=True)]]
            rkeys = [(int(p), int(c)) for p, c in zip(sel[ID_COLUMNS[0]], sel[ID_COLUMNS[1]], strict=True)]
            rdist = np.stack(_teacher_votes(answers, rkeys)[2])
            conf = np.array([d[LETTERS.index(a)] if a in LETTERS else 0.0
                             for d, a in zip(rdist, _none(sel["teacher_answer"].tolist()), strict=True)])
            r.update(confidence="share of its sample's responses agreeing",
                     **_figures(conf, sel["teacher_correct"].to_numpy(float), rdist,
                                sel["ground_truth_letter"].tolist(), unit="responses"))
    return rows


def confidence_markdown(table) -> list[str]:
    """The confidence table and one reading per row (empty without confidence columns)."""
    import math

    recs = [r for r in table.to_dict("records") if isinstance(r.get("confidence"), str)]
    if not recs:
        return []

    def f(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    lines = ["", "Confidence (ECE: 10 equal-width bins; Brier: sum over the seven letters; AURC: area under "
             "the risk-coverage curve, lower is better; coverage: the largest share, most confident first, "
             "at least 95% accurate):", "",
             "| model | confidence | ECE | Brier | AURC | coverage at 95% |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['model']} | {r['confidence']} | {f(r['ece'])} | {f(r['brier'])} | {f(r['aurc'])} | "
              f"{f(r['coverage_at_0.95'])} |" for r in recs]
    lines += ["", "Triage:", ""] + [f"- {r['model']}: {r['reading']}" for r in recs if isinstance(r.get("reading"), str)]
    return lines
