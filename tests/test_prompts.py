"""The teacher's question: sizes as printed, template recovery byte for byte, the choice rule,
and merge's independent-draw counting, on real files through merge."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from connectodistill.core.prompts import (
    SamplePrompt,
    choose_setting,
    prompt_sha256,
    recover_templates,
    render_template,
    sample_prompts,
    size_text,
)
from connectodistill.core.task import DESCRIPTION_TO_LETTER, MISSING_ANALYSIS
from connectodistill.merging import merge
from connectodistill.merging.teacher_csv import prompt_layout, prompt_text
from connectodistill.synthetic import make_benchmark, make_teacher_csvs


def read_text(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def run(tmp_path: Path, csvs, bench, name="m.parquet", **kw):
    return merge(csv_files=list(csvs), output=tmp_path / "out" / name, dataset_name=str(bench),
                 quiet=True, progress=False, **kw)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    d = tmp_path_factory.mktemp("plain")
    bench = make_benchmark(d / "bench.parquet", n=60, seed=5, with_images=False)
    return bench, make_teacher_csvs(bench, d / "csvs", k=5, seed=5, files=2, with_description=(True, False))


# ----------------------------------------------------------------------------- units
def test_size_text_is_numpy_default_formatting_of_float64_differences():
    assert size_text([0.0, 10.0, 100.0, 23333.25, 10.5, 200.0]) == "23333.25 x 0.5 x 100.0"
    lo, hi = np.float64("425429.34"), np.float64("431962.66")
    assert size_text([lo, 0, 0, hi, 1, 1]).split(" x ")[0] == str(hi - lo)


def test_recover_templates_roundtrip_and_refusals():
    def text(size, species="mouse"):
        return f"A {species} segment. Box {size} nm. The {species} cortex.\na) x"

    records = [(text(s), "mouse", s, "with_description", "image,image,image,text")
               for s in ("1.5 x 2.0 x 3.0", "10.25 x 2.0 x 7.0")]
    t = recover_templates(records)["mouse|with_description"]
    assert t["template"] == "A {species} segment. Box {bbox_size} nm. The {species} cortex.\na) x"
    assert t["reproduced"] == t["prompts"] == 2 and t["layout"] == "image,image,image,text"
    assert render_template(t["template"], "mouse", "9.0 x 9.0 x 9.0") == text("9.0 x 9.0 x 9.0")
    # a prompt that differs beyond species and size: no template, and why
    odd = records + [("Something else entirely 4.0 x 4.0 x 4.0", "mouse", "4.0 x 4.0 x 4.0", "with_description", None)]
    t = recover_templates(odd)["mouse|with_description"]
    assert t["template"] is None and "differ" in t["reason"]
    # the size must appear exactly once
    t = recover_templates([("no size here", "mouse", "1.0 x 1.0 x 1.0", "with_description", None)])
    assert t["mouse|with_description"]["template"] is None


def test_choose_setting_rule():
    assert choose_setting([True, True, False]) == ("with_description", {"with_description": 2, "without_description": 1})
    assert choose_setting([True, False])[0] == "with_description"  # ties: with guidance
    assert choose_setting([False, False, None])[0] == "without_description"
    assert choose_setting([True], asked=False)[0] == "without_description"
    assert choose_setting([])[0] == "with_description"


def test_sample_prompts_prefers_stored_then_template_then_builtin():
    rows = [{"proofread_root_id": 1, "current_root_id": 2, "species": "mouse",
             "xmin": 0.0, "ymin": 0.0, "zmin": 0.0, "xmax": 1.5, "ymax": 2.0, "zmax": 3.0},
            {"proofread_root_id": 1, "current_root_id": 3, "species": "mouse",
             "xmin": 0.0, "ymin": 0.0, "zmin": 0.0, "xmax": 4.0, "ymax": 2.0, "zmax": 3.0},
            {"proofread_root_id": 1, "current_root_id": 4, "species": "fly",
             "xmin": 0.0, "ymin": 0.0, "zmin": 0.0, "xmax": 4.0, "ymax": 2.0, "zmax": 3.0}]
    templates = {"mouse|with_description": {"template": "T {species} {bbox_size}", "layout": "text,image,image,image"}}
    got = sample_prompts(rows, {(1, 2): ("stored text", "image,image,image,text")}, templates,
                         "with_description", lambda r: "builtin text")
    assert got[0] == SamplePrompt("stored text", "teacher", "image,image,image,text")
    assert got[1] == SamplePrompt("T mouse 4.0 x 2.0 x 3.0", "teacher-template", "text,image,image,image")
    assert got[2].source == "builtin" and got[2].text == "builtin text"
    assert got[0].sha256 == prompt_sha256("stored text")


def test_prompt_text_and_layout_of_the_real_shape(plain):
    _, csvs = plain
    cell = read_text(csvs[0])["prompt"].iloc[0]
    blocks = ast.literal_eval(cell)
    assert prompt_text(cell) == blocks[3]["text"]
    assert prompt_layout(cell) == "image,image,image,text"
    text_first = repr([blocks[3], *blocks[:3]])
    assert prompt_layout(text_first) == "text,image,image,image"
    # a marker inside the text itself is text, not a block
    tricky = repr([{"type": "text", "text": "see 'type': 'image' here"}, blocks[0]])
    assert prompt_layout(tricky) == "text,image"


# ----------------------------------------------------------------------------- through merge
def test_merge_recovers_the_templates_byte_for_byte(tmp_path, plain):
    bench, csvs = plain
    res = run(tmp_path, csvs, bench)
    r = res.report
    assert set(r["prompt_templates"]) == {"mouse|with_description", "mouse|without_description"}
    for t in r["prompt_templates"].values():
        assert t["template"] and t["reproduced"] == t["prompts"] and t["reason"] is None
    assert r["prompt_settings"]["with_description"] == 5 * 60
    # every stored prompt renders from its template with the CSV's own species and box
    resp = pq.read_table(res.responses_path).to_pandas()
    texts = {}
    for path in csvs:
        for _, row in read_text(path).iterrows():
            size = size_text([float(row[c]) for c in ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax")])
            key = "mouse|" + ("with_description" if row["with_description"] == "True" else "without_description")
            assert render_template(r["prompt_templates"][key]["template"], "mouse", size) == prompt_text(row["prompt"])
            texts[(int(row["current root id"]), row["with_description"] == "True")] = prompt_text(row["prompt"])
    for cid, flag, text in zip(resp["current_root_id"], resp["teacher_with_description"], resp["teacher_prompt"],
                               strict=True):
        assert texts[(int(cid), bool(flag))] == text


def test_a_file_whose_prompts_differ_keeps_per_sample_prompts_only(tmp_path, plain):
    bench, csvs = plain
    df = read_text(csvs[0])
    cell = df.loc[0, "prompt"]
    df.loc[df["prompt"] == cell, "prompt"] = cell.replace("Which option", "Which one option")
    path = tmp_path / "edited.csv"
    df.to_csv(path, index=False)
    r = run(tmp_path, [path], bench).report
    t = r["prompt_templates"]["mouse|with_description"]
    assert t["template"] is None and "differ" in t["reason"]


def test_every_independent_draw_counts(tmp_path, plain):
    """Draws that lost their analysis (placeholder) and gave the same letter are independent:
    the old identity (segment, answer, analysis) would merge them and flip the majority."""
    bench_path, csvs = plain
    bench = pq.read_table(bench_path).to_pandas()
    df = read_text(csvs[0])
    pid, cid = str(bench.loc[0, "proofread_root_id"]), str(bench.loc[0, "current_root_id"])
    truth = DESCRIPTION_TO_LETTER[bench.loc[0, "class_description"]]
    other = "c" if truth != "c" else "a"
    mine = (df["proofread root id"] == pid) & (df["current root id"] == cid)
    rows = df[mine].copy()
    rows["llm_answer"] = [truth, truth, truth, other, other]
    rows["analysis"] = [MISSING_ANALYSIS] * 3 + ["analysed one", "analysed two"]
    repeated = rows.iloc[[0]]  # the same row written twice inside the file: one draw
    path = tmp_path / "k5.csv"
    pd.concat([rows, repeated, df[~mine]]).to_csv(path, index=False)
    res = run(tmp_path, [path], bench_path)
    r = res.report
    assert r["duplicate_responses"] == 1
    votes = res.table.to_pandas().set_index("current_root_id")["teacher_votes"]
    assert votes[int(cid)] == f"{truth}:3 {other}:2"
    # the old rule would have kept one placeholder draw: other:2 wins
    old = pd.concat([rows, repeated]).drop_duplicates(["current root id", "llm_answer", "analysis"])
    assert len(old) == 3
    # rows of a second file are independent draws even when identical in text
    second = tmp_path / "k5_v2.csv"
    rows.to_csv(second, index=False)
    r2 = run(tmp_path, [path, second], bench_path, "two.parquet").report
    assert r2["matched_responses"] == r["matched_responses"] + 5


def test_leak_proof_groups_join_samples_sharing_either_id(tmp_path):
    bench_path = make_benchmark(tmp_path / "b.parquet", n=80, seed=2, with_images=False)
    t = pq.read_table(bench_path).to_pandas()
    # one segment id under two proofread neurons: those neurons' samples must share a split
    a, b = t["proofread_root_id"].unique()[:2]
    i = t.index[t["proofread_root_id"] == b][0]
    t.loc[i, "current_root_id"] = t.loc[t.index[t["proofread_root_id"] == a][0], "current_root_id"]
    t.loc[i, ["xmin", "ymin", "zmin", "xmax", "ymax", "zmax"]] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    import pyarrow as pa

    edited = pa.Table.from_pandas(t, preserve_index=False).replace_schema_metadata(pq.read_schema(bench_path).metadata)
    pq.write_table(edited, tmp_path / "edited.parquet")
    csvs = make_teacher_csvs(tmp_path / "edited.parquet", tmp_path / "csvs", k=2, seed=2)
    res = run(tmp_path, csvs, tmp_path / "edited.parquet", seed=7)
    out = res.table.to_pandas()
    both = out[out["proofread_root_id"].isin([a, b])]
    assert both["split_group"].nunique() == 1 and both["split"].nunique() == 1
    assert res.report["largest_split_group"] >= len(both)
    assert res.report["split_groups"] == out["split_group"].nunique()
