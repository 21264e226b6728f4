"""The example notebook runs top to bottom on the offline kit; docs/cli.md matches the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("CONNECTODISTILL_NOTEBOOK_DIR", str(tmp_path))
    nb = nbformat.read(ROOT / "examples" / "offline_pipeline.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "teacher (majority vote)" in outputs
    assert (tmp_path / "results" / "student" / "summary.json").is_file()
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the confusion-matrix plot was not drawn"


def test_cli_reference_is_generated_from_the_app(tmp_path):
    out = tmp_path / "cli.md"
    typer_bin = Path(sys.executable).with_name("typer")
    subprocess.run([str(typer_bin), "connectodistill.cli", "utils", "docs", "--name", "connectodistill",
                    "--output", str(out)], check=True, capture_output=True)
    assert (ROOT / "docs" / "cli.md").read_text() == out.read_text(), (
        "docs/cli.md is stale: regenerate with `typer connectodistill.cli utils docs --name connectodistill "
        "--output docs/cli.md`"
    )
