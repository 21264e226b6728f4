"""merge: matching, scoring, splits, filters, outputs and bad input, on the offline kit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectodistill.core import data
from connectodistill.core.config import MergeConfig
from connectodistill.core.errors import UserError
from connectodistill.core.scoring import majority_vote, parse_answer
from connectodistill.core.task import DESCRIPTION_TO_LETTER, MISSING_ANALYSIS
from connectodistill.merging import merge
from connectodistill.merging.matching import TEACHER_COLUMNS
from connectodistill.merging.teacher_csv import (
    _parse_float_strings,
    prompt_layout,
    prompt_text,
    prompt_texts,
)
from connectodistill.merging.teacher_csv import parse_int_strings as _parse_int_strings
from connectodistill.synthetic.benchmark import make_benchmark
from connectodistill.synthetic.teacher import PROMPT_OPTIONS, make_teacher_csvs

REPORT_KEYS = {
    "total_samples", "matched_samples", "unmatched_samples", "match_rate", "teacher_responses",
    "malformed_rows", "matched_responses", "unmatched_responses", "correct_responses",
    "response_accuracy", "majority_accuracy", "samples_with_correct_response", "output_rows",
    "per_class", "splits", "duplicate_samples", "csv_files", "dataset_name", "config_name",
    "dataset_split", "seed",
}


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def run(tmp_path: Path, csvs, bench, name="m.parquet", **kw):
    return merge(csv_files=list(csvs), output=tmp_path / "out" / name, dataset_name=str(bench),
                 quiet=True, progress=False, **kw)


def read_text(path) -> pd.DataFrame:
    """A CSV with every cell as the exact text in the file."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def write_text(df: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def assert_nothing_written(tmp_path: Path):
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def reference(bench_path, csvs):
    """Per-sample responses computed the slow, obvious way (pandas + Python), for cross-checks."""
    bench = pq.read_table(bench_path, columns=["proofread_root_id", "current_root_id",
                                               "class_description"]).to_pylist()
    frames, seen = [], set()
    for i, p in enumerate(csvs):
        content = Path(p).read_bytes()
        if content in seen:  # a file repeating an earlier one's bytes is skipped whole
            continue
        seen.add(content)
        frames.append(read_text(p).assign(_file=i))
    rows = pd.concat(frames, ignore_index=True)
    # only a row repeating a row of its own file (same segment, index and texts) counts once
    rows = rows.drop_duplicates(subset=["_file", "proofread root id", "current root id", "index",
                                        "llm_answer", "analysis"])
    by_key: dict[tuple[int, int], list[str | None]] = {}
    for p, c, a in zip(rows["proofread root id"], rows["current root id"], rows["llm_answer"], strict=True):
        by_key.setdefault((int(p), int(c)), []).append(parse_answer(a, PROMPT_OPTIONS))
    out = []
    for r in bench:
        letters = by_key.get((r["proofread_root_id"], r["current_root_id"]), [])
        truth = DESCRIPTION_TO_LETTER[r["class_description"]]
        majority, share = majority_vote(letters)
        out.append({"letters": letters, "truth": truth, "majority": majority, "share": share})
    return out


@pytest.fixture(scope="module")
def two_files(small_benchmark, tmp_path_factory):
    """K=5 in a first file, plus a _v2 file covering 30% of the segments again."""
    return make_teacher_csvs(small_benchmark, tmp_path_factory.mktemp("two"), k=5, seed=1, files=2)


@pytest.fixture(scope="module")
def plain_bench(tmp_path_factory):
    """A metadata-only benchmark (no image columns) and its K=3 teacher CSV."""
    d = tmp_path_factory.mktemp("plain")
    bench = make_benchmark(d / "bench.parquet", n=80, seed=3, with_images=False)
    return bench, make_teacher_csvs(bench, d / "csvs", k=3, seed=3)


@pytest.fixture(scope="module")
def default_run(small_benchmark, teacher_csvs, tmp_path_factory):
    return run(tmp_path_factory.mktemp("default"), teacher_csvs, small_benchmark)


# --------------------------------------------------------------------------------------
# the default run and its outputs
# --------------------------------------------------------------------------------------


def test_default_run_matches_every_sample(default_run, small_benchmark, teacher_csvs):
    r = default_run.report
    assert REPORT_KEYS <= set(r)
    bench = pq.read_table(small_benchmark)
    assert r["total_samples"] == r["matched_samples"] == bench.num_rows
    assert r["match_rate"] == 1.0 and r["unmatched_samples"] == 0
    assert r["teacher_responses"] == 5 * bench.num_rows
    assert r["malformed_rows"] == 0 and r["unmatched_responses"] == 0
    assert r["matched_responses"] + r["duplicate_responses"] == r["teacher_responses"]
    assert r["output_rows"] == bench.num_rows == default_run.table.num_rows
    assert r["response_accuracy"] == pytest.approx(r["correct_responses"] / r["matched_responses"])
    assert r["csv_files"] == [str(p) for p in teacher_csvs]
    assert r["dataset_name"] == str(small_benchmark) and r["seed"] == 42
    assert r["dataset_split"] == "train" and r["config_name"] == "MICrONS, Segment Classification"
    assert sum(c["samples"] for c in r["per_class"].values()) == bench.num_rows
    assert sum(c["responses"] for c in r["per_class"].values()) == r["matched_responses"]
    assert sum(c["correct"] for c in r["per_class"].values()) == r["correct_responses"]


def test_scores_agree_with_a_slow_reference(default_run, small_benchmark, teacher_csvs):
    ref = reference(small_benchmark, teacher_csvs)
    r = default_run.report
    assert r["matched_responses"] == sum(len(x["letters"]) for x in ref)
    assert r["correct_responses"] == sum(sum(a == x["truth"] for a in x["letters"]) for x in ref)
    assert r["majority_accuracy"] == pytest.approx(np.mean([x["majority"] == x["truth"] for x in ref]))
    assert r["samples_with_correct_response"] == sum(x["truth"] in x["letters"] for x in ref)
    assert r["mean_majority_share"] == pytest.approx(np.mean([x["share"] for x in ref]))
    # the vote summary is per sample, majority first, and adds up to the responses
    votes = default_run.table["teacher_votes"].to_pylist()
    for v, x in zip(votes, ref, strict=True):
        pieces = dict(p.split(":") for p in v.split())
        assert sum(map(int, pieces.values())) == len(x["letters"])
        assert v.split(":")[0] == (x["majority"] or "unparsed")


def test_columns_ids_and_dataset_columns_untouched(default_run, small_benchmark):
    bench = pq.read_table(small_benchmark)
    t = default_run.table
    assert t.column_names == bench.column_names + list(TEACHER_COLUMNS)
    assert t.schema.field("proofread_root_id").type == pa.int64()
    # one row per sample with the defaults, in benchmark order: dataset columns byte-identical
    assert t.select(bench.column_names).equals(bench)
    assert t["teacher_answer"].null_count < t.num_rows
    assert set(t["split"].to_pylist()) == {"train", "val", "test"}
    assert set(t["teacher_source"].to_pylist()) == {"claude-3-7-sonnet-20250219_analysis_results_K5.csv"}
    assert "bounding box measures" in t["teacher_prompt"][0].as_py()
    assert set(t["teacher_prompt_layout"].to_pylist()) == {"image,image,image,text"}


def test_output_files_and_metadata(default_run):
    out = default_run.output
    responses = out.with_name("m_responses.parquet")
    metadata = out.with_name("m_metadata.json")
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, responses.name, metadata.name])
    assert default_run.responses_path == responses and default_run.metadata_path == metadata
    report = json.loads(metadata.read_text())
    assert report == default_run.report
    table, stored = data.read_merged(out)
    assert stored == report and table.num_rows == report["output_rows"]
    resp = pq.read_table(responses)
    assert resp.num_rows == report["matched_responses"]
    assert {"proofread_root_id", "current_root_id", "split", "teacher_answer", "ground_truth_letter",
            "teacher_correct", "teacher_model", "teacher_source", "teacher_index"} <= set(resp.column_names)
    assert sum(resp["teacher_correct"].to_pylist()) == report["correct_responses"]
    # ids in the JSON are exact Python ints
    pairs = [tuple(p) for s in report["splits"].values() for p in s]
    assert all(isinstance(p, int) and p > 2**53 for pair in pairs for p in pair)


def test_loadable_with_datasets_and_images_decode(default_run):
    import datasets
    from PIL import Image

    ds = datasets.load_dataset("parquet", data_files=str(default_run.output), split="train")
    assert isinstance(ds.features["option_1_front_image"], datasets.Image)
    row = ds[0]
    assert isinstance(row["option_1_front_image"], Image.Image)
    assert row["proofread_root_id"] == default_run.table["proofread_root_id"][0].as_py()


# --------------------------------------------------------------------------------------
# matching rules
# --------------------------------------------------------------------------------------


def test_float32_printed_boxes_match(small_benchmark, teacher_csvs):
    bench = pq.read_table(small_benchmark)
    text = read_text(teacher_csvs[0]).iloc[::5]
    printed = text["xmin"].astype(float).to_numpy()
    stored = bench["xmin"].to_numpy()
    assert (printed != stored).mean() > 0.9  # the CSV's floats are not the dataset's
    assert np.allclose(printed, stored, rtol=1e-6)


def test_box_decides_between_rows_sharing_ids(tmp_path, plain_bench):
    bench_path, csvs = plain_bench
    bench = pq.read_table(bench_path)
    # a second segment with the same two ids, its box 5 um away, and a different class
    extra = bench.slice(0, 1).to_pylist()[0]
    other_label = next(s for s in DESCRIPTION_TO_LETTER if s != extra["class_description"])
    extra.update(xmin=extra["xmin"] + 5000.0, class_description=other_label)
    shifted = pa.concat_tables([bench, pa.Table.from_pylist([extra], schema=bench.schema)])
    pq.write_table(shifted, tmp_path / "b.parquet")

    text = read_text(csvs[0])
    first = text[(text["proofread root id"] == str(extra["proofread_root_id"]))
                 & (text["current root id"] == str(extra["current_root_id"]))]
    near = first.copy()
    near["xmin"] = str(np.float32(extra["xmin"]))  # float32-printed, like the real CSVs
    near["analysis"] = "shifted box " + near["index"]
    far = first.iloc[:1].copy()
    far["xmin"] = str(extra["xmin"] + 2.0)  # 2 nm off every candidate: no match
    far["analysis"] = "too far"
    csv = write_text(pd.concat([text, near, far]), tmp_path / "t.csv")

    res = run(tmp_path, [csv], tmp_path / "b.parquet", responses_per_sample=None)
    r = res.report
    assert r["total_samples"] == bench.num_rows + 1 and r["duplicate_samples"] == 0
    assert r["unmatched_responses"] == 1 and r["unmatched_examples"][0]["xmin"] == extra["xmin"] + 2.0
    t = res.table.to_pandas()
    new_rows = t[t["xmin"] == extra["xmin"]]
    assert len(new_rows) == len(near)
    assert new_rows["teacher_analysis"].str.startswith("shifted box").all()
    old_rows = t[(t["current_root_id"] == extra["current_root_id"]) & (t["xmin"] != extra["xmin"])]
    assert not old_rows["teacher_analysis"].fillna("").str.startswith("shifted").any()


def test_blank_and_garbage_ids_are_malformed_and_other_ids_stay_exact(tmp_path, plain_bench):
    bench_path, csvs = plain_bench
    text = read_text(csvs[0])
    text.loc[0, "analysis"] = "two\nlines"  # a newline inside a cell shifts later line numbers
    text.loc[3, "proofread root id"] = ""
    text.loc[7, "current root id"] = "86469113x"
    text.loc[9, "xmin"] = "nan"
    csv = write_text(text, tmp_path / "t.csv")
    assert pd.read_csv(csv)["proofread root id"].dtype == float  # where pandas loses exactness
    with open(csv, "a") as f:
        f.write("864691134965949727,864691134965949729,mouse\n")  # a row cut short

    res = run(tmp_path, [csv], bench_path)
    r = res.report
    assert r["malformed_rows"] == 4
    assert r["teacher_responses"] == len(text) - 3
    short = [m for m in r["malformed"] if m["reason"].startswith("expected")]
    assert len(short) == 1 and "got 3" in short[0]["reason"]
    assert r["unmatched_responses"] == 0  # malformed rows count only as malformed
    lines = {(m["line"], m["reason"].split()[0]) for m in r["malformed"] if m["line"]}
    assert lines == {(6, "proofread_root_id"), (10, "current_root_id"), (12, "xmin")}
    assert all(m["file"] == str(csv) for m in r["malformed"])
    # every other id survived exactly: all samples still matched
    assert r["matched_samples"] == r["total_samples"]
    bench_ids = set(pq.read_table(bench_path)["current_root_id"].to_pylist())
    assert set(res.responses["current_root_id"].to_pylist()) == bench_ids


def test_id_and_box_cells_are_read_exactly_or_rejected():
    ok, ids = _parse_int_strings(pa.chunked_array([[
        "864691134965949727", "", " 7", "-3", "8.6469113496594e17", "9223372036854775808", "9223372036854775807",
    ]]))
    assert ok.tolist() == [True, False, True, False, False, False, True]
    assert ids[0] == 864691134965949727 and ids[-1] == 2**63 - 1  # exact, not through float
    ok, clean = _parse_int_strings(pa.chunked_array([["864691134965949727", "864691134965949729"]]))
    assert ok.all() and clean.tolist() == [864691134965949727, 864691134965949729]
    ok, boxes = _parse_float_strings(pa.chunked_array([["425429.34", "1e999", " 2 ", "nan", "", "x"]]))
    assert ok.tolist() == [True, False, True, False, False, False]
    assert boxes[0] == 425429.34


def test_second_file_adds_responses_in_file_order(tmp_path, small_benchmark, two_files):
    assert len(two_files) == 2 and two_files[1].name.endswith("_v2.csv")
    res = run(tmp_path, two_files, small_benchmark, responses_per_sample=None)
    r = res.report
    n1, n2 = (len(read_text(p)) for p in two_files)
    assert r["teacher_responses"] == n1 + n2
    assert [f["rows"] for f in r["csv_file_rows"]] == [n1, n2]
    ref = reference(small_benchmark, two_files)
    assert r["matched_responses"] == sum(len(x["letters"]) for x in ref)
    assert r["majority_accuracy"] == pytest.approx(np.mean([x["majority"] == x["truth"] for x in ref]))
    sources = res.responses["teacher_source"].to_pylist()
    assert sources == sorted(sources, key=lambda s: s.endswith("_v2.csv"))  # files in order given
    assert {s for s in sources} == {p.name for p in two_files}


def test_same_file_twice_counts_once(tmp_path, small_benchmark, teacher_csvs, default_run):
    copy = tmp_path / "copy_of_K5.csv"
    copy.write_bytes(Path(teacher_csvs[0]).read_bytes())
    res = run(tmp_path, [teacher_csvs[0], teacher_csvs[0], copy], small_benchmark)
    once, twice = default_run.report, res.report
    assert twice["teacher_responses"] == once["teacher_responses"]  # same bytes: skipped whole
    assert [f["path"] for f in twice["skipped_files"]] == [str(teacher_csvs[0]), str(copy)]
    assert twice["duplicate_responses"] == once["duplicate_responses"] == 0
    for key in ("matched_responses", "correct_responses", "response_accuracy", "majority_accuracy",
                "samples_with_correct_response", "splits"):
        assert twice[key] == once[key]
    assert res.table.equals(default_run.table)


def test_answers_are_parsed_strictly_and_placeholder_analysis_is_null(tmp_path, plain_bench):
    bench_path, csvs = plain_bench
    text = read_text(csvs[0])
    bench = pq.read_table(bench_path).to_pandas()
    # one train sample (the split depends on the benchmark alone), seven crafted responses
    split = run(tmp_path / "first", csvs, bench_path).table["split"].to_pylist()
    i = split.index("train")
    pid, cid = str(bench.loc[i, "proofread_root_id"]), str(bench.loc[i, "current_root_id"])
    truth = DESCRIPTION_TO_LETTER[bench.loc[i, "class_description"]]
    rows = text[(text["proofread root id"] == pid) & (text["current root id"] == cid)].iloc[:1]
    answers = [f"({truth.upper()})", f"{truth})", "a or b", "", "this is a soma", "h", f" {truth} "]
    crafted = pd.concat([rows] * len(answers), ignore_index=True)
    crafted["llm_answer"] = answers
    crafted["index"] = [str(k) for k in range(len(answers))]
    crafted["analysis"] = [f"analysis {k}" for k in range(len(answers))]
    crafted.loc[6, "analysis"] = MISSING_ANALYSIS
    rest = text[~((text["proofread root id"] == pid) & (text["current root id"] == cid))]
    csv = write_text(pd.concat([crafted, rest]), tmp_path / "t.csv")

    res = run(tmp_path, [csv], bench_path, responses_per_sample=None)
    t = res.table.to_pandas()
    mine = t[t["current_root_id"] == int(cid)]
    assert len(mine) == len(answers)
    got = dict(zip(mine["teacher_answer_raw"], zip(mine["teacher_answer"], mine["teacher_correct"], strict=True), strict=True))
    assert got[f"({truth.upper()})"] == (truth, True)
    assert got[f"{truth})"] == (truth, True)
    assert got[f" {truth} "] == (truth, True)
    for raw in ("a or b", "", "this is a soma", "h"):
        assert pd.isna(got[raw][0]) and not got[raw][1]
    # correct ones first, then input order
    assert mine["teacher_correct"].tolist() == [True] * 3 + [False] * 4
    assert mine["teacher_answer_raw"].tolist()[:3] == [answers[0], answers[1], answers[6]]
    placeholder = mine[mine["teacher_answer_raw"] == f" {truth} "]
    assert placeholder["teacher_analysis"].isna().all()  # placeholder -> null, still scored
    assert mine["teacher_votes"].iloc[0] == f"{truth}:3 unparsed:4"


def test_responses_per_sample_and_filters(tmp_path, small_benchmark, teacher_csvs, default_run):
    """The filters shape the train rows only; every val/test sample keeps one unfiltered row."""
    r0 = default_run.report
    resp = default_run.responses.to_pandas()
    held = r0["split_sizes"]["val"] + r0["split_sizes"]["test"]
    train_resp = resp[resp["split"] == "train"]
    full = run(tmp_path, teacher_csvs, small_benchmark, "all.parquet", responses_per_sample="all")
    ft = full.table.to_pandas()
    assert full.report["train_rows"] == len(train_resp) and full.report["held_out_rows"] == held
    assert ft[~ft["train_row"]].groupby("current_root_id").size().max() == 1
    assert set(ft[~ft["train_row"]]["split"]) == {"val", "test"} and set(ft[ft["train_row"]]["split"]) == {"train"}
    two = run(tmp_path, teacher_csvs, small_benchmark, "two.parquet", responses_per_sample=2)
    per = two.table.to_pandas().groupby("current_root_id").size()
    assert per.max() == 2 and per.min() >= 1
    correct = run(tmp_path, teacher_csvs, small_benchmark, "c.parquet", filter_correct_only=True)
    ct = correct.table.to_pandas()
    trained = ct[ct["train_row"]]
    assert len(trained) == train_resp.groupby("current_root_id")["teacher_correct"].any().sum()
    assert trained["teacher_correct"].all()
    # val/test: every sample, the teacher's wrong answers included, its first response in input order
    kept = ct[~ct["train_row"]]
    assert len(kept) == held and not kept["teacher_correct"].all()
    first = resp[resp["split"] != "train"].sort_values("teacher_order").groupby("current_root_id").first()
    assert first.loc[kept["current_root_id"], "teacher_answer_raw"].tolist() == kept["teacher_answer_raw"].tolist()
    assert correct.report["output_rows"] == correct.table.num_rows
    assert correct.report["splits"] == r0["splits"]  # split before filtering


def test_unmatched_samples_and_filter_matched_only(tmp_path, plain_bench):
    bench_path, csvs = plain_bench
    text = read_text(csvs[0])
    keep_ids = text["current root id"].unique()[5:]  # drop all responses of five samples
    csv = write_text(text[text["current root id"].isin(keep_ids)], tmp_path / "t.csv")
    res = run(tmp_path, [csv], bench_path, "a.parquet")
    r = res.report
    assert r["unmatched_samples"] == 5 and r["matched_samples"] == r["total_samples"] - 5
    assert res.table.num_rows == r["total_samples"]
    empty = res.table.filter(pa.compute.is_null(res.table["teacher_answer_raw"]))
    assert empty.num_rows == 5
    for col in TEACHER_COLUMNS:
        if col not in ("split", "split_group", "train_row"):
            assert empty[col].null_count == 5, col
    assert empty["split"].null_count == 0
    only = run(tmp_path, [csv], bench_path, "b.parquet", filter_matched_only=True)
    # the filter drops train samples without a response; val/test samples always stay
    unmatched_train = sum(s == "train" for s in empty["split"].to_pylist())
    assert only.table.num_rows == r["total_samples"] - unmatched_train


def test_old_column_spelling(tmp_path):
    bench = make_benchmark(tmp_path / "old.parquet", n=60, seed=5, column_style="old", image_size=16)
    csvs = make_teacher_csvs(bench, tmp_path / "csvs", k=2, seed=5)
    res = run(tmp_path, csvs, bench)
    assert res.report["label_column"] == "ground_truth"
    assert res.report["image_columns"] == ["option_1_front_path", "option_1_side_path", "option_1_top_path"]
    assert res.report["matched_samples"] == 60
    assert res.table.select(pq.read_table(bench).column_names).equals(pq.read_table(bench))


def test_metadata_only_benchmark(tmp_path, plain_bench):
    bench_path, csvs = plain_bench
    res = run(tmp_path, csvs, bench_path)
    assert res.report["image_columns"] == [] and res.report["match_rate"] == 1.0
    assert data.read_merged(res.output)[0].num_rows == res.report["output_rows"]


def test_duplicate_benchmark_rows_share_responses_and_split(tmp_path):
    bench = make_benchmark(tmp_path / "dup.parquet", n=60, seed=6, with_images=False, duplicates=4)
    csvs = make_teacher_csvs(bench, tmp_path / "csvs", k=2, seed=6)
    res = run(tmp_path, csvs, bench, responses_per_sample=None)
    r = res.report
    assert r["total_samples"] == 64 and r["duplicate_samples"] == 4
    t = res.table.to_pandas()
    key = ["proofread_root_id", "current_root_id"]
    for _, g in t.groupby(key):
        assert g["split"].nunique() == 1
    dup_keys = pq.read_table(bench).to_pandas().duplicated(key, keep=False)
    assert dup_keys.sum() >= 8
    # both copies of a duplicated segment carry the same responses
    sizes = t.groupby(key).size()
    bench_counts = pq.read_table(bench).to_pandas().groupby(key).size()
    per_copy = sizes / bench_counts.reindex(sizes.index)
    assert (per_copy == per_copy.round()).all()


def test_split_invariants(tmp_path, small_benchmark):
    csvs = make_teacher_csvs(small_benchmark, tmp_path / "weak", k=3, accuracy=0.4, seed=9)
    full = run(tmp_path, csvs, small_benchmark, "full.parquet")
    res = run(tmp_path, csvs, small_benchmark, "correct.parquet", filter_correct_only=True)
    bench = pq.read_table(small_benchmark).to_pandas()
    table, report = data.read_merged(res.output)  # the filtered parquet alone
    splits = report["splits"]
    all_pairs = [tuple(p) for s in ("train", "val", "test") for p in splits[s]]
    assert sorted(all_pairs) == sorted(zip(bench["proofread_root_id"], bench["current_root_id"], strict=True))
    id_split = {}
    for s in splits:
        for pid, cid in splits[s]:
            assert id_split.setdefault(pid, s) == s  # no neuron in two splits
            assert id_split.setdefault(cid, s) == s  # no segment id in two splits
    # the test split keeps the samples the teacher never got right, in the filtered file too
    test = {tuple(p) for p in splits["test"]}
    ft = full.table.to_pandas()
    wrong = {(p, c) for p, c, ok in zip(ft["proofread_root_id"], ft["current_root_id"],
                                        ft["teacher_correct"], strict=True) if not ok}
    assert wrong & test, "expected some wrong-teacher samples in test"
    kept = set(zip(table["proofread_root_id"].to_pylist(), table["current_root_id"].to_pylist(), strict=True))
    assert wrong & test <= kept
    assert report["split_sizes"] == full.report["split_sizes"]
    # the split column agrees with the lists
    for p, c, s in zip(ft["proofread_root_id"], ft["current_root_id"], ft["split"], strict=True):
        assert (p, c) in {tuple(x) for x in splits[s]}


def test_config_object_and_overrides(tmp_path, plain_bench):
    bench_path, csvs = plain_bench
    cfg = MergeConfig(csv_files=csvs, output=tmp_path / "out" / "x.parquet", dataset_name=str(bench_path), seed=1)
    res = merge(cfg, quiet=True, seed=3, test_size=0.2)
    assert res.report["seed"] == 3 and res.report["test_size"] == 0.2
    with pytest.raises(TypeError, match="bogus"):
        merge(cfg, bogus=1)
    with pytest.raises(UserError, match="responses_per_sample"):
        merge(cfg, responses_per_sample=0, force=True)


# --------------------------------------------------------------------------------------
# bad input: one clear line, nothing written
# --------------------------------------------------------------------------------------


def _error(tmp_path, csvs, bench, **kw) -> str:
    with pytest.raises(UserError) as e:
        run(tmp_path, csvs, bench, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    assert_nothing_written(tmp_path)
    return msg


def test_missing_csv(tmp_path, plain_bench):
    msg = _error(tmp_path, [tmp_path / "nope.csv"], plain_bench[0])
    assert "not found" in msg and "nope.csv" in msg


def test_missing_required_column(tmp_path, plain_bench):
    csv = write_text(read_text(plain_bench[1][0]).drop(columns=["llm_answer"]), tmp_path / "t.csv")
    msg = _error(tmp_path, [csv], plain_bench[0])
    assert "llm_answer" in msg and str(csv) in msg


def test_empty_and_header_only_csv(tmp_path, plain_bench):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "empty CSV" in _error(tmp_path, [empty], plain_bench[0])
    header = write_text(read_text(plain_bench[1][0]).iloc[:0], tmp_path / "header.csv")
    assert "no rows" in _error(tmp_path, [header], plain_bench[0])


def test_no_match_at_all(tmp_path, plain_bench, teacher_csvs):
    msg = _error(tmp_path, teacher_csvs, plain_bench[0])  # CSVs of another benchmark
    assert "no teacher response matched" in msg and "--dataset-name" in msg


def test_unknown_label(tmp_path, plain_bench):
    bench = pq.read_table(plain_bench[0])
    labels = bench["class_description"].to_pylist()
    labels[3] = "nucleus"
    bad = bench.set_column(bench.schema.get_field_index("class_description"), "class_description",
                           pa.array(labels))
    pq.write_table(bad, tmp_path / "bad.parquet")
    msg = _error(tmp_path, plain_bench[1], tmp_path / "bad.parquet")
    assert "'nucleus'" in msg and "class_description" in msg


def test_missing_dataset_and_offline_hub_id(tmp_path, plain_bench):
    assert "dataset not found" in _error(tmp_path, plain_bench[1], tmp_path / "nope.parquet")
    msg = _error(tmp_path, plain_bench[1], "nobody/no-such-dataset-xyz")
    assert "nobody/no-such-dataset-xyz" in msg


def test_output_exists_without_force(tmp_path, plain_bench):
    out = tmp_path / "out" / "m.parquet"
    out.parent.mkdir()
    out.write_text("keep me")
    with pytest.raises(UserError, match="--force"):
        run(tmp_path, plain_bench[1], plain_bench[0])
    assert out.read_text() == "keep me" and len(list(out.parent.iterdir())) == 1
    run(tmp_path, plain_bench[1], plain_bench[0], force=True)
    assert pq.read_table(out).num_rows > 0


def test_failed_write_leaves_nothing(tmp_path, plain_bench, monkeypatch):
    calls = []

    def flaky(table, path, report=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(table, path, report)

    real = data.write_parquet
    monkeypatch.setattr(data, "write_parquet", flaky)
    with pytest.raises(OSError):
        run(tmp_path, plain_bench[1], plain_bench[0])
    assert_nothing_written(tmp_path)


# --------------------------------------------------------------------------------------
# the prompt's text block
# --------------------------------------------------------------------------------------


def test_prompt_text_forms():
    text = "It's a segment.\nBox: 1 x 2 nm; path C:\\data"
    blocks = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD" * 50}},
              {"type": "text", "text": text}]
    assert prompt_text(repr(blocks)) == text  # repr picks double quotes for the apostrophe
    assert prompt_text(repr([{"type": "text", "text": "no quote"}])) == "no quote"
    assert prompt_text(json.dumps(blocks)) == text
    assert prompt_text(repr([{"type": "text", "text": "caf\u00e9\n"}])) == "caf\u00e9\n"
    assert prompt_text(repr([{"text": "key order swapped", "type": "text"}])) == "key order swapped"
    assert prompt_text("just the prompt text") == "just the prompt text"
    assert prompt_text("[{'type': 'text', 'text': __import__('os')}]") is None  # never evaluated
    assert prompt_text("") is None and prompt_text(None) is None
    two = repr([{"type": "text", "text": "one"}, {"type": "image"}, {"type": "text", "text": "two"}])
    assert prompt_text(two) == "one\n\ntwo"


def test_prompt_texts_of_an_array():
    odd = "It's C:\\new \t \"q\" caf\u00e9 \x01 \\n end\\"
    blocks = [{"type": "image", "source": {"type": "base64", "data": "QUJD" * 50}}, {"type": "text", "text": odd}]
    cells = [
        repr(blocks), json.dumps(blocks), repr([{"type": "text", "text": "plain"}]),
        repr([{"type": "input_text", "text": "openai style"}]), repr([{"text": "swapped", "type": "text"}]),
        repr([{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]),
        "not a literal", "[broken", "", None,
    ]
    got, layouts = (a.to_pylist() for a in prompt_texts(pa.array(cells, pa.string())))
    assert got == [prompt_text(c) for c in cells]
    assert got[0] == odd
    # the usual form's layout is counted, the rest parsed: both agree with the general parser
    assert layouts == [prompt_layout(c) if x is not None else None for c, x in zip(cells, got, strict=True)]
    assert layouts[0] == "image,text"


def test_prompt_text_round_trips_any_text():
    rng = np.random.default_rng(0)
    pool = [*"ab n'\"\\\t\n\x01\u00e9\u2603{}[]:,", "\\n", "\\'", "'}]", "'type': 'text'",
            '"type": "text"', "'type': 'text', 'text': '", "\\\\"]
    for _ in range(400):
        text = "".join(rng.choice(pool, size=int(rng.integers(0, 30))))
        blocks = [{"type": "image", "source": {"data": "QUJD"}}, {"type": "text", "text": text}]
        cells = (repr(blocks), json.dumps(blocks), repr(blocks[::-1]), json.dumps(blocks[::-1]))
        for cell in cells:
            assert prompt_text(cell) == (text or None), (text, cell)
        texts, layouts = (a.to_pylist() for a in prompt_texts(pa.array(cells, pa.string())))
        assert texts == [prompt_text(c) for c in cells]
        assert layouts == [prompt_layout(c) if x is not None else None for c, x in zip(cells, texts, strict=True)]


def test_each_distinct_prompt_decoded_once_gives_every_row_its_own(tmp_path, plain_bench):
    """merge decodes each distinct stored prompt once: every response still gets exactly what
    decoding its own cell gives, whatever mix of forms the files hold."""
    bench, csvs = plain_bench
    df = read_text(csvs[0])
    forms = [repr([{"type": "text", "text": "plain"}]), "not a literal", "",
             repr([{"type": "image"}, {"type": "text", "text": "one"}, {"type": "image"}]),
             json.dumps([{"type": "image"}, {"type": "text", "text": "double 'quoted'"}])]
    for i, cell in enumerate(forms):  # whole segments (all K draws) and single draws alike
        df.loc[df.index[i * 7:(i * 7) + (3 if i % 2 else 1)], "prompt"] = cell
    path = write_text(df, tmp_path / "mixed.csv")
    res = run(tmp_path, [path], bench)
    got = pq.read_table(res.responses_path).to_pylist()
    cells = read_text(path).set_index(["proofread root id", "current root id", "index"])["prompt"]
    assert {r["teacher_prompt_layout"] for r in got} >= {None, "text", "image,text,image"}
    for r in got:
        cell = cells.loc[(str(r["proofread_root_id"]), str(r["current_root_id"]), str(r["teacher_index"]))]
        assert r["teacher_prompt"] == prompt_text(cell or None)
        want = prompt_layout(cell) if prompt_text(cell or None) is not None else None
        assert r["teacher_prompt_layout"] == want


def test_load_benchmark_local_forms(tmp_path, plain_bench, small_benchmark):
    import datasets

    bench = pq.read_table(plain_bench[0])
    folder = tmp_path / "folder" / "data"
    folder.mkdir(parents=True)
    pq.write_table(bench.slice(0, 50), folder / "train-00000-of-00002.parquet")
    pq.write_table(bench.slice(50), folder / "train-00001-of-00002.parquet")
    pq.write_table(bench.slice(0, 3), folder / "test-00000-of-00001.parquet")
    assert data.load_benchmark(str(tmp_path / "folder")).equals(bench)  # only the train files
    assert data.load_benchmark(str(tmp_path / "folder"), split="test").num_rows == 3

    ds = datasets.Dataset(pq.read_table(small_benchmark))
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dict"))
    for path in ("saved", "dict"):
        t = data.load_benchmark(str(tmp_path / path))
        assert t.num_rows == ds.num_rows
        assert data.is_image_type(t.schema.field("option_1_front_image").type)  # not decoded
    with pytest.raises(UserError, match="split 'validation'"):
        data.load_benchmark(str(tmp_path / "dict"), split="validation")
    with pytest.raises(UserError, match="no parquet files"):
        (tmp_path / "empty").mkdir()
        data.load_benchmark(str(tmp_path / "empty"))


def test_atomic_writers_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "a" / "x.json"
    data.atomic_write_json(target, {"id": 864691134965949727})
    assert json.loads(target.read_text()) == {"id": 864691134965949727}
    with pytest.raises(RuntimeError), data.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"id": 864691134965949727}
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]
