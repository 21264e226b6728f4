"""Every `connectodistill ...` command a user can copy runs (issue 25, point 2).

The commands are taken from the README, docs/ (not the generated cli.md: its usage lines are
synopses), examples/ and the model card that `export` writes. Each is parsed against the Typer
app as click would parse it (the verb and its options exist, required arguments are present);
placeholders (``<run folder>``, ``RUN``, ``[--folds K]``) are read as values. The model card's
commands are also run, offline, on a tiny exported student.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer
from typer._click import exceptions as click_errors  # typer 0.29 parses with its own copy of click
from typer.core import TyperGroup
from typer.testing import CliRunner

from connectodistill.cli import app

ROOT = Path(__file__).resolve().parents[1]
GROUP = typer.main.get_command(app)
VERBS = set(GROUP.commands)
runner = CliRunner()


def _shell_lines(text: str) -> list[str]:
    """Shell lines (continuations joined), comments dropped. In Markdown, only the lines of
    fenced code blocks: prose (a quoted message naming a command mid-sentence) is not a shell
    line; inline code spans are read by ``extract``."""
    lines, pending = [], ""
    fenced, inside = "```" in text, False
    for raw in text.splitlines():
        if raw.strip().startswith("```"):
            inside = not inside
            continue
        if fenced and not inside:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        lines.append(line)
    return lines


def extract(text: str) -> list[str]:
    """`connectodistill VERB ...` commands: shell lines (in code blocks and scripts) that start
    with it, and inline code spans (only those naming a verb: `connectodistill.merge(...)` is
    Python). A span naming a verb alone (`connectodistill export`) names it; it is no command."""
    found = []
    command = re.compile(r"^(?:\$\s*)?(?:\S*/)?(?:python3? -m )?connectodistill\s+([a-z][\w-]*)(.*)$")
    for line in (part.strip() for whole in _shell_lines(text) for part in re.split(r"&&|;", whole)):
        if m := command.match(line):
            found.append(("connectodistill " + m.group(1) + re.split(r"\s#", m.group(2), maxsplit=1)[0]).strip())
    for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text):
        m = command.match(span.strip())
        if m and m.group(1) in VERBS and m.group(2).strip():
            found.append(span.strip()[span.index("connectodistill"):] if "connectodistill" in span else span)
    return found


def _tokens(command: str) -> list[str]:
    text = re.sub(r"<[^>]*>", "X", command)  # <run folder> -> one value
    text = text.replace("[", " ").replace("]", " ").replace("...", "").replace("..", "")
    # a placeholder (RUN, K, OUT.parquet stays) stands for any value: one every type accepts
    return ["1" if re.fullmatch(r"[A-Z][A-Z_]*", t) else t for t in shlex.split(text)[1:]]


def _rest(ctx) -> list[str]:
    # click 8.2+ keeps a group's subcommand and its arguments in ctx.args (protected_args before)
    return [*getattr(ctx, "_protected_args", []), *ctx.args]


def parse(command: str) -> None:
    """Parse ``command`` as click would run it (no callback): raises a UsageError when an
    option or a verb does not exist, or a required argument is missing."""
    args = _tokens(command)
    ctx = GROUP.make_context("connectodistill", list(args), resilient_parsing=False)
    group, rest = GROUP, _rest(ctx)
    while True:
        name, cmd, rest = group.resolve_command(ctx, rest)
        ctx = cmd.make_context(name, list(rest), parent=ctx)
        if not isinstance(cmd, TyperGroup):
            return
        group, rest = cmd, _rest(ctx)


def _documents() -> dict[str, str]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*"))]
    out = {}
    for f in files:
        if f.name == "cli.md" or not f.is_file():
            continue
        text = f.read_text()
        if f.suffix == ".ipynb":  # code and markdown cells' sources
            text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"])
        out[f.relative_to(ROOT).as_posix()] = text
    return out


DOC_COMMANDS = [(name, c) for name, text in _documents().items() for c in extract(text)]


def test_the_docs_have_commands_to_check():
    assert len(DOC_COMMANDS) > 40
    assert {v for _, c in DOC_COMMANDS for v in [c.split()[1]]} >= {"merge", "train", "eval", "report",
                                                                     "export", "predict", "demo", "fetch"}


@pytest.mark.parametrize("where, command", DOC_COMMANDS, ids=[f"{w}: {c[:60]}" for w, c in DOC_COMMANDS])
def test_every_documented_command_parses(where, command):
    try:
        parse(command)
    except click_errors.UsageError as e:
        pytest.fail(f"{where}: `{command}`: {e.format_message()}")


def test_the_parser_refuses_what_click_refuses():
    with pytest.raises(click_errors.NoSuchOption):
        parse("connectodistill predict --model student --segments segments.csv --images-dir renders/")
    with pytest.raises(click_errors.MissingParameter):
        parse("connectodistill export --output models/student")
    with pytest.raises(click_errors.UsageError):
        parse("connectodistill segments x")


def test_the_model_cards_commands_run(trained_run, small_benchmark, tmp_path, monkeypatch):
    """export writes a card whose commands parse, and run from the folder holding the export
    (with the files they name put there, and a short generation budget)."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", str(trained_run), "--output", "student"])
    assert result.exit_code == 0, result.output
    commands = extract((tmp_path / "student" / "README.md").read_text())
    assert [c.split()[1] for c in commands] == ["predict", "eval", "export"]  # export RUN: in the prose
    for command in commands:
        parse(command)
    commands = commands[:2]
    # the files the card's commands name: a segment table with its renders, the merged file
    rows = pq.read_table(small_benchmark).slice(0, 3).to_pylist()
    (tmp_path / "renders").mkdir()
    with open(tmp_path / "segments.csv", "w") as f:
        f.write("proofread_root_id,current_root_id,species,xmin,ymin,zmin,xmax,ymax,zmax\n")
        for r in rows:
            pid, cid = r["proofread_root_id"], r["current_root_id"]
            f.write(f"{pid},{cid},{r['species']},{r['xmin']},{r['ymin']},{r['zmin']},{r['xmax']},{r['ymax']},{r['zmax']}\n")
            for view in ("front", "side", "top"):
                (tmp_path / "renders" / f"{pid}_{cid}_{view}.png").write_bytes(r[f"option_1_{view}_image"]["bytes"])
    config = json.loads((trained_run / "training_config.json").read_text())
    Path("merged.parquet").symlink_to(config["paths"]["merged_file"]["absolute"])
    fast = {"predict": ["--max-new-tokens", "8"], "eval": ["--max-new-tokens", "8", "--num-samples", "2"]}
    for command in commands:
        args = _tokens(command)
        result = runner.invoke(app, args + fast[args[0]])
        assert result.exit_code == 0, (command, result.output)
    assert pq.read_table("preds/predictions.parquet").num_rows == 3
