"""bench/demo.py as the README quotes it (issue 25, point 7): it writes a new file (never a
recorded result unless asked), and exits 0 when its runs succeeded; the targets are text."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    return set(out.stdout.split()) if out.returncode == 0 else set()


def test_the_readme_reproduce_command_writes_a_new_file():
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"^\S*python\S* bench/demo\.py .*$", text, flags=re.M)
    assert commands, "the README quotes no bench/demo.py command"
    for command in commands:
        out = re.search(r"--out (\S+)", command)
        assert out and "--overwrite" not in command, command
        assert out.group(1) not in _tracked(), f"{command}: overwrites the tracked {out.group(1)}"


@pytest.mark.slow
def test_demo_bench_exits_0_with_targets_missed_and_keeps_an_existing_file(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "mine.json"
    cmd = [sys.executable, str(ROOT / "bench" / "demo.py"), "--seeds", "0", "--samples", "160", "--epochs", "0.2",
           "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "targets missed: student_min_at_least_0.8" in run.stdout  # a tiny run misses it: said, not failed
    written = out.read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert again.returncode == 2 and "exists" in again.stderr
    assert out.read_text() == written
