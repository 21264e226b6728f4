"""The usual mistakes get one line that says what is wrong and how to fix it (issue 25, point 4):
a teacher CSV whose every id went through a spreadsheet, a parquet/Excel/gzip file where a CSV
is expected, and a demo setting that would fail only after two stages."""

from __future__ import annotations

import csv
import gzip
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from connectodistill.cli import app

runner = CliRunner()


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ")
    return line


def _rewrite_ids(src: Path, dst: Path, fmt, rows: int | None = None) -> None:
    """A copy of a teacher CSV whose ids in the first ``rows`` rows (all: None) are ``fmt(id)``."""
    with open(src, newline="") as f:
        table = list(csv.reader(f))
    header, body = table[0], table[1:]
    cols = [header.index("proofread root id"), header.index("current root id")]
    for i, row in enumerate(body):
        if rows is None or i < rows:
            for c in cols:
                row[c] = fmt(int(row[c]))
    with open(dst, "w", newline="") as f:
        csv.writer(f).writerows([header, *body])


def _spreadsheet(v: int) -> str:
    return f"{v:.5E}"  # 864691135000000000 -> 8.64691E+17, as a spreadsheet saves it


def test_every_id_through_a_spreadsheet_names_the_reason_the_cell_and_the_fix(teacher_csvs, small_benchmark, tmp_path):
    bad = tmp_path / "teacher.csv"
    _rewrite_ids(teacher_csvs[0], bad, _spreadsheet)
    out = tmp_path / "merged.parquet"
    line = _one_error_line(runner.invoke(app, ["merge", str(bad), "--dataset-name", str(small_benchmark),
                                               "-o", str(out)]))
    assert "ids in scientific notation" in line and "E+" in line and f"{bad} line 2" in line
    assert "re-export the CSV without a spreadsheet, or keep the id columns as text" in line
    assert not list(tmp_path.glob("merged*"))


def test_the_commonest_reason_is_named_when_reasons_mix(teacher_csvs, small_benchmark, tmp_path):
    bad = tmp_path / "teacher.csv"
    _rewrite_ids(teacher_csvs[0], bad, lambda v: f"{v}.0")
    header, *rows = bad.read_text().splitlines(keepends=True)
    bad.write_text(header + "1,2,three cells only\n" + "".join(rows))  # one row of another kind
    line = _one_error_line(runner.invoke(app, ["merge", str(bad), "--dataset-name", str(small_benchmark),
                                               "-o", str(tmp_path / "m.parquet")]))
    assert "ids written as decimals" in line and "write the id columns as whole numbers" in line


@pytest.mark.parametrize("kind", ["parquet", "excel", "gzip"])
def test_a_binary_file_named_csv_is_one_line_in_merge(kind, teacher_csvs, small_benchmark, tmp_path):
    fake = tmp_path / "teacher.csv"
    if kind == "parquet":
        pq.write_table(pa.table({"proofread root id": [1]}), fake)
    elif kind == "excel":
        with zipfile.ZipFile(fake, "w") as z:
            z.writestr("xl/workbook.xml", "<workbook/>")
    else:
        fake.write_bytes(gzip.compress(Path(teacher_csvs[0]).read_bytes()))
    line = _one_error_line(runner.invoke(app, ["merge", str(fake), "--dataset-name", str(small_benchmark),
                                               "-o", str(tmp_path / "m.parquet")]))
    want = {"parquet": "is a parquet file, not a teacher CSV", "excel": "is an Excel workbook",
            "gzip": "is gzip-compressed"}[kind]
    assert want in line and str(fake) in line
    assert "PAR1" not in line


def _segments(small_benchmark, folder: Path) -> tuple[pa.Table, Path]:
    rows = pq.read_table(small_benchmark).slice(0, 3)
    images = folder / "renders"
    images.mkdir()
    for r in rows.to_pylist():
        for view in ("front", "side", "top"):
            name = f"{r['proofread_root_id']}_{r['current_root_id']}_{view}.png"
            (images / name).write_bytes(r[f"option_1_{view}_image"]["bytes"])
    table = rows.select(["proofread_root_id", "current_root_id", "species", "xmin", "ymin", "zmin", "xmax", "ymax",
                         "zmax"])
    return table, images


def test_predict_reads_a_parquet_segment_table_named_csv(trained_run, small_benchmark, tmp_path):
    table, images = _segments(small_benchmark, tmp_path)
    pq.write_table(table, tmp_path / "segments.csv")
    result = runner.invoke(app, ["predict", str(tmp_path / "segments.csv"), "--images-dir", str(images),
                                 "--adapter-path", str(trained_run), "--dry-run", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("images", [True, False])
def test_predict_refuses_a_gzip_segment_table_in_one_line(images, trained_run, small_benchmark, tmp_path):
    table, renders = _segments(small_benchmark, tmp_path)
    text = tmp_path / "plain.csv"
    import pyarrow.csv as pacsv

    pacsv.write_csv(table, text)
    fake = tmp_path / "segments.csv"
    fake.write_bytes(gzip.compress(text.read_bytes()))
    args = ["predict", str(fake), "--adapter-path", str(trained_run), "--dry-run", "-o", str(tmp_path / "out")]
    line = _one_error_line(runner.invoke(app, args + (["--images-dir", str(renders)] if images else [])))
    assert "is gzip-compressed, not a CSV" in line and "gunzip" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value, needle", [("--epochs", "-1", "epochs"), ("--samples", "10", "samples"),
                                                 ("--epochs", "0", "epochs")])
def test_demo_checks_every_setting_before_writing(flag, value, needle, tmp_path):
    out = tmp_path / "d"
    line = _one_error_line(runner.invoke(app, ["demo", "--output-dir", str(out), flag, value]))
    assert needle in line
    assert not out.exists()


def test_demo_checks_the_stages_configs_too(tmp_path, monkeypatch):
    """A setting only a later stage checks (here the demo's LoRA dropout) is refused before stage 1."""
    from connectodistill import offline_demo
    from connectodistill.core.errors import UserError

    out = tmp_path / "d"
    monkeypatch.setitem(offline_demo.TRAIN_SETTINGS, "lora_dropout", 1.5)
    with pytest.raises(UserError, match="lora_dropout"):
        offline_demo.demo(output_dir=out, samples=160, progress=False)
    assert not out.exists()
