"""The Modal app: GPU strings, cost guards, the pinned image, and its four functions.

Declaring touches no network: nothing is sent until ``app.run()`` (in :mod:`.boundary`).
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import RemoteConfig, TrainConfig
from ..core.errors import UserError
from . import container

PYTHON_VERSION = "3.11"
# modal.types.FileEntryType, FunctionCall.logs and App.function(single_use_containers=...) all
# exist from modal 1.6.0 on (Image.uv_pip_install from 1.1.0): pyproject requires modal>=1.6.
MODAL_FLOOR = "1.6"

# Modal's GPU names (https://modal.com/docs/guide/gpu) -> most GPUs one container can have.
GPUS = {
    "T4": 8, "L4": 8, "A10": 4, "A10G": 4, "L40S": 8, "A100": 8, "A100-40GB": 8, "A100-80GB": 8,
    "RTX-PRO-6000": 8, "H100": 8, "H100!": 8, "H200": 8, "B200": 8, "B200+": 8,
}
MAX_TIMEOUT = 24 * 3600  # Modal's limit per attempt
# Cost guards: seconds one attempt may run, unless --timeout says otherwise.
TRAIN_TIMEOUT, EVAL_TIMEOUT = 4 * 3600, 3600
PREFETCH_TIMEOUT, CHECK_TIMEOUT = 3600, 600
# Failed attempts retried, each on a fresh container (single_use_containers). Deterministic
# failures (bad input, out of memory, Hub access, program errors) come back as results and are
# never retried; preemptions are restarted by Modal without counting as retries.
TRAIN_RETRIES, EVAL_RETRIES, PREFETCH_RETRIES = 2, 1, 2
RETRY_DELAY = 30.0
# Per GPU, what each GPU function reserves beside it (Modal's default is 0.125 core and 128 MiB:
# the views would then be decoded on a fraction of a core while the GPU waits). Six cores: the
# training loop, up to four data loader workers (training.trainers.MAX_WORKERS) and the rest;
# 32 GiB: the process, its workers, a chunk of decoded views. Billed beside the GPU (about 8% of
# an H100's price), and a request, not a limit.
CPU_PER_GPU, MEMORY_PER_GPU_MIB = 6.0, 32 * 1024

# The image's exact versions (constraints resolved for PLATFORM by uv; see lock.py).
LOCK_FILE = Path(__file__).with_name("modal-image.lock")
PLATFORM = "x86_64-manylinux_2_28"
IMAGE_ENV = {
    "HF_HOME": container.HF_HOME,  # weights and hub datasets cached on the models volume
    "HF_XET_HIGH_PERFORMANCE": "1",  # the Hub's high-throughput transfer mode
    "TOKENIZERS_PARALLELISM": "false",
}


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


@dataclass(frozen=True)
class Resources:
    """What each function asks Modal for, resolved from RemoteConfig and the defaults."""

    train_gpu: str
    train_gpus: int
    train_timeout: int
    eval_gpu: str
    eval_timeout: int

    @property
    def train_host(self) -> tuple[float, int]:
        """(cores, MiB) the training container reserves: per GPU."""
        return CPU_PER_GPU * self.train_gpus, MEMORY_PER_GPU_MIB * self.train_gpus

    @property
    def eval_host(self) -> tuple[float, int]:
        """(cores, MiB) an eval or predict container reserves: per GPU (one GPU unless --gpu says more)."""
        count = parse_gpu(self.eval_gpu)[1]
        return CPU_PER_GPU * count, MEMORY_PER_GPU_MIB * count


def resources(rc: RemoteConfig) -> Resources:
    """Validate the Modal settings offline. Eval takes one GPU of the training type (it runs as
    one process) unless ``eval_gpu`` (``eval --gpu``) says otherwise."""
    kind, count = parse_gpu(rc.gpu)
    eval_gpu = gpu_string(rc.eval_gpu) if rc.eval_gpu else kind
    res = Resources(gpu_string(rc.gpu), count, rc.timeout or TRAIN_TIMEOUT, eval_gpu,
                    rc.eval_timeout or EVAL_TIMEOUT)
    for seconds in (res.train_timeout, res.eval_timeout):
        if seconds > MAX_TIMEOUT:
            raise UserError(f"--timeout {seconds} exceeds Modal's limit of {MAX_TIMEOUT} s (24 h)")
    return res


def duration(seconds: float) -> str:
    """``4 h``, ``10 min``."""
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min"


def guard_budget(cfgs: list[TrainConfig], rc: RemoteConfig, res: Resources) -> None:
    """Before a dpo/grpo run is spawned: say how long it will take (steps x completion budget,
    ``training.budget``), and refuse one whose estimate exceeds the timeout of one attempt
    unless ``--timeout`` is raised or ``--yes`` given. Folds and sweep points: the longest."""
    from ..training.budget import estimate_run
    from ..training.trainers import save_steps

    estimates = [(e, c) for c in cfgs if c.method in ("dpo", "grpo") and (e := estimate_run(c, res.train_gpus))]
    if not estimates:
        return
    est, cfg = max(estimates, key=lambda x: x[0].seconds)
    print(f"estimate: {est.line()}; timeout {duration(res.train_timeout)} per attempt", file=sys.stderr, flush=True)
    if est.seconds <= res.train_timeout or rc.yes or cfg.resume:  # a resumed run is partly done
        return
    every = save_steps(cfg)
    need = min(MAX_TIMEOUT, 3600 * math.ceil(1.25 * est.seconds / 3600))
    raise UserError(
        f"{est.method}: the estimated {est.seconds / 3600:.1f} h exceed the {duration(res.train_timeout)} timeout of "
        f"one attempt: raise --timeout (e.g. --timeout {need}), shorten the run (--epochs, --num-samples, "
        "--num-generations, --max-completion-length), or pass --yes to start it anyway"
        + (f" (a checkpoint every {every} steps: a retried attempt resumes from it)" if every else ""))


# ============================================================================ the image
def runtime_requirements() -> list[str]:
    """The project's runtime dependencies plus its ``gpu`` extra, with pyproject's version ranges.

    Read from ``pyproject.toml`` in a source checkout (installed metadata can be stale after an
    edit), else from the installed package's metadata. ``modal`` itself is left out: Modal adds
    its own client to every container.
    """
    reqs: list[str] | None = None
    pyproject = Path(__file__).resolve().parents[3] / "pyproject.toml"
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
    return [r for r in reqs if _name(r) != "modal"]


def _name(requirement: str) -> str:
    from packaging.utils import canonicalize_name

    return canonicalize_name(re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0])


@dataclass(frozen=True)
class Lock:
    pins: dict[str, str]  # canonical name -> exact version
    uv_version: str | None  # the uv that resolved it; the image installs with the same one


def read_lock(path: Path | None = None) -> Lock:
    """The image lock: ``name==version`` lines, and a ``# uv X.Y.Z`` header line."""
    path = LOCK_FILE if path is None else path
    if not Path(path).is_file():
        raise UserError(f"image lock not found: {path} (use a source checkout: pip install -e .)")
    pins, uv_version = {}, None
    for raw in Path(path).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if m := re.match(r"#\s*uv\s+(\d[\w.]*)\s*$", raw.strip()):
            uv_version = m.group(1)
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if not m:
            raise UserError(f"{path}: not an exact pin: {line!r}")
        pins[_name(m.group(1))] = m.group(2)
    return Lock(pins, uv_version)


def lock_problems(requirements: list[str], lock: Lock) -> list[str]:
    """Where the declared requirements and the lock disagree (empty: they agree)."""
    from packaging.requirements import Requirement

    problems = []
    for line in requirements:
        req = Requirement(line)
        version = lock.pins.get(_name(req.name))
        if version is None:
            problems.append(f"{req.name} is not in the lock")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}: locked {version} is outside {req.specifier}")
    if lock.uv_version is None:
        problems.append("no '# uv VERSION' line")
    return problems


def image_packages() -> list[str]:
    """Every pin of the lock, checked against the declared requirements (a stale lock is refused)."""
    lock = read_lock()
    if problems := lock_problems(runtime_requirements(), lock):
        raise UserError(f"the Modal image lock {Path(LOCK_FILE).name} is stale ({'; '.join(problems)}): "
                        "refresh it with `python -m connectodistill.remote.lock`")
    return [f"{name}=={version}" for name, version in sorted(lock.pins.items())]


def build_image(modal):
    """Debian slim + the locked packages (pinned uv) + this package's source under /root.

    The source is added at container start (editing it rebuilds nothing); children started from
    another folder find it through the PYTHONPATH that :func:`container.child_env` sets.
    """
    return (
        modal.Image.debian_slim(python_version=PYTHON_VERSION)
        .uv_pip_install(*image_packages(), uv_version=read_lock().uv_version)
        .env(IMAGE_ENV)
        .add_local_python_source("connectodistill")
    )


# ============================================================================ the app
@dataclass
class Remote:
    """The declared app: two GPU functions and two CPU ones (nothing is sent until ``app.run()``)."""

    app: Any
    train: Any
    evaluate: Any
    prefetch: Any  # CPU: the student's weights into the models volume, before any GPU starts
    check: Any  # CPU (or --gpu): `connectodistill remote check`
    predict: Any = None  # GPU: one shard of `predict --remote --shards N` (eval's GPU and timeout)


def _require_modal_floor(modal) -> None:
    from packaging.version import Version

    if Version(modal.__version__) < Version(MODAL_FLOOR):
        raise UserError(f"modal {modal.__version__} is too old for --remote: pip install 'modal>={MODAL_FLOOR}'")


def declare(remote_cfg: RemoteConfig, *, use_wandb: bool = False, environ=None,
            check_gpu: str | None = None) -> Remote:
    """Declare the app for these settings: image, volumes, secrets, GPUs, timeouts. No network."""
    import modal

    _require_modal_floor(modal)
    res = resources(remote_cfg)
    environ = os.environ if environ is None else environ
    volumes = {
        f"/{mount}": modal.Volume.from_name(getattr(remote_cfg, f"{mount}_volume"), create_if_missing=True)
        for mount in container.MOUNTS
    }
    hf, wandb = (_secret(modal, key, name, environ) for key, name in
                 (("HF_TOKEN", remote_cfg.hf_secret), ("WANDB_API_KEY", remote_cfg.wandb_secret)))
    secrets = [s for s in (hf, wandb if use_wandb else None) if s is not None]
    app = modal.App(remote_cfg.app_name, image=build_image(modal))
    common = dict(volumes=volumes, secrets=secrets, include_source=False)  # the source comes with the image

    def retries(n: int, delay: float = RETRY_DELAY):
        return modal.Retries(max_retries=n, initial_delay=delay)

    (train_cpu, train_mib), (eval_cpu, eval_mib) = res.train_host, res.eval_host
    return Remote(
        app=app,
        train=app.function(gpu=res.train_gpu, cpu=train_cpu, memory=train_mib, timeout=res.train_timeout,
                           retries=retries(TRAIN_RETRIES), single_use_containers=True,
                           **common)(container.train_in_container),
        evaluate=app.function(gpu=res.eval_gpu, cpu=eval_cpu, memory=eval_mib, timeout=res.eval_timeout,
                              retries=retries(EVAL_RETRIES), single_use_containers=True,
                              **common)(container.evaluate_in_container),
        predict=app.function(gpu=res.eval_gpu, cpu=eval_cpu, memory=eval_mib, timeout=res.eval_timeout,
                             retries=retries(EVAL_RETRIES), single_use_containers=True,
                             **common)(container.predict_in_container),
        prefetch=app.function(cpu=4.0, memory=8192, timeout=PREFETCH_TIMEOUT, retries=retries(PREFETCH_RETRIES, 10.0),
                              volumes={"/models": volumes["/models"]}, secrets=[hf] if hf else [],
                              include_source=False)(container.prefetch_in_container),
        check=app.function(gpu=gpu_string(check_gpu) if check_gpu else None, cpu=1.0, timeout=CHECK_TIMEOUT,
                           single_use_containers=True, **common)(container.check_in_container),
    )


def _secret(modal, key: str, name: str | None, environ):
    """The local value wins (it travels as a Modal secret only); else the named secret; else none."""
    if environ.get(key):
        return modal.Secret.from_dict({key: environ[key]})
    return modal.Secret.from_name(name) if name else None
