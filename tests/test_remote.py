"""`--remote` on Modal, offline: the app's declaration, the container functions run in-process
on the tiny student, and the dispatch (upload, call, download) with only the network replaced.

Nothing here reaches Modal: volumes are local folders (``FakeVolume``), ``app.run()`` is
replaced by a no-op and ``.remote()`` by ``.local()``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest

from connectodistill import remote
from connectodistill.config import EvalConfig, RemoteConfig, TrainConfig
from connectodistill.errors import UserError

RC = RemoteConfig(models_volume="t-models", datasets_volume="t-datasets", runs_volume="t-runs",
                  hf_secret="hf-secret", wandb_secret="wandb-secret")
MOUNT_OF = {RC.models_volume: "models", RC.datasets_volume: "datasets", RC.runs_volume: "runs",
            # the defaults, which the CLI uses
            RemoteConfig().models_volume: "models", RemoteConfig().datasets_volume: "datasets",
            RemoteConfig().runs_volume: "runs"}
TINY_TRAIN = dict(epochs=1, num_samples=16, batch_size=8, gradient_accumulation=1, learning_rate=3e-3,
                  warmup_steps=0, progress=False, seed=0)
TINY_EVAL = dict(num_samples=4, batch_size=4, max_new_tokens=8, progress=False)

# `.local()` warns that volumes are not mounted: here the mounts are local folders on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:The .* function is executing locally:UserWarning")


# ----------------------------------------------------------------------------- fakes
class FakeVolume:
    """A Modal volume's client API (listdir, read_file, batch_upload) over a local folder.

    The folder is also what the in-process container functions see as the mount, as on Modal.
    """

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.uploads: list[str] = []

    def _entry(self, p: Path):
        from modal.types import FileEntry, FileEntryType

        kind = FileEntryType.FILE if p.is_file() else FileEntryType.DIRECTORY
        st = p.stat()
        return FileEntry(path=p.relative_to(self.root).as_posix(), type=kind, mtime=int(st.st_mtime),
                         size=st.st_size)

    def listdir(self, path: str, *, recursive: bool = False):
        p = self.root / path.lstrip("/")
        if not p.exists():
            raise FileNotFoundError(path)  # Modal raises NotFoundError; both are handled
        if p.is_file():
            return [self._entry(p)]
        return [self._entry(q) for q in sorted(p.rglob("*") if recursive else p.iterdir())]

    def read_file(self, path: str):
        data = (self.root / path.lstrip("/")).read_bytes()
        for i in range(0, max(len(data), 1), 1 << 16):
            yield data[i:i + (1 << 16)]

    @contextmanager
    def batch_upload(self, force: bool = False):
        batch = _Batch()
        yield batch
        for src, dst in batch.files:  # written at the end, all at once, as Modal does
            target = self.root / dst.lstrip("/")
            if target.exists() and not force:
                raise FileExistsError(dst)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            self.uploads.append(dst)


class _Batch:
    def __init__(self):
        self.files = []

    def put_file(self, local, remote_path, mode=None):
        self.files.append((Path(local), str(remote_path)))


class Offline:
    """Replaces the network boundary of `remote`: volumes, app.run(), .remote()/.spawn()."""

    def __init__(self, root: Path):
        self.root = root
        mounts = {mount: FakeVolume(root / mount) for mount in remote.MOUNTS}
        self.volumes = {name: mounts[mount] for name, mount in MOUNT_OF.items()}
        self.calls: list[dict] = []

    def install(self, monkeypatch):
        monkeypatch.setenv(remote.ROOT_ENV, str(self.root))
        monkeypatch.setattr(remote, "_volume", lambda name: self.volumes[name])
        monkeypatch.setattr(remote, "_running", lambda app, detach: nullcontext())
        monkeypatch.setattr(remote, "_call", self.call)
        return self

    def call(self, fn, detach, **kwargs):
        self.calls.append(kwargs)
        if detach:
            return type("FunctionCall", (), {"object_id": "fc-offline"})()
        return fn.local(**kwargs)

    @property
    def uploads(self) -> int:
        return sum(len(v.uploads) for v in {id(v): v for v in self.volumes.values()}.values())


class Trap:
    """Any use of a volume or of app.run() fails the test: nothing may be sent."""

    def __getattr__(self, name):
        raise AssertionError(f"reached Modal: volume.{name}")


@pytest.fixture
def no_network(monkeypatch):
    monkeypatch.setattr(remote, "_volume", lambda name: Trap())

    def running(app, detach):
        raise AssertionError("reached Modal: app.run()")

    monkeypatch.setattr(remote, "_running", running)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    return Offline(tmp_path / "volumes").install(monkeypatch)


@pytest.fixture
def commits(monkeypatch):
    """Volume commits the container functions ask for (a no-op outside Modal anyway)."""
    seen: list[str | None] = []
    monkeypatch.setattr(remote, "_commit_volume", seen.append)
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
@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["eval", "--help"], ["fetch", "--help"]])
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
    monkeypatch.setattr(remote, "__file__", str(tmp_path / "site-packages" / "connectodistill" / "remote.py"))
    reqs = remote.runtime_requirements()
    assert any(r.startswith("bitsandbytes") for r in reqs) and any(r.startswith("torch") for r in reqs)
    assert not any(r.startswith(("modal", "pytest", "ruff")) or ";" in r for r in reqs)


def test_declared_functions_follow_the_flags():
    rc = RC.model_copy(update={"gpu": "h100:2", "timeout": 7200})
    declared = remote.declare(rc, use_wandb=True, environ={"HF_TOKEN": "hf_local_token_value"})
    assert declared.app.name == rc.app_name
    for fn, retries in ((declared.train, remote.TRAIN_RETRIES), (declared.evaluate, 1)):
        info = fn.info()  # static info: available before the app runs, no network
        assert info.gpus == [("H100", 2)]
        assert info.timeout == 7200
        assert info.max_retries == retries
        assert {path: v.name for path, v in info.volumes.items()} == {
            "/models": "t-models", "/datasets": "t-datasets", "/runs": "t-runs"}
        # The local token travels as a secret built from it; W&B comes from the named secret.
        assert info.secrets == ["Secret.from_dict([HF_TOKEN])", "modal.Secret.from_name('wandb-secret')"]
        assert "hf_local_token_value" not in repr(info)
    assert declared.train._spec_.gpus == "H100:2"


def test_secrets_come_from_named_secrets_when_not_set_here():
    info = remote.declare(RC, environ={}).train.info()
    assert info.secrets == ["modal.Secret.from_name('hf-secret')"]  # no W&B unless asked for
    info = remote.declare(RC.model_copy(update={"hf_secret": None}), environ={}).evaluate.info()
    assert info.secrets == []


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


def test_modal_setup_problems_are_one_line_user_errors():
    from modal.exception import AuthError, NotFoundError

    with pytest.raises(UserError, match="run `modal setup`"):
        with remote._modal_errors(RC):
            raise AuthError("Token missing. Could not authenticate client.\nmore")
    with pytest.raises(UserError, match="modal secret create hf-secret HF_TOKEN") as e:
        with remote._modal_errors(RC):
            raise NotFoundError("Secret 'hf-secret' not found")
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- container functions
@pytest.mark.slow
def test_train_function_leaves_a_local_runs_folder_and_resumes(
        merged_small, tiny_student, local_run, offline, commits, monkeypatch):
    declared = remote.declare(RC)
    settings = TrainConfig(augmented_dataset=merged_small, model=str(tiny_student), run_name="local",
                           **TINY_TRAIN).model_dump(mode="json")
    result = declared.train.local(settings=settings, links={}, run_name="r1", runs_volume="t-runs",
                                  models_volume="t-models")
    assert result == {"name": "r1"}
    run_dir = offline.root / "runs" / "train" / "r1"
    assert _tree(run_dir) == _tree(local_run)  # the folder a local run leaves
    config = json.loads((run_dir / "training_config.json").read_text())
    n_ckpt = len(list((run_dir / "checkpoints").glob("checkpoint-*")))
    assert commits.count("t-runs") >= n_ckpt + 1  # each checkpoint, then the end

    # Preempted after the last checkpoint, while saving the adapter; the next checkpoint was cut
    # off half-written. The retried call drops that one and resumes from the last complete one.
    for name in ("adapter_model.safetensors", "training_config.json"):
        (run_dir / name).unlink()
    broken = run_dir / "checkpoints" / "checkpoint-999"
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes(b"partial")
    from connectodistill import training

    seen = []
    real_train = training.train
    monkeypatch.setattr(training, "train", lambda cfg, **kw: seen.append(cfg.resume) or real_train(cfg, **kw))
    assert declared.train.local(settings=settings, links={}, run_name="r1") == {"name": "r1"}
    assert seen == [True]
    assert not broken.exists()
    assert _tree(run_dir) == _tree(local_run)
    assert json.loads((run_dir / "training_config.json").read_text())["global_step"] == config["global_step"]


def test_train_function_reports_bad_input_instead_of_failing(merged_small, offline, commits):
    settings = TrainConfig(augmented_dataset=merged_small, model="./no/such/model").model_dump(mode="json")
    result = remote.declare(RC).train.local(settings=settings, links={}, run_name="bad")
    assert "model folder not found" in result["user_error"]  # returned: Modal must not retry it


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
    with remote._inputs_linked({"data/merged.parquet": "datasets/abc/merged.parquet",
                                str(tmp_path / "data" / "merged.parquet"): "datasets/abc/merged.parquet"}):
        assert Path("data/merged.parquet").read_text() == "uploaded"
        assert (tmp_path / "data" / "merged.parquet").read_text() == "local"  # exists: left alone
    assert Path.cwd() == tmp_path


def test_multi_gpu_runs_accelerate_and_commits_each_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "train" / "r"
    cfg = TrainConfig(augmented_dataset="merged.parquet", run_dir=run_dir, output_dir=run_dir.parent)
    cmd = remote._accelerate_command(Path("cfg.json"), 4)
    assert cmd[1:] == ["-m", "accelerate.commands.launch", "--num_processes", "4", "--num_machines", "1",
                       "--dynamo_backend", "no", "-m", "connectodistill", "train", "--config", "cfg.json"]
    # Stand-in for `accelerate launch ... train --config`: reads the config as the CLI does and
    # writes two checkpoints, a while apart.
    script = (
        "import sys, time; from pathlib import Path\n"
        "from connectodistill.config import TrainConfig, build_config, load_config_file\n"
        "cfg = build_config(TrainConfig, load_config_file(Path(sys.argv[1])), {})\n"
        "for step in (1, 2):\n"
        "    d = Path(cfg.run_dir) / 'checkpoints' / f'checkpoint-{step}'\n"
        "    d.mkdir(parents=True); (d / 'trainer_state.json').write_text('{}'); time.sleep(0.5)\n"
    )
    monkeypatch.setattr(remote, "_accelerate_command", lambda f, n: [sys.executable, "-c", script, str(f)])
    monkeypatch.setattr(remote, "CHECKPOINT_POLL_SECONDS", 0.05)
    commits = []
    remote._train_multi_gpu(cfg, 2, lambda: commits.append(1))
    assert len(commits) == 2
    monkeypatch.setattr(remote, "_accelerate_command", lambda f, n: [sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="exit code 3"):
        remote._train_multi_gpu(cfg, 2, lambda: None)


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
    assert {p.name for p in out.iterdir()} == {"predictions.csv", "summary.json", "confusion.png"}
    assert json.loads((out / "summary.json").read_text())["adapter"] == name
    # Its base model was there already; its benchmark (a local file) is uploaded now, once.
    assert offline.uploads == uploads + 1
    assert (offline.root / "datasets" / _sha256(small_benchmark) / small_benchmark.name).is_file()


def test_eval_remote_of_a_base_model_uploads_the_local_benchmark(user_dir, small_benchmark, offline, commits):
    shutil.copyfile(small_benchmark, user_dir / "bench.parquet")
    out = remote.evaluate_remote(EvalConfig(base_model="students/tiny", dataset_name="bench.parquet",
                                            **TINY_EVAL), RC)
    assert out == Path("results") / "base_tiny_all"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["dataset_name"] == "bench.parquet" and summary["n"] == 4
    assert (offline.root / "datasets" / _sha256(user_dir / "bench.parquet") / "bench.parquet").is_file()


def test_detach_starts_and_says_how_to_fetch(user_dir, offline, capsys):
    rc = RC.model_copy(update={"detach": True})
    cfg = TrainConfig(augmented_dataset="merged.parquet", model="students/tiny", run_name="d")
    assert remote.train_remote(cfg, rc) is None
    (kwargs,) = offline.calls
    assert kwargs["gpus"] == 1 and kwargs["links"]["merged.parquet"].startswith("datasets/")
    assert f"connectodistill fetch {kwargs['run_name']} --output-dir runs" in capsys.readouterr().err
    assert not Path("runs").exists()


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
        ("done", "train", "finished"), ("busy", "train", "running"), ("done_test", "eval", "finished")}
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
    assert "x" in out and "running" in out


def test_upload_is_content_addressed(tmp_path):
    vol = FakeVolume(tmp_path / "vol")
    folder = tmp_path / "run"
    (folder / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "checkpoints" / "checkpoint-1" / "big.bin").write_bytes(b"x" * 10)
    key = remote._upload(vol, "datasets", folder)
    assert key.startswith("datasets/") and key.endswith("/run")
    assert vol.uploads == [f"/{key.split('/', 1)[1]}/adapter_config.json"]  # no checkpoints
    (folder / "checkpoints" / "checkpoint-1" / "big.bin").write_bytes(b"y" * 10)
    assert remote._upload(vol, "datasets", folder) == key  # checkpoints do not count
    assert len(vol.uploads) == 1
    (folder / "adapter_config.json").write_text('{"r": 8}')
    assert remote._upload(vol, "datasets", folder) != key


@pytest.mark.slow
def test_multi_gpu_launch_for_real_on_two_cpu_processes(merged_small, tiny_student, tmp_path, monkeypatch):
    """The real `accelerate launch ... train --config` path, with --cpu standing in for the GPUs."""
    real = remote._accelerate_command
    monkeypatch.setattr(remote, "_accelerate_command", lambda f, n: [*real(f, n)[:3], "--cpu", *real(f, n)[3:]])
    monkeypatch.setattr(remote, "CHECKPOINT_POLL_SECONDS", 0.5)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_dir = tmp_path / "runs" / "train" / "ddp"
    cfg = TrainConfig(augmented_dataset=merged_small, model=str(tiny_student), run_dir=run_dir,
                      output_dir=run_dir.parent, select_by="last", **TINY_TRAIN)
    commits = []
    remote._train_multi_gpu(cfg, 2, lambda: commits.append(1))
    assert (run_dir / "adapter_model.safetensors").is_file()
    assert json.loads((run_dir / "training_config.json").read_text())["global_step"] > 0
    assert len(commits) >= 1 and list((run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"))


def test_cli_flags_reach_the_remote_layer(user_dir, offline):
    from typer.testing import CliRunner

    from connectodistill.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["train", "--data", "merged.parquet", "--model", "students/tiny", "--run-name", "c",
                            "--remote", "--gpu", "a100-80gb:2", "--detach"])
    assert r.exit_code == 0, r.output
    (kwargs,) = offline.calls
    assert kwargs["gpus"] == 2 and kwargs["settings"]["run_name"] == "c"
    r = runner.invoke(app, ["train", "--data", "merged.parquet", "--remote", "--gpu", "V100"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "unknown GPU" in r.output
    (offline.root / "runs" / "train" / "x" / "checkpoints").mkdir(parents=True)
    r = runner.invoke(app, ["fetch"])
    assert r.exit_code == 0 and "running" in r.output
