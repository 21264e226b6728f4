"""Shared fixtures: the offline kit's tiny students and synthetic data, built once per session."""

from __future__ import annotations

import os

import pytest

# Never reach for the Hub in tests: a hub id must fail at once, not after retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory):
    """A tiny randomly-initialised Qwen3-VL saved to disk (path)."""
    from connectodistill.synthetic import make_tiny_student

    return make_tiny_student(tmp_path_factory.mktemp("students") / "qwen3-vl", kind="qwen3-vl")


@pytest.fixture(scope="session")
def small_benchmark(tmp_path_factory):
    """A 120-sample synthetic benchmark parquet (new column spelling)."""
    from connectodistill.synthetic import make_benchmark

    return make_benchmark(tmp_path_factory.mktemp("bench") / "benchmark.parquet", n=120, seed=0)


@pytest.fixture(scope="session")
def teacher_csvs(small_benchmark, tmp_path_factory):
    """K=5 teacher CSVs for ``small_benchmark``."""
    from connectodistill.synthetic import make_teacher_csvs

    return make_teacher_csvs(small_benchmark, tmp_path_factory.mktemp("csvs"), k=5, seed=0)


@pytest.fixture(scope="session")
def merged_small(small_benchmark, teacher_csvs, tmp_path_factory):
    """merge() output for the small benchmark, correct teacher rows only (path)."""
    from connectodistill.merging import merge

    out = tmp_path_factory.mktemp("merged") / "merged.parquet"
    merge(csv_files=teacher_csvs, output=out, dataset_name=str(small_benchmark), filter_correct_only=True)
    return out


@pytest.fixture(scope="session")
def trained_run(merged_small, tiny_student, tmp_path_factory):
    """A short LoRA run of the tiny student on ``merged_small`` (run folder)."""
    from connectodistill.training import train

    return train(augmented_dataset=merged_small, model=str(tiny_student),
                 output_dir=tmp_path_factory.mktemp("runs"), run_name="fixture", epochs=2,
                 batch_size=8, gradient_accumulation=1, learning_rate=3e-3, warmup_steps=0,
                 select_by="val_loss", progress=False, seed=0)
