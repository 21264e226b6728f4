"""One comparison table: every evaluated model, plus the teacher on exactly the same samples.

The teacher is scored from merge's ``<stem>_responses.parquet`` on each result's own rows
(``teacher.py``), from the responses to the question the result was asked: per sample its
share of right responses (``teacher (single response)``, each sample weighing the same) and its
majority vote. Rows computed on a different sample set than the first result are marked,
never silently compared.

Every model row is also compared with the teacher on the same rows, as a paired difference
(``statistics.paired_delta``: the same group-bootstrap resamples for both, so their shared
difficulty cancels) and by the exact McNemar test of the paired right/wrong outcomes:
``delta_vs_teacher`` (against the majority vote) and ``delta_vs_teacher_single`` (against the
single-response row: the student's accuracy minus that row's accuracy, exactly).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.config import ReportConfig, resolve
from ..core.errors import UserError
from ..core.task import ID_COLUMNS
from .teacher import _row, teacher_answers, teacher_confidence, teacher_rows

TABLE_COLUMNS = (
    "model", "n", "accuracy", "accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci",
    "unparsed_rate", "sample_ids_hash", "same_samples", "note",
    "paired_n", "delta_vs_teacher", "delta_vs_teacher_ci", "delta_vs_teacher_unpaired_ci", "mcnemar_p",
    "delta_vs_teacher_single", "delta_vs_teacher_single_ci",
    *("confidence", "ece", "brier", "ece_uncalibrated", "brier_uncalibrated", "temperature", "aurc",
      "coverage_at_0.95", "triage_threshold", "triage_coverage", "triage_accuracy", "reading"),
    # calibration and triage (the functions at the end)
)
LEVEL = 0.05  # a difference is called better or worse only when the paired test says so at this level


def format_p(p: float | None) -> str:
    """"p < 0.001" or two significant digits: a p-value is never printed as 0."""
    if p is None or p != p:
        return "p = n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


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


def paired_vs_teacher(preds, ans, n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """A model's per-sample right/wrong against the teacher's (``teacher.TeacherAnswers`` on
    the same rows): its majority vote (a sample without a response counts as the teacher's
    wrong) and its single-response share. Groups: the teacher answers' (the result's own)."""
    import numpy as np

    from ..core.statistics import mcnemar_exact, paired_delta

    student = preds["correct"].astype(bool).to_numpy()
    truth = preds["ground_truth_letter"].tolist()
    teacher = np.array([x is not None and x == t for x, t in zip(ans.majority, truth, strict=True)])
    d = paired_delta(student, teacher, ans.groups, n_bootstrap=n_bootstrap, seed=seed)
    d1 = paired_delta(student, ans.right, ans.groups, n_bootstrap=n_bootstrap, seed=seed)
    return {"paired_n": d["n"], "delta_vs_teacher": d["delta"], "delta_vs_teacher_ci": d["ci"],
            "delta_vs_teacher_unpaired_ci": d["unpaired_ci"], "mcnemar_p": mcnemar_exact(student, teacher),
            "delta_vs_teacher_single": d1["delta"], "delta_vs_teacher_single_ci": d1["ci"]}


def describe_delta(row: dict) -> str:
    """"student - teacher: -2.1 pp [-6.0, +1.8], p = 0.31" in words a reader understands.

    "better" or "worse" only when both tests agree at the 5% level: the paired interval
    excludes 0 and the exact McNemar p < 0.05; when only one does, the words say so."""
    d, ci, p = row.get("delta_vs_teacher"), row.get("delta_vs_teacher_ci"), row.get("mcnemar_p")
    if d is None or ci is None or (isinstance(d, float) and d != d):
        return ""
    text = f"{row['model']} - teacher: {100 * d:+.1f} pp [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}], {format_p(p)}"
    excludes = ci[0] > 0 or ci[1] < 0
    significant = p is not None and p == p and p < LEVEL
    if excludes and significant:
        verdict = f"{'better' if d > 0 else 'worse'} than the teacher's majority vote"
    elif excludes or significant:
        verdict = ("borderline: the paired interval and McNemar's test disagree at the 5% level; no "
                   "difference is claimed")
    else:
        verdict = "no difference from the teacher's majority vote can be told at this sample size"
    single = row.get("delta_vs_teacher_single")
    sci = row.get("delta_vs_teacher_single_ci")
    extra = (f"; against one teacher response: {100 * single:+.1f} pp [{100 * sci[0]:+.1f}, {100 * sci[1]:+.1f}]"
             if single is not None and sci is not None else "")
    return f"{text} ({verdict}){extra}"


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

    # The teacher first (the reference), once per distinct (sample set, prompt setting); then
    # every result, paired against the teacher's answers to its own question on its own rows.
    settings = [(s.get("settings") or {}).get("prompt_setting") for _, s, _ in loaded]
    label = len(set(settings)) > 1  # results asked different questions: name the teacher's setting
    rows, teachers = [], {}
    for (_, summary, preds), setting in zip(loaded, settings, strict=True):
        key = (summary["sample_ids_hash"], setting)
        if responses is not None and key not in teachers:
            ans = teachers[key] = teacher_answers(preds, responses, setting)
            suffix = f", {(ans.setting or 'all settings').replace('_', ' ')}" if label else ""
            rows += teacher_confidence(teacher_rows(ans, preds, key[0], suffix), ans, preds, cfg.merged,
                                       _target(loaded), _figures)
    for (folder, summary, preds), setting in zip(loaded, settings, strict=True):
        note = "INCLUDES TRAIN SAMPLES" if summary.get("includes_train_samples") else ""
        row = _row(summary.get("name", folder.name), summary, summary["sample_ids_hash"], note)
        ans = teachers.get((summary["sample_ids_hash"], setting))
        if ans is not None:  # paired against the teacher on the same rows
            row.update(paired_vs_teacher(preds, ans))
        rows.append({**row, **student_confidence(folder, summary, preds)})
        if "vote_letters" in preds:  # self-consistency: the majority of its K sampled responses
            rows.append(vote_row(row, summary, preds, ans))

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
    lines.append("Intervals: percentile bootstrap over leak-proof groups (samples sharing an id), for "
                 "every row. 'teacher (single response)': per sample the share of its responses that "
                 "are right, each sample weighing the same. docs/evaluation.md says when a difference is "
                 "meaningful.")
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


def _figures(confidence, correct, probs, truth, unit: str = "segments", parsed=None) -> dict:
    """ECE, Brier, AURC and coverage at 95% of one row, and a reading at the 95% threshold set
    in hindsight on these samples (a row with a val-chosen triage replaces it). ``parsed``:
    which answers named a letter (the others' distribution is the zero vector in Brier);
    without any, there is nothing to calibrate: no figures, the reading says n/a."""
    import numpy as np

    from ..core.calibration import aurc as area
    from ..core.calibration import (
        brier,
        coverage_at_accuracy,
        ece,
        reading,
        selective,
        threshold_for,
    )

    if parsed is not None and not np.asarray(parsed, dtype=bool).any():
        return {"ece": None, "brier": None, "aurc": None, "coverage_at_0.95": None,
                "reading": "n/a: no parsed answers"}
    t = selective(confidence, correct, threshold_for(confidence, correct, 0.95))
    return {"ece": ece(confidence, correct), "brier": brier(probs, truth, parsed) if probs is not None else None,
            "aurc": area(confidence, correct), "coverage_at_0.95": coverage_at_accuracy(confidence, correct, 0.95),
            "reading": f"{reading(t['coverage'], t['accuracy'], unit)} (95% threshold set on these same samples)"}


def student_confidence(folder: Path, summary: dict, preds) -> dict:
    """A result's letter-probability figures, from its predictions (pooled ones too) and triage.csv."""
    from ..core.calibration import LETTER_COLUMNS

    if "confidence" not in preds:
        return {}
    parsed = preds["predicted_letter"].map(lambda x: isinstance(x, str)).to_numpy()
    correct, truth = preds["correct"].to_numpy(float), preds["ground_truth_letter"].tolist()
    out = _figures(preds["confidence"].to_numpy(float), correct, preds[list(LETTER_COLUMNS)].to_numpy(float),
                   truth, parsed=parsed)
    if "confidence_raw" in preds and parsed.any():  # before the run's temperature
        from .results import uncalibrated_probs

        before = _figures(preds["confidence_raw"].to_numpy(float), correct, uncalibrated_probs(preds), truth,
                          parsed=parsed)
        temps = sorted(set(preds["temperature"].round(4))) if "temperature" in preds else []
        out.update(ece_uncalibrated=before["ece"], brier_uncalibrated=before["brier"],
                   temperature=temps[0] if len(temps) == 1 else None)
    triage = summary.get("triage")
    if triage and parsed.any() and (folder / "triage.csv").is_file():  # the accepted samples, as eval decided
        from ..core.calibration import reading
        from .results import read_predictions

        t = read_predictions(folder / "triage.csv")
        # eval writes triage.csv row for row in predictions.csv's order (a repeated segment too)
        if not (t[list(ID_COLUMNS)].to_numpy() == preds[list(ID_COLUMNS)].to_numpy()).all():
            raise UserError(f"{folder}: triage.csv does not follow predictions.csv row for row; re-run eval")
        auto = (t["decision"] == "auto").to_numpy()
        right = preds["correct"].to_numpy(bool)
        cov, acc = float(auto.mean()), (float(right[auto].mean()) if auto.any() else None)
        pooled = "cross_validation" in summary
        thr = None if pooled else triage["threshold"]
        where = "each fold's own val samples" if pooled else f"{triage['val']['n']} val samples"
        out.update(triage_threshold=thr, triage_coverage=cov, triage_accuracy=acc,
                   reading=f"{reading(cov, acc)} (target {triage['target_accuracy']:.0%}, threshold chosen on {where})")
    calibrated = "confidence_raw" in preds
    return {"confidence": "letter probability" + (" (calibrated)" if calibrated else ""), **out}


def vote_row(row: dict, summary: dict, preds, ans) -> dict:
    """The row of a result's majority of K sampled responses, judged by its vote share."""
    import numpy as np

    from ..core.calibration import vote_distribution
    from ..core.scoring import classification_metrics

    truth = preds["ground_truth_letter"].tolist()
    letters = [x if isinstance(x, str) else None for x in preds["vote_letter"].tolist()]
    correct = np.array([x == t for x, t in zip(letters, truth, strict=True)])
    groups = preds["split_group"].to_numpy() if "split_group" in preds else None
    m = classification_metrics(truth, letters, groups=groups)
    k = (summary.get("votes") or {}).get("k") or len(str(preds["vote_letters"].iloc[0]))
    out = _row(f"{row['model']} (majority of {k})", m, row["sample_ids_hash"], row.get("note", ""))
    if ans is not None:
        out.update(paired_vs_teacher(preds.assign(correct=correct), ans))
    dist = np.stack([vote_distribution([c if c != "-" else None for c in str(v)]) for v in preds["vote_letters"]])
    out.update(confidence="vote share", **_figures(preds["vote_share"].to_numpy(float), correct, dist, truth,
                                                   parsed=np.array([x is not None for x in letters])))
    return out


def confidence_markdown(table) -> list[str]:
    """The confidence table and one reading per row (empty without confidence columns)."""
    import math

    recs = [r for r in table.to_dict("records") if isinstance(r.get("confidence"), str)]
    if not recs:
        return []

    def f(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    def before_after(r, key):
        raw = r.get(f"{key}_uncalibrated")
        return f(r[key]) if raw is None or (isinstance(raw, float) and math.isnan(raw)) else f"{f(raw)} -> {f(r[key])}"

    lines = ["", "Confidence (ECE: 10 equal-width bins; Brier: sum over the seven letters, an unparsed answer "
             "the zero vector; a student's before -> after its temperature, fit on val; AURC: area under "
             "the risk-coverage curve, lower is better; coverage: the largest share, most confident first, "
             "at least 95% accurate):", "",
             "| model | confidence | ECE | Brier | AURC | coverage at 95% |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['model']} | {r['confidence']} | {before_after(r, 'ece')} | {before_after(r, 'brier')} | "
              f"{f(r['aurc'])} | {f(r['coverage_at_0.95'])} |" for r in recs]
    lines += ["", "Triage:", ""] + [f"- {r['model']}: {r['reading']}" for r in recs if isinstance(r.get("reading"), str)]
    return lines
