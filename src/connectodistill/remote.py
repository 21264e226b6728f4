"""`--remote`: the same `train()` / `evaluate()` calls, run on a Modal GPU.

What this module adds to the local commands, and nothing else:

- one Modal app (:func:`declare`) whose two GPU functions call ``training.train`` and
  ``evaluation.evaluate`` with the config the command line built;
- local inputs (merged parquet, a local benchmark, a local model or adapter folder) uploaded
  once, content-addressed, to a volume; inside the container each one is reachable at the very
  path the command line gave, so the call, and what it records, are those of a local run;
- run folders on a runs volume, committed at every checkpoint, so a preempted or retried call
  continues from the last checkpoint instead of starting over;
- the results downloaded into the local output folder, now or later (:func:`fetch`).

``modal`` is imported inside functions only: ``connectodistill --help`` and every local command
work without it, and declaring the app touches no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from .config import EvalConfig, RemoteConfig, TrainConfig
from .errors import UserError

# Where the three volumes are mounted: <root>/models, <root>/datasets, <root>/runs. "/" on Modal;
# tests point it at a temporary folder to run the container functions in-process.
ROOT_ENV = "CONNECTODISTILL_VOLUMES_ROOT"
MOUNTS = ("models", "datasets", "runs")
HF_HOME = "/models/hf"  # weights and hub datasets cached on the models volume: downloaded once
TRAIN_DIR, EVAL_DIR = "train", "eval"  # folders of the runs volume
RUN_CONFIG, EVAL_SUMMARY = "training_config.json", "summary.json"  # written last: "finished"
PYTHON_VERSION = "3.11"

# Modal's GPU names (https://modal.com/docs/guide/gpu) -> most GPUs one container can have.
GPUS = {
    "T4": 8, "L4": 8, "A10": 4, "A10G": 4, "L40S": 8, "A100": 8, "A100-40GB": 8, "A100-80GB": 8,
    "RTX-PRO-6000": 8, "H100": 8, "H100!": 8, "H200": 8, "B200": 8, "B200+": 8,
}
MAX_TIMEOUT = 24 * 3600  # Modal's limit per attempt
TRAIN_RETRIES = 3  # failed attempts retried; preemptions are restarted by Modal anyway
CHECKPOINT_POLL_SECONDS = 30.0  # multi-GPU: how often the launcher looks for new checkpoints


# ============================================================================ offline checks
def parse_gpu(gpu: str) -> tuple[str, int]:
    """``"h100:2"`` -> ``("H100", 2)``; an unknown type or a bad count is a UserError."""
    m = re.fullmatch(r"\s*([A-Za-z0-9!+-]+?)\s*(?::\s*(\d+))?\s*", gpu or "")
    kind = m.group(1).upper() if m else None
    if kind not in GPUS:
        raise UserError(
            f"unknown GPU {gpu!r}: use one of {', '.join(GPUS)}, optionally with :N (e.g. H100:2)"
        )
    count = int(m.group(2) or 1)
    if not 1 <= count <= GPUS[kind]:
        raise UserError(f"GPU count in {gpu!r} must be 1 to {GPUS[kind]} for {kind}")
    return kind, count


def gpu_string(gpu: str) -> str:
    kind, count = parse_gpu(gpu)
    return kind if count == 1 else f"{kind}:{count}"


def _check_remote(remote_cfg: RemoteConfig) -> int:
    """Validate the Modal settings offline; return the GPU count."""
    _, count = parse_gpu(remote_cfg.gpu)
    if remote_cfg.timeout > MAX_TIMEOUT:
        raise UserError(f"--timeout {remote_cfg.timeout} exceeds Modal's limit of {MAX_TIMEOUT} s (24 h)")
    return count


def runtime_requirements() -> list[str]:
    """The project's runtime dependencies plus its ``gpu`` extra, with pyproject's version ranges.

    Read from ``pyproject.toml`` in a source checkout (installed metadata can be stale after an
    edit), else from the installed package's metadata. ``modal`` itself is left out: Modal adds
    its own client to every container.
    """
    reqs: list[str] | None = None
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file() and sys.version_info >= (3, 11):
        import tomllib

        project = tomllib.loads(pyproject.read_text()).get("project", {})
        if project.get("name") == "connectodistill":
            reqs = [*project["dependencies"], *project.get("optional-dependencies", {}).get("gpu", [])]
    if reqs is None:
        from importlib.metadata import requires

        from packaging.requirements import Requirement

        reqs = []
        for line in requires("connectodistill") or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": "gpu"}):
                req.marker = None
                reqs.append(str(req))
    return [r for r in reqs if re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() != "modal"]


def _local_input(value: str | os.PathLike | None, what: str) -> Path | None:
    """A local file/folder to upload, or None for a Hugging Face id (the same rule the loaders
    use); a local-looking path that does not exist is a UserError."""
    if value is None:
        return None
    from . import data, modeling

    text = str(value)
    looks_local = data._looks_local if what == "benchmark" else modeling._looks_local
    if Path(text).exists():
        return Path(text)
    if looks_local(text):
        raise UserError(f"{what} not found: {text} (neither a local path nor a Hugging Face id)")
    return None


# ============================================================================ the Modal app
@dataclass
class Remote:
    """The declared app and its two GPU functions (nothing is sent until ``app.run()``)."""

    app: Any
    train: Any
    evaluate: Any


def declare(remote_cfg: RemoteConfig, *, use_wandb: bool = False, environ=None) -> Remote:
    """Declare the app for these settings: image, volumes, secrets, GPU, timeout. No network."""
    import modal

    _check_remote(remote_cfg)
    environ = os.environ if environ is None else environ
    image = (
        modal.Image.debian_slim(python_version=PYTHON_VERSION)
        .uv_pip_install(*runtime_requirements())
        .env({"HF_HOME": HF_HOME, "TOKENIZERS_PARALLELISM": "false"})
        .add_local_python_source("connectodistill")
    )
    volumes = {
        f"/{mount}": modal.Volume.from_name(getattr(remote_cfg, f"{mount}_volume"), create_if_missing=True)
        for mount in MOUNTS
    }
    secrets = []
    for key, name, wanted in (("HF_TOKEN", remote_cfg.hf_secret, True),
                              ("WANDB_API_KEY", remote_cfg.wandb_secret, use_wandb)):
        if wanted and environ.get(key):  # the local value wins; it travels as a Modal secret only
            secrets.append(modal.Secret.from_dict({key: environ[key]}))
        elif wanted and name:
            secrets.append(modal.Secret.from_name(name))
    app = modal.App(remote_cfg.app_name, image=image)
    common = dict(gpu=gpu_string(remote_cfg.gpu), timeout=remote_cfg.timeout, volumes=volumes,
                  secrets=secrets, include_source=False)  # the source comes with the image
    retries = modal.Retries(max_retries=TRAIN_RETRIES, initial_delay=30.0)
    return Remote(
        app=app,
        train=app.function(**common, retries=retries)(train_in_container),
        evaluate=app.function(**common, retries=1)(evaluate_in_container),
    )


# ============================================================================ in the container
def train_in_container(settings: dict, links: dict[str, str], run_name: str, gpus: int = 1,
                       runs_volume: str | None = None, models_volume: str | None = None) -> dict:
    """Train into ``runs/train/<run_name>``; a folder with checkpoints is continued, not restarted."""
    from .training import last_checkpoint, train

    run_dir = volumes_root() / "runs" / TRAIN_DIR / run_name
    _drop_incomplete_checkpoints(run_dir)
    resume = last_checkpoint(run_dir) is not None  # a retry, a preemption, or --resume
    commit = partial(_commit_volume, runs_volume)
    cfg = TrainConfig(**{**settings, "output_dir": str(run_dir.parent), "run_dir": str(run_dir),
                         "resume": resume})
    try:
        with _inputs_linked(links):
            if gpus > 1:
                _train_multi_gpu(cfg, gpus, commit)
            else:
                train(cfg, callbacks=[commit_on_save(commit)])
    except UserError as e:  # bad input: report it, do not let Modal retry it
        return {"user_error": str(e)}
    finally:
        commit()
        _commit_volume(models_volume)  # weights downloaded on this attempt
    return {"name": run_name}


def evaluate_in_container(settings: dict, links: dict[str, str], runs_volume: str | None = None,
                          models_volume: str | None = None) -> dict:
    """Evaluate into ``runs/eval/<name>``."""
    from .evaluation import evaluate

    cfg = EvalConfig(**{**settings, "output_dir": str(volumes_root() / "runs" / EVAL_DIR)})
    try:
        with _inputs_linked(links):
            out = evaluate(cfg)
    except UserError as e:
        return {"user_error": str(e)}
    finally:
        _commit_volume(runs_volume)
        _commit_volume(models_volume)
    return {"name": out.name}


def volumes_root() -> Path:
    return Path(os.environ.get(ROOT_ENV, "/")).resolve()


@contextmanager
def _inputs_linked(links: dict[str, str]):
    """Run in a fresh working folder where each local path of the command line resolves to its
    uploaded copy, so train()/evaluate() get, and record, the paths a local run would.

    ``links`` maps the path as given (``merged.parquet``, ``/home/me/bench.parquet``) to its
    place under the volumes root. An absolute path that exists already is left alone.
    """
    root, cwd = volumes_root(), os.getcwd()
    with tempfile.TemporaryDirectory(prefix="connectodistill-") as work:
        os.chdir(work)
        try:
            for original, key in links.items():
                path = Path(original)
                if path.exists():
                    continue
                if path.is_symlink():  # dangling, from an earlier attempt
                    path.unlink()
                path.parent.mkdir(parents=True, exist_ok=True)
                path.symlink_to(root / key)
            yield
        finally:
            os.chdir(cwd)


def _drop_incomplete_checkpoints(run_dir: Path) -> None:
    # The Trainer writes trainer_state.json last; a checkpoint cut off by a preemption may still
    # have reached the volume through Modal's background commits, and must not be resumed from.
    for ckpt in (run_dir / "checkpoints").glob("checkpoint-*"):
        if ckpt.is_dir() and not (ckpt / "trainer_state.json").is_file():
            shutil.rmtree(ckpt)


def _commit_volume(name: str | None) -> None:
    """Persist a mounted volume's changes now (a no-op outside a Modal container)."""
    if not name:
        return
    import modal

    if not modal.is_local():
        modal.Volume.from_name(name).commit()


def commit_on_save(commit):
    """A TrainerCallback that calls ``commit()`` once each checkpoint is on disk."""
    from transformers import TrainerCallback

    class CommitOnSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                commit()

    return CommitOnSave()


def _accelerate_command(config_file: Path, gpus: int) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus),
            "--num_machines", "1", "--dynamo_backend", "no",
            "-m", "connectodistill", "train", "--config", str(config_file)]


def _train_multi_gpu(cfg: TrainConfig, gpus: int, commit) -> None:
    """One process per GPU through accelerate; this process commits each new checkpoint."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg.model_dump(mode="json"), f)
    ckpts = Path(cfg.run_dir) / "checkpoints"

    def complete():
        return {p.parent.name for p in ckpts.glob("checkpoint-*/trainer_state.json")}

    seen = complete()
    proc = subprocess.Popen(_accelerate_command(Path(f.name), gpus))
    while True:
        done = proc.poll() is not None
        if (now := complete()) != seen:
            commit()
            seen = now
        if done:
            break
        time.sleep(CHECKPOINT_POLL_SECONDS)
    if proc.returncode == 2:  # our CLI's exit code for bad input: not worth a retry
        raise UserError("multi-GPU training refused its input: see the `error:` line in the log above")
    if proc.returncode:
        raise RuntimeError(f"multi-GPU training failed (accelerate exit code {proc.returncode})")


# ============================================================================ dispatch
def _volume(name: str):
    """A named Modal volume (the network boundary: tests replace this)."""
    import modal

    return modal.Volume.from_name(name, create_if_missing=True)


@contextmanager
def _running(app, detach: bool):
    """Run the app with build output and logs streamed to this terminal."""
    import modal

    with modal.enable_output(), app.run(detach=detach):
        yield


def _call(fn, detach: bool, **kwargs):
    return fn.spawn(**kwargs) if detach else fn.remote(**kwargs)


@contextmanager
def _modal_errors(remote_cfg: RemoteConfig):
    """Modal's set-up problems (no token, a missing secret) as one-line UserErrors."""
    from modal.exception import AuthError, NotFoundError

    try:
        yield
    except AuthError as e:
        raise UserError(f"Modal refused the credentials ({_first_line(e)}): run `modal setup`") from e
    except NotFoundError as e:
        raise UserError(
            f"Modal: {_first_line(e)}; create missing secrets with `modal secret create "
            f"{remote_cfg.hf_secret} HF_TOKEN=...` (or `{remote_cfg.wandb_secret} WANDB_API_KEY=...`), "
            "or export HF_TOKEN / WANDB_API_KEY here"
        ) from e


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_remote(train_cfg: TrainConfig, remote_cfg: RemoteConfig) -> Path | None:
    """``train --remote``: train on Modal, then download the run folder (None when detached)."""
    gpus = _check_remote(remote_cfg)
    merged = Path(train_cfg.augmented_dataset)
    if not merged.is_file():
        raise UserError(f"merged dataset not found: {merged} (run `connectodistill merge` first)")
    model_dir = _local_input(train_cfg.model, "model")
    remote = declare(remote_cfg, use_wandb=train_cfg.use_wandb)

    with _modal_errors(remote_cfg):
        runs = _volume(remote_cfg.runs_volume)
        run_name = _remote_run_name(train_cfg, runs, merged)
        links = {str(merged): _upload(_volume(remote_cfg.datasets_volume), "datasets", merged)}
        if model_dir is not None:
            links[train_cfg.model] = _upload(_volume(remote_cfg.models_volume), "models", model_dir)
        kwargs = dict(settings=train_cfg.model_dump(mode="json"), links=links, run_name=run_name,
                      gpus=gpus, runs_volume=remote_cfg.runs_volume,
                      models_volume=remote_cfg.models_volume)
        local_dir = Path(train_cfg.run_dir) if train_cfg.run_dir else Path(train_cfg.output_dir) / run_name
        _say(f"training {run_name} on Modal ({gpu_string(remote_cfg.gpu)})")
        with _running(remote.app, remote_cfg.detach):
            result = _call(remote.train, remote_cfg.detach, **kwargs)
        if remote_cfg.detach:
            _say_detached(run_name, local_dir.parent)
            return None
        _raise_user_error(result)
        return _download(runs, f"{TRAIN_DIR}/{run_name}", local_dir)


def _remote_run_name(cfg: TrainConfig, runs, merged: Path) -> str:
    """The run folder name: given (--run-dir), the newest to --resume, or a new one."""
    if cfg.run_dir is None and not cfg.resume:
        import pyarrow.parquet as pq

        from .training import run_folder_name

        teachers = []
        if "teacher_model" in pq.read_schema(merged).names:
            teachers = pq.read_table(merged, columns=["teacher_model"]).column(0).to_pylist()
        return run_folder_name(cfg, sorted({m for m in teachers if isinstance(m, str)}), 0)
    existing = {r["name"]: r for r in list_runs(runs) if r["kind"] == TRAIN_DIR}
    if cfg.run_dir is None:  # --resume: the newest run of that name
        match = [r for r in existing.values() if cfg.run_name is None or f"_{cfg.run_name}_" in r["name"]]
        if not match:
            raise UserError("--resume: no matching run on the runs volume; pass --run-dir NAME")
        return max(match, key=lambda r: r["modified"])["name"]
    name = Path(cfg.run_dir).name
    if cfg.resume and name not in existing:
        raise UserError(f"--resume: no run {name} on the runs volume (see `connectodistill fetch`)")
    if not cfg.resume and name in existing:
        raise UserError(f"run {name} already exists on the runs volume: pass --resume to continue it")
    return name


def evaluate_remote(eval_cfg: EvalConfig, remote_cfg: RemoteConfig) -> Path | None:
    """``eval --remote``: evaluate on Modal, then download the output folder (None when detached).

    ``adapter_path`` may be a local run folder, or the name of a run that lives only on the
    runs volume.
    """
    from .task import DEFAULT_DATASET

    _check_remote(remote_cfg)
    if eval_cfg.adapter_path is None and eval_cfg.base_model is None:
        raise UserError("nothing to evaluate: pass --adapter-path RUN_DIR or --base-model ID_OR_PATH")
    merged = Path(eval_cfg.merged) if eval_cfg.merged is not None else None
    if merged is not None and not merged.is_file():
        raise UserError(f"merged file not found: {merged}")
    adapter = Path(eval_cfg.adapter_path) if eval_cfg.adapter_path is not None else None
    run = None
    if adapter is not None and adapter.exists():
        if not (adapter / RUN_CONFIG).is_file():
            raise UserError(f"{adapter}: no {RUN_CONFIG}; pass a run folder written by `connectodistill train`")
        run = json.loads((adapter / RUN_CONFIG).read_text())
    remote = declare(remote_cfg)

    with _modal_errors(remote_cfg):
        runs = _volume(remote_cfg.runs_volume)
        links: dict[str, str] = {}
        uploads: list[tuple[str, Path | None, str]] = []  # (path as given, local path, volume)
        if adapter is not None and run is None:  # not here: look for it on the runs volume
            key = f"{TRAIN_DIR}/{adapter.name}"
            run = _read_json(runs, f"{key}/{RUN_CONFIG}")
            if run is None:
                raise UserError(f"adapter {adapter} not found here nor on the runs volume "
                                f"{remote_cfg.runs_volume} (`connectodistill fetch` lists what is there)")
            links[str(adapter)] = f"runs/{key}"
        elif adapter is not None:
            uploads.append((str(adapter), adapter, "datasets"))
        run = run or {}
        report = _merge_report(merged) if merged is not None else {}
        # The benchmark and base model evaluate() will load: local ones are uploaded too.
        dataset = eval_cfg.dataset_name or run.get("dataset_name") or report.get("dataset_name") or DEFAULT_DATASET
        base_model = eval_cfg.base_model or run.get("base_model")
        uploads += [(str(dataset), _local_input(dataset, "benchmark"), "datasets"),
                    (str(base_model), _local_input(base_model, "base model"), "models")]
        if merged is not None:
            uploads.append((str(merged), merged, "datasets"))
        for original, local, mount in uploads:
            if local is not None:
                links[original] = _upload(_volume(getattr(remote_cfg, f"{mount}_volume")), mount, local)

        name = eval_cfg.name or _default_eval_name(eval_cfg, base_model, run, report)
        kwargs = dict(settings={**eval_cfg.model_dump(mode="json"), "name": name}, links=links,
                      runs_volume=remote_cfg.runs_volume, models_volume=remote_cfg.models_volume)
        _say(f"evaluating {name} on Modal ({gpu_string(remote_cfg.gpu)})")
        with _running(remote.app, remote_cfg.detach):
            result = _call(remote.evaluate, remote_cfg.detach, **kwargs)
        if remote_cfg.detach:
            _say_detached(name, Path(eval_cfg.output_dir))
            return None
        _raise_user_error(result)
        return _download(runs, f"{EVAL_DIR}/{result['name']}", Path(eval_cfg.output_dir) / result["name"])


def _default_eval_name(cfg: EvalConfig, base_model: str | None, run: dict, report: dict) -> str:
    """The name evaluate() would give, fixed here so a detached call can be fetched by it."""
    from .evaluation import default_name

    split = cfg.split or ("test" if (run.get("splits") or report.get("splits")) else "all")
    return default_name(cfg, {"base_model": base_model or ""}, split)


def _merge_report(merged: Path) -> dict:
    """The merge report stored in the parquet's schema metadata (dataset name, split lists)."""
    import pyarrow.parquet as pq

    from .data import METADATA_KEY

    raw = (pq.read_schema(merged).metadata or {}).get(METADATA_KEY.encode())
    return json.loads(raw) if raw else {}


def _raise_user_error(result: dict) -> None:
    if "user_error" in result:
        raise UserError(result["user_error"])


def _say_detached(name: str, output_dir: Path) -> None:
    _say(f"started {name} on Modal and detached; follow it on https://modal.com/apps, then\n"
         f"  connectodistill fetch {name} --output-dir {output_dir}")


# ============================================================================ volumes
def _listdir(volume, path: str, recursive: bool = False) -> list:
    from modal.exception import NotFoundError

    try:
        return list(volume.listdir(path, recursive=recursive))
    except (FileNotFoundError, NotFoundError):
        return []


def _files(path: Path) -> list[tuple[str, Path]]:
    """(relative posix path, file) of a file or folder; a run folder's checkpoints/ stays out."""
    if path.is_file():
        return [(path.name, path)]
    return sorted(
        (p.relative_to(path).as_posix(), p) for p in path.rglob("*")
        if p.is_file() and p.relative_to(path).parts[0] != "checkpoints"
    )


def _sha256(path: Path) -> str:
    from .data import sha256_file as file_hash

    if path.is_file():
        return file_hash(path)
    return hashlib.sha256("".join(f"{rel}\0{file_hash(p)}\n" for rel, p in _files(path)).encode()).hexdigest()


def _upload(volume, mount: str, local: Path) -> str:
    """Upload a file or folder to ``/<sha256>/<name>`` unless it is there; return ``mount/...``."""
    local = Path(local)
    key = f"{_sha256(local)}/{local.name}"
    if _listdir(volume, key):
        _say(f"{local} already on Modal")
    else:
        with volume.batch_upload() as batch:
            for rel, path in _files(local):
                batch.put_file(path, f"/{key}" if local.is_file() else f"/{key}/{rel}")
        _say(f"uploaded {local}")
    return f"{mount}/{key}"


def _read_json(volume, path: str) -> dict | None:
    if not _listdir(volume, path):
        return None
    return json.loads(b"".join(volume.read_file(path)))


def _download(volume, remote_dir: str, local_dir: Path) -> Path:
    """Copy a run or eval folder from the runs volume (without checkpoints/) to ``local_dir``."""
    from modal.types import FileEntryType

    n = 0
    for entry in _listdir(volume, remote_dir, recursive=True):
        rel = PurePosixPath(entry.path.lstrip("/")).relative_to(remote_dir)
        if entry.type != FileEntryType.FILE or rel.parts[0] == "checkpoints":
            continue
        dest = Path(local_dir, *rel.parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        with open(tmp, "wb") as f:
            for chunk in volume.read_file(entry.path):
                f.write(chunk)
        tmp.replace(dest)
        n += 1
    _say(f"downloaded {n} files to {local_dir}")
    return Path(local_dir)


def list_runs(volume) -> list[dict]:
    """Runs and eval outputs on the runs volume: name, kind, status, last modified (oldest first)."""
    from modal.types import FileEntryType

    rows = []
    for kind, done in ((TRAIN_DIR, RUN_CONFIG), (EVAL_DIR, EVAL_SUMMARY)):
        for entry in _listdir(volume, kind):
            if entry.type != FileEntryType.DIRECTORY:
                continue
            name = PurePosixPath(entry.path).name
            inside = _listdir(volume, f"{kind}/{name}")
            names = {PurePosixPath(e.path).name for e in inside}
            # "running" cannot tell a live run from a stopped one; either continues with --resume.
            status = "finished" if done in names else ("running" if "checkpoints" in names or kind == EVAL_DIR
                                                       else "starting")
            mtime = max([entry.mtime, *(e.mtime for e in inside)])
            rows.append({"name": name, "kind": kind, "status": status,
                         "modified": datetime.fromtimestamp(mtime).isoformat(" ", "seconds")})
    return sorted(rows, key=lambda r: r["modified"])


def fetch(name: str | None, output_dir: Path, remote_cfg: RemoteConfig) -> Path | list[dict]:
    """Download run or eval folder ``name`` from the runs volume; without a name, list them all."""
    with _modal_errors(remote_cfg):
        runs = _volume(remote_cfg.runs_volume)
        if name is None:
            rows = list_runs(runs)
            _print_runs(rows, remote_cfg.runs_volume)
            return rows
        name = PurePosixPath(name).name
        for kind in (TRAIN_DIR, EVAL_DIR):
            if _listdir(runs, f"{kind}/{name}"):
                return _download(runs, f"{kind}/{name}", Path(output_dir) / name)
    raise UserError(f"nothing named {name} on the runs volume {remote_cfg.runs_volume}; "
                    "`connectodistill fetch` lists what is there")


def _print_runs(rows: list[dict], volume_name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Modal volume {volume_name}", caption="running = checkpoints, no final adapter yet "
                  "(or stopped: continue with `train --remote --resume --run-dir NAME`)")
    for col in ("name", "kind", "status", "modified"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["kind"], r["status"], r["modified"])
    Console().print(table)


__all__ = ["declare", "evaluate_remote", "fetch", "list_runs", "parse_gpu", "runtime_requirements",
           "train_remote"]
