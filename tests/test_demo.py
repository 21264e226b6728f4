"""The demo end to end at a reduced size (the learning criteria are checked by bench/demo.py)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from connectodistill.cli import app
from connectodistill.offline_demo import demo

runner = CliRunner()
KEYS = ("teacher_accuracy", "teacher_majority_vote_accuracy", "base_accuracy", "student_accuracy",
        "student_blank_images_accuracy", "majority_class_rate", "test_samples")


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    result = demo(output_dir=out, samples=160, epochs=1, max_new_tokens=16, progress=False)
    saved = json.loads((out / "report.json").read_text())
    assert saved == json.loads(json.dumps(result))
    for key in KEYS:
        assert key in saved
    assert saved["test_samples"] > 0
    for key in KEYS[:-1]:
        assert 0.0 <= saved[key] <= 1.0
    for path in ("data/benchmark.parquet", "merged.parquet", "merged_responses.parquet", "merged_metadata.json",
                 "results/base/summary.json", "results/student/predictions.csv",
                 "results/student_blank-images/confusion.png", "report.md", "report.csv"):
        assert (out / path).is_file(), path
    assert "teacher (single response)" in (out / "report.md").read_text()
    # calibration and coverage rows for teacher and student; votes only when asked for
    assert set(saved["confidence"]) == {"teacher (majority vote)", "student", "student_rationale-first"}
    # the student answers in one pass; the same student rationale-first is a row of its own
    assert json.loads((out / "results/student/summary.json").read_text())["settings"]["mode"] == "one_pass"
    assert 0.0 <= saved["student_rationale_first_accuracy"] <= 1.0
    for row in saved["confidence"].values():
        # a student that never answered has nothing to calibrate: n/a, not a figure
        assert (row["ece"] is None and row["reading"].startswith("n/a")) or (0.0 <= row["ece"] <= 1.0 and row["reading"])
    assert saved["student_majority_of_votes_accuracy"] is None


def test_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    r = runner.invoke(app, ["demo", "--output-dir", str(tmp_path)])
    assert r.exit_code == 2 and "--force" in r.output
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_demo_bad_votes_is_one_line_and_writes_nothing(tmp_path):
    r = runner.invoke(app, ["demo", "--output-dir", str(tmp_path / "d"), "--votes", "-1"])
    assert r.exit_code == 2 and "votes" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()
