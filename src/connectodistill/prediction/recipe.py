"""predict: a trained student's answers for new segments, streamed in chunks, resumable.

The student is asked exactly what eval asks it (``eval_inputs.run_settings`` and
``eval_inputs.choose_prompts``): the run's base model, processor, pixel budget, chat template
and prompt source. A segment the run recorded a prompt for gets that prompt; a new segment has
no stored teacher prompt and gets the run's teacher template (``prompt_source =
teacher-template``), else the builtin prompt.

Input rows are read ``chunk_size`` at a time (``segments.py``); each chunk's results are
written atomically to ``<output>/chunks/chunk-NNNNNN.parquet`` (its skipped rows in the file's
metadata) and the outputs are assembled from the chunks at the end, so memory stays flat in
the number of segments, and a rerun after an interruption redoes only the missing chunks.
``predict_manifest.json`` records the chunk size, the input's and the model's fingerprints and
the generation settings; a rerun with other ones is refused (or starts over with ``force``).

Answers come in one of two modes, as in eval: ``generate`` (a rationale, then the letter) or
``one_pass`` (one forward pass over the question and an opened answer block; the default for
a run trained with answer rows). Confidence is calibrated by the run's temperature for the
mode (``calibration.json``). With one-pass triage, ``explain="human"`` generates rationales
for the segments sent to a human, and only for them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..core.config import EvalConfig, PredictConfig, resolve
from ..core.errors import UserError
from ..core.task import LETTERS, VIEWS
from . import files as prediction_files
from .files import (
    CHUNKS,
    ERRORS,
    MANIFEST,
    P_COLUMNS,
    PREDICTIONS,
    SUMMARY,
    chunk_path,
    chunk_table,
    report,
    write_outputs,
)
from .segments import Source, fingerprint_files, open_source

__all__ = ["MANIFEST", "PREDICTIONS", "ERRORS", "SUMMARY", "Plan", "plan", "predict", "write_outputs"]

STALE_TEMP_SECONDS = 3600  # a temporary chunk file this old was left by a killed run
_AGREE = ("base_model", "min_pixels", "max_pixels", "chat_template_sha256", "prompt", "prompt_setting")


@dataclass
class Plan:
    """Everything predict checked before writing anything."""

    cfg: PredictConfig
    source: Source
    kind: str  # adapter, fold, ensemble, export
    students: list[Path]
    settings: list[dict]  # per student, as eval_inputs.run_settings reads them
    threshold: float | None
    triage: bool
    triage_note: str | None
    manifest: dict
    mode: str = "generate"  # or "one_pass"
    temperatures: list[float] | None = None  # per student, for the mode (1.0: uncalibrated)
    calibration_note: str = ""

    @property
    def n_chunks(self) -> int:
        return -(-self.source.total // self.cfg.chunk_size)


# ============================================================================ checks
def resolve_students(cfg: PredictConfig) -> tuple[str, list[Path], list[dict]]:
    """(kind, student folders, their settings) for --adapter-path / --model, --ensemble, --fold."""
    from ..evaluation.inputs import run_settings
    from ..training.run_folders import chosen_run, fold_dir, fold_status, is_cv_run, is_sweep

    if cfg.adapter_path is None and cfg.model is None:
        raise UserError("no model given: pass --adapter-path RUN (a run, cross-validation or sweep folder) "
                        "or --model DIR (a folder written by `connectodistill export`)")
    if cfg.adapter_path is not None and cfg.model is not None:
        raise UserError("pass either --adapter-path RUN or --model EXPORTED_FOLDER, not both")
    if cfg.model is not None:
        if cfg.ensemble or cfg.fold is not None:
            raise UserError("--ensemble and --fold choose among a cross-validation run's students; "
                            "an exported --model is one student")
        if not Path(cfg.model).is_dir():
            raise UserError(f"--model {cfg.model}: no such folder")
        return "export", [Path(cfg.model)], [run_settings(EvalConfig(model=cfg.model))]
    run = Path(cfg.adapter_path)
    if not run.is_dir():
        raise UserError(f"--adapter-path {run}: no such folder")
    if is_sweep(run):  # its chosen point, as eval does
        run = chosen_run(run)
    if is_cv_run(run):
        try:
            k = int(json.loads((run / "cv_config.json").read_text())["folds"])
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{run}/cv_config.json: unreadable ({e})") from e
        if cfg.ensemble and cfg.fold is not None:
            raise UserError("pass either --ensemble (every fold's student) or --fold I (one of them), not both")
        if cfg.fold is not None:
            if not 0 <= cfg.fold < k:
                raise UserError(f"--fold {cfg.fold} is out of range: {run} has folds 0..{k - 1}")
            kind, dirs = "fold", [fold_dir(run, cfg.fold)]
        elif cfg.ensemble:
            kind, dirs = "ensemble", [fold_dir(run, i) for i in range(k)]
        else:
            raise UserError(f"{run} is a cross-validation run of {k} students: pass --ensemble (average their "
                            f"letter probabilities) or --fold I (one of them, 0..{k - 1})")
        if missing := [d.name for d in dirs if fold_status(run, int(d.name.split("-")[1])) != "done"]:
            raise UserError(f"{run}: {', '.join(missing)} not trained yet; finish `train --folds` first")
    else:
        if cfg.ensemble or cfg.fold is not None:
            raise UserError(f"--ensemble and --fold need a cross-validation run; {run} is a single run")
        kind, dirs = "adapter", [run]
    settings = [run_settings(EvalConfig(adapter_path=d)) for d in dirs]
    for d, s in zip(dirs[1:], settings[1:], strict=True):
        if diff := [k for k in _AGREE if s[k] != settings[0][k]]:
            raise UserError(f"--ensemble: {d.name} was trained with another {', '.join(diff)} than {dirs[0].name}; "
                            "its students cannot answer one question")
    return kind, dirs, settings


def model_fingerprint(kind: str, dirs: list[Path]) -> str:
    names = ("adapter_model.safetensors", "adapter_config.json", "training_config.json",
             "connectodistill_export.json", "config.json")
    files = [d / n for d in dirs for n in names if (d / n).is_file()]
    if kind == "export":
        files += sorted(p for d in dirs for p in d.glob("*.safetensors"))
    return hashlib.sha256(f"{kind}:{fingerprint_files(files)}".encode()).hexdigest()


def triage_threshold(cfg: PredictConfig, dirs: list[Path],
                     kind: str = "adapter") -> tuple[bool, float | None, str | None, dict | None]:
    """(triage on, threshold, where it came from, its scale) from --threshold or --triage-from;
    the scale of a --triage-from threshold is the eval's answer mode and temperature."""
    if cfg.threshold is not None and cfg.triage_from is not None:
        raise UserError("pass either --threshold T or --triage-from EVAL_RESULT, not both")
    if cfg.threshold is not None:
        return True, cfg.threshold, "--threshold", None
    if cfg.triage_from is None:
        return False, None, None, None
    path = Path(cfg.triage_from)
    path = path if path.suffix == ".json" else path / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--triage-from {cfg.triage_from}: no readable eval summary.json ({e})") from e
    tri = summary.get("triage")
    if not tri or ("threshold" not in tri and "thresholds" not in tri):
        raise UserError(f"{path} holds no triage threshold: run `connectodistill eval --target-accuracy A` "
                        "first, or pass --threshold T")
    from ..core.paths import locate

    student = locate(summary, "exported_model", path.parent) or locate(summary, "adapter", path.parent)
    ours = {Path(cfg.model or cfg.adapter_path).resolve(), *(d.resolve() for d in dirs)}
    if student and Path(student).exists() and Path(student).resolve() not in ours:
        raise UserError(f"{path}: its threshold was chosen for {student}, not this model; pass --threshold T "
                        "to apply a threshold anyway")
    note = f"{path} (target accuracy {tri.get('target_accuracy')}, chosen on {tri.get('chosen_on', 'val')})"
    calibration = summary.get("calibration") or {}
    scale = {"path": path, "mode": (summary.get("settings") or {}).get("mode", "generate"),
             "temperature": calibration.get("temperature")}
    if "threshold" in tri:
        return True, tri["threshold"], note, scale
    thresholds = tri["thresholds"]  # a cross-validation eval: one per fold, each on its own val part
    if kind == "fold" and cfg.fold is not None and cfg.fold < len(thresholds):
        per_fold = calibration.get("per_fold") or []
        fold_cal = per_fold[cfg.fold] if cfg.fold < len(per_fold) else None
        scale["temperature"] = (fold_cal or {}).get("temperature")
        return True, thresholds[cfg.fold], f"{note}, fold {cfg.fold}'s", scale
    raise UserError(f"{path} holds one triage threshold per fold ({thresholds}); the ensemble's confidence is "
                    "none of theirs: pass --fold I to triage with that fold's student and threshold, or --threshold T")


def answer_mode(cfg: PredictConfig, settings: list[dict]) -> str:
    """``one_pass`` when asked, or by default for a run trained with answer rows; else ``generate``."""
    if cfg.one_pass is not None:
        return "one_pass" if cfg.one_pass else "generate"
    return "one_pass" if all(s.get("answer_rows") for s in settings) else "generate"


def temperatures(dirs: list[Path], mode: str) -> tuple[list[float], str, list[str]]:
    """Each student's temperature for ``mode`` from its calibration.json, where it came from
    (1.0, uncalibrated, for a student without one), and the students without one."""
    from ..training.calibrate import read_calibration

    found = [read_calibration(d) for d in dirs]
    temps = [float(c[mode]["temperature"]) if c and mode in c else 1.0 for c in found]
    missing = [d.name for d, c in zip(dirs, found, strict=True) if not c or mode not in c]
    note = ("fit on val when training ended (calibration.json)" if not missing else
            f"UNCALIBRATED for {', '.join(missing)}: no calibration.json (trained before calibration existed); "
            "`connectodistill eval` on the run fits one on its val split")
    return temps, note, missing


def same_scale(scale: dict, mode: str, temps: list[float], note: str,
               uncalibrated: bool) -> tuple[list[float], str]:
    """The temperatures to use with a threshold from --triage-from: a threshold means something
    only on the confidence it was chosen on, the eval's answer mode at the eval's temperature.
    A student without calibration.json takes the temperature the eval fit on its val split."""
    where = scale["path"]
    if scale["mode"] != mode:
        flag = "--one-pass" if scale["mode"] == "one_pass" else "--generate"
        raise UserError(f"--triage-from {where}: its threshold was chosen on {scale['mode'].replace('_', '-')} "
                        f"answers, and this predict answers {mode.replace('_', '-')}: pass {flag}, or run "
                        f"`connectodistill eval` in this mode and triage from that")
    t = scale["temperature"]
    if t is None or len(temps) != 1 or abs(temps[0] - float(t)) < 1e-9:
        return temps, note
    if uncalibrated:  # an older run: the eval fit its temperature on val
        return [float(t)], f"fit on val by the eval in {where} (the run has no calibration.json)"
    raise UserError(f"--triage-from {where}: its threshold was chosen at temperature {float(t):.4g}, and this "
                    f"student's calibration.json says {temps[0]:.4g}: evaluate the student again and triage from "
                    "that result, or pass --threshold T")


def plan(config: PredictConfig | None = None, *, remote: bool = False, **overrides) -> Plan:
    """Check the input, the model and the triage settings; nothing is loaded or written."""
    cfg = resolve(PredictConfig, config, overrides)
    if cfg.shards not in (None, 1) and not remote:
        raise UserError("--shards N splits the input over N Modal containers: add --remote")
    kind, dirs, settings = resolve_students(cfg)
    mode = answer_mode(cfg, settings)
    if cfg.explain == "human" and mode != "one_pass":
        raise UserError("--explain human explains the segments one-pass triage sends to a human: add --one-pass "
                        "(every generated answer already carries its rationale)")
    source = open_source(cfg.input, cfg.images_dir, config_name=cfg.config_name, split=cfg.dataset_split)
    if source.total == 0:
        raise UserError(f"{cfg.input}: no segments (no rows)")
    on, threshold, note, scale = triage_threshold(cfg, dirs, kind)
    if cfg.explain == "human" and not on:
        raise UserError("--explain human needs a triage to know who goes to a human: pass --threshold T or "
                        "--triage-from EVAL_RESULT")
    temps, calibration_note, missing = temperatures(dirs, mode)
    if scale is not None:
        temps, calibration_note = same_scale(scale, mode, temps, calibration_note, bool(missing))
    if mode == "one_pass" and not all(s.get("answer_rows") for s in settings):
        from rich.console import Console

        from ..evaluation.recipe import ONE_PASS_UNTRAINED

        Console(stderr=True).print(f"[yellow]{ONE_PASS_UNTRAINED}[/]", soft_wrap=True)
    manifest = {
        "chunk_size": cfg.chunk_size,
        "input": {"kind": source.kind, "rows": source.total, "row_offset": cfg.row_offset,
                  "fingerprint": source.fingerprint},
        "model": {"kind": kind, "fingerprint": model_fingerprint(kind, dirs)},
        "generation": {"max_new_tokens": cfg.max_new_tokens, "dry_run": cfg.dry_run, "mode": mode,
                       "explain": cfg.explain, "temperatures": temps,
                       "threshold": threshold if cfg.explain == "human" else None},
    }
    return Plan(cfg, source, kind, dirs, settings, threshold, on, note, manifest, mode, temps, calibration_note)


def check_output(out: Path, manifest: dict, force: bool) -> None:
    """Refuse an output folder holding another prediction (unless ``force``); nothing is written."""
    path = out / MANIFEST
    if not path.is_file():
        if (out / CHUNKS).is_dir() and any((out / CHUNKS).glob("chunk-*.parquet")) and not force:
            raise UserError(f"{out}/{CHUNKS} holds chunks without a {MANIFEST}; pass another --output, "
                            "or --force to start over")
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    differ = [k for k in ("chunk_size", "input", "model", "generation") if old.get(k) != manifest[k]]
    if differ and not force:
        what = {"chunk_size": f"chunk size {old.get('chunk_size')} (now {manifest['chunk_size']})",
                "input": "input", "model": "model", "generation": "generation settings"}
        raise UserError(f"{out} holds a prediction with another {', '.join(what[k] for k in differ)}: rerun "
                        "with the same input, model and options to resume it, pass another --output, or "
                        "--force to start over")


def _start_over(out: Path) -> None:
    for name in (MANIFEST, PREDICTIONS, ERRORS, SUMMARY, "predictions.csv"):
        (out / name).unlink(missing_ok=True)
    for p in (out / CHUNKS).glob("*") if (out / CHUNKS).is_dir() else []:
        p.unlink()


# ============================================================================ chunks
def done_chunks(out: Path, p: Plan) -> set[int]:
    """Chunks already written whole for this input (a damaged or foreign one is redone)."""
    return prediction_files.done_chunks(out, p.cfg.row_offset, p.source.total, p.cfg.chunk_size)


# ============================================================================ the student
class Student:
    """The student as eval loads it (processor with the run's budget, chat template checked,
    base + adapter; an ensemble holds every fold's adapter on one base). Called on a chunk's
    prompts and views, it returns the answer columns."""

    def __init__(self, p: Plan):
        from ..core.modeling import generation_batch, load_for_inference, load_processor

        s = p.settings[0]
        self.cfg, self.kind = p.cfg, p.kind
        self.processor, self.budget = load_processor(s["processor_from"], min_pixels=s["min_pixels"],
                                                     max_pixels=s["max_pixels"])
        if s["chat_template_sha256"]:
            got = hashlib.sha256((self.processor.chat_template or "").encode()).hexdigest()
            if got != s["chat_template_sha256"]:
                raise UserError(f"the chat template of {s['processor_from']} differs from the one the run trained "
                                f"with ({s['chat_template_sha256'][:12]} vs {got[:12]})")
        adapter = p.students[0] if p.kind in ("adapter", "fold") else None  # an ensemble's switch: not merged
        model, self.inference = load_for_inference(s["base_model"], adapter, load_in_4bit=p.cfg.load_in_4bit)
        self.names: list[str | None] = [None]
        if p.kind == "ensemble":
            from ..core.modeling import load_adapter

            self.names = [d.name for d in p.students]
            model = load_adapter(model, p.students[0], adapter_name=self.names[0])
            for name, d in zip(self.names[1:], p.students[1:], strict=True):
                model.load_adapter(str(d), adapter_name=name)
        self.model = model
        self.mode, self.temperatures, self.threshold = p.mode, p.temperatures or [1.0] * len(self.names), p.threshold
        self.batch_size, self.inference["batch"] = generation_batch(
            model, p.cfg.batch_size, views=len(VIEWS), max_pixels=self.budget["max_pixels"],
            new_tokens=p.cfg.max_new_tokens)
        self.letter_probabilities = None
        if letter_probabilities_available():
            from ..core.generation import letter_probabilities

            self.letter_probabilities = letter_probabilities

    def __call__(self, prompts: list[str], images: list[list], layouts: list[str | None]) -> dict:
        from ..core.calibration import apply_temperature
        from ..core.generation import generate_answers, one_pass_probabilities
        from ..core.scoring import option_descriptions, parse_response

        per = []
        for name, temp in zip(self.names, self.temperatures, strict=True):
            if name is not None:
                self.model.set_adapter(name)
            if self.mode == "one_pass":
                probs = one_pass_probabilities(self.model, self.processor, prompts, images, layouts=layouts,
                                               batch_size=self.batch_size)
                responses = [None] * len(prompts)
                parsed = [(None, LETTERS[j]) for j in probs.argmax(1)]
            else:
                responses = generate_answers(self.model, self.processor, prompts, images, layouts=layouts,
                                             batch_size=self.batch_size, max_new_tokens=self.cfg.max_new_tokens)
                parsed = [parse_response(r, option_descriptions(q)) for r, q in zip(responses, prompts, strict=True)]
                probs = None
                if self.letter_probabilities is not None:
                    probs = self.letter_probabilities(self.model, self.processor, prompts, images, responses,
                                                      layouts=layouts, batch_size=self.batch_size)
            per.append((responses, parsed, apply_temperature(probs, temp) if probs is not None else None))
        out = combine(per, ensemble=self.kind == "ensemble")
        if self.mode == "one_pass" and self.cfg.explain == "human":
            self._explain(out, prompts, images, layouts)
        return out

    def _explain(self, out: dict, prompts, images, layouts) -> None:
        """Rationales for the segments triage sends to a human (and for no other): generated by
        the student (for an ensemble, the first fold whose one-pass letter is the answer)."""
        from ..core.calibration import accepted
        from ..core.generation import generate_answers
        from ..core.scoring import option_descriptions, parse_response

        human = ~accepted(out["confidence"], self.threshold)
        by_student: dict[int, list[int]] = {}
        for i in map(int, human.nonzero()[0]):
            by_student.setdefault(out["picked"][i], []).append(i)
        for k, rows in by_student.items():
            if self.names[k] is not None:
                self.model.set_adapter(self.names[k])
            responses = generate_answers(self.model, self.processor, [prompts[i] for i in rows],
                                         [images[i] for i in rows], layouts=[layouts[i] for i in rows],
                                         batch_size=self.batch_size, max_new_tokens=self.cfg.max_new_tokens)
            for i, r in zip(rows, responses, strict=True):
                out["response"][i] = r
                out["analysis"][i] = parse_response(r, option_descriptions(prompts[i]))[0]


def letter_probabilities_available() -> bool:
    """Whether ``generation.letter_probabilities`` exists (else p_a..p_g and confidence stay null)."""
    from ..core import generation

    return hasattr(generation, "letter_probabilities")


def combine(per: list[tuple], ensemble: bool) -> dict:
    """Answer columns from each student's (responses, parsed, probs). One student: its parsed
    letter (as eval), confidence = its probability (0 when unparsed). An ensemble: the letter
    of the mean letter probabilities and that mean; analysis and response from the first fold
    that answered that letter (else fold 0); ``fold_letters`` each fold's parsed letter."""
    import numpy as np

    n = len(per[0][0])
    out: dict = {"fold_letters": [None] * n}
    have_probs = all(p is not None for _, _, p in per)
    if not ensemble:
        responses, parsed, probs = per[0]
        letters = [x for _, x in parsed]
        pick = [0] * n
    else:
        fold_letters = [[parsed[i][1] for _, parsed, _ in per] for i in range(n)]
        out["fold_letters"] = ["".join(x or "-" for x in row) for row in fold_letters]
        if have_probs:
            probs = np.mean([p for _, _, p in per], axis=0)
            letters = [LETTERS[int(j)] for j in probs.argmax(axis=1)]
        else:  # no letter probabilities: the folds' majority
            from ..core.scoring import majority_vote

            probs, letters = None, [majority_vote(row)[0] for row in fold_letters]
        pick = [next((k for k, x in enumerate(row) if x == le), 0) for row, le in zip(fold_letters, letters,
                                                                                     strict=True)]
    out["letter"] = letters
    out["picked"] = pick  # the student whose answer (and rationale) stands for each row
    out["analysis"] = [per[k][1][i][0] for i, k in enumerate(pick)]
    out["response"] = [per[k][0][i] for i, k in enumerate(pick)]
    for j, c in enumerate(P_COLUMNS):
        out[c] = [float(probs[i, j]) for i in range(n)] if have_probs else [None] * n
    out["confidence"] = ([float(probs[i, LETTERS.index(x)]) if x else 0.0 for i, x in enumerate(letters)]
                         if have_probs else [None] * n)
    return out


def _dry_answers(n: int) -> dict:
    return {c: [None] * n for c in ("letter", "analysis", "response", "confidence", "fold_letters", *P_COLUMNS)}


# ============================================================================ the recipe
def predict(config: PredictConfig | None = None, *, on_chunk: Callable[[int], None] | None = None,
            **overrides) -> Path:
    """Classify every segment of ``input`` with the student; return the output folder.

    ``on_chunk(index)`` is called after each chunk is on disk (the remote layer commits its
    volume there). Rerun with the same arguments to resume.
    """
    from rich.console import Console

    from ..core.data import atomic_path, atomic_write_json
    from ..evaluation.inputs import choose_prompts

    p = plan(config, **overrides)
    cfg, out, console = p.cfg, Path(p.cfg.output), Console(stderr=True)
    check_output(out, p.manifest, cfg.force)
    done = set() if cfg.force else done_chunks(out, p)
    todo = set(range(p.n_chunks)) - done
    # Loaded before anything is written: a model that will not load leaves nothing behind.
    student = Student(p) if todo and not cfg.dry_run else None
    if cfg.force:
        _start_over(out)
    (out / CHUNKS).mkdir(parents=True, exist_ok=True)
    _drop_stale_temps(out / CHUNKS)
    about = {"input": str(cfg.input), "images_dir": str(cfg.images_dir) if cfg.images_dir else None,
             "students": [str(d) for d in p.students], "created": _now()}
    if not (out / MANIFEST).is_file():
        atomic_write_json(out / MANIFEST, {**p.manifest, "about": about})
    eval_cfg = EvalConfig(adapter_path=p.students[0]) if p.kind != "export" else EvalConfig(model=p.students[0])
    src = p.source
    console.print(f"predict: {src.total} segments of {cfg.input} ({src.kind}) with {_describe(p)}; "
                  f"{p.n_chunks} chunks of {cfg.chunk_size}" + (f", {len(done)} done already" if done else "")
                  + (" [dry run: no model]" if cfg.dry_run else ""))
    t0, predicted = time.time(), 0
    first = min(todo) if todo else p.n_chunks
    with _progress(cfg.progress) as bar:
        task = bar.add_task("predict", total=src.total,
                            completed=sum(min(cfg.chunk_size, src.total - i * cfg.chunk_size) for i in done))
        src.row_offset = cfg.row_offset
        for chunk in (src.chunks(cfg.chunk_size, todo, first) if todo else ()):
            if chunk is None:
                continue
            t1 = time.time()
            chosen = choose_prompts(chunk.rows, p.settings[0], eval_cfg) if chunk.rows else []
            if cfg.dry_run or not chunk.rows:
                answers = _dry_answers(len(chunk.rows))
            else:
                answers = student([c.text for c in chosen], chunk.images, [c.layout for c in chosen])
            table = chunk_table(chunk, chosen, answers, p.kind == "ensemble", time.time() - t1, cfg.row_offset,
                                p.mode)
            import pyarrow.parquet as pq

            with atomic_path(chunk_path(out, chunk.index)) as tmp:
                pq.write_table(table, tmp)
            predicted += chunk.n_input
            bar.advance(task, chunk.n_input)
            if on_chunk is not None:
                on_chunk(chunk.index)
    seconds = time.time() - t0
    summary = write_outputs(out, [chunk_path(out, i) for i in range(p.n_chunks)], threshold=p.threshold,
                            triage=p.triage, csv_too=cfg.csv, extra_errors=src.bad_lines)
    summary.update(input=str(cfg.input), input_kind=src.kind, model=_describe(p), model_kind=p.kind, mode=p.mode,
                   explain=cfg.explain, calibration={"temperatures": p.temperatures, "source": p.calibration_note},
                   dry_run=cfg.dry_run, chunk_size=cfg.chunk_size, chunks=p.n_chunks,
                   letter_probabilities=not cfg.dry_run and letter_probabilities_available(),
                   triage_from=p.triage_note, seconds=round(seconds, 2),
                   segments_per_second=round(predicted / seconds, 3) if predicted and seconds else None,
                   generation=student.inference if student is not None else _earlier(out, "generation"))
    if cfg.dry_run:
        summary["letter_counts"] = {}
    atomic_write_json(out / SUMMARY, summary)
    report(summary, out, p.settings[0], console)
    return out


def _earlier(out: Path, key: str):
    """``key`` of the summary an earlier run left (a rerun that loads no model keeps it)."""
    try:
        return json.loads((out / SUMMARY).read_text()).get(key)
    except (OSError, ValueError):
        return None


def _describe(p: Plan) -> str:
    if p.kind == "ensemble":
        return f"the ensemble of {len(p.students)} fold students of {p.students[0].parent}"
    return str(p.students[0])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _drop_stale_temps(folder: Path) -> None:
    for tmp in folder.glob(".chunk-*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                tmp.unlink()
        except OSError:
            pass


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.2f} segments/s" if task.speed else "- segments/s")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Speed(),
                    TextColumn("ETA"), TimeRemainingColumn(), disable=not enabled)
