"""Many trainings at once: cross-validation folds and sweep points, one GPU container each.

The same ``train_in_container`` call as a single ``train --remote``, spawned once per run with
:func:`calls.spawn_all` (``--max-parallel`` caps how many run at once). Before anything starts
the command prints how many containers, which GPU and a GPU-hour estimate, and asks to go on
(``--yes`` skips the question). While they run, a live table shows each run's status, step
and val metric (read from its checkpoints on the runs volume); each finished run is downloaded
into its local folder as soon as it is done. One failed run loses nothing of the others, and
a rerun of the same command trains only what is missing (finished runs are skipped, runs
still on Modal are re-attached by their recorded call ids).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..core.config import RemoteConfig, TrainConfig
from ..core.errors import UserError
from . import boundary
from .app import declare, guard_budget, resources
from .calls import (
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    Fanout,
    keep_running_on_interrupt,
    modal_errors,
    spawn_all,
)
from .container import RUN_CONFIG, TRAIN_DIR
from .volumes import download, listdir, read_json, say, training_links

FANOUT_RECORD = "modal_fanout.json"  # in the local CV run / sweep folder
POLL_SECONDS = 30.0
# A rough guess of GPU seconds per training example of the 8B student at the default pixel
# budget: no GPU figure has been measured yet (bench/gpu.py); used only for the up-front estimate.
GUESS_SECONDS_PER_EXAMPLE = 1.5


@dataclass
class TrainJob:
    """One training run of a fan-out: its name on the runs volume, its config, its local folder."""

    name: str
    cfg: TrainConfig
    local_dir: Path
    examples: int  # training examples x epochs, for the estimate


def estimate(jobs: list[TrainJob], rc: RemoteConfig) -> str:
    """A one-paragraph cost statement: containers, GPU, a rough and an upper-bound GPU-hours."""
    res = resources(rc)
    gpus = res.train_gpus
    rough = sum(j.examples for j in jobs) * GUESS_SECONDS_PER_EXAMPLE * gpus / 3600
    bound = len(jobs) * gpus * res.train_timeout / 3600
    return (f"{len(jobs)} container(s) of {res.train_gpu}; rough estimate {rough:.1f} GPU-hours "
            f"(a guess of {GUESS_SECONDS_PER_EXAMPLE:g} GPU-s per example x epochs: no GPU figure is "
            f"measured yet), at most {bound:.0f} GPU-hours (every call running into its timeout)")


def _progress(runs, name: str) -> tuple[int | None, float | None]:
    """(global step, best val metric so far) of a run on the volume, from its newest checkpoint."""
    ckpts = [PurePosixPath(e.path).name for e in listdir(runs, f"{TRAIN_DIR}/{name}/checkpoints")]
    steps = sorted(int(c.split("-")[-1]) for c in ckpts if c.startswith("checkpoint-") and c.split("-")[-1].isdigit())
    if not steps:
        return None, None
    state = read_json(runs, f"{TRAIN_DIR}/{name}/checkpoints/checkpoint-{steps[-1]}/trainer_state.json") or {}
    return state.get("global_step"), state.get("best_metric")


def _table(fan: Fanout, jobs: list[TrainJob], runs, title: str):
    from rich.table import Table

    t = Table(title=title)
    for col in ("run", "status", "step", "val metric", "note"):
        t.add_column(col)
    for h, job in zip(fan.handles, jobs, strict=True):
        step, metric = _progress(runs, job.name) if h.status in (RUNNING, FINISHED) else (None, None)
        t.add_row(job.local_dir.name, h.status, "" if step is None else str(step),
                  "" if metric is None else f"{metric:.4f}", h.error or "")
    return t


def train_many(jobs: list[TrainJob], rc: RemoteConfig, record_dir: Path, *, max_parallel: int | None = None,
               confirm: Callable[[str], bool] | None = None, title: str = "remote runs") -> dict[str, str]:
    """Train ``jobs`` on Modal at once; return {local folder name: status}. See the module doc."""
    from rich.console import Console
    from rich.live import Live

    if not jobs:
        return {}
    say(estimate(jobs, rc))
    guard_budget([j.cfg for j in jobs], rc, resources(rc))
    if confirm is not None and not confirm("start them?"):
        raise UserError("not started (answer yes, or pass --yes)")
    remote = declare(rc, use_wandb=jobs[0].cfg.use_wandb)
    res = resources(rc)
    record_dir.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    with modal_errors(rc):
        runs = boundary.volume(rc.runs_volume)
        model = jobs[0].cfg.model
        links = training_links(jobs[0].cfg, rc, Path(model) if Path(model).exists() else None)
        kwargs = [dict(settings=j.cfg.model_dump(mode="json"), links=links, run_name=j.name, gpus=res.train_gpus,
                       runs_volume=rc.runs_volume, models_volume=rc.models_volume, gpu=res.train_gpu) for j in jobs]
        fan = None

        def started():
            n = sum(h.status == RUNNING for h in fan.handles) if fan is not None else 0
            return f"{n} run(s) keep running on Modal" if n else None

        follow = "rerun the same command to follow them and download the finished ones (`connectodistill fetch` lists them)"
        with keep_running_on_interrupt(started, follow), boundary.running(remote.app):
            fan = _resume_or_spawn(remote.train, kwargs, jobs, record_dir, max_parallel)
            _write_record(record_dir, fan, jobs)
            if rc.detach:
                say(f"detached: {len(jobs)} run(s) on Modal; rerun the same command to follow them and "
                    "download the finished ones")
                return {j.local_dir.name: h.status for j, h in zip(jobs, fan.handles, strict=True)}
            done: set[int] = set()
            with Live(_table(fan, jobs, runs, title), console=console, refresh_per_second=0.5) as live:
                while True:
                    fan.poll()
                    for h, job in zip(fan.handles, jobs, strict=True):
                        if h.status == FINISHED and h.index not in done:
                            download(runs, f"{TRAIN_DIR}/{job.name}", job.local_dir)  # as soon as it is done
                            done.add(h.index)
                    _write_record(record_dir, fan, jobs)
                    live.update(_table(fan, jobs, runs, title))
                    if all(h.done for h in fan.handles):
                        break
                    time.sleep(POLL_SECONDS)
    return {j.local_dir.name: h.status for j, h in zip(jobs, fan.handles, strict=True)}


def _resume_or_spawn(fn, kwargs: list[dict], jobs: list[TrainJob], record_dir: Path,
                     max_parallel: int | None) -> Fanout:
    """Re-attach runs a previous command left running (same names); spawn the rest."""
    old = {}
    path = record_dir / FANOUT_RECORD
    if path.is_file():
        old = {r["name"]: r for r in json.loads(path.read_text()).get("runs", [])}
    records = []
    for kw, job in zip(kwargs, jobs, strict=True):
        r = old.get(job.name)
        status = RUNNING if r and r.get("status") == RUNNING and r.get("call_id") else QUEUED
        records.append({"kwargs": kw, "status": status, "call_id": r.get("call_id") if status == RUNNING else None})
    if any(r["status"] == RUNNING for r in records):
        return Fanout.resume(fn, records, max_parallel).start()
    return spawn_all(fn, kwargs, max_parallel)


def _write_record(record_dir: Path, fan: Fanout, jobs: list[TrainJob]) -> None:
    from ..core.data import atomic_write_json

    atomic_write_json(record_dir / FANOUT_RECORD, {"runs": [
        {"name": j.name, "local": j.local_dir.name, "status": h.status, "call_id": h.call_id, "error": h.error}
        for j, h in zip(jobs, fan.handles, strict=True)]})


# ----------------------------------------------------------------------------- folds and sweeps
def _examples(cfg: TrainConfig) -> int:
    """Rough training examples x epochs of one run (for the estimate): train rows of its split."""
    from ..core.data import read_merged

    report = read_merged(cfg.augmented_dataset, columns=[])[1]
    splits = (report.get("fold_splits") or [report.get("splits")])[cfg.fold or 0] if cfg.fold is not None \
        else report.get("splits") or {}
    n = len(splits.get("train", []))
    return int((cfg.num_samples or n) * cfg.epochs)


def _already_done(job: TrainJob, runs) -> bool:
    """Finished here already, or finished on the volume (then downloaded now)."""
    if (job.local_dir / RUN_CONFIG).is_file():
        return True
    if read_json(runs, f"{TRAIN_DIR}/{job.name}/{RUN_CONFIG}") is not None:
        download(runs, f"{TRAIN_DIR}/{job.name}", job.local_dir)
        return True
    return False


def train_cv_remote(cfg: TrainConfig, rc: RemoteConfig, *, max_parallel: int | None = None,
                    confirm: Callable[[str], bool] | None = None) -> Path:
    """``train --folds --remote``: every missing fold on its own GPU container, at once."""
    from ..training.cross_validation import fold_config, fold_dir, plan_cv, write_cv_config

    cv_dir, todo, config = plan_cv(cfg)
    write_cv_config(cv_dir, config)
    jobs = [TrainJob(f"{cv_dir.name}__fold-{i}", fold_config(cfg, cv_dir, i).model_copy(update={"resume": False}),
                     fold_dir(cv_dir, i), 0) for i in todo]
    with modal_errors(rc):
        runs = boundary.volume(rc.runs_volume)
        jobs = [j for j in jobs if not _already_done(j, runs)]
    for j in jobs:
        j.examples = _examples(j.cfg)
    statuses = train_many(jobs, rc, cv_dir, max_parallel=max_parallel, confirm=confirm,
                          title=f"cross-validation {cv_dir.name}")
    for i in todo:
        name = fold_dir(cv_dir, i).name
        status = "done" if (fold_dir(cv_dir, i) / RUN_CONFIG).is_file() else statuses.get(name, "missing")
        config["fold_runs"][str(i)] = {"status": status, "run": name}
    write_cv_config(cv_dir, config)
    failed = [k for k, v in statuses.items() if v == FAILED]
    if failed and not rc.detach:
        raise UserError(f"{len(failed)} fold(s) failed on Modal ({', '.join(failed)}); the others are in "
                        f"{cv_dir}: rerun the same command to train only what is missing")
    return cv_dir


def train_sweep_remote(cfg: TrainConfig, rc: RemoteConfig, *, max_parallel: int | None = None,
                       confirm: Callable[[str], bool] | None = None) -> Path:
    """``train --sweep ... --remote``: every grid point (x every fold) at once; chosen on val."""
    from ..training.cross_validation import cv_folds, fold_config, fold_dir, write_cv_config
    from ..training.sweeps import choose, grid, parse_sweep, sweep_dir_for

    if cfg.select_by == "last":
        raise UserError("a sweep chooses on validation: pass --select-by val_loss or --select-by val_accuracy")
    out = sweep_dir_for(cfg)
    points = grid(cfg, parse_sweep(cfg.sweep))
    jobs = []
    for k, point in enumerate(points):
        pcfg = cfg.model_copy(update={**point, "sweep": None, "run_dir": out / f"point-{k}", "resume": False})
        if cfg.folds:
            from ..core.data import sha256_file

            point_dir = out / f"point-{k}"
            n = len(cv_folds(Path(cfg.augmented_dataset)))
            write_cv_config(point_dir, {"folds": n, "merged_file": str(cfg.augmented_dataset),
                                        "merged_sha256": sha256_file(cfg.augmented_dataset),
                                        "settings": pcfg.model_dump(mode="json"), "fold_runs": {}})
            jobs += [TrainJob(f"{out.name}__point-{k}__fold-{i}",
                              fold_config(pcfg, point_dir, i).model_copy(update={"resume": False}),
                              fold_dir(point_dir, i), 0) for i in range(n)]
        else:
            jobs.append(TrainJob(f"{out.name}__point-{k}", pcfg.model_copy(update={"run_dir": None}),
                                 out / f"point-{k}", 0))
    with modal_errors(rc):
        runs = boundary.volume(rc.runs_volume)
        jobs = [j for j in jobs if not _already_done(j, runs)]
    for j in jobs:
        j.examples = _examples(j.cfg)
    statuses = train_many(jobs, rc, out, max_parallel=max_parallel, confirm=confirm, title=f"sweep {out.name}")
    if rc.detach:
        return out
    failed = [k for k, v in statuses.items() if v == FAILED]
    if failed:
        raise UserError(f"{len(failed)} sweep run(s) failed on Modal ({', '.join(failed)}); rerun the same "
                        "command to train only what is missing")
    choose(cfg, out, points)
    return out
