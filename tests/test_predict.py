"""predict: the student's answers for new segments (issue 15).

The same letters as eval on the same samples (from a segment table + images folder and from a
parquet dataset), an interrupted run resumed without redoing or duplicating chunks, bad rows
skipped and listed, refusals as one line with nothing written, the ensemble of a CV run, triage,
and ``--remote --shards N`` through the remote seams (one shard failing and retried alone).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from connectodistill.cli import app
from connectodistill.core.task import BBOX_COLUMNS, VIEWS
from connectodistill.prediction.recipe import predict
from remote_fakes import DEPRECATIONS_ARE_ERRORS, LOCAL_WARNING, RC, Offline

runner = CliRunner()
N = 8  # samples compared with eval
GEN = dict(max_new_tokens=64, batch_size=4, progress=False)  # the tiny student answers within ~60 tokens
HEADER = ["proofread root id", "current root id", "species", *BBOX_COLUMNS, "unit"]  # teacher-CSV spellings
ID_TYPES = {"proofread_root_id": "int64", "current_root_id": "int64"}


def _table(path: Path) -> pd.DataFrame:
    return pq.read_table(path / "predictions.parquet").to_pandas()


def _write_segments(rows: list[dict], folder: Path, *, bad: dict | None = None) -> tuple[Path, Path]:
    """A segment table (teacher-CSV header spellings) and its images folder, from benchmark rows.
    ``bad``: row index -> "missing" | "unreadable" | "box" | "id"."""
    bad = bad or {}
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    table = folder / "segments.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i, r in enumerate(rows):
            pid, cid = r["proofread_root_id"], r["current_root_id"]
            for view in VIEWS:
                data = r[f"option_1_{view}_image"]["bytes"]
                if bad.get(i) == "missing" and view == "side":
                    continue
                if bad.get(i) == "unreadable" and view == "top":
                    data = data[:40]  # a truncated PNG
                (images / f"{pid}_{cid}_{view}.png").write_bytes(data)
            box = [repr(r[c]) for c in BBOX_COLUMNS]
            if bad.get(i) == "box":
                box[4] = "n/a"
            w.writerow([f"{pid}.0" if bad.get(i) == "id" else pid, cid, r["species"], *box, "nm"])
    return table, images


@pytest.fixture(scope="module")
def kit(trained_run, small_benchmark, tmp_path_factory):
    """eval of the run's first N test samples, and the same samples as a table and as a dataset."""
    from connectodistill.evaluation.recipe import evaluate, read_predictions

    d = tmp_path_factory.mktemp("predict")
    result = evaluate(adapter_path=trained_run, output_dir=d / "results", name="eval8", num_samples=N, **GEN)
    ev = read_predictions(result / "predictions.csv")
    bench = pq.read_table(small_benchmark).to_pandas()
    where = {k: i for i, k in enumerate(zip(bench["proofread_root_id"], bench["current_root_id"], strict=True))}
    order = [where[k] for k in zip(ev["proofread_root_id"], ev["current_root_id"], strict=True)]
    sub = bench.iloc[order].drop(columns=["class_description"])  # no labels: what predict is for
    dataset = d / "unlabelled.parquet"
    pq.write_table(pa.Table.from_pandas(sub, preserve_index=False), dataset)
    table, images = _write_segments(sub.to_dict("records"), d / "table")
    return {"dir": d, "eval": ev, "result": result, "dataset": dataset, "table": table, "images": images,
            "rows": sub.to_dict("records"), "bench": bench}


def _same_as_eval(out: Path, ev: pd.DataFrame) -> pd.DataFrame:
    pr = _table(out)
    assert pr["proofread_root_id"].dtype == "int64" and pr["current_root_id"].dtype == "int64"
    assert list(pr["proofread_root_id"]) == list(ev["proofread_root_id"])  # exact 18-digit ids, input order
    assert list(pr["current_root_id"]) == list(ev["current_root_id"])
    assert [x if isinstance(x, str) else None for x in pr["letter"]] == \
        [x if isinstance(x, str) else None for x in ev["predicted_letter"]]
    assert pr["letter"].notna().any()  # a real comparison, not only unparsed answers
    assert list(pr["prompt_sha256"]) == list(ev["prompt_sha256"])  # the very prompt eval gave
    assert list(pr["prompt_source"]) == list(ev["prompt_source"])
    assert pr["confidence"].to_numpy() == pytest.approx(ev["confidence"].to_numpy(), abs=1e-6)
    p_cols = [f"p_{x}" for x in "abcdefg"]
    assert pr[p_cols].to_numpy() == pytest.approx(ev[p_cols].to_numpy(), abs=1e-6)
    from connectodistill.core.task import CLASSES

    assert [CLASSES.get(x) if isinstance(x, str) else None for x in pr["letter"]] == \
        [x if isinstance(x, str) else None for x in pr["description"]]
    return pr


def test_segment_table_and_images_give_evals_letters(kit, trained_run, monkeypatch):
    out = predict(input=str(kit["table"]), images_dir=kit["images"], adapter_path=trained_run,
                  output=kit["dir"] / "from-table", chunk_size=4, csv=True, **GEN)
    pr = _same_as_eval(out, kit["eval"])
    assert list(pr["row"]) == list(range(N))
    back = pd.read_csv(out / "predictions.csv", dtype=ID_TYPES)  # ids exact through CSV too
    assert list(back["proofread_root_id"]) == list(kit["eval"]["proofread_root_id"])
    assert str(kit["eval"]["proofread_root_id"][0]) in (out / "predictions.csv").read_text()
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["predicted"] == N and summary["skipped"] == 0 and summary["letter_probabilities"]
    assert (out / "predict_errors.csv").read_text().strip() == "row,proofread_root_id,current_root_id,reason"

    # Triage afterwards: every chunk is done, so only the outputs are rebuilt (no model load).
    from connectodistill.prediction import recipe as prediction

    monkeypatch.setattr(prediction, "Student", lambda p: pytest.fail("loaded the model for nothing"))
    thr = float(pr["confidence"].median())
    again = predict(input=str(kit["table"]), images_dir=kit["images"], adapter_path=trained_run,
                    output=out, chunk_size=4, threshold=thr, **GEN)
    tri = _table(again)
    assert list(tri["triage"]) == ["auto" if c >= thr else "human" for c in tri["confidence"]]
    # --triage-from: the threshold an eval chose on val (summary.json's triage block).
    ev_dir = kit["dir"] / "eval-with-triage"
    ev_dir.mkdir()
    (ev_dir / "summary.json").write_text(json.dumps({"adapter": str(trained_run),
                                                     "triage": {"threshold": 0.5, "target_accuracy": 0.9}}))
    tri = _table(predict(input=str(kit["table"]), images_dir=kit["images"], adapter_path=trained_run,
                         output=out, chunk_size=4, triage_from=ev_dir, **GEN))
    assert list(tri["triage"]) == ["auto" if c >= 0.5 else "human" for c in tri["confidence"]]


def test_interrupted_dataset_run_resumes_without_redoing_or_duplicating(kit, trained_run):
    out = kit["dir"] / "from-dataset"
    args = dict(input=str(kit["dataset"]), adapter_path=trained_run, output=out, chunk_size=4, **GEN)

    def interrupt(i):
        raise KeyboardInterrupt  # killed right after its first chunk landed

    with pytest.raises(KeyboardInterrupt):
        predict(**args, on_chunk=interrupt)
    assert [p.name for p in (out / "chunks").glob("*.parquet")] == ["chunk-000000.parquet"]
    assert not (out / "predictions.parquet").exists()
    stale = out / "chunks" / ".chunk-000001.parquet.999-dead.tmp"  # what a kill -9 mid-write leaves
    stale.write_bytes(b"half a file")
    os.utime(stale, (0, 0))
    before = (out / "chunks" / "chunk-000000.parquet").stat().st_mtime_ns
    done = []
    predict(**args, on_chunk=done.append)
    assert done == [1]  # only the missing chunk
    assert (out / "chunks" / "chunk-000000.parquet").stat().st_mtime_ns == before
    assert not stale.exists()
    pr = _same_as_eval(out, kit["eval"])
    assert not pr.duplicated(["proofread_root_id", "current_root_id"]).any()
    # Another chunk size (or input, or model) in the same folder: refused, nothing touched.
    r = runner.invoke(app, ["predict", str(kit["dataset"]), "--adapter-path", str(trained_run), "--output",
                            str(out), "--chunk-size", "2"])
    assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1
    assert "chunk size 4 (now 2)" in r.output
    assert sorted(p.name for p in (out / "chunks").iterdir()) == ["chunk-000000.parquet", "chunk-000001.parquet"]


def test_bad_rows_are_skipped_counted_and_listed(kit, trained_run, tmp_path):
    rows = [dict(r) for r in kit["rows"]]
    for r in rows[5:]:  # new segments: no recorded prompt, so the run's teacher template
        r["current_root_id"] += 7
    table, images = _write_segments(rows, tmp_path, bad={1: "missing", 2: "unreadable", 3: "box", 4: "id"})
    with open(table, "a") as f:
        f.write("864691135000000001,864691135000000002,mouse\n")  # a line with 3 of 10 cells
    r = runner.invoke(app, ["predict", str(table), "--images-dir", str(images), "--adapter-path", str(trained_run),
                            "--output", str(tmp_path / "out"), "--chunk-size", "3", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "skipped 5 of 9 rows" in r.output
    errors = pd.read_csv(tmp_path / "out" / "predict_errors.csv", dtype=str)
    assert list(errors["row"])[:4] == ["1", "2", "3", "4"] and pd.isna(errors["row"][4])
    assert errors["reason"][4] == "malformed line '864691135000000001,864691135000000002,mouse': 3 cells, " \
        "the header has 10"
    assert errors["current_root_id"][4] == "864691135000000002"
    assert errors["proofread_root_id"].tolist()[:3] == [str(rows[i]["proofread_root_id"]) for i in (1, 2, 3)]
    assert errors["proofread_root_id"][3] == f"{rows[4]['proofread_root_id']}.0"  # as given
    reasons = errors["reason"].tolist()
    assert reasons[0].startswith("missing image ") and reasons[0].endswith("_side.png")
    assert reasons[1].startswith("unreadable image ")
    assert reasons[2] == "box column ymax is not a number: 'n/a'"
    assert reasons[3].startswith("proofread_root_id is not an integer")
    pr = _table(tmp_path / "out")
    assert list(pr["row"]) == [0, 5, 6, 7]
    assert list(pr["current_root_id"]) == [rows[i]["current_root_id"] for i in (0, 5, 6, 7)]
    assert list(pr["prompt_source"]) == ["teacher", "teacher-template", "teacher-template", "teacher-template"]
    summary = json.loads((tmp_path / "out" / "predict_summary.json").read_text())
    assert summary["skipped_reasons"] == {"missing image": 1, "unreadable image": 1, "box not numbers": 1,
                                          "ids not integers": 1, "malformed line": 1}
    assert summary["prompt_source_counts"] == {"teacher": 1, "teacher-template": 3}
    assert "1 teacher, 3 teacher-template, 0 builtin" in r.output


def test_predict_help_imports_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys\nfrom typer.testing import CliRunner\nfrom connectodistill.cli import app\n"
            "r = CliRunner().invoke(app, ['predict', '--help'])\nassert r.exit_code == 0 and '--shards' in r.output\n"
            "print(sorted(m for m in ('modal', 'torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _cv_run(trained_run: Path, folder: Path) -> Path:
    """A two-fold CV run folder whose folds are the fixture run (what the shapes need)."""
    folder.mkdir()
    (folder / "cv_config.json").write_text(json.dumps({"folds": 2}))
    for i in range(2):
        (folder / f"fold-{i}").symlink_to(trained_run, target_is_directory=True)
    return folder


@pytest.mark.parametrize("args, needle", [
    (["{table}", "--adapter-path", "{run}"], "is a segment table: pass --images-dir"),
    (["{images}", "--images-dir", "{images}", "--adapter-path", "{run}"], "segment table: a .csv or .parquet"),
    (["{odd}", "--images-dir", "{images}", "--adapter-path", "{run}"], "missing column(s)"),
    (["{table}", "--images-dir", "{images}"], "no model given"),
    (["{table}", "--images-dir", "{images}", "--adapter-path", "{cv}"], "pass --ensemble"),
    (["{table}", "--images-dir", "{images}", "--adapter-path", "{run}", "--fold", "1"], "need a cross-validation run"),
    (["{table}", "--images-dir", "{images}", "--adapter-path", "{cv}", "--fold", "5"], "out of range"),
    (["{table}", "--images-dir", "{images}", "--adapter-path", "{run}", "--shards", "3"], "add --remote"),
    (["{table}", "--images-dir", "{images}", "--adapter-path", "{run}", "--threshold", "0.5", "--triage-from",
      "{images}"], "either --threshold"),
    (["{table}", "--images-dir", "{images}", "--adapter-path", "{run}", "--triage-from", "{images}"],
     "no readable eval summary.json"),
    (["{floats}", "--images-dir", "{images}", "--adapter-path", "{run}"], "not exact in floating point"),
    (["{nowhere}", "--adapter-path", "{run}"], "input not found"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, needle, kit, trained_run, tmp_path):
    odd = tmp_path / "odd.csv"
    odd.write_text("pid,cid,species,x0,y0,z0,x1,y1,z1\n1,2,mouse,0,0,0,1,1,1\n")
    floats = tmp_path / "floats.parquet"
    pq.write_table(pa.table({"proofread_root_id": [8.6e17], "current_root_id": [8.6e17], "species": ["mouse"],
                             **{c: [1.0] for c in BBOX_COLUMNS}}), floats)
    values = dict(table=kit["table"], dataset=kit["dataset"], images=kit["images"], run=trained_run, odd=odd,
                  cv=_cv_run(trained_run, tmp_path / "cv"), floats=floats, nowhere=tmp_path / "no.parquet")
    out = tmp_path / "out"
    r = runner.invoke(app, ["predict", *[a.format(**values) for a in args], "--output", str(out)])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1 and needle in r.output, r.output
    assert not out.exists()


def test_ensemble_of_a_cv_run_averages_the_fold_students(kit, trained_run, tmp_path):
    cv = _cv_run(trained_run, tmp_path / "cv")
    rows = kit["rows"][:4]
    table, images = _write_segments(rows, tmp_path / "in")
    out = predict(input=str(table), images_dir=images, adapter_path=cv, ensemble=True, output=tmp_path / "ens",
                  chunk_size=4, **GEN)
    pr = _table(out)
    single = kit["eval"].head(4)
    p_cols = [f"p_{x}" for x in "abcdefg"]
    # Two copies of one student: their mean is that student's distribution; the letter its argmax.
    assert pr[p_cols].to_numpy() == pytest.approx(single[p_cols].to_numpy(), abs=1e-6)
    assert list(pr["letter"]) == [p_cols[j][-1] for j in single[p_cols].to_numpy().argmax(axis=1)]
    assert pr["confidence"].to_numpy() == pytest.approx(single[p_cols].to_numpy().max(axis=1), abs=1e-6)
    assert list(pr["fold_letters"]) == [2 * (x if isinstance(x, str) else "-") for x in single["predicted_letter"]]
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["model_kind"] == "ensemble"
    # --fold I: that fold's student alone (checked without the model here).
    one = predict(input=str(table), images_dir=images, adapter_path=cv, fold=1, output=tmp_path / "f1",
                  chunk_size=4, dry_run=True, progress=False)
    assert json.loads((one / "predict_summary.json").read_text())["model_kind"] == "fold"
    # A CV eval's triage holds one threshold per fold: --fold I takes fold I's; the ensemble has none.
    (tmp_path / "cv-eval").mkdir()
    (tmp_path / "cv-eval" / "summary.json").write_text(json.dumps(
        {"adapter": str(cv), "triage": {"thresholds": [0.2, 0.4], "chosen_on": "val, per fold"}}))
    one = predict(input=str(table), images_dir=images, adapter_path=cv, fold=1, output=tmp_path / "f1t",
                  chunk_size=4, dry_run=True, progress=False, triage_from=tmp_path / "cv-eval")
    assert json.loads((one / "predict_summary.json").read_text())["triage"]["threshold"] == 0.4
    r = runner.invoke(app, ["predict", str(table), "--images-dir", str(images), "--adapter-path", str(cv),
                            "--ensemble", "--triage-from", str(tmp_path / "cv-eval"), "-o", str(tmp_path / "no")])
    assert r.exit_code == 2 and "one triage threshold per fold" in r.output and not (tmp_path / "no").exists()


# ----------------------------------------------------------------------------- --remote --shards N
@pytest.mark.filterwarnings(LOCAL_WARNING)
@pytest.mark.filterwarnings(DEPRECATIONS_ARE_ERRORS)
def test_remote_shards_fan_out_retry_the_failed_one_and_merge_in_input_order(
        kit, trained_run, tmp_path, monkeypatch):
    from connectodistill.core.config import PredictConfig
    from connectodistill.remote import container
    from connectodistill.remote.predict import predict_remote

    offline = Offline(tmp_path / "volumes").install(monkeypatch)
    attempts: dict[int, int] = {}

    def run(fn, kwargs):  # the container body, in-process; shard 1's first attempt loses its node
        attempts[kwargs["shard"]] = attempts.get(kwargs["shard"], 0) + 1
        if kwargs["shard"] == 1 and attempts[1] == 1:
            raise RuntimeError("node lost")
        return fn.local(**kwargs)

    offline.run = run
    rows = [dict(r) for r in kit["rows"]] + [{**r, "current_root_id": r["current_root_id"] + 11}
                                             for r in kit["rows"][:2]]
    table, images = _write_segments(rows, tmp_path / "in", bad={6: "missing"})
    settings = dict(input=str(table), images_dir=images, adapter_path=trained_run, chunk_size=2, dry_run=True,
                    progress=False)
    local = _table(predict(**settings, output=tmp_path / "local"))
    cfg = PredictConfig(**settings, output=tmp_path / "remote", shards=3)
    out = predict_remote(cfg, RC)

    assert len(offline.calls) == 4 and attempts == {0: 1, 1: 2, 2: 1}  # 3 shards, shard 1 retried alone
    assert sorted(c["shard"] for c in offline.calls) == [0, 1, 1, 2]
    assert [c["settings"]["row_offset"] for c in offline.calls[:3]] == [0, 4, 6]
    merged = _table(out)
    pd.testing.assert_frame_equal(merged, local)  # one output, in input order, as a local run gives
    assert list(merged["row"]) == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    errors = pd.read_csv(out / "predict_errors.csv", dtype=str)
    assert errors["row"].tolist() == ["6"] and errors["reason"][0].startswith("missing image")
    # Each shard uploaded only its own rows' images.
    staged = sorted((offline.root / "datasets").glob("*/shard-*"), key=lambda p: p.name)
    assert [len(list((s / "images").glob("*.png"))) for s in staged] == [12, 6, 11]
    assert (offline.root / "runs" / "predict").is_dir()

    # A rerun does only what is missing: nothing; then one shard lost here and on the volume.
    assert predict_remote(cfg, RC) == out and len(offline.calls) == 4
    name = json.loads((out / "remote_shards.json").read_text())["name"]
    shutil.rmtree(out / "shards" / "shard-0002")
    shutil.rmtree(offline.root / "runs" / container.PREDICT_DIR / name / "shard-0002")
    predict_remote(cfg, RC)
    assert [c["shard"] for c in offline.calls[4:]] == [2]
    pd.testing.assert_frame_equal(_table(out), local)
    # Shard 1 finished on the volume but not here (say, the laptop closed): downloaded, not rerun.
    shutil.rmtree(out / "shards" / "shard-0001")
    predict_remote(cfg, RC)
    assert len(offline.calls) == 5
    pd.testing.assert_frame_equal(_table(out), local)


@pytest.mark.filterwarnings(LOCAL_WARNING)
@pytest.mark.filterwarnings(DEPRECATIONS_ARE_ERRORS)
def test_remote_shards_survive_a_lost_connection(kit, trained_run, tmp_path, monkeypatch):
    """Modal's detached app.run() swallows a lost connection (remote_fakes.fake_app_run): the shards
    must be reported as still running, not as failed, and a rerun re-attaches them."""
    from modal.exception import ConnectionError

    from connectodistill.core.config import PredictConfig
    from connectodistill.core.errors import UserError
    from connectodistill.remote.predict import predict_remote

    offline = Offline(tmp_path / "volumes").install(monkeypatch)
    offline.hold = True
    offline.on_spawn = lambda call: setattr(call, "exc_on_get", ConnectionError("Deadline exceeded"))
    table, images = _write_segments([dict(r) for r in kit["rows"]], tmp_path / "in")
    cfg = PredictConfig(input=str(table), images_dir=images, adapter_path=trained_run, chunk_size=2, dry_run=True,
                        progress=False, output=tmp_path / "remote", shards=2)
    with pytest.raises(UserError) as e:
        predict_remote(cfg, RC)
    assert "lost the connection to Modal" in str(e.value) and "2 shard(s) keep running on Modal" in str(e.value)
    state = json.loads((tmp_path / "remote" / "remote_shards.json").read_text())
    assert [r["status"] for r in state["records"]] == ["running", "running"]
    for call in offline.by_id.values():
        call.exc_on_get, call.hold = None, False
    offline.on_spawn = None
    predict_remote(cfg, RC)
    assert len(offline.calls) == 2  # re-attached, not started again
    assert len(_table(tmp_path / "remote")) == len(kit["rows"])
