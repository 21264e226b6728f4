"""Run folders and results work from anywhere (issue 25, point 1).

A project made with relative paths (``merge ... --dataset-name data/benchmark.parquet``,
``train --model student``) is moved to another directory, then evaluated, predicted and exported
from a third one, through the CLI. The same file under another spelling is no config mismatch;
a recorded local path that is gone is one line naming it, never a Hub id.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from connectodistill.cli import app

runner = CliRunner()
GEN = ["--max-new-tokens", "8", "--batch-size", "4"]


def _ok(args: list[str]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """A project made in ``made/`` with relative paths, then moved to ``moved/project``; the
    commands below run from ``elsewhere/``."""
    import os

    from connectodistill.synthetic import make_benchmark, make_teacher_csvs, make_tiny_student

    root = tmp_path_factory.mktemp("relocation")
    made = root / "made"
    made.mkdir()
    cwd = os.getcwd()
    os.chdir(made)
    try:
        bench = make_benchmark(Path("data/benchmark.parquet"), n=120, seed=0)
        csvs = make_teacher_csvs(bench, Path("data/teacher"), k=5, seed=0)
        make_tiny_student(Path("student"), kind="qwen3-vl")
        _ok(["merge", *map(str, csvs), "--dataset-name", "data/benchmark.parquet", "-o", "merged.parquet",
             "--filter-correct-only"])
        _ok(["train", "--data", "merged.parquet", "--model", "student", "--output-dir", "runs", "--run-name", "r",
             "--epochs", "1", "--num-samples", "8", "--batch-size", "4", "--gradient-accumulation", "1",
             "--select-by", "last"])
        # a few unlabelled segments to predict, inside the project (they move with it)
        rows = pq.read_table("data/benchmark.parquet").slice(0, 4).drop(["class_description"])
        pq.write_table(rows, "data/new.parquet")
    finally:
        os.chdir(cwd)
    (run,) = (made / "runs").iterdir()
    shutil.move(made, root / "moved" / "project")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return {"project": root / "moved" / "project", "run": root / "moved" / "project" / "runs" / run.name,
            "elsewhere": elsewhere, "made": made}


def test_the_run_records_its_inputs_as_given_and_where_they_are(moved):
    config = json.loads((moved["run"] / "training_config.json").read_text())
    assert config["base_model"] == "student" and config["dataset_name"] == "data/benchmark.parquet"  # as given
    assert config["paths"]["base_model"] == {"absolute": str(moved["made"] / "student"), "relative": "../../student"}
    assert config["paths"]["dataset_name"]["relative"] == "../../data/benchmark.parquet"
    assert config["paths"]["merged_file"]["relative"] == "../../merged.parquet"


def test_eval_predict_export_from_a_third_directory(moved, monkeypatch):
    monkeypatch.chdir(moved["elsewhere"])
    run, project = moved["run"], moved["project"]
    _ok(["eval", "--adapter-path", str(run), "--num-samples", "4", "--name", "student", *GEN])
    summary = json.loads(Path("results/student/summary.json").read_text())
    assert summary["n"] == 4 and summary["model"] == str(project / "student")
    assert summary["settings"]["dataset_name"] == str(project / "data" / "benchmark.parquet")
    # the same benchmark by its absolute path, and by a relative one from here: not a mismatch
    _ok(["eval", "--adapter-path", str(run), "--num-samples", "4", "--name", "abs", *GEN,
         "--dataset-name", str(project / "data" / "benchmark.parquet")])
    _ok(["eval", "--adapter-path", str(run), "--num-samples", "4", "--name", "rel", *GEN,
         "--dataset-name", "../moved/project/data/benchmark.parquet", "--base-model", "../moved/project/student"])

    _ok(["predict", str(project / "data" / "new.parquet"), "--adapter-path", str(run), "--output", "preds", *GEN])
    assert pq.read_table("preds/predictions.parquet").num_rows == 4

    _ok(["export", str(run), "-o", "exported"])
    manifest = json.loads(Path("exported/connectodistill_export.json").read_text())
    assert manifest["paths"]["dataset_name"]["relative"] == "../../moved/project/data/benchmark.parquet"
    _ok(["eval", "--model", "exported", "--num-samples", "4", "--name", "exported", *GEN])


def test_a_missing_recorded_input_is_one_line_naming_it(moved, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(moved["run"], copy)  # the run alone: its base model and benchmark stayed behind
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["eval", "--adapter-path", str(copy), *GEN])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: base model not found: ") and str(moved["made"] / "student") in line
    assert "Hub" not in line and not (tmp_path / "results").exists()
    # with the base model given, the benchmark is the missing one
    result = runner.invoke(app, ["eval", "--adapter-path", str(copy), "--base-model", str(moved["project"] / "student"),
                                 "--allow-config-mismatch", *GEN])
    assert result.exit_code == 2 and "benchmark not found: " in result.output
    assert str(moved["made"] / "data" / "benchmark.parquet") in result.output


def test_a_local_looking_model_path_is_never_a_hub_id(small_benchmark, tmp_path, monkeypatch):
    (tmp_path / "demo-run").mkdir()  # demo-run/student has a hub id's shape; demo-run/ is a folder here
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["eval", "--base-model", "demo-run/student", "--dataset-name", str(small_benchmark)])
    assert result.exit_code == 2 and result.exception is None or isinstance(result.exception, SystemExit)
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert "not found: demo-run/student" in line and "Hub" not in line
    result = runner.invoke(app, ["eval", "--base-model", "demo-run/student", "--dataset-name", "demo-run/bench"])
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert line.startswith("error: dataset not found: demo-run/bench ")


def test_same_input_is_by_what_it_is(tmp_path):
    from connectodistill.core.paths import locate, record_paths, same_input

    a = tmp_path / "a.parquet"
    a.write_bytes(b"PAR1 same bytes")
    (tmp_path / "copy.parquet").write_bytes(b"PAR1 same bytes")
    (tmp_path / "other.parquet").write_bytes(b"PAR1 else bytes")
    (tmp_path / "x").mkdir()
    assert same_input(a, tmp_path / "x" / ".." / "a.parquet")
    assert same_input(a, tmp_path / "copy.parquet")
    assert not same_input(a, tmp_path / "other.parquet")
    assert not same_input("Qwen/Qwen3-VL-8B-Instruct", "Qwen/Qwen3-VL-4B-Instruct")
    record = {"m": "a.parquet", "paths": record_paths({"m": a}, tmp_path / "run")}
    assert record["paths"]["m"]["relative"] == "../a.parquet"
    assert locate(record, "m", tmp_path / "run") == str(a)
