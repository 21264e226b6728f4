"""This machine's side of ``--remote``: upload, spawn (always detached), wait or return; plus
``remote check``. Listing, following, cancelling and downloading later: ``jobs.py``.

Each train or eval call is recorded twice: ``calls/<kind>/<name>.json`` on the runs volume and
``modal_call.json`` in the local run or result folder (call id, token, GPU, timeout, where it was
started). The container writes ``calls/<kind>/<name>.outcome.json`` when it ends, so a status is
known even after Modal has dropped the call's result.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from ..core.config import EvalConfig, RemoteConfig, TrainConfig
from ..core.errors import UserError
from ..core.paths import locate
from . import boundary
from .app import declare, duration, guard_budget, read_lock, resources
from .calls import (
    FAILED,
    FINISHED,
    RUNNING,
    CallState,
    keep_running_on_interrupt,
    modal_errors,
    outcome_of,
    spawn_all,
    wait_call,
)
from .container import (
    CALLS_DIR,
    EVAL_DIR,
    MOUNTS,
    PREFETCH_DIR,
    RUN_CONFIG,
    TRAIN_DIR,
    first_line,
    marker_name,
)
from .jobs import STUB, WAIT_SLICE_SECONDS, failure_line, run_status
from .volumes import (
    download,
    list_folders,
    listdir,
    read_json,
    say,
    stamp,
    training_links,
    upload,
    write_json,
)

POLL_SECONDS = 30.0  # between status polls of several calls at once


@dataclass
class Job:
    """One spawned train or eval call, as recorded on the runs volume and in the local stub."""

    kind: str
    name: str
    local_dir: str
    gpu: str
    timeout: int
    call_id: str | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def key(self) -> str:
        return f"{CALLS_DIR}/{self.kind}/{self.name}.json"


# ============================================================================ train / eval
def train_remote(train_cfg: TrainConfig, remote_cfg: RemoteConfig) -> Path | None:
    """``train --remote``: train on Modal, then download the run folder (None when detached).

    Cross-validation folds and sweep points fan out, one container each (``fanout.py``).
    """
    if train_cfg.sweep or train_cfg.folds:
        from .fanout import train_cv_remote, train_sweep_remote

        fan = train_sweep_remote if train_cfg.sweep else train_cv_remote
        return fan(train_cfg, remote_cfg, max_parallel=remote_cfg.max_parallel,
                   confirm=None if remote_cfg.yes else _ask)
    res = resources(remote_cfg)
    merged = Path(train_cfg.augmented_dataset)
    if not merged.is_file():
        raise UserError(f"merged dataset not found: {merged} (run `connectodistill merge` first)")
    model_dir = _local_input(train_cfg.model, "model")
    guard_budget([train_cfg], remote_cfg, res)
    remote = declare(remote_cfg, use_wandb=train_cfg.use_wandb)

    with modal_errors(remote_cfg):
        runs = boundary.volume(remote_cfg.runs_volume)
        run_name = _remote_run_name(train_cfg, runs, merged)
        links = training_links(train_cfg, remote_cfg, model_dir)
        kwargs = dict(settings=train_cfg.model_dump(mode="json"), links=links, run_name=run_name,
                      gpus=res.train_gpus, runs_volume=remote_cfg.runs_volume,
                      models_volume=remote_cfg.models_volume, gpu=res.train_gpu)
        local_dir = Path(train_cfg.run_dir) if train_cfg.run_dir else Path(train_cfg.output_dir) / run_name
        job = Job(TRAIN_DIR, run_name, str(local_dir), res.train_gpu, res.train_timeout)
        return _submit(remote, remote.train, kwargs, job, remote_cfg, runs,
                       hub_model=None if model_dir is not None else train_cfg.model)


def evaluate_remote(eval_cfg: EvalConfig, remote_cfg: RemoteConfig) -> Path | None:
    """``eval --remote``: evaluate on Modal, then download the output folder (None when detached).

    ``adapter_path`` may be a local run folder, or the name of a run that lives only on the runs
    volume (a local folder holding only the ``modal_call.json`` stub counts as such). A local
    cross-validation run fans out: each fold's adapter on its own test fold in its own container
    at once, pooled here exactly as a local eval pools them.
    """
    from ..evaluation.pooled import evaluate_cv
    from ..training.run_folders import chosen_run, is_cv_run, is_sweep

    if eval_cfg.adapter_path is None and eval_cfg.base_model is None:
        raise UserError("nothing to evaluate: pass --adapter-path RUN_DIR or --base-model ID_OR_PATH")
    if is_sweep(eval_cfg.adapter_path):  # its chosen point, as a local eval does
        eval_cfg = eval_cfg.model_copy(update={"adapter_path": chosen_run(eval_cfg.adapter_path)})
    if is_cv_run(eval_cfg.adapter_path):
        if remote_cfg.detach:
            raise UserError("eval of a cross-validation run waits for its folds to pool them: drop --detach")
        return evaluate_cv(eval_cfg, evaluate_folds=lambda cfgs: evaluate_many_remote(cfgs, remote_cfg))
    resources(remote_cfg)
    remote = declare(remote_cfg)
    with modal_errors(remote_cfg):
        runs = boundary.volume(remote_cfg.runs_volume)
        kwargs, job, hub_model = _eval_call(eval_cfg, remote_cfg, runs)
        return _submit(remote, remote.evaluate, kwargs, job, remote_cfg, runs, hub_model=hub_model)


def evaluate_many_remote(cfgs: list[EvalConfig], rc: RemoteConfig) -> list[Path]:
    """Several evals at once, one container each (the folds of a CV run); wait for all, download
    each finished one into its local folder. One failure loses none of the others: every
    finished result is downloaded before the one-line error naming the failed ones."""
    if not cfgs:
        return []
    remote = declare(rc)
    with modal_errors(rc):
        runs = boundary.volume(rc.runs_volume)
        calls = [_eval_call(c, rc, runs) for c in cfgs]
        say(f"evaluating {len(calls)} adapters on Modal at once ({calls[0][1].gpu}, one container each)")
        fan = None

        def started():
            running = [job.name for h, (_, job, _) in zip(fan.handles, calls, strict=True)
                       if h.status == RUNNING] if fan is not None else []
            return f"{len(running)} eval(s) keep running on Modal ({', '.join(running)})" if running else None

        follow = "`connectodistill fetch NAME --follow` downloads each; then rerun the same command to pool them"
        with keep_running_on_interrupt(started, follow), boundary.running(remote.app):
            for hub in {h for _, _, h in calls if h}:
                _prefetch(remote, rc, hub)
            fan = spawn_all(remote.evaluate, [{**kw, "call_token": job.token} for kw, job, _ in calls],
                            max_parallel=rc.max_parallel)
            for h, (_, job, _) in zip(fan.handles, calls, strict=True):
                job.call_id = h.call_id
                if h.call_id is not None:
                    _record(runs, job)

            def changed(h):
                say(f"{calls[h.index][1].name}: {h.status}" + (f" ({h.error})" if h.error else ""))

            fan.wait(interval=POLL_SECONDS, on_change=changed)
        out, failed = [], []
        for h, (_, job, _) in zip(fan.handles, calls, strict=True):
            if h.status == FINISHED:
                out.append(download(runs, f"{job.kind}/{job.name}", Path(job.local_dir)))
            else:
                failed.append(failure_line(job.name, job.kind, CallState(h.status, h.result, h.reason, h.error), rc))
        if failed:
            raise UserError(f"{len(failed)} of {len(calls)} evals failed ({'; '.join(failed)}); the others are "
                            "downloaded: rerun the same command")
        return out


def _eval_call(eval_cfg: EvalConfig, remote_cfg: RemoteConfig, runs) -> tuple[dict, Job, str | None]:
    """Upload what one eval reads from this machine; return (call kwargs, its Job, a Hub model
    whose weights to prefetch or None). The name on the runs volume is unique per output folder."""
    from ..core.task import DEFAULT_DATASET

    res = resources(remote_cfg)
    merged = Path(eval_cfg.merged) if eval_cfg.merged is not None else None
    if merged is not None and not merged.is_file():
        raise UserError(f"merged file not found: {merged}")
    adapter = Path(eval_cfg.adapter_path) if eval_cfg.adapter_path is not None else None
    run = None
    if adapter is not None and adapter.exists() and not _only_a_stub(adapter):
        if not (adapter / RUN_CONFIG).is_file():
            raise UserError(f"{adapter}: no {RUN_CONFIG}; pass a run folder written by `connectodistill train`")
        run = json.loads((adapter / RUN_CONFIG).read_text())
    links: dict[str, str] = {}
    uploads: list[tuple[str, Path | None, str]] = []  # (path as given, local path, volume)
    if adapter is not None and run is None:  # not here: look for it on the runs volume
        key = f"{TRAIN_DIR}/{adapter.name}"
        run = read_json(runs, f"{key}/{RUN_CONFIG}")
        if run is None:
            raise UserError(f"adapter {adapter} not found here nor on the runs volume "
                            f"{remote_cfg.runs_volume}, finished (`connectodistill fetch` lists what is there)")
        links[str(adapter)] = f"runs/{key}"
    elif adapter is not None:
        uploads.append((str(adapter), adapter, "datasets"))
    run = run or {}
    report = _merge_report(merged) if merged is not None else {}
    # The benchmark and base model evaluate() will load: local ones are uploaded too.
    dataset = eval_cfg.dataset_name or run.get("dataset_name") or report.get("dataset_name") or DEFAULT_DATASET
    base_model = eval_cfg.base_model or run.get("base_model")
    # A recorded input is uploaded from where it is found here (core/paths.py: the run may have
    # moved), and linked under the recorded value, which the container's evaluate() looks up.
    found = {"base_model": locate(run, "base_model", adapter) if adapter and not eval_cfg.base_model else base_model,
             "dataset_name": dataset if eval_cfg.dataset_name or not run.get("dataset_name")
             else locate(run, "dataset_name", adapter)}
    if merged is not None and not eval_cfg.dataset_name and not run.get("dataset_name"):
        found["dataset_name"] = locate(report, "dataset_name", merged.parent) or dataset
    base_local = _local_input(found["base_model"], "base model")
    uploads += [(str(dataset), _local_input(found["dataset_name"], "benchmark"), "datasets"),
                (str(base_model), base_local, "models")]
    if merged is not None:
        uploads.append((str(merged), merged, "datasets"))
    for original, local, mount in uploads:
        if local is not None:
            links[original] = upload(boundary.volume(getattr(remote_cfg, f"{mount}_volume")), mount, local)

    local_name = eval_cfg.name or _default_eval_name(eval_cfg, base_model, run, report)
    local_dir = Path(eval_cfg.output_dir) / local_name
    # A fold's result folder (…/<cv result>/folds/fold-0) is named after its CV result on the volume.
    name = local_name if local_dir.parent.name != "folds" else f"{local_dir.parent.parent.name}_{local_name}"
    if run_status(runs, EVAL_DIR, name, None)["status"] == RUNNING:
        raise UserError(f"an eval named {name} is still running on Modal: wait for it "
                        f"(`connectodistill fetch {name} --follow`) or pass --name")
    kwargs = dict(settings={**eval_cfg.model_dump(mode="json"), "name": name}, links=links,
                  runs_volume=remote_cfg.runs_volume, models_volume=remote_cfg.models_volume, gpu=res.eval_gpu)
    job = Job(EVAL_DIR, name, str(local_dir), res.eval_gpu, res.eval_timeout)
    return kwargs, job, base_model if base_model and base_local is None else None


def _ask(question: str) -> bool:
    """Ask on the terminal; without one, refuse (a fan-out bills several GPUs at once)."""
    if not sys.stdin.isatty():
        raise UserError("a remote fan-out starts several GPU containers: pass --yes to start it without a question")
    from rich.prompt import Confirm

    return Confirm.ask(question, default=False)


def _submit(remote, fn, kwargs: dict, job: Job, rc: RemoteConfig, runs, hub_model: str | None) -> Path | None:
    """Weights first (CPU), then spawn in a detached app; wait unless --detach; download."""
    verb = "training" if job.kind == TRAIN_DIR else "evaluating"
    say(f"{verb} {job.name} on Modal ({job.gpu}, at most {duration(job.timeout)} per attempt)")
    started = lambda: f"{job.name} (call {job.call_id}) keeps running on Modal" if job.call_id else None  # noqa: E731
    follow = f"`connectodistill fetch {job.name} --follow` follows it, `--cancel` stops it"
    with keep_running_on_interrupt(started, follow), boundary.running(remote.app):
        if hub_model:
            _prefetch(remote, rc, hub_model)
        (handle,) = spawn_all(fn, [{**kwargs, "call_token": job.token}]).handles
        if handle.exception is not None:
            raise handle.exception
        job.call_id = handle.call_id
        _record(runs, job)
        if rc.detach:
            _say_started(job, "detached")
            return None
        say(f"call {job.call_id}: closing this terminal leaves it running "
            f"(`connectodistill fetch {job.name} --follow` reconnects)")
        state = wait_call(handle.call, WAIT_SLICE_SECONDS)
    return _collect(runs, job, state, rc)


def _collect(runs, job: Job, state: CallState, rc: RemoteConfig) -> Path:
    if state.status != FINISHED:
        raise UserError(failure_line(job.name, job.kind, state, rc))
    return download(runs, f"{job.kind}/{job.name}", Path(job.local_dir))


def _prefetch(remote, rc: RemoteConfig, model: str) -> None:
    """The student's weights into the models volume on a CPU container, before any GPU starts;
    a gated or unauthorised repo stops here with one line. Skipped once they are there."""
    if listdir(boundary.volume(rc.models_volume), f"{PREFETCH_DIR}/{marker_name(model)}"):
        say(f"{model}: weights already on the models volume")
        return
    say(f"{model}: downloading the weights into the models volume {rc.models_volume} (CPU, once)")
    from modal.exception import Error as ModalError

    try:
        result = boundary.call(remote.prefetch, model=model, models_volume=rc.models_volume)
    except ModalError:
        raise
    except Exception as e:  # the function's own exception, after its retries
        raise UserError(f"downloading {model} failed: {first_line(e)}") from e
    state = outcome_of(result)
    if state.status == FAILED:
        raise UserError(failure_line(model, "weights", state, rc))
    say(f"{model}: weights on the models volume")


def _record(runs, job: Job) -> None:
    """The call id on the runs volume and in the local stub (so a closed laptop loses nothing)."""
    record = asdict(job)
    record["local_dir"] = str(Path(job.local_dir).resolve())
    local = Path(job.local_dir)
    local.mkdir(parents=True, exist_ok=True)
    (local / STUB).write_text(json.dumps(record, indent=2))
    write_json(runs, job.key, record)


def _say_started(job: Job, how: str) -> None:
    say(f"{how}: {job.name} runs on Modal (call {job.call_id}), also with this machine off.\n"
        f"  connectodistill fetch                        # status of every run; downloads finished ones\n"
        f"  connectodistill fetch {job.name} --follow   # stream its logs, then download\n"
        f"  connectodistill fetch {job.name} --cancel   # stop it")


def _only_a_stub(folder: Path) -> bool:
    return folder.is_dir() and (folder / STUB).is_file() and not (folder / RUN_CONFIG).is_file()


# ============================================================================ names and inputs
def _local_input(value: str | os.PathLike | None, what: str) -> Path | None:
    """A local file/folder to upload, or None for a Hugging Face id (the same rule the loaders
    use); a local-looking path that does not exist is a UserError."""
    if value is None:
        return None
    from ..core import data, modeling

    text = str(value)
    looks_local = data._looks_local if what == "benchmark" else modeling._looks_local
    if Path(text).exists():
        return Path(text)
    if looks_local(text):
        raise UserError(f"{what} not found: {text} (neither a local path nor a Hugging Face id)")
    return None


def _remote_run_name(cfg: TrainConfig, runs, merged: Path) -> str:
    """The run folder name: given (--run-dir), the newest to --resume, or a new one."""
    if cfg.run_dir is None and not cfg.resume:
        import pyarrow.parquet as pq

        from ..training.runs import run_folder_name

        teachers = []
        if "teacher_model" in pq.read_schema(merged).names:
            teachers = pq.read_table(merged, columns=["teacher_model"]).column(0).to_pylist()
        return run_folder_name(cfg, sorted({m for m in teachers if isinstance(m, str)}), 0)
    # Runs with a folder, or only a call record (say, cancelled before their first checkpoint).
    existing = {PurePosixPath(e.path).name[: -len(".json")]: {"modified": stamp(e.mtime)}
                for e in listdir(runs, f"{CALLS_DIR}/{TRAIN_DIR}") if e.path.endswith(".json")
                and not e.path.endswith(".outcome.json")}
    existing.update({r["name"]: r for r in list_folders(runs) if r["kind"] == TRAIN_DIR})
    if cfg.run_dir is None:  # --resume: the newest run of that name
        match = [n for n in existing if cfg.run_name is None or f"_{cfg.run_name}_" in n]
        if not match:
            raise UserError("--resume: no matching run on the runs volume; pass --run-dir NAME")
        name = max(match, key=lambda n: existing[n]["modified"])
    else:
        name = Path(cfg.run_dir).name
        if cfg.resume and name not in existing:
            raise UserError(f"--resume: no run {name} on the runs volume (see `connectodistill fetch`)")
        if not cfg.resume and name in existing:
            raise UserError(f"run {name} already exists on the runs volume: pass --resume to continue it")
    folder = next((r for r in list_folders(runs) if r["kind"] == TRAIN_DIR and r["name"] == name), None)
    if cfg.resume and run_status(runs, TRAIN_DIR, name, folder)["status"] == RUNNING:
        raise UserError(f"{name} is still running on Modal: wait for it (`connectodistill fetch {name} --follow`) "
                        f"or stop it (`connectodistill fetch {name} --cancel`) before resuming")
    return name


def _default_eval_name(cfg: EvalConfig, base_model: str | None, run: dict, report: dict) -> str:
    """The name evaluate() would give, fixed here so a detached call can be fetched by it."""
    from ..evaluation.inputs import default_name

    split = cfg.split or ("test" if (run.get("splits") or report.get("splits")) else "all")
    return default_name(cfg, {"base_model": base_model or ""}, split)


def _merge_report(merged: Path) -> dict:
    """The merge report stored in the parquet's schema metadata (dataset name, split lists)."""
    import pyarrow.parquet as pq

    from ..core.data import METADATA_KEY

    raw = (pq.read_schema(merged).metadata or {}).get(METADATA_KEY.encode())
    return json.loads(raw) if raw else {}


# ============================================================================ remote check
def remote_check(remote_cfg: RemoteConfig, *, gpu: str | None = None, model: str | None = None) -> dict:
    """``connectodistill remote check``: two short calls on the very image the runs use.

    The first imports the package, runs ``python -m connectodistill --help`` from a temporary
    folder (as the multi-GPU launch does), writes and commits a file to each volume, checks Hub
    access to ``model`` and reports the library versions; the second (a fresh container) reads
    the files back. Raises a UserError naming the checks that failed.
    """
    remote = declare(remote_cfg, check_gpu=gpu)
    volumes = {mount: getattr(remote_cfg, f"{mount}_volume") for mount in MOUNTS}
    token = uuid.uuid4().hex
    say(f"checking Modal with app {remote_cfg.app_name} on {gpu or 'CPU'} (builds the image the first time)")
    with modal_errors(remote_cfg), boundary.running(remote.app, detach=False):
        first = boundary.call(remote.check, step="write", token=token, volumes=volumes, model=model,
                              expect_gpu=gpu is not None)
        second = boundary.call(remote.check, step="read", token=token, volumes=volumes)
    checks = [*first["checks"], *second["checks"]]
    locked = read_lock().pins
    drift = [f"{lib} {v} (lock: {locked[lib.replace('_', '-')]})" for lib, v in first["versions"].items()
             if lib.replace("_", "-") in locked and locked[lib.replace("_", "-")] != v]
    checks.append({"check": "image versions match the lock", "ok": not drift, "detail": "; ".join(drift)})
    report = {"checks": checks, "versions": first["versions"], "python": first["python"],
              "hf_token": first["hf_token"]}
    _print_check(report)
    if failed := [c["check"] for c in checks if not c["ok"]]:
        raise UserError(f"remote check failed: {'; '.join(failed)}")
    return report


def _print_check(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="connectodistill remote check")
    for col in ("check", "ok", "detail"):
        table.add_column(col, overflow="fold")
    for c in report["checks"]:
        table.add_row(c["check"], "yes" if c["ok"] else "NO", c["detail"])
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    Console().print(table)
    Console().print(f"image: Python {report['python']}; {versions}; HF_TOKEN "
                    f"{'set' if report['hf_token'] else 'not set'}")
