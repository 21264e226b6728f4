"""What runs inside Modal's containers: the four function bodies and their helpers.

Volumes are mounted at ``<root>/models``, ``<root>/datasets`` and ``<root>/runs``: ``/`` on Modal;
the tests point ``CONNECTODISTILL_VOLUMES_ROOT`` at a local folder and run the bodies in-process
with ``.local()``.

Failures come in two kinds. Deterministic ones (bad input, CUDA out of memory, a gated or
unauthorised Hub repo, a missing module, a program error) would repeat on every attempt: they
are *returned* as ``{"status": "failed", "reason", "error"}`` so Modal does not retry them.
Anything else (a lost node, a network error) is raised, and Modal retries it on a fresh container.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from ..core.config import EvalConfig, TrainConfig
from ..core.errors import UserError

ROOT_ENV = "CONNECTODISTILL_VOLUMES_ROOT"
MOUNTS = ("models", "datasets", "runs")
HF_HOME = "/models/hf"  # weights and hub datasets cached on the models volume: downloaded once
TRAIN_DIR, EVAL_DIR = "train", "eval"  # folders of the runs volume
CALLS_DIR = "calls"  # runs volume: calls/<kind>/<name>.json (the call) and .outcome.json (its end)
PREFETCH_DIR = "prefetched"  # models volume: one marker per completely downloaded model
CHECK_DIR = ".connectodistill-check"  # each volume: `remote check` writes and removes a file here
RUN_CONFIG, EVAL_SUMMARY = "training_config.json", "summary.json"  # written last: "finished"
CHECKPOINT_POLL_SECONDS = 30.0  # multi-GPU: how often the launcher looks for new checkpoints
# Weight formats a transformers student never loads: not downloaded.
HUB_IGNORE = ["*.gguf", "*.onnx", "*.h5", "*.msgpack", "*.ot", "*.tflite", "original/*", "onnx/*"]
IMAGE_LIBRARIES = ("torch", "torchvision", "transformers", "peft", "accelerate", "datasets",
                   "huggingface_hub", "bitsandbytes", "pyarrow", "pandas", "modal")
PROGRAM_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, NameError,
                  NotImplementedError, AssertionError, ZeroDivisionError)


# ============================================================================ the functions
def train_in_container(settings: dict, links: dict[str, str], run_name: str, gpus: int = 1,
                       runs_volume: str | None = None, models_volume: str | None = None,
                       call_token: str | None = None, gpu: str | None = None) -> dict:
    """Train into ``runs/train/<run_name>``; a folder with checkpoints is continued, not restarted.
    ``gpu``: what the container asked Modal for (checked before anything loads)."""
    if failure := missing_gpu("train", run_name, gpu):
        return _finish(TRAIN_DIR, run_name, call_token, runs_volume, failure)
    from ..training.recipe import train
    from ..training.runs import last_checkpoint

    run_dir = volumes_root() / "runs" / TRAIN_DIR / run_name
    commit = partial(commit_volume, runs_volume)
    try:
        _drop_incomplete_checkpoints(run_dir)
        resume = last_checkpoint(run_dir) is not None  # a retry, a preemption, or --resume
        cfg = TrainConfig(**{**settings, "output_dir": str(run_dir.parent), "run_dir": str(run_dir),
                             "resume": resume})
        with _inputs_linked(links):
            if gpus > 1:
                _train_multi_gpu(cfg, gpus, commit)
            else:
                train(cfg, callbacks=[commit_on_save(commit)])
    except Exception as e:
        if (failure := deterministic_failure(e)) is None:
            raise  # Modal retries it, on a fresh container
        traceback.print_exc()
        return _finish(TRAIN_DIR, run_name, call_token, runs_volume, failure)
    finally:
        commit()
        commit_volume(models_volume)  # weights downloaded on this attempt
    return _finish(TRAIN_DIR, run_name, call_token, runs_volume)


def evaluate_in_container(settings: dict, links: dict[str, str], runs_volume: str | None = None,
                          models_volume: str | None = None, call_token: str | None = None,
                          gpu: str | None = None) -> dict:
    """Evaluate into ``runs/eval/<name>`` (the name is fixed by the caller)."""
    name = settings.get("name") or "eval"
    if failure := missing_gpu("eval", name, gpu):
        return _finish(EVAL_DIR, name, call_token, runs_volume, failure)
    from ..evaluation.recipe import evaluate
    try:
        cfg = EvalConfig(**{**settings, "output_dir": str(volumes_root() / "runs" / EVAL_DIR)})
        with _inputs_linked(links):
            name = evaluate(cfg).name
    except Exception as e:
        if (failure := deterministic_failure(e)) is None:
            raise
        traceback.print_exc()
        return _finish(EVAL_DIR, name, call_token, runs_volume, failure)
    finally:
        commit_volume(runs_volume)
        commit_volume(models_volume)
    return _finish(EVAL_DIR, name, call_token, runs_volume)


PREDICT_DIR = "predict"  # runs volume: predict/<name>/shard-NNNN/ (a predict output folder each)


def predict_in_container(settings: dict, links: dict[str, str], name: str, shard: int,
                         runs_volume: str | None = None, models_volume: str | None = None,
                         call_token: str | None = None, gpu: str | None = None) -> dict:
    """Predict one shard into ``runs/predict/<name>/shard-NNNN``, committing after every chunk, so
    a retried or preempted call resumes from the chunks already there."""
    key = f"{name}/shard-{shard:04d}"
    if failure := missing_gpu("predict", key, gpu):
        return {**_finish(PREDICT_DIR, key, call_token, runs_volume, failure), "shard": shard}
    from ..core.config import PredictConfig
    from ..prediction.recipe import SUMMARY, predict

    out = volumes_root() / "runs" / PREDICT_DIR / key
    try:
        cfg = PredictConfig(**{**settings, "output": str(out), "progress": False})
        with _inputs_linked(links):
            predict(cfg, on_chunk=lambda i: commit_volume(runs_volume))
        summary = json.loads((out / SUMMARY).read_text())
    except Exception as e:
        if (failure := deterministic_failure(e)) is None:
            raise
        traceback.print_exc()
        return {**_finish(PREDICT_DIR, key, call_token, runs_volume, failure), "shard": shard}
    finally:
        commit_volume(runs_volume)
        commit_volume(models_volume)
    return {**_finish(PREDICT_DIR, key, call_token, runs_volume), "shard": shard,
            "predicted": summary["predicted"], "skipped": summary["skipped"]}


def prefetch_in_container(model: str, models_volume: str | None = None) -> dict:
    """Download a Hub model into the models volume (CPU, before any GPU starts) and commit it.

    A gated, private or missing repo comes back at once as a failure with one line; a model
    downloaded completely before is skipped.
    """
    marker = volumes_root() / "models" / PREFETCH_DIR / marker_name(model)
    if marker.is_file():
        return {"status": "finished", "model": model, "skipped": True}
    from huggingface_hub import snapshot_download

    start = time.time()
    try:
        path = Path(snapshot_download(model, cache_dir=hub_cache(), ignore_patterns=HUB_IGNORE))
    except Exception as e:
        if (failure := hub_failure(e) or deterministic_failure(e)) is None:
            raise  # network trouble: retried
        return {"status": "failed", "model": model, "reason": failure[0], "error": failure[1]}
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    _write_json(marker, {"model": model, "revision": path.name, "bytes": size,
                         "seconds": round(time.time() - start, 1), "at": _now()})
    commit_volume(models_volume)
    return {"status": "finished", "model": model, "revision": path.name, "bytes": size}


def check_in_container(step: str, token: str, volumes: dict[str, str], model: str | None = None,
                       expect_gpu: bool = False) -> dict:
    """`connectodistill remote check`, on the very image the runs use.

    ``step="write"``: the package imports; ``python -m connectodistill --help`` runs from a
    temporary folder with the environment the multi-GPU launch gives its children; a file is
    written to each volume and committed; the Hub grants access to ``model``; library versions.
    ``step="read"`` (a second call, so a fresh container): each file is read back and removed.
    """
    root, checks = volumes_root(), []

    def record(name: str, ok: bool, detail: str = "") -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    if step == "read":
        for mount, volume in volumes.items():
            path = root / mount / CHECK_DIR / f"{token}.txt"
            ok = path.is_file() and path.read_text() == token
            record(f"read back from {mount} in a second container", ok, volume if ok else "file missing")
            if path.is_file():
                path.unlink()
                commit_volume(volume)
        return {"step": step, "checks": checks}

    import connectodistill

    record("package imports", True, str(Path(connectodistill.__file__).parent))
    with tempfile.TemporaryDirectory() as work:
        cli = subprocess.run([sys.executable, "-m", "connectodistill", "--help"], cwd=work, env=child_env(),
                             capture_output=True, text=True, timeout=120)
    record("python -m connectodistill --help from a temporary folder", cli.returncode == 0 and "Usage" in cli.stdout,
           "" if cli.returncode == 0 else _last_line(cli.stderr))
    for mount, volume in volumes.items():
        try:
            _write_text(root / mount / CHECK_DIR / f"{token}.txt", token)
            commit_volume(volume)
            record(f"write and commit {mount}", True, volume)
        except Exception as e:  # noqa: BLE001 - reported, not raised
            record(f"write and commit {mount}", False, first_line(e))
    try:
        import torch

        cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        record("torch imports; CUDA", cuda is not None or not expect_gpu, cuda or "no GPU in this container")
    except Exception as e:  # noqa: BLE001
        record("torch imports; CUDA", False, first_line(e))
    if model:
        record(f"Hugging Face access to {model}", *_hub_access(model))
    return {"step": step, "checks": checks, "versions": image_versions(), "python": platform.python_version(),
            "hf_token": bool(os.environ.get("HF_TOKEN"))}


# ============================================================================ failures
def in_modal_container() -> bool:
    """Inside a Modal container (not ``.local()``, not this machine)."""
    import modal

    return not modal.is_local()


def missing_gpu(kind: str, name: str, gpu: str | None) -> tuple[str, str] | None:
    """("no gpu", one line) when this container asked for a GPU and has no working one, checked
    before anything loads: else the recipes fall back to the CPU in fp32 (8B parameters) for
    hours of billed GPU time. Returned, not raised: the outcome says so at once."""
    if not gpu or not in_modal_container():
        return None
    import torch

    if torch.cuda.is_available():
        try:
            torch.zeros(1, device="cuda")
            return None
        except Exception as e:  # noqa: BLE001 - a GPU that does not work is no GPU
            why = f"CUDA fails: {first_line(e)}"
    else:
        why = (f"torch {torch.__version__} sees no CUDA device, "
               f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}")
    return "no gpu", (f"the {kind} container of {name} asked Modal for {gpu} and has no working GPU ({why}); "
                      "nothing was loaded")


class DeterministicFailure(Exception):
    """A failure found in a child's log (multi-GPU): ``reason`` and one line."""

    def __init__(self, reason: str, line: str):
        super().__init__(line)
        self.reason = reason


def deterministic_failure(exc: BaseException) -> tuple[str, str] | None:
    """(reason, one line) for a failure that would repeat on every attempt; None otherwise."""
    for e in _chain(exc):
        if isinstance(e, DeterministicFailure):
            return e.reason, str(e)
        if isinstance(e, UserError):
            return "bad input", str(e)
        if type(e).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(e):
            return "out of memory", first_line(e)
        if failure := hub_failure(e):
            return failure
    if isinstance(exc, ImportError):
        return "missing module", first_line(exc)
    if isinstance(exc, PROGRAM_ERRORS):
        return "program error", f"{type(exc).__name__}: {first_line(exc)}"
    return None


def hub_failure(exc: BaseException) -> tuple[str, str] | None:
    """A gated, unauthorised or missing Hugging Face repo (retrying will not help)."""
    try:
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    for e in _chain(exc):
        line = first_line(e)
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(e, GatedRepoError) or "gated repo" in line.lower():
            return "gated", line
        if isinstance(e, RepositoryNotFoundError) or "is not a valid model identifier" in line:
            return "hub not found", line
        if (isinstance(e, HfHubHTTPError) and status in (401, 403)) or "401 Client Error" in line:
            return "hub auth", line
    return None


def failure_from_log(text: str, returncode: int) -> tuple[str, str] | None:
    """The deterministic failure a child process printed, if any (multi-GPU training)."""
    patterns = [("out of memory", r"^.*(?:CUDA out of memory|OutOfMemoryError).*$"),
                ("gated", r"^.*(?:GatedRepoError|gated repo).*$"),
                ("hub auth", r"^.*401 Client Error.*$"),
                ("hub not found", r"^.*(?:RepositoryNotFoundError|is not a valid model identifier).*$"),
                ("missing module", r"^.*No module named .*$"),
                ("bad input", r"^error: .*$")]  # the CLI's one-line UserError
    for reason, pattern in patterns:
        if found := re.findall(pattern, text, flags=re.M | re.I if reason == "gated" else re.M):
            line = found[-1].strip()
            return reason, line[len("error: "):] if reason == "bad input" else line
    if returncode == 2:  # the CLI's exit code for bad input
        return "bad input", "multi-GPU training refused its input (exit code 2): see the log"
    return None


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def first_line(e: BaseException | str) -> str:
    text = str(e).strip()
    return (text.splitlines() or [type(e).__name__])[0][:300]


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[-1][:300]


def _finish(kind: str, name: str, token: str | None, runs_volume: str | None,
            failure: tuple[str, str] | None = None) -> dict:
    """The call's result, also written to ``calls/<kind>/<name>.outcome.json`` on the runs volume
    (the status `connectodistill fetch` shows once Modal no longer holds the result)."""
    result = {"name": name, "status": "finished"}
    if failure is not None:
        result.update(status="failed", reason=failure[0], error=failure[1])
    _write_json(volumes_root() / "runs" / CALLS_DIR / kind / f"{name}.outcome.json",
                {**result, "token": token, "ended": _now()})
    commit_volume(runs_volume)
    return result


# ============================================================================ helpers
def volumes_root() -> Path:
    return Path(os.environ.get(ROOT_ENV, "/")).resolve()


def hub_cache() -> Path:
    return volumes_root() / HF_HOME.lstrip("/") / "hub"


def marker_name(model: str) -> str:
    return re.sub(r"[^\w.-]+", "--", model.strip("/")) + ".json"


def image_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for lib in IMAGE_LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = "missing"
    return out


def _hub_access(model: str) -> tuple[bool, str]:
    try:
        from huggingface_hub import auth_check

        auth_check(model)
        return True, "token present" if os.environ.get("HF_TOKEN") else "public (no HF_TOKEN)"
    except Exception as e:  # noqa: BLE001 - reported, not raised
        failure = hub_failure(e)
        return False, f"{failure[0]}: {failure[1]}" if failure else first_line(e)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    tmp.replace(path)


def _write_json(path: Path, data: dict) -> None:
    _write_text(path, json.dumps(data, indent=2))


def commit_volume(name: str | None) -> None:
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


# ============================================================================ several GPUs
def child_env() -> dict[str, str]:
    """The environment of the ``python -m connectodistill`` children: this package's folder first
    on PYTHONPATH, so they import it whatever their working folder. On Modal the source lies under
    /root (added, not installed), and the children start in a temporary folder."""
    root = str(Path(__file__).resolve().parents[2])
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, *rest])}


def _accelerate_command(config_file: Path, gpus: int) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus),
            "--num_machines", "1", "--dynamo_backend", "no",
            "-m", "connectodistill", "train", "--config", str(config_file)]


def _tee(stream, keep: bytearray, limit: int = 1 << 16) -> None:
    """Copy a child's stderr to ours (progress bars and all), keeping the last ``limit`` bytes."""
    out = getattr(sys.stderr, "buffer", None)
    while chunk := stream.read1(1 << 14):
        if out is not None:
            out.write(chunk)
            out.flush()
        else:
            sys.stderr.write(chunk.decode(errors="replace"))
        keep += chunk
        del keep[:-limit]


def _train_multi_gpu(cfg: TrainConfig, gpus: int, commit) -> None:
    """One process per GPU through accelerate; this process commits each new checkpoint."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg.model_dump(mode="json"), f)
    ckpts = Path(cfg.run_dir) / "checkpoints"

    def complete():
        return {p.parent.name for p in ckpts.glob("checkpoint-*/trainer_state.json")}

    seen, tail = complete(), bytearray()
    proc = subprocess.Popen(_accelerate_command(Path(f.name), gpus), env=child_env(), stderr=subprocess.PIPE)
    reader = threading.Thread(target=_tee, args=(proc.stderr, tail), daemon=True)
    reader.start()
    while True:
        done = proc.poll() is not None
        if (now := complete()) != seen:
            commit()
            seen = now
        if done:
            break
        time.sleep(CHECKPOINT_POLL_SECONDS)
    reader.join(timeout=10)
    if proc.returncode:
        if failure := failure_from_log(tail.decode(errors="replace"), proc.returncode):
            raise DeterministicFailure(*failure)
        raise RuntimeError(f"multi-GPU training failed (accelerate exit code {proc.returncode})")
