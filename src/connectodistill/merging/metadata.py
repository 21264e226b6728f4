"""merge's report: the metadata JSON of a merged file (``build_report``) and the table printed
at the end of ``merge`` (``print_summary``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from ..core.config import MergeConfig
from ..core.paths import PATHS_KEY, record_paths
from ..core.task import BBOX_COLUMNS, ID_COLUMNS, LETTERS, SPLITS, image_columns
from .matching import UNPARSED_CODE, Benchmark, Votes
from .splits import fold_warnings
from .teacher_csv import SETTINGS, Prompts, Teacher, setting_codes

__all__ = ["build_report", "print_summary"]


def build_report(cfg: MergeConfig, bench: Benchmark, teacher: Teacher, votes: Votes, prompts: Prompts,
                 templates: dict[str, dict], split: np.ndarray, table: pa.Table,
                 fold_splits: list[np.ndarray] | None = None) -> dict:
    """The metadata JSON (also stored in the parquet schema). Ids are plain ints."""
    output_rows = table.num_rows
    matched_resp = teacher.keep & (teacher.segment >= 0)
    unmatched_resp = teacher.keep & (teacher.segment < 0)
    n_matched = int(matched_resp.sum())
    n_correct = int(teacher.correct[matched_resp].sum())
    has = votes.responses > 0
    majority_right = has & (votes.majority == bench.truth)
    resp_truth = bench.truth[teacher.segment[matched_resp]]
    resp_right = teacher.correct[matched_resp]

    per_class = {}
    for k, letter in enumerate(LETTERS):
        here = bench.truth == k
        per_class[letter] = {
            "samples": int(here.sum()),
            "matched_samples": int((here & has).sum()),
            "responses": int((resp_truth == k).sum()),
            "correct": int(resp_right[resp_truth == k].sum()),
        }
    def lists(sp):
        return {s: np.column_stack([bench.prid[sp == s], bench.crid[sp == s]]).tolist() for s in SPLITS}

    splits = lists(split)
    folds = [lists(sp) for sp in fold_splits] if fold_splits is not None else None
    unmatched_examples = []
    if unmatched_resp.any():
        t = teacher.table
        for r in np.flatnonzero(unmatched_resp)[:5].tolist():
            unmatched_examples.append({
                "file": t["source"][r].as_py(),
                **{c: t[c][r].as_py() for c in (*ID_COLUMNS, *BBOX_COLUMNS)},
            })
    n = bench.n
    matched_samples = int(has.sum())
    # prompt settings of the matched responses, and samples whose responses (in one setting)
    # carry more than one prompt text
    # prompt settings of the matched responses (in order of first appearance), and samples
    # whose responses (in one setting) carry more than one prompt text
    mr = np.flatnonzero(matched_resp)
    setting = setting_codes(teacher)[mr]
    seen, first, count = np.unique(setting, return_index=True, return_counts=True)
    setting_counts = {SETTINGS[seen[i]]: int(count[i]) for i in np.argsort(first)}
    text_code = prompts.text_code()
    with_text = text_code[mr] >= 0
    per = np.unique(np.column_stack([bench.segment[teacher.segment[mr]], setting, text_code[mr]])[with_text], axis=0)
    several = int((np.unique(per[:, :2], axis=0, return_counts=True)[1] > 1).sum()) if len(per) else 0
    group_sizes = np.bincount(bench.group)
    train_row = table["train_row"].to_numpy(zero_copy_only=False)
    return {
        "total_samples": n,
        "matched_samples": matched_samples,
        "unmatched_samples": n - matched_samples,
        "match_rate": matched_samples / n,
        "duplicate_samples": int(n - len(np.unique(bench.segment))),
        "teacher_responses": teacher.n,
        "malformed_rows": teacher.malformed_count,
        "skipped_files": teacher.skipped_files,
        # rows repeating an earlier row of their own file (same segment, index and texts)
        "duplicate_responses": int((~teacher.keep).sum()),
        "matched_responses": n_matched,
        "unmatched_responses": int(unmatched_resp.sum()),
        "correct_responses": n_correct,
        "unparsed_responses": int((teacher.code[matched_resp] == UNPARSED_CODE).sum()),
        "response_accuracy": n_correct / n_matched if n_matched else 0.0,
        "majority_accuracy": int(majority_right.sum()) / matched_samples if matched_samples else 0.0,
        # how much the K responses of a sample agree: 1.0 = always the same letter
        "mean_majority_share": float(votes.share[has].mean()) if matched_samples else 0.0,
        "samples_with_correct_response": int((votes.correct > 0).sum()),
        "output_rows": output_rows,
        "train_rows": int(train_row.sum()),
        "held_out_rows": int((~train_row).sum()),
        "prompt_settings": setting_counts,
        "samples_with_several_prompts": several,
        "prompts_decoded": int((text_code >= 0).sum()),
        "prompt_templates": templates,
        "per_class": per_class,
        "split_sizes": {s: int((split == s).sum()) for s in SPLITS},
        "csv_files": [str(p) for p in cfg.csv_files],
        "csv_file_rows": teacher.files,
        "filters_apply_to": "train rows only; val/test samples keep one unfiltered row each",
        "malformed": teacher.malformed,
        "unmatched_examples": unmatched_examples,
        "dataset_name": cfg.dataset_name,
        # a local benchmark also absolute and relative to the merged file's folder (core/paths.py)
        PATHS_KEY: record_paths({"dataset_name": cfg.dataset_name}, Path(cfg.output).parent),
        "config_name": cfg.config_name,
        "dataset_split": cfg.dataset_split,
        "label_column": bench.label_column,
        "image_columns": list(image_columns(bench.table.column_names) or []),
        "responses_per_sample": cfg.responses_per_sample,
        "filter_correct_only": cfg.filter_correct_only,
        "filter_matched_only": cfg.filter_matched_only,
        "test_size": cfg.test_size,
        "val_size": cfg.val_size,
        "seed": cfg.seed,
        "split_groups": int(len(group_sizes)),
        "largest_split_group": int(group_sizes.max()) if len(group_sizes) else 0,
        "split_group_rule": "connected components over both ids (samples sharing either id)",
        "folds": cfg.folds,
        # per fold: train/val/test id lists (fold i tests on its own samples); "splits" is fold 0's
        "fold_splits": folds,
        # folds that train on far less than (K-1)/K (a giant leak-proof group): one line each
        **({"fold_warnings": fold_warnings(fold_splits, bench.group, cfg.val_size)} if fold_splits is not None else {}),
        "splits": splits,
    }




def print_summary(console, report: dict, outputs: tuple[Path, ...]) -> None:
    """A readable table of what matched, how often the teacher was right, and the splits."""
    from rich.table import Table

    r = report
    t = Table(title="merge", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_column()
    t.add_row("dataset", f"{r['total_samples']} samples", f"{r['dataset_name']} ({r['dataset_split']})")
    t.add_row("matched samples", f"{r['matched_samples']}",
              f"{r['match_rate']:.1%}; {r['unmatched_samples']} without a response")
    if r["duplicate_samples"]:
        t.add_row("duplicate samples", f"{r['duplicate_samples']}", "rows repeating another row's segment")
    t.add_row("teacher rows", f"{r['teacher_responses']}", f"from {len(r['csv_files'])} file(s)")
    t.add_row("malformed rows", f"{r['malformed_rows']}", "skipped (see metadata 'malformed')")
    if r["skipped_files"]:
        t.add_row("skipped files", f"{len(r['skipped_files'])}", "same bytes as an earlier file")
    t.add_row("repeated rows", f"{r['duplicate_responses']}", "repeats inside one file, counted once")
    t.add_row("matched responses", f"{r['matched_responses']}", f"{r['unmatched_responses']} unmatched")
    t.add_row("response accuracy (response-weighted)", f"{r['response_accuracy']:.1%}",
              f"{r['correct_responses']} correct, {r['unparsed_responses']} unparsed")
    t.add_row("majority accuracy", f"{r['majority_accuracy']:.1%}",
              f"{r['samples_with_correct_response']} samples with a correct response")
    sizes = r["split_sizes"]
    t.add_row("splits", f"{sum(sizes.values())}", "  ".join(f"{k} {v}" for k, v in sizes.items()))
    t.add_row("split groups", f"{r['split_groups']}", f"largest {r['largest_split_group']} samples (shared ids)")
    settings = ", ".join(f"{k} {v}" for k, v in r["prompt_settings"].items())
    t.add_row("prompt settings", f"{sum(r['prompt_settings'].values())}", f"responses: {settings}")
    kept = [k for k, v in r["prompt_templates"].items() if v["template"]]
    t.add_row("prompt templates", f"{len(kept)}/{len(r['prompt_templates'])}",
              "recovered byte for byte" + (f": {', '.join(kept)}" if kept else ""))
    t.add_row("output rows", f"{r['output_rows']}",
              f"{r['train_rows']} train, {r['held_out_rows']} val/test (unfiltered) -> {outputs[0]}")
    console.print(t)
    for m in r["malformed"][:5]:
        console.print(f"[yellow]malformed[/] {m['file']} line {m['line'] or '?'}: {m['reason']}")
    for k, v in r["prompt_templates"].items():
        if not v["template"]:
            console.print(f"[yellow]no prompt template[/] for {k}: {v['reason']}; per-sample prompts only")
    if r["samples_with_several_prompts"]:
        console.print(f"[yellow]{r['samples_with_several_prompts']} samples[/] carry several prompt texts in one "
                      "setting; each uses its first response's prompt (input order)")
    if r["malformed_rows"] > 5:
        console.print(f"[yellow]... {r['malformed_rows'] - 5} more malformed rows[/]")
