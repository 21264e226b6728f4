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
