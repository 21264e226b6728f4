"""Cross-validated distillation end to end on the offline kit (reduced size), sweeps chosen on
val, and the paired statistics recomputed independently."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from connectodistill.cli import app
from connectodistill.core.data import read_merged
from connectodistill.core.statistics import bootstrap_mean, mcnemar_exact, paired_delta

runner = CliRunner()
TINY = ["--epochs", "1", "--batch-size", "8", "--gradient-accumulation", "1", "--learning-rate", "3e-3",
        "--num-samples", "8", "--seed", "0"]


def invoke(*args):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def cv(small_benchmark, teacher_csvs, tiny_student, tmp_path_factory):
    """merge --folds 3 (correct-only), train --folds, eval of the CV run: all through the CLI."""
    d = tmp_path_factory.mktemp("cv")
    merged = d / "merged.parquet"
    invoke("merge", *teacher_csvs, "--output", merged, "--dataset-name", small_benchmark, "--folds", 3,
           "--filter-correct-only")
    invoke("train", "--data", merged, "--model", tiny_student, "--output-dir", d / "runs", "--folds",
           "--run-name", "cv", "--select-by", "val_loss", *TINY)
    [run] = list((d / "runs").iterdir())
    invoke("eval", "--adapter-path", run, "--output-dir", d / "results", "--max-new-tokens", 8, "--batch-size", 16)
    [result] = list((d / "results").glob("*_cv"))
    return {"dir": d, "merged": merged, "run": run, "result": result}


def test_folds_at_merge_cover_every_sample_once_and_keep_groups_whole(cv, small_benchmark):
    table, report = read_merged(cv["merged"])
    folds = report["fold_splits"]
    assert report["folds"] == 3 and len(folds) == 3
    all_ids = {tuple(p) for s in report["splits"].values() for p in s}
    tests = [{tuple(p) for p in f["test"]} for f in folds]
    assert set().union(*tests) == all_ids and sum(map(len, tests)) == len(all_ids)  # once each
    df = table.to_pandas()
    group = dict(zip(zip(df["proofread_root_id"], df["current_root_id"], strict=True), df["split_group"], strict=True))
    for f in folds:
        where = {}
        for part in ("train", "val", "test"):
            for p in f[part]:
                assert where.setdefault(group[tuple(p)], part) == part  # a group never straddles
        assert f["val"] and f["train"]
    # no filter drops a sample some fold needs for val or test: every sample is in the file
    assert set(zip(df["proofread_root_id"], df["current_root_id"], strict=True)) == all_ids


def test_train_folds_writes_one_run_per_fold_and_a_rerun_skips_them(cv, tiny_student):
    run = cv["run"]
    cfg = json.loads((run / "cv_config.json").read_text())
    assert cfg["folds"] == 3 and {v["status"] for v in cfg["fold_runs"].values()} == {"done"}
    stamps = {}
    for i in range(3):
        rc = json.loads((run / f"fold-{i}" / "training_config.json").read_text())
        assert rc["fold"] == i and (run / f"fold-{i}" / "adapter_model.safetensors").is_file()
        stamps[i] = (run / f"fold-{i}" / "training_config.json").stat().st_mtime_ns
    r = invoke("train", "--data", cv["merged"], "--model", tiny_student, "--output-dir", cv["dir"] / "runs",
               "--folds", "--run-name", "cv", "--select-by", "val_loss", *TINY)
    assert r.output.count("done already, skipped") == 3
    assert stamps == {i: (run / f"fold-{i}" / "training_config.json").stat().st_mtime_ns for i in range(3)}


def test_fold_option_trains_only_that_fold(cv, tiny_student, tmp_path):
    invoke("train", "--data", cv["merged"], "--model", tiny_student, "--output-dir", tmp_path, "--folds",
           "--fold", 1, "--select-by", "last", *TINY)
    [run] = list(tmp_path.iterdir())
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["fold-1"]
    # evaluating an unfinished CV run is refused, naming what is missing
    r = runner.invoke(app, ["eval", "--adapter-path", str(run), "--output-dir", str(tmp_path / "res")])
    assert r.exit_code == 2 and "fold(s) 0, 2 not trained" in r.output and not (tmp_path / "res").exists()


def test_pooled_eval_predicts_each_sample_once_by_the_fold_that_never_saw_it(cv):
    preds = pd.read_csv(cv["result"] / "predictions.csv", dtype={"proofread_root_id": "int64",
                                                                  "current_root_id": "int64"})
    _, report = read_merged(cv["merged"])
    assert not preds[["proofread_root_id", "current_root_id"]].duplicated().any()
    assert len(preds) == report["total_samples"]
    for i, f in enumerate(report["fold_splits"]):
        mine = set(zip(preds.loc[preds["fold"] == i, "proofread_root_id"],
                       preds.loc[preds["fold"] == i, "current_root_id"], strict=True))
        assert mine == {tuple(p) for p in f["test"]}
        assert not mine & ({tuple(p) for p in f["train"]} | {tuple(p) for p in f["val"]})
    s = json.loads((cv["result"] / "summary.json").read_text())
    assert s["n"] == len(preds) and s["accuracy"] == pytest.approx(preds["correct"].mean())
    assert [f["n"] for f in s["cross_validation"]["per_fold"]] == preds["fold"].value_counts().sort_index().tolist()
    assert (cv["result"] / "confusion.png").is_file()


def test_report_paired_columns_recomputed_independently(cv, tmp_path):
    from scipy.stats import binomtest

    invoke("report", cv["result"], "--merged", cv["merged"], "--output", tmp_path / "rep")
    table = pd.read_csv(tmp_path / "rep.csv")
    row = table[~table["model"].str.startswith("teacher")].iloc[0]
    preds = pd.read_csv(cv["result"] / "predictions.csv")
    resp = pd.read_parquet(cv["merged"].with_name("merged_responses.parquet"))
    # the teacher's majority vote and single-response share, per sample, by hand
    from connectodistill.core.scoring import majority_vote

    votes, share = {}, {}
    for (p, c), g in resp.groupby(["proofread_root_id", "current_root_id"]):
        votes[(p, c)] = majority_vote([x if isinstance(x, str) else None for x in g["teacher_answer"]])[0]
        share[(p, c)] = g["teacher_correct"].mean()
    keys = list(zip(preds["proofread_root_id"], preds["current_root_id"], strict=True))
    teacher = np.array([votes.get(k) == t for k, t in zip(keys, preds["ground_truth_letter"], strict=True)])
    student = preds["correct"].to_numpy(bool)
    assert row["paired_n"] == len(preds)
    assert row["delta_vs_teacher"] == pytest.approx(student.mean() - teacher.mean())
    assert row["delta_vs_teacher_single"] == pytest.approx(student.mean() - np.mean([share.get(k, 0) for k in keys]))
    n01, n10 = int((student & ~teacher).sum()), int((~student & teacher).sum())
    expected = binomtest(n01, n01 + n10, 0.5).pvalue if n01 + n10 else 1.0
    assert row["mcnemar_p"] == pytest.approx(expected)
    ci = json.loads(row["delta_vs_teacher_ci"].replace("'", '"')) if isinstance(row["delta_vs_teacher_ci"], str) \
        else row["delta_vs_teacher_ci"]
    assert ci[0] <= row["delta_vs_teacher"] <= ci[1]
    md = (tmp_path / "rep.md").read_text()
    assert " - teacher: " in md and " pp [" in md and ("p = " in md or "p < 0.001" in md)


# ----------------------------------------------------------------------------- statistics
def test_paired_interval_is_tighter_than_unpaired_and_groups_widen_it():
    rng = np.random.default_rng(0)
    n = 377
    hard = rng.random(n) < 0.2  # shared difficulty: both models fail the hard samples
    a = (~hard & (rng.random(n) < 0.95)).astype(float)
    b = (~hard & (rng.random(n) < 0.97)).astype(float)
    d = paired_delta(a, b, n_bootstrap=2000, seed=1)
    width = d["ci"][1] - d["ci"][0]
    assert d["delta"] == pytest.approx(a.mean() - b.mean())
    assert width < 0.6 * (d["unpaired_ci"][1] - d["unpaired_ci"][0])
    # duplicated samples in groups: resampling groups gives the honest (wider) interval
    groups = np.repeat(np.arange(n), 3)
    narrow = bootstrap_mean(np.repeat(a, 3), None, n_bootstrap=2000, seed=2)
    honest = bootstrap_mean(np.repeat(a, 3), groups, n_bootstrap=2000, seed=2)
    assert (honest[1] - honest[0]) > 1.4 * (narrow[1] - narrow[0])


def test_mcnemar_exact_matches_the_binomial_test():
    from scipy.stats import binomtest

    a = np.array([1, 1, 1, 0, 0, 1, 1, 0, 1, 1], bool)
    b = np.array([0, 0, 1, 1, 0, 0, 1, 0, 0, 1], bool)
    assert mcnemar_exact(a, b) == pytest.approx(binomtest(4, 5, 0.5).pvalue)
    assert mcnemar_exact(a, a) == 1.0


# ----------------------------------------------------------------------------- sweeps
def test_sweep_chooses_on_val_and_eval_uses_the_choice(merged_small, tiny_student, tmp_path):
    (tmp_path / "c.yaml").write_text("warmup_steps: 0\n")
    invoke("train", "--data", merged_small, "--model", tiny_student, "--output-dir", tmp_path / "runs",
           "--sweep", "learning_rate=1e-3,5e-3", "--config", tmp_path / "c.yaml", "--select-by", "val_loss", *TINY)
    [sweep] = list((tmp_path / "runs").iterdir())
    record = json.loads((sweep / "sweep.json").read_text())
    assert [p["params"]["learning_rate"] for p in record["points"]] == [1e-3, 5e-3]
    best = min(record["points"], key=lambda p: p["val_metric"])
    assert record["points"][0]["val_metric"] != record["points"][1]["val_metric"]
    assert record["chosen"]["index"] == best["index"] and "test was never read" in record["chosen"]["why"]
    for p in record["points"]:  # each point's metric is its own kept checkpoint's val loss
        rc = json.loads((sweep / p["run"] / "training_config.json").read_text())
        assert rc["best_metric"] == p["val_metric"] and rc["settings"]["learning_rate"] == p["params"]["learning_rate"]
    invoke("eval", "--adapter-path", sweep, "--output-dir", tmp_path / "res", "--name", "chosen",
           "--num-samples", 4, "--max-new-tokens", 4)
    s = json.loads((tmp_path / "res" / "chosen" / "summary.json").read_text())
    assert s["adapter"] == str(sweep / f"point-{best['index']}")


@pytest.mark.parametrize(("args", "needle"), [
    (["--sweep", "lora_r=8", "--select-by", "last"], "chooses on validation"),
    (["--sweep", "model=x"], "not a sweepable setting"),
    (["--sweep", "lora_r"], "NAME=V1,V2"),
    (["--sweep", "lora_r=eight"], "lora_r"),
    (["--folds", "--fold", "9"], "out of range"),
])
def test_bad_cv_and_sweep_input_exit_2(merged_small, cv, tiny_student, tmp_path, args, needle):
    data = cv["merged"] if "--folds" in args else merged_small
    r = runner.invoke(app, ["train", "--data", str(data), "--model", str(tiny_student), "--output-dir",
                            str(tmp_path / "runs"), *args])
    assert r.exit_code == 2, r.output
    assert needle in r.output and r.output.strip().count("\n") == 0
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("training_config.json"))


def test_merge_folds_bad_input(small_benchmark, teacher_csvs, tmp_path):
    r = runner.invoke(app, ["merge", *map(str, teacher_csvs), "--output", str(tmp_path / "m.parquet"),
                            "--dataset-name", str(small_benchmark), "--folds", "1"])
    assert r.exit_code == 2 and "folds" in r.output and not (tmp_path / "m.parquet").exists()
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "none.parquet"), "--folds"])
    assert r.exit_code == 2


def test_cv_confidence_is_pooled_and_triage_chosen_per_fold(cv):
    invoke("eval", "--adapter-path", cv["run"], "--output-dir", cv["dir"] / "results", "--name", "triage",
           "--max-new-tokens", 8, "--batch-size", 16, "--target-accuracy", 0.1)
    out = cv["dir"] / "results" / "triage"
    s = json.loads((out / "summary.json").read_text())
    preds = pd.read_csv(out / "predictions.csv")
    from connectodistill.core.calibration import summarize

    pooled = summarize(preds["confidence"].to_numpy(float), preds["correct"].to_numpy(float),
                       preds[[f"p_{x}" for x in "abcdefg"]].to_numpy(float), preds["ground_truth_letter"].tolist(),
                       parsed=preds["predicted_letter"].notna().to_numpy())
    if preds["predicted_letter"].notna().any():
        assert s["ece"] == pytest.approx(pooled["ece"]) and s["brier"] == pytest.approx(pooled["brier"])
    else:  # nothing parsed, nothing to calibrate
        assert s["ece"] is None and s["calibration_note"].startswith("n/a")
    triage = pd.read_csv(out / "triage.csv")
    assert len(triage) == len(preds) and s["triage"]["chosen_on"] == "val, per fold"
    for i in range(3):  # each fold's threshold is the one its own eval chose on its own val part
        fold = json.loads((out / "folds" / f"fold-{i}" / "summary.json").read_text())
        assert s["triage"]["thresholds"][i] == fold["triage"]["threshold"]
        assert fold["triage"]["evaluated_samples_in_val"] == 0


@pytest.mark.filterwarnings("ignore:The .* function is executing locally:UserWarning")
def test_remote_eval_of_a_cv_run_fans_out_and_pools_what_a_local_eval_pools(cv, tmp_path, monkeypatch):
    """`eval --remote` of a CV run: one container per fold at once, each fold's result downloaded,
    pooled here as a local eval pools it (same predictions); one failed fold names itself."""
    from connectodistill import remote
    from connectodistill.core.config import EvalConfig
    from connectodistill.core.errors import UserError
    from connectodistill.remote import container
    from remote_fakes import RC, Offline

    offline = Offline(tmp_path / "volumes").install(monkeypatch)
    monkeypatch.setattr(container, "commit_volume", lambda name: None)
    monkeypatch.chdir(tmp_path)
    ecfg = EvalConfig(adapter_path=cv["run"], output_dir=tmp_path / "results", max_new_tokens=8, batch_size=16)
    out = remote.evaluate_remote(ecfg, RC)
    assert out == tmp_path / "results" / cv["result"].name
    names = [c["settings"]["name"] for c in offline.calls]
    assert names == [f"{out.name}_fold-{i}" for i in range(3)]  # unique on the runs volume
    assert [c["settings"]["adapter_path"] for c in offline.calls] == [str(cv["run"] / f"fold-{i}") for i in range(3)]
    cols = ["proofread_root_id", "current_root_id", "fold", "predicted_letter", "correct", "prompt_sha256"]
    here, there = pd.read_csv(cv["result"] / "predictions.csv"), pd.read_csv(out / "predictions.csv")
    pd.testing.assert_frame_equal(here[cols], there[cols])
    local_s, remote_s = (json.loads((p / "summary.json").read_text()) for p in (cv["result"], out))
    assert remote_s["accuracy"] == local_s["accuracy"] and remote_s["cross_validation"] == local_s["cross_validation"]

    def run(fn, kwargs):
        if kwargs["settings"]["name"].endswith("fold-1"):
            raise RuntimeError("preempted three times")
        return fn.local(**kwargs)

    offline.run = run
    again = ecfg.model_copy(update={"name": "again"})
    with pytest.raises(UserError, match=r"1 of 3 evals failed \(.*again_fold-1.*rerun the same command"):
        remote.evaluate_remote(again, RC)
    folds = tmp_path / "results" / "again" / "folds"
    assert [(folds / f"fold-{i}" / "summary.json").is_file() for i in range(3)] == [True, False, True]
    assert [p.name for p in (folds / "fold-1").iterdir()] == ["modal_call.json"]  # its call, for `fetch`
    assert not (tmp_path / "results" / "again" / "summary.json").exists()  # nothing pooled half
    with pytest.raises(UserError, match="drop --detach"):
        remote.evaluate_remote(again, RC.model_copy(update={"detach": True}))

    # a sweep folder is evaluated by its chosen point (here that CV run), as a local eval does
    offline.run = None
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "point-0").symlink_to(cv["run"], target_is_directory=True)
    (sweep / "sweep.json").write_text(json.dumps({"chosen": {"run": "point-0"}}))
    out = remote.evaluate_remote(ecfg.model_copy(update={"adapter_path": sweep, "name": "swept"}), RC)
    assert (out / "summary.json").is_file() and offline.calls[-1]["settings"]["name"] == "swept_fold-2"
