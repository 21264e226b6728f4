"""Folds and sweep points fanned out on Modal, offline: K spawned calls, the cost asked for up
front, a failed fold that loses nothing of the others, and a rerun that trains only what is
missing. The real container function runs in-process with ``training.train`` replaced by a
stand-in that writes what a run leaves behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from connectodistill import remote
from connectodistill.core.config import TrainConfig
from connectodistill.core.errors import UserError
from connectodistill.remote import container, fanout
from remote_fakes import DEPRECATIONS_ARE_ERRORS, LOCAL_WARNING, RC, Offline

pytestmark = [pytest.mark.filterwarnings(LOCAL_WARNING), pytest.mark.filterwarnings(DEPRECATIONS_ARE_ERRORS)]
YES = RC.model_copy(update={"yes": True})


def fake_train(cfg, callbacks=()):
    run_dir = Path(cfg.run_dir)
    (run_dir / "checkpoints" / "checkpoint-2").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text(
        json.dumps({"global_step": 2, "best_metric": cfg.learning_rate}))
    (run_dir / "adapter_model.safetensors").write_bytes(b"weights")
    (run_dir / "training_config.json").write_text(json.dumps({
        "base_model": cfg.model, "fold": cfg.fold, "best_metric": cfg.learning_rate * 1000}))
    return run_dir


@pytest.fixture
def offline(tmp_path, monkeypatch):
    from connectodistill.training import recipe as training

    monkeypatch.setattr(training, "train", fake_train)
    monkeypatch.setattr(container, "commit_volume", lambda name: None)
    monkeypatch.setattr(fanout, "POLL_SECONDS", 0.0)
    return Offline(tmp_path / "volumes").install(monkeypatch)


@pytest.fixture
def home(tmp_path, small_benchmark, teacher_csvs, tiny_student, monkeypatch):
    from connectodistill.merging import merge

    home = tmp_path / "user"
    home.mkdir()
    merge(csv_files=teacher_csvs, output=home / "cv.parquet", dataset_name=str(small_benchmark), folds=3,
          filter_correct_only=True, quiet=True, progress=False)
    shutil.copytree(tiny_student, home / "students" / "tiny")
    monkeypatch.chdir(home)
    return home


def cfg(**kw) -> TrainConfig:
    return TrainConfig(augmented_dataset="cv.parquet", model="students/tiny", run_name="cv", **kw)


def test_folds_fan_out_one_container_each_and_come_back(home, offline, capsys):
    cv_dir = remote.train_remote(cfg(folds=True), YES)
    assert len(offline.calls) == 3
    assert sorted(c["run_name"] for c in offline.calls) == [f"{cv_dir.name}__fold-{i}" for i in range(3)]
    assert [json.loads(c["settings"] and json.dumps(c["settings"]))["fold"] for c in offline.calls] == [0, 1, 2]
    for i in range(3):
        assert (cv_dir / f"fold-{i}" / "training_config.json").is_file()
    status = json.loads((cv_dir / "cv_config.json").read_text())["fold_runs"]
    assert {v["status"] for v in status.values()} == {"done"}
    record = json.loads((cv_dir / fanout.FANOUT_RECORD).read_text())["runs"]
    assert [r["status"] for r in record] == ["finished"] * 3 and all(r["call_id"] for r in record)
    err = capsys.readouterr().err
    assert "3 container(s) of A100-80GB" in err and "GPU-hours" in err
    # a rerun finds every fold done: nothing is spawned
    remote.train_remote(cfg(folds=True), YES)
    assert len(offline.calls) == 3


def test_a_failed_fold_loses_nothing_and_a_rerun_trains_only_it(home, offline):
    def run(fn, kwargs):
        if kwargs["run_name"].endswith("fold-1") and not getattr(run, "fixed", False):
            raise RuntimeError("preempted three times")
        return fn.local(**kwargs)

    offline.run = run
    with pytest.raises(UserError, match=r"1 fold\(s\) failed on Modal \(fold-1\).*rerun the same command"):
        remote.train_remote(cfg(folds=True), YES)
    cv_dir = next(p for p in home.glob("runs/*") if p.is_dir())
    assert (cv_dir / "fold-0" / "training_config.json").is_file()
    assert (cv_dir / "fold-2" / "training_config.json").is_file()
    assert not (cv_dir / "fold-1" / "training_config.json").is_file()
    assert json.loads((cv_dir / "cv_config.json").read_text())["fold_runs"]["1"]["status"] == "failed"
    run.fixed = True
    n = len(offline.calls)
    remote.train_remote(cfg(folds=True), YES)
    assert [c["run_name"] for c in offline.calls[n:]] == [f"{cv_dir.name}__fold-1"]  # only the missing one
    assert (cv_dir / "fold-1" / "training_config.json").is_file()


def test_a_fan_out_asks_first_and_refuses_without_a_terminal(home, offline, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(UserError, match="pass --yes"):
        remote.train_remote(cfg(folds=True), RC)
    assert offline.calls == []


def test_a_remote_sweep_fans_out_every_point_and_chooses_on_val(home, offline):
    out = remote.train_remote(cfg(sweep={"learning_rate": [3e-4, 1e-4]}, select_by="val_loss"), YES)
    assert len(offline.calls) == 2
    record = json.loads((out / "sweep.json").read_text())
    assert record["chosen"]["params"] == {"learning_rate": 1e-4}  # the lower val loss (fake: lr x 1000)
    assert (out / "point-1" / "training_config.json").is_file()


@pytest.mark.parametrize("interruption", ["lost connection", "ctrl-c"])
def test_a_lost_connection_or_ctrl_c_while_folds_run_reports_nothing_as_done(home, offline, interruption, capsys):
    """Modal's runner swallows both inside a detached app.run() (remote_fakes.fake_app_run): the
    command must still stop with one line, the folds keep running, and a rerun picks them up."""
    from modal.exception import ConnectionError

    offline.hold = True
    exc = ConnectionError("Deadline exceeded") if interruption == "lost connection" else KeyboardInterrupt()
    offline.on_spawn = lambda call: setattr(call, "exc_on_get", exc)
    with pytest.raises(UserError if interruption == "lost connection" else KeyboardInterrupt) as e:
        remote.train_remote(cfg(folds=True), YES)
    err = capsys.readouterr().err
    line = str(e.value) if interruption == "lost connection" else err.strip().splitlines()[-1]
    assert "3 run(s) keep running on Modal" in line and "rerun the same command" in line and "\n" not in line
    cv_dir = next(p for p in home.glob("runs/*") if p.is_dir())
    folds = json.loads((cv_dir / "cv_config.json").read_text())["fold_runs"]
    assert not any(v.get("status") in ("done", "failed") for v in folds.values())  # nothing called done
    record = json.loads((cv_dir / fanout.FANOUT_RECORD).read_text())["runs"]
    assert [(r["status"], r["call_id"]) for r in record] == [("running", f"fc-{i}") for i in (1, 2, 3)]
    assert all(c.state == "running" and c.terminated is None for c in offline.by_id.values())

    for call in offline.by_id.values():  # the connection is back; the folds finish on Modal
        call.exc_on_get, call.hold = None, False
    offline.on_spawn = None
    remote.train_remote(cfg(folds=True), YES)
    assert len(offline.calls) == 3  # re-attached, nothing trained twice
    folds = json.loads((cv_dir / "cv_config.json").read_text())["fold_runs"]
    assert {v["status"] for v in folds.values()} == {"done"}
