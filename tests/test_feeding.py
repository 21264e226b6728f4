"""Feeding the GPU: data loader workers beside the training loop (their default from the CPU
count), a collator and dataset that travel to them, and Modal containers that reserve the
cores and memory for them."""

from __future__ import annotations

import json
import pickle

import pytest
from typer.testing import CliRunner

from connectodistill.cli import app
from connectodistill.core.config import TrainConfig
from connectodistill.training import trainers

runner = CliRunner()


def test_default_workers_follow_the_cpu_count():
    assert trainers.default_workers(cuda=False, cpus=64) == 0  # on the CPU the model needs the cores
    assert trainers.default_workers(cuda=True, cpus=2) == 0  # the loop and the rest take both
    assert [trainers.default_workers(cuda=True, cpus=n) for n in (3, 4, 5, 6, 16)] == [1, 2, 3, 4, 4]
    assert trainers.default_workers(cuda=True, cpus=12, ranks=2) == 4  # per process of a multi-GPU run
    assert trainers.default_workers(cuda=True, cpus=8, ranks=4) == 0
    assert trainers.data_workers(TrainConfig()) == 0  # this machine has no GPU
    assert trainers.data_workers(TrainConfig(num_workers=3)) == 3


def test_workers_are_kept_between_epochs(tmp_path):
    args = trainers.trainer_arguments(TrainConfig(num_workers=2), tmp_path, metric=None, greater=None)
    assert (args["dataloader_num_workers"], args["dataloader_persistent_workers"]) == (2, True)
    args = trainers.trainer_arguments(TrainConfig(), tmp_path, metric=None, greater=None)
    assert (args["dataloader_num_workers"], args["dataloader_persistent_workers"]) == (0, False)


def test_the_collator_and_the_lazy_dataset_pickle(tiny_student, merged_small):
    """What a worker started with ``spawn`` receives, pickled, must work the same there."""
    import torch

    from connectodistill.core.modeling import load_processor
    from connectodistill.training.collator import DistillCollator
    from connectodistill.training.examples import build_examples, load_training_data

    data = load_training_data(merged_small)
    examples, _ = build_examples(data.train_df, data, target="teacher", fill_missing=True)
    collator = DistillCollator(load_processor(str(tiny_student))[0], data.image_cols, 4096)
    again = pickle.loads(pickle.dumps(collator))
    a, b = collator(examples[:2]), again(examples[:2])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = data.train_df.head(2).to_dict("records")
    ds = trainers.lazy_image_dataset([{"row": 0}, {"row": 1}], rows, data.image_cols)
    copy = pickle.loads(pickle.dumps(ds))
    assert [im.size for im in copy[1]["images"]] == [im.size for im in ds[1]["images"]]


def test_training_with_a_worker_is_the_same_training(merged_small, tiny_student, tmp_path):
    losses = {}
    for workers in (0, 1):
        r = runner.invoke(app, ["train", "--data", str(merged_small), "--model", str(tiny_student),
                                "--output-dir", str(tmp_path / str(workers)), "--num-samples", "8",
                                "--epochs", "1", "--batch-size", "4", "--gradient-accumulation", "1",
                                "--select-by", "last", "--num-workers", str(workers), "--seed", "0"])
        assert r.exit_code == 0, r.output
        (run,) = (tmp_path / str(workers)).iterdir()
        cfg = json.loads((run / "training_config.json").read_text())
        assert cfg["dataloader_workers"] == workers and cfg["settings"]["num_workers"] == workers
        losses[workers] = [h["loss"] for h in json.loads((run / "loss_history.json").read_text()) if "loss" in h]
    assert losses[1] == pytest.approx(losses[0])  # the same batches, made elsewhere


def test_a_negative_worker_count_is_one_line(merged_small, tiny_student, tmp_path):
    r = runner.invoke(app, ["train", "--data", str(merged_small), "--model", str(tiny_student),
                            "--output-dir", str(tmp_path / "runs"), "--num-workers", "-1"])
    assert r.exit_code == 2 and "num_workers" in r.output and r.output.strip().count("\n") == 0
    assert not (tmp_path / "runs").exists()


def test_gpu_functions_reserve_cores_and_memory_per_gpu():
    from connectodistill import remote
    from connectodistill.core.config import RemoteConfig
    from connectodistill.remote import app as remote_app

    d = remote.declare(RemoteConfig(gpu="H100:2", eval_gpu="L4"), environ={})
    per_cpu, per_mib = remote_app.CPU_PER_GPU, remote_app.MEMORY_PER_GPU_MIB
    assert per_cpu >= 1 + trainers.MAX_WORKERS  # the loop and every default worker
    train, evaluate, predict = d.train.info(), d.evaluate.info(), d.predict.info()
    assert (train.cpu, train.memory_mib) == (2 * per_cpu, 2 * per_mib)
    assert (evaluate.cpu, evaluate.memory_mib) == (predict.cpu, predict.memory_mib) == (per_cpu, per_mib)
