"""export: a run's LoRA merged into its base, as a plain Hugging Face model folder.

For tools that know nothing of adapters (vLLM, a plain ``from_pretrained``). The folder
holds the merged weights (safetensors, bf16 by default), the config, the run's processor
(its pixel budget and chat template), the run's prompts (``prompts.parquet``,
``prompt_templates.json``), its temperatures (``calibration.json``), ``connectodistill_export.json`` (the run's training_config plus
where it came from: ``eval --model`` and ``predict --model`` read it to ask exactly the
question the student was trained on), and a model card ``README.md`` generated from the run.

Written to a temporary folder beside the output and renamed into place at the end: a failed
export leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from ..core.config import ExportConfig, resolve
from ..core.errors import UserError
from ..core.paths import PATHS_KEY, locate, rebase_paths
from ..training.run_folders import (  # noqa: F401
    EXPORT_MANIFEST,
    chosen_run,
    fold_dir,
    is_cv_run,
    is_export,
    is_sweep,
)
from ..training.runs import RUN_CONFIG

__all__ = ["EXPORT_MANIFEST", "export", "is_export", "model_card"]

def _run_folder(cfg: ExportConfig) -> Path:
    run = Path(cfg.run)
    if is_sweep(run):
        run = chosen_run(run)
    if is_cv_run(run):
        if cfg.fold is None:
            raise UserError(f"{run} is a cross-validation run of several students; export one with --fold I")
        run = fold_dir(run, cfg.fold)
    if not (run / RUN_CONFIG).is_file():
        raise UserError(f"{run}: no {RUN_CONFIG}; pass a run folder written by `connectodistill train`")
    return run


def export(config: ExportConfig | None = None, **overrides) -> Path:
    """Merge the run's adapter into its base model and save a standard model folder."""
    cfg = resolve(ExportConfig, config, overrides)
    run = _run_folder(cfg)
    out = Path(cfg.output)
    if out.exists() and not cfg.force:
        raise UserError(f"{out} already exists; pass --force to replace it or choose another --output")
    if out.resolve() == run.resolve() or run.resolve() in out.resolve().parents:
        raise UserError(f"--output {out} is inside the run folder {run}; choose a folder outside it")
    try:
        run_config = json.loads((run / "training_config.json").read_text())
        base_model = locate(run_config, "base_model", run, what="base model")
        budget = run_config["pixel_budget"]
    except (ValueError, KeyError) as e:
        raise UserError(f"{run / 'training_config.json'}: unreadable or incomplete ({e}); re-run train") from e
    report_rows = _report_rows(cfg.report)  # checked before minutes of loading

    from ..core.modeling import load_adapter, load_model, load_processor

    # 1. Base + adapter, merged on the CPU in the export dtype.
    model = load_model(base_model, device="cpu", dtype=cfg.dtype)
    merged = load_adapter(model, run).merge_and_unload()
    processor, _ = load_processor(str(run), min_pixels=budget["min_pixels"], max_pixels=budget["max_pixels"])

    # 2. Everything into a temporary folder beside the output, renamed at the end.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.exporting")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        for name in ("prompts.parquet", "prompt_templates.json", "calibration.json"):
            if (run / name).is_file():
                shutil.copy2(run / name, tmp / name)
        calibration = json.loads((run / "calibration.json").read_text()) if (run / "calibration.json").is_file() else None
        manifest = {**run_config, "calibration": calibration, "exported_from": str(run), "export_dtype": str(cfg.dtype),
                    "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    PATHS_KEY: rebase_paths(run_config, run, out)}  # found from the exported folder
        (tmp / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=1))
        (tmp / "README.md").write_text(model_card(manifest, report_rows, cfg.output))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    from rich.console import Console

    Console(stderr=True).print(f"[bold]exported[/] {run} -> {out} ({cfg.dtype}); load it with "
                               "AutoModelForImageTextToText.from_pretrained, or "
                               f"`connectodistill predict --model {out}`")
    return out


def _report_rows(path) -> list[dict]:
    """The rows of a ``report.csv`` (from ``connectodistill report``), for the model card."""
    if path is None:
        return []
    import pandas as pd

    path = Path(path)
    if path.suffix != ".csv":
        path = path.with_suffix(".csv")
    if not path.is_file():
        raise UserError(f"--report {path} not found: pass the report.csv written by `connectodistill report`")
    return pd.read_csv(path).to_dict("records")


def _calibration_line(calibration: dict | None) -> str:
    """The run's temperatures, in a sentence (empty for a run from before calibration)."""
    if not calibration:
        return ""
    modes = [f"{m.replace('_', '-')} T = {calibration[m]['temperature']:.2f}" for m in ("generate", "one_pass")
             if m in calibration]
    return (f"Confidence (the letter's probability) is calibrated by temperature scaling fit on "
            f"{calibration.get('n_val')} val samples: {', '.join(modes)} (`calibration.json`).")


def _show(value) -> str:
    """A value for the card: never the word None."""
    return "n/a" if value is None else str(value)


def _pct(value: float, ci) -> str:
    """An accuracy and its interval in percent, one decimal: the card's one unit (deltas in pp)."""
    if isinstance(ci, str):
        ci = json.loads(ci)
    return f"{100 * value:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else f"{100 * value:.1f}%"


def model_card(manifest: dict, report_rows: list[dict], output) -> str:
    """A README.md for the exported folder: what it is, how it was made, how well it does."""
    from ..evaluation.reporting import format_p

    s = manifest.get("settings", {})
    rows = manifest.get("rows", {})
    name = Path(str(output)).name
    lines = [
        f"# {name}",
        "",
        f"A ConnectomeBench segment classifier: `{_show(manifest.get('base_model'))}` fine-tuned with LoRA "
        f"(r={_show(s.get('lora_r'))}, alpha={_show(s.get('lora_alpha'))}) on a teacher's answers "
        f"({', '.join(manifest.get('teacher_models') or ['unknown teacher'])}), merged into the base "
        f"weights ({_show(manifest.get('export_dtype'))}). Made with connectodistill.",
        "",
        "## How it was made",
        "",
        f"- base model: `{_show(manifest.get('base_model'))}` ({_show(manifest.get('model_kind'))})",
        f"- method: {s.get('method') or 'sft'}; {_show(s.get('epochs'))} epochs, learning rate "
        f"{_show(s.get('learning_rate'))}, batch {_show(s.get('batch_size'))} x {_show(s.get('gradient_accumulation'))}"
        + (f"; answer rows for {s['answer_rows']:.0%} of the train samples (one-pass answers)"
           if s.get("answer_rows") else ""),
        f"- data: `{_show(manifest.get('merged_file'))}` (benchmark `{_show(manifest.get('dataset_name'))}`), "
        f"{_show(rows.get('train_examples'))} training examples, {_show(rows.get('val_examples'))} val samples"
        + (f", cross-validation fold {manifest['fold']}" if manifest.get("fold") is not None else ""),
        f"- prompt: `{_show(manifest.get('prompt_source'))}` source, setting `{_show(manifest.get('prompt_setting'))}` "
        "(the teacher's own question; `prompts.parquet` holds every benchmark sample's prompt, "
        "`prompt_templates.json` the template for new segments)",
        f"- pixel budget per view: {_show(manifest.get('pixel_budget'))}; chat template sha256 "
        f"`{(manifest.get('chat_template_sha256') or '')[:12]}`",
        "- checkpoint kept by: " + (f"{manifest.get('select_by')} (best {manifest['best_metric']:.4g})"
                                    if manifest.get("best_metric") is not None else "the last step (no val selection)"),
        f"- exported from `{_show(manifest.get('exported_from'))}` at {_show(manifest.get('exported_at'))}",
        "",
        "## How well it does",
        "",
    ]
    calibration = _calibration_line(manifest.get("calibration"))
    if calibration:
        lines += [calibration, ""]
    if report_rows:
        lines += ["| model | n | accuracy [95% CI] | balanced accuracy [95% CI] | vs teacher (majority vote) |",
                  "| --- | ---: | --- | --- | --- |"]
        for r in report_rows:
            delta = r.get("delta_vs_teacher")
            ci = r.get("delta_vs_teacher_ci")
            vs = (f"{100 * delta:+.1f} pp [{100 * json.loads(ci)[0]:+.1f}, {100 * json.loads(ci)[1]:+.1f}], "
                  f"{format_p(r.get('mcnemar_p'))}" if isinstance(delta, float) and delta == delta
                  and isinstance(ci, str) else "-")
            lines.append(f"| {r['model']} | {r['n']} | {_pct(r['accuracy'], r['accuracy_ci'])} | "
                         f"{_pct(r['balanced_accuracy'], r['balanced_accuracy_ci'])} | {vs} |")
        lines += ["", "Accuracies in percent, differences in percentage points (pp); intervals: 95% percentile "
                  "bootstrap over leak-proof groups; the teacher is scored on the same held-out samples."]
    else:
        lines.append("No evaluation was attached to this export (`connectodistill export RUN --output DIR --report "
                     "report.csv` adds the report's table here).")
    lines += [
        "",
        "## How to load it",
        "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        f'model = AutoModelForImageTextToText.from_pretrained("{name}", dtype="auto")',
        f'processor = AutoProcessor.from_pretrained("{name}")  # the pixel budget and chat template of training',
        "```",
        "",
        "Ask it the teacher's question (the text in `prompts.parquet`, or `prompt_templates.json` rendered "
        "with the species and the box size), with the three views (front, side, top) before the text; it "
        "answers `<analysis>...</analysis>` then `<answer>letter</answer>`. Or let connectodistill do it:",
        "",
        "```bash",
        f"connectodistill predict segments.csv --model {name} --images-dir renders/ --output preds/",
        f"connectodistill eval --model {name} --merged merged.parquet",
        "```",
        "",
    ]
    return "\n".join(lines)
