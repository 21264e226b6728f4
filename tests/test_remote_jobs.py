"""A remote job's life, offline: spawned in a detached app, waited on or left running, listed,
followed, cancelled and downloaded; the weights fetched on a CPU container before any GPU.

The real container functions run in-process (``.local()``) with ``training.train`` /
``evaluation.evaluate`` replaced by stand-ins that write what they would: the calls, records,
outcomes and downloads are the real ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from connectodistill import remote
from connectodistill.core.config import EvalConfig, RemoteConfig, TrainConfig
from connectodistill.core.errors import UserError
from connectodistill.remote import container
from remote_fakes import DEPRECATIONS_ARE_ERRORS, LOCAL_WARNING, RC, Offline

pytestmark = [pytest.mark.filterwarnings(LOCAL_WARNING), pytest.mark.filterwarnings(DEPRECATIONS_ARE_ERRORS)]
DETACH = RC.model_copy(update={"detach": True})


def fake_train(cfg, callbacks=()):
    """What train() leaves in its run folder (a checkpoint, the adapter, the config last)."""
    run_dir = Path(cfg.run_dir)
    (run_dir / "checkpoints" / "checkpoint-1").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (run_dir / "adapter_model.safetensors").write_bytes(b"weights")
    (run_dir / "training_config.json").write_text(json.dumps({"base_model": cfg.model, "dataset_name": "b"}))
    return run_dir


def fake_evaluate(cfg):
    out = Path(cfg.output_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.csv").write_text("id,answer\n")
    (out / "summary.json").write_text(json.dumps({"accuracy": 0.5, "name": cfg.name}))
    return out


@pytest.fixture
def offline(tmp_path, monkeypatch):
    from connectodistill.evaluation import recipe as evaluation
    from connectodistill.training import recipe as training

    monkeypatch.setattr(training, "train", fake_train)
    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    monkeypatch.setattr(container, "commit_volume", lambda name: None)
    return Offline(tmp_path / "volumes").install(monkeypatch)


@pytest.fixture
def user_dir(tmp_path, merged_small, tiny_student, monkeypatch):
    home = tmp_path / "user"
    home.mkdir()
    shutil.copyfile(merged_small, home / "merged.parquet")
    shutil.copytree(tiny_student, home / "students" / "tiny")
    monkeypatch.chdir(home)
    return home


def train_cfg(**kw) -> TrainConfig:
    return TrainConfig(augmented_dataset="merged.parquet", model="students/tiny", **kw)


def test_attached_run_is_a_detached_job_waited_on_then_downloaded(user_dir, offline, capsys):
    local = remote.train_remote(train_cfg(run_name="a"), RC)
    assert offline.runs == [True]  # the app itself is always detached
    (call,) = offline.by_id.values()
    assert call.gets == [60.0]  # FunctionCall.get in slices, not one endless wait
    assert {p.name for p in local.iterdir()} == {"adapter_model.safetensors", "training_config.json", "modal_call.json"}
    assert json.loads((local / "modal_call.json").read_text())["call_id"] == "fc-1"
    assert "closing this terminal leaves it running" in capsys.readouterr().err
    (row,) = remote.fetch(None, None, RC)
    assert (row["name"], row["status"], row["call_id"]) == (local.name, "finished", "fc-1")


def test_a_deterministic_failure_comes_back_as_one_line(user_dir, offline, monkeypatch):
    import torch

    from connectodistill.training import recipe as training

    def oom(cfg, callbacks=()):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(training, "train", oom)
    with pytest.raises(UserError) as e:
        remote.train_remote(train_cfg(run_name="o"), RC)
    assert "failed on Modal: CUDA out of memory" in str(e.value) and "--batch-size 1" in str(e.value)
    assert "\n" not in str(e.value)
    (row,) = remote.fetch(None, None, RC)
    assert row["status"] == "failed" and row["detail"].startswith("CUDA out of memory")


def test_a_lost_connection_or_ctrl_c_leaves_the_job_running(user_dir, offline, capsys):
    from modal.exception import ConnectionError

    offline.on_spawn = lambda call: setattr(call, "exc_on_get", ConnectionError("Deadline exceeded"))
    with pytest.raises(UserError, match=r"keeps running on Modal: `connectodistill fetch .* --follow`"):
        remote.train_remote(train_cfg(run_name="l"), RC)
    offline.on_spawn = lambda call: setattr(call, "exc_on_get", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        remote.train_remote(train_cfg(run_name="k"), RC)
    assert "stopped waiting" in capsys.readouterr().err
    assert all(c.state == "running" and c.terminated is None for c in offline.by_id.values())
    for call in offline.by_id.values():  # Modal still holds both: they are listed as running
        call.exc_on_get, call.hold = None, True
    assert [r["status"] for r in remote.fetch(None, None, RC)] == ["running", "running"]


def test_detached_jobs_listed_followed_downloaded_and_cancelled(user_dir, offline, capsys):
    offline.hold = True
    remote.train_remote(train_cfg(run_name="one"), DETACH)
    remote.train_remote(train_cfg(run_name="two"), DETACH)
    one, two = (offline.calls[i]["run_name"] for i in (0, 1))
    rows = remote.fetch(None, None, RC)
    assert [(r["name"], r["status"]) for r in rows] == [(one, "running"), (two, "running")]
    assert all(r["detail"].startswith("started ") for r in rows)
    assert remote.fetch(one, None, RC)["status"] == "running"  # not waited on without --follow
    assert "--follow` waits for it" in capsys.readouterr().err

    # Reconnect: its logs stream (the last lines, then new ones), then it is downloaded.
    offline.by_id["fc-1"].hold = 2  # two more minutes of running
    got = remote.fetch(one, None, RC, follow=True)
    assert got == (Path("runs") / one).resolve()  # where it was started
    assert (got / "adapter_model.safetensors").read_bytes() == b"weights"
    err = capsys.readouterr().err
    assert "[fc-1] started" in err and "following" in err
    assert offline.by_id["fc-1"].gets[-2:] == [60.0, 60.0]  # waited in slices

    # Cancel the other: its containers are stopped, its checkpoints stay for --resume.
    row = remote.fetch(two, None, RC, cancel=True)
    assert row["status"] == "cancelled" and offline.by_id["fc-2"].terminated is True
    assert "--resume --run-dir" in capsys.readouterr().err
    assert remote.fetch(two, None, RC, cancel=True)["status"] == "cancelled"  # nothing more to do
    statuses = {r["name"]: r["status"] for r in remote.fetch(None, None, RC)}
    assert statuses == {one: "finished", two: "cancelled"}
    with pytest.raises(UserError, match=f"^{two} cancelled on Modal"):
        remote.fetch(two, None, RC)
    # A resumed run gets a new call; the old outcome does not stick to it.
    assert remote.train_remote(train_cfg(run_dir=Path(two), resume=True), DETACH) is None
    assert {r["name"]: r["status"] for r in remote.fetch(None, None, RC)}[two] == "running"


def test_a_call_cancelled_on_modal_shows_as_cancelled_not_failed(user_dir, offline):
    """Cancelled from Modal's dashboard (no outcome file of ours): Modal answers RemoteError('')
    and the call graph says TERMINATED. An OOM-killed call gives the same RemoteError: failed."""
    offline.hold = True
    remote.train_remote(train_cfg(run_name="c"), DETACH)
    remote.train_remote(train_cfg(run_name="m"), DETACH)
    cancelled, killed = (offline.calls[i]["run_name"] for i in (0, 1))
    offline.by_id["fc-1"].cancel(terminate_containers=True)
    offline.by_id["fc-2"].killed = "oom"
    rows = {r["name"]: r for r in remote.fetch(None, None, RC)}
    assert (rows[cancelled]["status"], rows[killed]["status"]) == ("cancelled", "failed")
    with pytest.raises(UserError, match=f"^{cancelled} cancelled on Modal"):
        remote.fetch(cancelled, None, RC)
    with pytest.raises(UserError, match=f"^{killed} failed on Modal: .*without a result"):
        remote.fetch(killed, None, RC)
    # Waited on, a call cancelled meanwhile ends the wait as cancelled, with one line.
    offline.hold = False
    offline.on_spawn = lambda call: call.cancel()
    with pytest.raises(UserError, match=r"cancelled on Modal") as e:
        remote.train_remote(train_cfg(run_name="w"), RC)
    assert "\n" not in str(e.value)


def test_fetch_downloads_the_finished_runs_started_here(user_dir, offline, tmp_path):
    offline.hold = True
    remote.train_remote(train_cfg(run_name="w"), DETACH)
    name = offline.calls[0]["run_name"]
    assert not (Path("runs") / name / "training_config.json").exists()  # only the stub
    offline.by_id["fc-1"].hold = False  # the laptop was closed; the job finished meanwhile
    (row,) = remote.fetch(None, None, RC)
    assert row["status"] == "finished"
    assert (Path("runs") / name / "training_config.json").is_file()  # downloaded where it was started
    # Elsewhere, or by name into another folder.
    got = remote.fetch(name, tmp_path / "elsewhere", RC)
    assert got == tmp_path / "elsewhere" / name and (got / "adapter_model.safetensors").is_file()


def test_status_survives_modal_forgetting_the_call(user_dir, offline, monkeypatch):
    from connectodistill.training import recipe as training

    monkeypatch.setattr(training, "train", lambda cfg, callbacks=(): (_ for _ in ()).throw(
        UserError("merged file has no split lists")))
    with pytest.raises(UserError, match="^merged file has no split lists$"):  # as a local run says it
        remote.train_remote(train_cfg(run_name="f"), RC)
    offline.by_id.clear()  # Modal no longer knows the call: the container's outcome tells
    (row,) = remote.fetch(None, None, RC)
    assert (row["status"], row["detail"]) == ("failed", "merged file has no split lists")
    with pytest.raises(UserError, match=f"^{row['name']} failed on Modal: merged file has no split lists$"):
        remote.fetch(row["name"], None, RC)
    outcome = next((offline.root / "runs" / "calls" / "train").glob("*.outcome.json"))
    outcome.unlink()  # nor any outcome: what the folder shows
    (row,) = remote.fetch(None, None, RC)
    assert row["status"] == "stopped"


def test_resume_is_refused_while_the_run_still_runs(user_dir, offline):
    offline.hold = True
    remote.train_remote(train_cfg(run_name="r"), DETACH)
    name = offline.calls[0]["run_name"]
    (offline.root / "runs" / "train" / name / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="still running on Modal.*--cancel"):
        remote.train_remote(train_cfg(run_dir=Path(name), resume=True), DETACH)


def test_a_second_eval_of_the_same_name_waits_for_the_first(user_dir, offline):
    offline.hold = True
    cfg = EvalConfig(base_model="students/tiny", name="same")
    remote.evaluate_remote(cfg, DETACH)
    with pytest.raises(UserError, match="an eval named same is still running on Modal"):
        remote.evaluate_remote(cfg, DETACH)
    offline.hold = offline.by_id["fc-1"].hold = False  # the first one finishes
    assert remote.evaluate_remote(cfg, RC) == Path("results") / "same"


def test_eval_runs_on_one_gpu_and_takes_a_stub_for_the_run_on_the_volume(user_dir, offline):
    local = remote.train_remote(train_cfg(run_name="e"), RC.model_copy(update={"gpu": "H100"}))
    for p in local.iterdir():  # as after a detached start: only the stub is here
        if p.name != "modal_call.json":
            p.unlink()
    # A config whose remote: section trains on two GPUs: eval still takes one.
    out = remote.evaluate_remote(EvalConfig(adapter_path=local, name="res"), RC.model_copy(update={"gpu": "H100:2"}))
    assert out == Path("results") / "res" and (out / "summary.json").is_file()
    stub = json.loads((out / "modal_call.json").read_text())
    assert (stub["kind"], stub["gpu"], stub["timeout"]) == ("eval", "H100", 3600)
    assert offline.calls[1]["links"][str(local)] == f"runs/train/{local.name}"  # the volume's copy


# ----------------------------------------------------------------------------- weights first
@pytest.fixture
def hub(monkeypatch):
    """snapshot_download stand-in: writes a snapshot into the cache it is given."""
    import huggingface_hub

    seen = []

    def snapshot_download(repo_id, cache_dir=None, ignore_patterns=None, **kw):
        seen.append((repo_id, Path(cache_dir), ignore_patterns))
        if repo_id.startswith("gated/"):
            from test_remote import hub_error

            raise hub_error("GatedRepoError", f"401 Client Error. Cannot access gated repo {repo_id}.")
        snap = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "abc123"
        snap.mkdir(parents=True, exist_ok=True)
        (snap / "model.safetensors").write_bytes(b"x" * 1000)
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return seen


def test_weights_are_fetched_once_on_a_cpu_container_before_the_gpu(user_dir, offline, hub, capsys):
    offline.hold = True
    remote.train_remote(TrainConfig(augmented_dataset="merged.parquet", model="org/student", run_name="h"), DETACH)
    (prefetch,) = offline.blocking  # a blocking CPU call, before the spawn
    assert prefetch == {"model": "org/student", "models_volume": "t-models"}
    ((repo, cache, ignore),) = hub
    assert repo == "org/student" and cache == offline.root / "models" / "hf" / "hub" and "*.gguf" in ignore
    marker = json.loads((offline.root / "models" / "prefetched" / "org--student.json").read_text())
    assert marker["revision"] == "abc123" and marker["bytes"] == 1000
    assert len(offline.calls) == 1
    # A second run finds them there: no CPU call at all.
    remote.train_remote(TrainConfig(augmented_dataset="merged.parquet", model="org/student", run_name="i"), DETACH)
    assert len(offline.blocking) == 1 and len(hub) == 1 and len(offline.calls) == 2
    assert "already on the models volume" in capsys.readouterr().err
    # The body skips too, if called anyway.
    assert container.prefetch_in_container("org/student")["skipped"] is True


def test_a_gated_model_fails_fast_before_any_gpu_starts(user_dir, offline, hub):
    with pytest.raises(UserError) as e:
        remote.train_remote(TrainConfig(augmented_dataset="merged.parquet", model="gated/student"), DETACH)
    assert "gated/student failed on Modal: 401 Client Error. Cannot access gated repo" in str(e.value)
    assert "accept the model's terms" in str(e.value) and "hf-secret" in str(e.value) and "\n" not in str(e.value)
    assert offline.calls == []  # no GPU call was spawned
    assert not (offline.root / "models" / "prefetched").exists()


def test_ctrl_c_while_the_weights_download_stops_before_any_gpu(user_dir, offline, monkeypatch):
    import huggingface_hub

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(huggingface_hub, "snapshot_download", interrupted)
    with pytest.raises(KeyboardInterrupt):  # though the detached app.run() swallows it
        remote.train_remote(TrainConfig(augmented_dataset="merged.parquet", model="org/student"), RC)
    assert offline.calls == []


def test_fetch_of_a_volume_that_does_not_exist_is_one_line(offline):
    with pytest.raises(UserError, match="Volume 'nope' not found.*volumes are created by the first"):
        remote.fetch(None, None, RemoteConfig(runs_volume="nope"))


# ----------------------------------------------------------------------------- no GPU, no run
def test_a_gpu_container_without_a_gpu_fails_before_loading_anything(user_dir, offline, monkeypatch):
    """Modal hands out a container whose CUDA does not work (here: this CPU machine, seen as a
    Modal container): one line naming the container and the GPU, the outcome says so, nothing
    trained, evaluated or predicted on the CPU."""
    from connectodistill.evaluation import recipe as evaluation
    from connectodistill.prediction import recipe as prediction
    from connectodistill.training import recipe as training

    def loaded(*a, **kw):
        raise AssertionError("loaded something on a container without a GPU")

    monkeypatch.setattr(container, "in_modal_container", lambda: True)
    for module, name in ((training, "train"), (evaluation, "evaluate"), (prediction, "predict")):
        monkeypatch.setattr(module, name, loaded)
    with pytest.raises(UserError) as e:
        remote.train_remote(train_cfg(run_name="g"), RC.model_copy(update={"gpu": "H100"}))
    line = str(e.value)
    assert "the train container of" in line and "asked Modal for H100 and has no working GPU" in line
    assert "nothing was loaded" in line and "remote check --gpu" in line and "\n" not in line
    (row,) = remote.fetch(None, None, RC)
    assert (row["status"], row["reason"]) == ("failed", "no gpu")
    with pytest.raises(UserError, match="the eval container of base asked Modal for L4 and has no working GPU"):
        remote.evaluate_remote(EvalConfig(base_model="students/tiny", name="base"), RC.model_copy(update={"eval_gpu": "L4"}))
    got = container.predict_in_container({}, {}, "p", 0, gpu="H100")
    assert (got["status"], got["reason"], got["shard"]) == ("failed", "no gpu", 0)
    # The same bodies run here through .local() (not a Modal container): no check.
    monkeypatch.setattr(container, "in_modal_container", lambda: False)
    assert container.missing_gpu("train", "x", "H100") is None
