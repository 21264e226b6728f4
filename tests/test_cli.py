"""The CLI shell: help, version, config files, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from connectodistill import __version__
from connectodistill.cli import app
from connectodistill.core.config import MergeConfig, TrainConfig, build_config, load_config_file
from connectodistill.core.errors import UserError

runner = CliRunner()
VERBS = ("merge", "train", "eval", "report", "demo", "fetch")


def test_help_lists_every_verb():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in VERBS:
        assert verb in result.output


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_has_help(verb):
    result = runner.invoke(app, [verb, "--help"])
    assert result.exit_code == 0
    assert "--config" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"connectodistill {__version__}"


def test_help_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from connectodistill.cli import app\n"
        "from typer.testing import CliRunner\n"
        "for args in (['--help'], ['train', '--help'], ['eval', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets', 'modal', 'pandas') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "connectodistill", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "merge" in out.stdout


def test_config_file_then_flags_win(tmp_path):
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text("epochs: 7\nlora-r: 8\nlearning_rate: 0.001\n")
    values = load_config_file(cfg_file)
    cfg = build_config(TrainConfig, values, {"lora_r": 32, "epochs": None})
    assert cfg.epochs == 7  # from the file
    assert cfg.lora_r == 32  # flag wins
    assert cfg.learning_rate == 0.001


def test_json_config_and_all_responses(tmp_path):
    cfg_file = tmp_path / "merge.json"
    cfg_file.write_text(json.dumps({"responses_per_sample": "all", "seed": 3}))
    cfg = build_config(MergeConfig, load_config_file(cfg_file), {})
    assert cfg.responses_per_sample is None and cfg.seed == 3


def test_unknown_config_key_is_one_line_error(tmp_path):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("epochz: 3\n")
    with pytest.raises(UserError, match="epochz"):
        build_config(TrainConfig, load_config_file(cfg_file), {})
    result = runner.invoke(app, ["train", "--config", str(cfg_file)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "epochz" in result.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["merge", "/nonexistent/teacher.csv", "--output", "x.parquet"], "/nonexistent/teacher.csv"),
        (["merge", "--output", "x.parquet"], "no teacher CSV"),
        (["train", "--data", "/nonexistent/merged.parquet"], "/nonexistent/merged.parquet"),
        (["train", "--config", "/nonexistent/cfg.yaml"], "config file not found"),
        (["eval"], "--adapter-path"),
        (["eval", "--adapter-path", "/nonexistent/run"], "training_config.json"),
        (["eval", "--test-set-only", "--split", "val", "--base-model", "x"], "contradicts"),
        (["report"], "no result"),
        (["report", "/nonexistent/result"], "not an eval output folder"),
        (["train", "--epochs", "-1"], "epochs"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0
    assert not (tmp_path / "x.parquet").exists()
