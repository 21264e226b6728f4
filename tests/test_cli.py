"""The CLI shell: help, version, config files, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

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


# ---------------------------------------------------------------- help a newcomer can use (issue 25)
HELP_VERBS = ("merge", "train", "eval", "predict", "report", "export", "demo", "fetch")


def _help(verb: str) -> str:
    result = runner.invoke(app, [verb, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    return result.output


@pytest.mark.parametrize("verb", HELP_VERBS)
def test_help_names_every_option_whole_at_80_columns(verb):
    import typer

    text = _help(verb)
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    words = set(re.findall(r"--[\w-]+", text))
    command = typer.main.get_command(app).commands[verb]
    for param in command.params:
        for name in [*param.opts, *param.secondary_opts]:
            if name.startswith("--"):
                assert name in words, f"{verb} --help cuts {name}"


@pytest.mark.parametrize("verb, option, default", [
    ("train", "--epochs", "3"), ("train", "--learning-rate", "2e-4 for sft"), ("train", "--lora-r", "16"),
    ("train", "--model", "Qwen/Qwen3-VL-8B-Instruct"), ("train", "--data", "merged.parquet"),
    ("merge", "--dataset-name", "jeffbbrown2/ConnectomeBench"), ("merge", "--output", "merged.parquet"),
    ("eval", "--max-new-tokens", "1024"), ("eval", "--gpu", "one GPU of the training type"),
    ("predict", "--chunk-size", "64"), ("export", "--dtype", "bfloat16"), ("demo", "--samples", "3000"),
])
def test_help_shows_the_defaults(verb, option, default):
    flat = " ".join(_help(verb).split())
    after = flat[flat.index(f" {option} "):]
    help_text = after[:after.index(" --", 3)] if " --" in after[3:] else after
    assert f"[default: {default}" in help_text, help_text


def test_every_option_with_a_config_default_shows_it():
    """Each option whose config field has a default (not off, not unset) states one, and a plain
    value stated by hand agrees with the config's."""
    import typer

    from connectodistill.cli_help import config_default, default_text
    from connectodistill.core.config import (
        DemoConfig,
        EvalConfig,
        ExportConfig,
        PredictConfig,
        ReportConfig,
    )

    configs = {"merge": MergeConfig, "train": TrainConfig, "eval": EvalConfig, "predict": PredictConfig,
               "report": ReportConfig, "export": ExportConfig, "demo": DemoConfig}
    group = typer.main.get_command(app)
    for verb, cls in configs.items():
        command = group.commands[verb]
        ctx = command.make_context(verb, [], resilient_parsing=True)
        for param in command.params:
            want = default_text(config_default(cls, param.name))
            if want is None or param.param_type_name != "option":
                continue
            record = param.get_help_record(ctx)
            assert record and "[default: " in record[1], f"{verb} --{param.name} shows no default"
            shown = record[1].split("[default: ", 1)[1].rstrip("]")
            try:
                assert float(shown) == float(want), (verb, param.name, shown, want)
            except ValueError:
                pass  # a default in words ("2e-4 for sft, ...", "the run's")


def test_cli_reference_is_plain_markdown():
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert not re.search(r"&(#x?[0-9a-fA-F]+|gt|lt|amp|quot);", text), "HTML entities in docs/cli.md"
    outside_code = re.sub(r"`[^`]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))
    assert not re.search(r"<[A-Za-z/]", outside_code), "raw <tags> in docs/cli.md (Markdown would hide them)"
    assert "[default: 3]" in text and "--gradient-accumulation" in text


def test_end_of_train_summary_prints_the_run_folder_whole(tmp_path, capsys, monkeypatch):
    from connectodistill.training.runs import print_summary

    monkeypatch.setenv("COLUMNS", "80")
    run_dir = tmp_path / ("Qwen3-VL-8B-Instruct_demo_claude_20261204_180602_samplesall_epochs0.8_lr0.003_r16" * 2)
    print_summary("train", run_dir, [("train loss", "0.1234")], 1.0, 2.0)
    err = capsys.readouterr().err
    assert str(run_dir) in err


def test_openmp_threads_sleep_when_they_wait_unless_the_user_says_otherwise():
    """Set before torch loads libgomp (it reads OMP_WAIT_POLICY once): spinning threads made two
    demos at once on 2 cores many times slower (bench/README.md, "shared")."""
    code = ("import os, connectodistill, torch; from connectodistill.cli import app; "
            "print(os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "OMP_WAIT_POLICY": "ACTIVE"})
    assert out.stdout.strip() == "ACTIVE"
