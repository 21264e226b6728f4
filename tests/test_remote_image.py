"""The Modal image is pinned (a lock that agrees with pyproject, installed with a pinned uv), and
the modal floor pyproject declares is one whose API the app uses (checked on that very version)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from connectodistill import remote
from connectodistill.core.config import RemoteConfig
from connectodistill.core.errors import UserError
from connectodistill.remote import app as remote_app
from remote_fakes import DEPRECATIONS_ARE_ERRORS

pytestmark = pytest.mark.filterwarnings(DEPRECATIONS_ARE_ERRORS)
ROOT = Path(__file__).parents[1]
REFRESH = "python -m connectodistill.remote.lock"


def declared_modal() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "modal")


def test_the_lock_agrees_with_the_declared_dependencies():
    lock = remote.read_lock()
    problems = remote_app.lock_problems(remote.runtime_requirements(), lock)
    assert problems == [], f"{remote_app.LOCK_FILE.name} is stale: {problems}; refresh it with `{REFRESH}`"
    assert re.fullmatch(r"\d+\.\d+\.\d+", lock.uv_version)
    assert "modal" not in lock.pins  # Modal brings its own client
    assert {"torch", "transformers", "peft", "accelerate", "bitsandbytes", "nvidia-cublas"} <= set(lock.pins)


def test_the_lock_carries_what_qwen35_needs():
    """A transformers with qwen3_5 (5.2 and later), and Qwen3.5's fast Gated DeltaNet kernels where
    PyPI has a wheel for the image's platform: flash-linear-attention (pure Python + Triton) does,
    causal-conv1d publishes only a CUDA source build (docs/students.md says what its absence costs)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    lock = remote.read_lock()
    assert Version(lock.pins["transformers"]) >= Version("5.2")
    assert Version(version("transformers")).public == lock.pins["transformers"]  # the one tested here...
    assert "qwen3_5" in CONFIG_MAPPING_NAMES  # ...knows Qwen3.5
    assert {"flash-linear-attention", "fla-core", "einops"} <= set(lock.pins)
    assert "flash-linear-attention" in {Requirement(r).name for r in remote.runtime_requirements()}
    assert "causal-conv1d" not in lock.pins
    # fla 0.6 refuses its chunked backward on Hopper (H100, H200) under Triton 3.4 to 3.7.0 (wrong
    # results; seen on the H200 with Triton 3.6, bench/README.md "qwen3.5"): the image's must be newer
    assert Version(lock.pins["triton"]) >= Version("3.7.1")


def test_the_lock_holds_the_versions_the_tests_run_with():
    """Each direct dependency installed here is locked at the installed version."""
    lock, differ = remote.read_lock(), []
    for line in remote.runtime_requirements():
        name = Requirement(line).name
        try:
            here = Version(version(name)).public
        except PackageNotFoundError:  # e.g. bitsandbytes (the gpu extra) on a CPU machine
            continue
        if lock.pins[remote_app._name(name)] != here:
            differ.append(f"{name}: lock {lock.pins[remote_app._name(name)]}, here {here}")
    assert differ == [], (f"this environment is not the lock's: {differ}; install with the lock as constraints "
                          f"(`pip install -e '.[dev]' -c src/connectodistill/remote/modal-image.lock`, as .ci/run does) "
                          f"or, to move the image to these versions, refresh it with `{REFRESH}`")


def test_a_stale_lock_is_refused_with_the_refresh_command(tmp_path, monkeypatch):
    lock = tmp_path / "modal-image.lock"
    lines = remote_app.LOCK_FILE.read_text().splitlines()
    lock.write_text("\n".join(line for line in lines if not line.startswith("peft==")) + "\n")
    monkeypatch.setattr(remote_app, "LOCK_FILE", lock)
    with pytest.raises(UserError) as e:
        remote.declare(RemoteConfig(), environ={})
    assert "peft is not in the lock" in str(e.value) and REFRESH in str(e.value)
    lock.write_text("# uv 0.1.0\ntorch>=2.4\n")
    with pytest.raises(UserError, match="not an exact pin"):
        remote.read_lock(lock)


def test_the_image_installs_every_pin_with_the_pinned_uv(monkeypatch):
    import modal

    seen = {}
    real_install, real_env = modal.Image.uv_pip_install, modal.Image.env

    def uv_pip_install(self, *packages, **kw):
        seen["packages"], seen["uv"] = packages, kw.get("uv_version")
        return real_install(self, *packages, **kw)

    def env(self, values):
        seen["env"] = values
        return real_env(self, values)

    monkeypatch.setattr(modal.Image, "uv_pip_install", uv_pip_install)
    monkeypatch.setattr(modal.Image, "env", env)
    remote.declare(RemoteConfig(), environ={})
    lock = remote.read_lock()
    assert seen["uv"] == lock.uv_version
    assert all(re.fullmatch(r"[\w.-]+==[\w.+!-]+", p) for p in seen["packages"])
    assert {p.split("==")[0]: p.split("==")[1] for p in seen["packages"]} == lock.pins
    assert seen["env"]["HF_HOME"] == "/models/hf" and seen["env"]["HF_XET_HIGH_PERFORMANCE"] == "1"


def test_the_declared_floor_is_the_one_the_code_checks():
    req = declared_modal()
    assert str(req.specifier) == f">={remote_app.MODAL_FLOOR}"
    import modal

    assert Version(modal.__version__) in req.specifier


def test_an_older_modal_is_a_one_line_error(monkeypatch):
    import modal

    monkeypatch.setattr(modal, "__version__", "1.5.3")
    with pytest.raises(UserError, match=r"modal 1.5.3 is too old for --remote: pip install 'modal>=1.6'"):
        remote.declare(RemoteConfig(), environ={})


# What the package uses of modal beyond declare(): run here, and on the floor version below.
API_SURFACE = """
import inspect, warnings
warnings.simplefilter("error", __import__("modal.exception").exception.DeprecationError)
import modal
from modal.types import FileEntry, FileEntryType, InputInfo, InputStatus
from modal.exception import (AuthError, ConnectionError, Error, FunctionTimeoutError, ImageBuildError,
    NotFoundError, OutputExpiredError, PermissionDeniedError, RemoteError,
    ResourceExhaustedError, ServiceError, InternalError, ClientClosed)
assert InputStatus.TERMINATED and {"function_call_id", "status"} <= set(InputInfo.__dataclass_fields__)
from modal._logs_manager import _FunctionCallLogsManager
params = lambda f: inspect.signature(f).parameters
assert {"single_use_containers", "retries", "include_source", "cpu", "memory"} <= set(params(modal.App.function))
assert "detach" in params(modal.App.run) and "uv_version" in params(modal.Image.uv_pip_install)
assert "terminate_containers" in params(modal.FunctionCall.cancel) and "timeout" in params(modal.FunctionCall.get)
assert all(hasattr(modal.FunctionCall, a) for a in ("from_id", "logs", "object_id", "get_call_graph"))
assert all(hasattr(_FunctionCallLogsManager, a) for a in ("tail", "stream"))
assert all(hasattr(modal.Function, a) for a in ("spawn", "remote", "local", "info"))
assert "create_if_missing" in params(modal.Volume.from_name) and "force" in params(modal.Volume.batch_upload)
assert all(hasattr(modal.Volume, a) for a in ("listdir", "read_file", "commit"))
assert callable(modal.enable_output) and callable(modal.is_local)
modal.Retries(max_retries=2, initial_delay=30.0)
"""

# declare() itself on that version: every function and its static info.
DECLARE = """
import json, sys, warnings
sys.path.insert(0, sys.argv[1])
warnings.simplefilter("error", __import__("modal.exception").exception.DeprecationError)
from connectodistill.core.config import RemoteConfig
from connectodistill.remote import declare
import modal
d = declare(RemoteConfig(gpu="H100:2"), environ={})
info = {k: getattr(d, k).info() for k in ("train", "evaluate", "prefetch", "check")}
print(json.dumps({"modal": modal.__version__, **{k: [v.gpus, v.timeout, v.max_retries, v.single_use_containers]
                                                 for k, v in info.items()}}))
"""
EXPECTED = {"train": [[["H100", 2]], 14400, 2, True], "evaluate": [[["H100", 1]], 3600, 1, True],
            "prefetch": [[], 3600, 2, False], "check": [[], 600, None, True]}


def _run(python, code: str, *args: str) -> str:
    out = subprocess.run([str(python), "-c", code, *args], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_modal_api_the_package_uses_exists_here():
    _run(sys.executable, API_SURFACE)
    got = json.loads(_run(sys.executable, DECLARE, str(ROOT / "src")).splitlines()[-1])
    assert {k: v for k, v in got.items() if k != "modal"} == EXPECTED


@pytest.fixture(scope="module")
def floor_python(tmp_path_factory):
    """A venv with exactly the declared floor of modal (from PyPI; skipped without it)."""
    floor = f"{remote_app.MODAL_FLOOR}.0"
    venv = tmp_path_factory.mktemp("modal-floor") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", f"modal=={floor}", "pydantic", "packaging"],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        pytest.skip(f"could not install modal=={floor}: {pip.stderr.strip().splitlines()[-1:]}")
    return python, floor


@pytest.mark.slow
def test_the_floor_version_has_that_api_and_declares_the_same_app(floor_python):
    python, floor = floor_python
    _run(python, API_SURFACE)
    got = json.loads(_run(python, DECLARE, str(ROOT / "src")).splitlines()[-1])
    assert got.pop("modal") == floor
    assert got == EXPECTED
