"""`--remote` on Modal, offline: the app's declaration, the container functions run in-process
on the tiny student, and the dispatch (upload, spawn, wait, download) with only the network
replaced (``remote_fakes.Offline`` stands in for ``connectodistill.remote.boundary``).

Calls, status, cancel and follow: test_remote_jobs.py; the fan-out primitive: test_remote_calls.py;
the image lock and the modal floor: test_remote_image.py; ``remote check``: test_remote_check.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from connectodistill import remote
from connectodistill.core.config import EvalConfig, RemoteConfig, TrainConfig
from connectodistill.core.errors import UserError
from connectodistill.remote import app as remote_app
from connectodistill.remote import boundary, container, volumes
from remote_fakes import DEPRECATIONS_ARE_ERRORS, LOCAL_WARNING, RC, FakeVolume, Offline, Trap

TINY_TRAIN = dict(epochs=1, num_samples=16, batch_size=8, gradient_accumulation=1, learning_rate=3e-3,
                  warmup_steps=0, progress=False, seed=0)
TINY_EVAL = dict(num_samples=4, batch_size=4, max_new_tokens=8, progress=False)

# `.local()` warns that volumes are not mounted: here the mounts are local folders on purpose.
# Any deprecation modal reports for what we use fails the test.
pytestmark = [pytest.mark.filterwarnings(LOCAL_WARNING), pytest.mark.filterwarnings(DEPRECATIONS_ARE_ERRORS)]


@pytest.fixture
def no_network(monkeypatch):
    monkeypatch.setattr(boundary, "volume", lambda name, create=True: Trap())

    def running(app, detach=True):
        raise AssertionError("reached Modal: app.run()")

    monkeypatch.setattr(boundary, "running", running)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    return Offline(tmp_path / "volumes").install(monkeypatch)


@pytest.fixture
def commits(monkeypatch):
    """Volume commits the container functions ask for (a no-op outside Modal anyway)."""
    seen: list[str | None] = []
    monkeypatch.setattr(container, "commit_volume", seen.append)
    return seen


@pytest.fixture(scope="module")
def local_run(merged_small, tiny_student, tmp_path_factory):
    """What a plain local `train` leaves, with the settings the remote tests use."""
    from connectodistill.training import train

    return train(augmented_dataset=merged_small, model=str(tiny_student), run_name="local",
                 output_dir=tmp_path_factory.mktemp("local-runs"), **TINY_TRAIN)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> set[str]:
    """Relative file names of a run folder; checkpoints only as "there is one"."""
    out = set()
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).parts
        if rel[0] == "checkpoints":
            out.add("checkpoints/checkpoint-N" if len(rel) > 1 else "checkpoints")
        elif p.is_file():
            out.add("/".join(rel))
    return out


# ----------------------------------------------------------------------------- no modal import
@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["eval", "--help"], ["fetch", "--help"],
                                  ["remote", "check", "--help"]])
def test_cli_help_never_imports_modal(args):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from connectodistill.cli import app\n"
        f"r = CliRunner().invoke(app, {args!r})\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m == 'modal' or m.startswith('modal.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_entry_point_help_never_imports_modal():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "connectodistill", "--help"],
                         capture_output=True, text=True, check=True)
    assert "Usage" in out.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "modal" not in imported and "connectodistill.remote" not in imported


# ----------------------------------------------------------------------------- offline checks
@pytest.mark.parametrize("gpu, parsed", [
    ("H100", ("H100", 1)), ("a100-80gb", ("A100-80GB", 1)), ("H100:2", ("H100", 2)),
    ("l40s:4", ("L40S", 4)), ("H100!:8", ("H100!", 8)), ("A10G", ("A10G", 1)), ("B200+", ("B200+", 1)),
])
def test_gpu_strings(gpu, parsed):
    assert remote.parse_gpu(gpu) == parsed


@pytest.mark.parametrize("gpu", ["V100", "H100:0", "H100:9", "A10:5", "H100:x", "", "H100:2:2", "gpu"])
def test_bad_gpu_strings_are_one_line_user_errors(gpu):
    with pytest.raises(UserError) as e:
        remote.parse_gpu(gpu)
    assert "\n" not in str(e.value) and "GPU" in str(e.value)


def test_image_requirements_are_pyproject_ranges_plus_gpu_extra():
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    reqs = remote.runtime_requirements()
    assert reqs == [r for r in project["dependencies"] if not r.startswith("modal")] + project[
        "optional-dependencies"]["gpu"]
    assert any(r.startswith("bitsandbytes") for r in reqs)
    assert not any(r.startswith(("modal", "pytest", "ruff")) for r in reqs)


def test_installed_package_reads_its_requirements_from_metadata(monkeypatch, tmp_path):
    monkeypatch.setattr(remote_app, "__file__", str(tmp_path / "site-packages" / "connectodistill" / "remote" / "app.py"))
    reqs = remote.runtime_requirements()
    assert any(r.startswith("bitsandbytes") for r in reqs) and any(r.startswith("torch") for r in reqs)
    assert not any(r.startswith(("modal", "pytest", "ruff")) or ";" in r for r in reqs)


def test_declared_functions_follow_the_flags():
    rc = RC.model_copy(update={"gpu": "h100:2", "timeout": 7200})
    declared = remote.declare(rc, use_wandb=True, environ={"HF_TOKEN": "hf_local_token_value"})
    assert declared.app.name == rc.app_name
    train, evaluate = declared.train.info(), declared.evaluate.info()  # static: no network
    assert (train.gpus, train.timeout, train.max_retries) == ([("H100", 2)], 7200, remote.TRAIN_RETRIES)
    # Eval runs as one process: one GPU of the same type, its own 1 h default.
    assert (evaluate.gpus, evaluate.timeout, evaluate.max_retries) == ([("H100", 1)], 3600, remote_app.EVAL_RETRIES)
    for info in (train, evaluate):
        assert info.single_use_containers  # a retry starts on a fresh container
        assert {path: v.name for path, v in info.volumes.items()} == {
            "/models": "t-models", "/datasets": "t-datasets", "/runs": "t-runs"}
        # The local token travels as a secret built from it; W&B comes from the named secret.
        assert info.secrets == ["Secret.from_dict([HF_TOKEN])", "modal.Secret.from_name('wandb-secret')"]
        assert "hf_local_token_value" not in repr(info)


def test_cost_guards_by_default():
    declared = remote.declare(RemoteConfig(), environ={})
    train, evaluate = declared.train.info(), declared.evaluate.info()
    assert (train.timeout, evaluate.timeout) == (4 * 3600, 3600)
    assert train.gpus == [("A100-80GB", 1)] and evaluate.gpus == [("A100-80GB", 1)]
    assert (train.max_retries, evaluate.max_retries) == (2, 1)
    # The CPU functions: the weights before any GPU starts, and `remote check`.
    prefetch, check = declared.prefetch.info(), declared.check.info()
    assert prefetch.gpus == [] and check.gpus == [] and prefetch.timeout == 3600 and check.timeout == 600
    assert set(prefetch.volumes) == {"/models"} and check.single_use_containers
    assert prefetch.secrets == ["modal.Secret.from_name('huggingface-secret')"]
    # eval --gpu and --timeout are eval's own; --timeout may raise the limits up to Modal's 24 h.
    rc = RemoteConfig(gpu="H100:4", eval_gpu="L40S", timeout=86400, eval_timeout=7200)
    declared = remote.declare(rc, environ={}, check_gpu="l4")
    assert declared.evaluate.info().gpus == [("L40S", 1)] and declared.evaluate.info().timeout == 7200
    assert declared.train.info().timeout == 86400 and declared.check.info().gpus == [("L4", 1)]


def test_bad_input_fails_before_anything_is_sent(no_network, merged_small, tiny_student, tmp_path):
    cases = [
        (lambda: remote.train_remote(TrainConfig(augmented_dataset=merged_small),
                                     RC.model_copy(update={"gpu": "V100"})), "unknown GPU"),
        (lambda: remote.evaluate_remote(EvalConfig(base_model=str(tiny_student)),
                                        RC.model_copy(update={"gpu": "H100:16"})), "GPU count"),
        (lambda: remote.train_remote(TrainConfig(augmented_dataset=merged_small),
                                     RC.model_copy(update={"timeout": 90000})), "24 h"),
        (lambda: remote.train_remote(TrainConfig(augmented_dataset=tmp_path / "missing.parquet"), RC),
         "merged dataset not found"),
        (lambda: remote.train_remote(TrainConfig(augmented_dataset=merged_small, model="./no/such/model"),
                                     RC), "model not found"),
        (lambda: remote.evaluate_remote(EvalConfig(base_model=str(tiny_student),
                                                   dataset_name=str(tmp_path / "nope.parquet")), RC),
         "benchmark not found"),
        (lambda: remote.evaluate_remote(EvalConfig(base_model=str(tiny_student),
                                                   merged=tmp_path / "nope.parquet"), RC),
         "merged file not found"),
        (lambda: remote.evaluate_remote(EvalConfig(adapter_path=tiny_student), RC), "training_config.json"),
        (lambda: remote.evaluate_remote(EvalConfig(), RC), "nothing to evaluate"),
    ]
    for call, message in cases:
        with pytest.raises(UserError) as e:
            call()
        assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("raised, message", [
    ("AuthError('Token missing. Could not authenticate client.\\nmore')", "run `modal setup`"),
    ("NotFoundError(\"Secret 'hf-secret' not found in environment 'main'\")", "modal secret create hf-secret HF_TOKEN"),
    ("NotFoundError(\"Volume 't-runs' not found in environment 'main'\")", "volumes are created by the first"),
    ("ResourceExhaustedError('GPU quota exceeded')", "quota or rate limit"),
    ("ImageBuildError('Image build for im-1 failed.\\nView the build logs', 'im-1')", "image failed to build"),
    ("FunctionTimeoutError('Function timed out after 14400s')", "raise --timeout"),
    ("ConnectionError('Deadline exceeded')", "could not reach Modal"),
    ("PermissionDeniedError('not a member')", "permissions"),
    ("InvalidError('something else')", "Modal: InvalidError: something else"),
])
def test_modal_problems_are_one_line_user_errors(raised, message):
    from modal import exception

    with pytest.raises(UserError) as e:
        with remote.calls.modal_errors(RC):
            raise eval(raised, vars(exception))
    assert message in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- container functions
@pytest.mark.slow
def test_train_function_leaves_a_local_runs_folder_and_resumes(
        merged_small, tiny_student, local_run, offline, commits, monkeypatch):
    declared = remote.declare(RC)
    settings = TrainConfig(augmented_dataset=merged_small, model=str(tiny_student), run_name="local",
                           **TINY_TRAIN).model_dump(mode="json")
    result = declared.train.local(settings=settings, links={}, run_name="r1", runs_volume="t-runs",
                                  models_volume="t-models", call_token="tok")
    assert result == {"name": "r1", "status": "finished"}
    run_dir = offline.root / "runs" / "train" / "r1"
    assert _tree(run_dir) == _tree(local_run)  # the folder a local run leaves
    config = json.loads((run_dir / "training_config.json").read_text())
    n_ckpt = len(list((run_dir / "checkpoints").glob("checkpoint-*")))
    assert commits.count("t-runs") >= n_ckpt + 1  # each checkpoint, then the end
    # Its outcome, for `fetch` once Modal no longer holds the result.
    outcome = json.loads((offline.root / "runs" / "calls" / "train" / "r1.outcome.json").read_text())
    assert outcome["status"] == "finished" and outcome["token"] == "tok"

    # Preempted after the last checkpoint, while saving the adapter; the next checkpoint was cut
    # off half-written. The retried call drops that one and resumes from the last complete one.
    for name in ("adapter_model.safetensors", "training_config.json"):
        (run_dir / name).unlink()
    broken = run_dir / "checkpoints" / "checkpoint-999"
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes(b"partial")
    from connectodistill.training import recipe as training

    seen = []
    real_train = training.train
    monkeypatch.setattr(training, "train", lambda cfg, **kw: seen.append(cfg.resume) or real_train(cfg, **kw))
    assert declared.train.local(settings=settings, links={}, run_name="r1") == {"name": "r1", "status": "finished"}
    assert seen == [True]
    assert not broken.exists()
    assert _tree(run_dir) == _tree(local_run)
    assert json.loads((run_dir / "training_config.json").read_text())["global_step"] == config["global_step"]


def test_train_function_reports_bad_input_instead_of_failing(merged_small, offline, commits):
    settings = TrainConfig(augmented_dataset=merged_small, model="./no/such/model").model_dump(mode="json")
    result = remote.declare(RC).train.local(settings=settings, links={}, run_name="bad", call_token="t")
    # Returned, not raised: Modal must not retry it.
    assert result["status"] == "failed" and result["reason"] == "bad input"
    assert "model folder not found" in result["error"]
    outcome = json.loads((offline.root / "runs" / "calls" / "train" / "bad.outcome.json").read_text())
    assert outcome["status"] == "failed" and outcome["error"] == result["error"]


def _oom():
    import torch

    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has 79 GiB")


def hub_error(cls_name: str, message: str, status: int = 401):
    """A huggingface_hub HTTP error as the Hub raises it (only what it reads of the response)."""
    from types import SimpleNamespace

    from huggingface_hub import errors

    return getattr(errors, cls_name)(message, response=SimpleNamespace(headers={}, request=None, status_code=status))


def _gated():
    from huggingface_hub.errors import GatedRepoError

    try:
        raise hub_error("GatedRepoError", "401 Client Error. Cannot access gated repo for url https://huggingface.co/x")
    except GatedRepoError as e:  # transformers wraps it in an OSError
        raise OSError("You are trying to access a gated repo.\nMake sure to have access") from e


@pytest.mark.parametrize("fail, reason", [
    (_oom, "out of memory"),
    (_gated, "gated"),
    (lambda: __import__("no_such_module_here"), "missing module"),
    (lambda: {}["splits"], "program error"),
    (lambda: (_ for _ in ()).throw(UserError("merged file has no split lists")), "bad input"),
    (lambda: (_ for _ in ()).throw(RuntimeError("NCCL error: unhandled system error")), None),
    (lambda: (_ for _ in ()).throw(ConnectionError("Connection reset by peer")), None),
])
def test_deterministic_failures_are_returned_and_others_raised(fail, reason, offline, commits, monkeypatch):
    from connectodistill.training import recipe as training

    monkeypatch.setattr(training, "train", lambda cfg, **kw: fail())
    settings = TrainConfig(augmented_dataset="merged.parquet").model_dump(mode="json")
    fn = remote.declare(RC).train
    if reason is None:  # transient: raised, so Modal retries it on a fresh container
        with pytest.raises(Exception):  # noqa: B017
            fn.local(settings=settings, links={}, run_name="x")
        assert not (offline.root / "runs" / "calls" / "train" / "x.outcome.json").exists()
    else:
        result = fn.local(settings=settings, links={}, run_name="x")
        assert (result["status"], result["reason"]) == ("failed", reason) and "\n" not in result["error"]


@pytest.mark.parametrize("log, code, reason", [
    ("step 3\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB\n", 1, "out of memory"),
    ("huggingface_hub.errors.GatedRepoError: 401 Client Error\n", 1, "gated"),
    ("error: merged file has no split lists\n", 2, "bad input"),
    ("ModuleNotFoundError: No module named 'connectodistill'\n", 1, "missing module"),
    ("RuntimeError: NCCL communicator was aborted\n", 1, None),
])
def test_failures_found_in_a_child_log(log, code, reason):
    found = container.failure_from_log(log, code)
    assert (found[0] if found else None) == reason
    if reason == "bad input":
        assert found[1] == "merged file has no split lists"


@pytest.mark.slow
def test_eval_function_scores_an_adapter_and_a_base_model(
        local_run, tiny_student, small_benchmark, merged_small, offline, commits):
    declared = remote.declare(RC)
    result = declared.evaluate.local(
        settings=EvalConfig(adapter_path=local_run, **TINY_EVAL).model_dump(mode="json"), links={},
        runs_volume="t-runs")
    out = offline.root / "runs" / "eval" / result["name"]
    assert result["name"] == f"{local_run.name}_test"
    assert {p.name for p in out.iterdir()} >= {"predictions.csv", "summary.json", "confusion.png"}
    assert "t-runs" in commits

    result = declared.evaluate.local(settings=EvalConfig(
        base_model=str(tiny_student), dataset_name=str(small_benchmark), merged=merged_small, split="test",
        **TINY_EVAL).model_dump(mode="json"), links={})
    summary = json.loads((offline.root / "runs" / "eval" / result["name"] / "summary.json").read_text())
    assert summary["n"] == 4 and summary["adapter"] is None


def test_relative_inputs_are_linked_to_their_uploaded_copies(tmp_path, offline, monkeypatch):
    # In the container nothing of this machine exists: relative paths resolve in a fresh folder.
    copy = offline.root / "datasets" / "abc" / "merged.parquet"
    copy.parent.mkdir(parents=True)
    copy.write_text("uploaded")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "merged.parquet").write_text("local")
    with container._inputs_linked({"data/merged.parquet": "datasets/abc/merged.parquet",
                                str(tmp_path / "data" / "merged.parquet"): "datasets/abc/merged.parquet"}):
        assert Path("data/merged.parquet").read_text() == "uploaded"
        assert (tmp_path / "data" / "merged.parquet").read_text() == "local"  # exists: left alone
    assert Path.cwd() == tmp_path


def test_multi_gpu_runs_accelerate_and_commits_each_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "train" / "r"
    cfg = TrainConfig(augmented_dataset="merged.parquet", run_dir=run_dir, output_dir=run_dir.parent)
    cmd = container._accelerate_command(Path("cfg.json"), 4)
    assert cmd[1:] == ["-m", "accelerate.commands.launch", "--num_processes", "4", "--num_machines", "1",
                       "--dynamo_backend", "no", "-m", "connectodistill", "train", "--config", "cfg.json"]
    # Stand-in for `accelerate launch ... train --config`: reads the config as the CLI does and
    # writes two checkpoints, a while apart.
    script = (
        "import sys, time; from pathlib import Path\n"
        "from connectodistill.core.config import TrainConfig, build_config, load_config_file\n"
        "cfg = build_config(TrainConfig, load_config_file(Path(sys.argv[1])), {})\n"
        "for step in (1, 2):\n"
        "    d = Path(cfg.run_dir) / 'checkpoints' / f'checkpoint-{step}'\n"
        "    d.mkdir(parents=True); (d / 'trainer_state.json').write_text('{}'); time.sleep(0.5)\n"
    )
    monkeypatch.setattr(container, "_accelerate_command", lambda f, n: [sys.executable, "-c", script, str(f)])
    monkeypatch.setattr(container, "CHECKPOINT_POLL_SECONDS", 0.05)
    commits = []
    container._train_multi_gpu(cfg, 2, lambda: commits.append(1))
    assert len(commits) == 2
    monkeypatch.setattr(container, "_accelerate_command", lambda f, n: [sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="exit code 3"):
        container._train_multi_gpu(cfg, 2, lambda: None)
    # A child that prints a deterministic failure: returned as such by the train function.
    oom = "import sys; sys.stderr.write('torch.OutOfMemoryError: CUDA out of memory.\\n'); raise SystemExit(1)"
    monkeypatch.setattr(container, "_accelerate_command", lambda f, n: [sys.executable, "-c", oom])
    with pytest.raises(container.DeterministicFailure) as e:
        container._train_multi_gpu(cfg, 2, lambda: None)
    assert container.deterministic_failure(e.value) == ("out of memory", "torch.OutOfMemoryError: CUDA out of memory.")


# ----------------------------------------------------------------------------- dispatch
@pytest.fixture
def user_dir(tmp_path, merged_small, tiny_student, monkeypatch):
    """A user's working folder with relative paths, as on the command line."""
    home = tmp_path / "user"
    home.mkdir()
    shutil.copyfile(merged_small, home / "merged.parquet")
    shutil.copytree(tiny_student, home / "students" / "tiny")
    monkeypatch.chdir(home)
    return home


@pytest.mark.slow
def test_train_remote_uploads_trains_and_downloads(user_dir, small_benchmark, offline, commits, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_never_stored_anywhere")
    cfg = TrainConfig(augmented_dataset="merged.parquet", model="students/tiny", run_name="t", **TINY_TRAIN)
    local = remote.train_remote(cfg, RC)

    name = local.name
    assert re.fullmatch(r"tiny_t_claude_\d{8}_\d{6}_samples16_epochs1_lr0\.003_r16", name)
    assert local == Path("runs") / name
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert {"adapter_model.safetensors", "adapter_config.json", "training_config.json",
            "loss_history.json"} <= files
    assert not any(f.startswith("checkpoints") for f in files)  # they stay on the volume
    assert (offline.root / "runs" / "train" / name / "checkpoints").is_dir()
    # Uploaded once, content-addressed; the run records the paths as given, like a local run.
    sha = _sha256(user_dir / "merged.parquet")
    assert (offline.root / "datasets" / sha / "merged.parquet").is_file()
    assert len(list((offline.root / "models").glob("*/tiny/config.json"))) == 1
    config = json.loads((local / "training_config.json").read_text())
    assert config["merged_file"] == "merged.parquet" and config["base_model"] == "students/tiny"
    assert config["settings"]["run_dir"].endswith(f"runs/train/{name}")
    # The token went only into a Modal secret: not into the call, the run folder or the volume.
    assert "hf_never_stored_anywhere" not in repr(offline.calls)
    for p in offline.root.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".txt", ".csv"):
            assert "hf_never_stored_anywhere" not in p.read_text(errors="ignore")

    # Same inputs again: nothing uploaded twice. An existing run is not silently overwritten.
    uploads = offline.uploads
    with pytest.raises(UserError, match="already exists"):
        remote.train_remote(cfg.model_copy(update={"run_dir": Path(name)}), RC)
    assert remote.train_remote(cfg.model_copy(update={"run_name": "u"}), RC.model_copy(update={"detach": True})) is None
    assert offline.uploads == uploads

    # An adapter that exists only on the runs volume is evaluated by name.
    shutil.rmtree(local)
    out = remote.evaluate_remote(EvalConfig(adapter_path=Path(name), **TINY_EVAL), RC)
    assert out == Path("results") / f"{name}_test"
    on_volume = {p.name for p in (offline.root / "runs" / "eval" / out.name).iterdir()}
    assert {"predictions.csv", "summary.json", "confusion.png"} <= on_volume
    assert {p.name for p in out.iterdir()} == on_volume | {"modal_call.json"}  # all of it, and the call record
    assert json.loads((out / "summary.json").read_text())["adapter"] == name
    # Its base model was there already; its benchmark (a local file) is uploaded now, once.
    assert offline.uploads == uploads + 1
    assert (offline.root / "datasets" / _sha256(small_benchmark) / small_benchmark.name).is_file()


@pytest.mark.slow
def test_train_remote_dpo_uploads_the_from_run(user_dir, local_run, offline, commits):
    """`--method dpo --from RUN --remote`: the parent run folder goes up with the merged file,
    and the container continues it under the path as given, like a local run."""
    from connectodistill.training.runs import continued_settings

    shutil.copytree(local_run, user_dir / "parent-run")
    merged = Path(json.loads((local_run / "training_config.json").read_text())["merged_file"])
    shutil.copyfile(merged.with_name(f"{merged.stem}_responses.parquet"), user_dir / "merged_responses.parquet")
    cfg = continued_settings(TrainConfig(method="dpo", from_run="parent-run", augmented_dataset="merged.parquet",
                                         run_name="d", **{**TINY_TRAIN, "num_samples": 2, "batch_size": 2}))
    local = remote.train_remote(cfg, RC)

    assert "_dpo_" in local.name and (local / "adapter_model.safetensors").is_file()
    config = json.loads((local / "training_config.json").read_text())
    assert config["method"] == "dpo" and config["parent_run"] == "parent-run"
    assert config["base_model"] == json.loads((local_run / "training_config.json").read_text())["base_model"]
    up = list((offline.root / "datasets").glob("*/parent-run/adapter_model.safetensors"))
    assert len(up) == 1 and up[0].read_bytes() == (local_run / "adapter_model.safetensors").read_bytes()
    assert len(list((offline.root / "datasets").glob("*/merged_responses.parquet"))) == 1  # the pairs' source


def test_eval_remote_of_a_base_model_uploads_the_local_benchmark(user_dir, small_benchmark, offline, commits):
    shutil.copyfile(small_benchmark, user_dir / "bench.parquet")
    out = remote.evaluate_remote(EvalConfig(base_model="students/tiny", dataset_name="bench.parquet",
                                            **TINY_EVAL), RC)
    assert out == Path("results") / "base_tiny_all"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["dataset_name"] == "bench.parquet" and summary["n"] == 4
    assert (offline.root / "datasets" / _sha256(user_dir / "bench.parquet") / "bench.parquet").is_file()


def test_detach_starts_records_the_call_and_says_how_to_fetch(user_dir, offline, capsys):
    rc = RC.model_copy(update={"detach": True})
    cfg = TrainConfig(augmented_dataset="merged.parquet", model="students/tiny", run_name="d")
    assert remote.train_remote(cfg, rc) is None
    (kwargs,) = offline.calls
    name = kwargs["run_name"]
    assert kwargs["gpus"] == 1 and kwargs["links"]["merged.parquet"].startswith("datasets/")
    assert offline.runs == [True]  # the app runs detached
    err = capsys.readouterr().err
    assert f"connectodistill fetch {name} --follow" in err and "fc-1" in err
    # The call id is kept here (the local run folder's stub) and on the runs volume.
    assert [p.name for p in (Path("runs") / name).iterdir()] == ["modal_call.json"]
    stub = json.loads((Path("runs") / name / "modal_call.json").read_text())
    on_volume = json.loads((offline.root / "runs" / "calls" / "train" / f"{name}.json").read_text())
    assert stub == on_volume and stub["call_id"] == "fc-1" and stub["token"] == kwargs["call_token"]
    assert stub["gpu"] == "A100-80GB" and stub["timeout"] == 4 * 3600


def test_a_missing_remote_adapter_is_a_user_error(user_dir, offline):
    with pytest.raises(UserError, match="not found here nor on the runs volume"):
        remote.evaluate_remote(EvalConfig(adapter_path=Path("no-such-run")), RC)


def test_fetch_lists_and_downloads(offline, tmp_path):
    runs = offline.root / "runs"
    for rel, text in [("train/done/training_config.json", "{}"), ("train/done/adapter_model.safetensors", "w"),
                      ("train/done/checkpoints/checkpoint-4/trainer_state.json", "{}"),
                      ("train/busy/checkpoints/checkpoint-2/trainer_state.json", "{}"),
                      ("eval/done_test/summary.json", "{}"), ("eval/done_test/predictions.csv", "a")]:
        (runs / rel).parent.mkdir(parents=True, exist_ok=True)
        (runs / rel).write_text(text)
    rows = remote.fetch(None, tmp_path, RC)
    assert {(r["name"], r["kind"], r["status"]) for r in rows} == {
        ("done", "train", "finished"), ("busy", "train", "stopped"), ("done_test", "eval", "finished")}
    assert "--resume --run-dir busy" in next(r["detail"] for r in rows if r["name"] == "busy")
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", r["modified"]) for r in rows)

    got = remote.fetch("done", tmp_path / "out", RC)
    assert got == tmp_path / "out" / "done"
    assert {p.name for p in got.rglob("*")} == {"training_config.json", "adapter_model.safetensors"}
    assert (remote.fetch("done_test", tmp_path / "out", RC) / "predictions.csv").read_text() == "a"
    with pytest.raises(UserError, match="nothing named nope"):
        remote.fetch("nope", tmp_path, RC)


def test_fetch_prints_a_table(offline, tmp_path, capsys):
    (offline.root / "runs" / "train" / "x" / "checkpoints").mkdir(parents=True)
    remote.fetch(None, tmp_path, RC)
    out = capsys.readouterr().out
    assert "x" in out and "stopped" in out


def test_upload_is_content_addressed(tmp_path):
    vol = FakeVolume(tmp_path / "vol")
    folder = tmp_path / "run"
    (folder / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "checkpoints" / "checkpoint-1" / "big.bin").write_bytes(b"x" * 10)
    key = volumes.upload(vol, "datasets", folder)
    assert key.startswith("datasets/") and key.endswith("/run")
    assert vol.uploads == [f"/{key.split('/', 1)[1]}/adapter_config.json"]  # no checkpoints
    (folder / "checkpoints" / "checkpoint-1" / "big.bin").write_bytes(b"y" * 10)
    assert volumes.upload(vol, "datasets", folder) == key  # checkpoints do not count
    assert len(vol.uploads) == 1
    (folder / "adapter_config.json").write_text('{"r": 8}')
    assert volumes.upload(vol, "datasets", folder) != key


# The container's side of a multi-GPU run, as Modal starts it: the package imported from a copy of
# its .py files (add_local_python_source puts them under /root, on the entrypoint's path, not
# installed), the launch made from a temporary working folder.
MULTI_GPU_SCRIPT = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from connectodistill.core.config import TrainConfig
from connectodistill.remote import container as c
assert c.__file__.startswith(sys.argv[1]), c.__file__
args = json.loads(sys.argv[2])
real = c._accelerate_command
c._accelerate_command = lambda f, n: [*real(f, n)[:3], "--cpu", *real(f, n)[3:]]
c.CHECKPOINT_POLL_SECONDS = 0.5
if args["bare"]:
    c.child_env = lambda: dict(os.environ)  # control: no PYTHONPATH for the children
commits = []
try:
    with c._inputs_linked({}):
        c._train_multi_gpu(TrainConfig(**args["cfg"]), 2, lambda: commits.append(1))
except c.DeterministicFailure as e:
    print(json.dumps({"failure": [e.reason, str(e)]}))
else:
    print(json.dumps({"commits": len(commits)}))
"""


@pytest.fixture(scope="module")
def image_like(tmp_path_factory):
    """(python, source root): an interpreter that sees every dependency but not the installed
    (editable) connectodistill, and a copy of the package's .py files as the image carries them."""
    import site

    import connectodistill

    tmp = tmp_path_factory.mktemp("image")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    python = tmp / "venv" / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # A path line in a .pth file: its own .pth files (the editable install's) are not processed.
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    probe = subprocess.run([python, "-c", "import torch, accelerate; import connectodistill"], cwd=tmp,
                           capture_output=True, text=True)
    assert "No module named 'connectodistill'" in probe.stderr, probe.stderr
    root = tmp / "root"
    shutil.copytree(Path(connectodistill.__file__).parent, root / "connectodistill",
                    ignore=lambda d, names: [n for n in names if not n.endswith(".py") and not (Path(d) / n).is_dir()
                                             or n == "__pycache__"])
    return python, root


def _launch(image_like, cfg: TrainConfig, bare: bool, tmp_path) -> dict:
    python, root = image_like
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    out = subprocess.run([python, "-c", MULTI_GPU_SCRIPT, str(root),
                          json.dumps({"cfg": cfg.model_dump(mode="json"), "bare": bare})],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_multi_gpu_launch_for_real_imports_the_package_the_way_the_image_does(
        merged_small, tiny_student, tmp_path, image_like):
    """The real `accelerate launch ... -m connectodistill train` (--cpu standing in for GPUs)."""
    run_dir = tmp_path / "runs" / "train" / "ddp"
    cfg = TrainConfig(augmented_dataset=merged_small, model=str(tiny_student), run_dir=run_dir,
                      output_dir=run_dir.parent, select_by="last", **TINY_TRAIN)
    # Control: without the PYTHONPATH that child_env() gives them, the children cannot import it.
    reason, line = _launch(image_like, cfg, True, tmp_path)["failure"]
    assert reason == "missing module" and line.endswith("No module named connectodistill")
    assert _launch(image_like, cfg, False, tmp_path)["commits"] >= 1
    assert (run_dir / "adapter_model.safetensors").is_file()
    assert json.loads((run_dir / "training_config.json").read_text())["global_step"] > 0
    assert list((run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"))


def test_children_get_the_package_folder_on_pythonpath(monkeypatch):
    import connectodistill

    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = container.child_env()
    assert env["PYTHONPATH"].split(os.pathsep) == [str(Path(connectodistill.__file__).resolve().parent.parent),
                                                   "/elsewhere"]


def test_cli_flags_reach_the_remote_layer(user_dir, offline, monkeypatch):
    from typer.testing import CliRunner

    from connectodistill.cli import app

    runner = CliRunner()
    offline.hold = True  # the spawned job stays running on "Modal"
    r = runner.invoke(app, ["train", "--data", "merged.parquet", "--model", "students/tiny", "--run-name", "c",
                            "--remote", "--gpu", "a100-80gb:2", "--timeout", "7200", "--detach"])
    assert r.exit_code == 0, r.output
    (kwargs,) = offline.calls
    assert kwargs["gpus"] == 2 and kwargs["settings"]["run_name"] == "c"
    stub = json.loads(next(Path("runs").glob("*/modal_call.json")).read_text())
    assert (stub["gpu"], stub["timeout"]) == ("A100-80GB:2", 7200)
    r = runner.invoke(app, ["train", "--data", "merged.parquet", "--remote", "--gpu", "V100"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "unknown GPU" in r.output
    # On eval, --gpu and --timeout are eval's own.
    seen = []
    monkeypatch.setattr(remote, "evaluate_remote", lambda cfg, rc: seen.append(rc))
    r = runner.invoke(app, ["eval", "--base-model", "students/tiny", "--remote", "--gpu", "h100", "--timeout", "600"])
    assert r.exit_code == 0, r.output
    assert (seen[0].gpu, seen[0].eval_gpu, seen[0].timeout, seen[0].eval_timeout) == ("A100-80GB", "h100", None, 600)
    (offline.root / "runs" / "train" / "x" / "checkpoints").mkdir(parents=True)
    r = runner.invoke(app, ["fetch"])
    assert r.exit_code == 0 and "stopped" in r.output and "running" in r.output
    r = runner.invoke(app, ["fetch", "--follow"])
    assert r.exit_code == 2 and "need a NAME" in r.output
