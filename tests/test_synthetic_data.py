"""The offline kit's synthetic benchmark parquet and teacher CSVs, checked through real readers."""

from __future__ import annotations

import ast
import base64
import collections
import io
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectodistill.core.task import (
    BBOX_COLUMNS,
    CLASSES,
    DESCRIPTION_TO_LETTER,
    IMAGE_COLUMN_STYLES,
    LETTERS,
    MISSING_ANALYSIS,
)
from connectodistill.synthetic.benchmark import CLASS_FREQUENCIES, make_benchmark
from connectodistill.synthetic.teacher import ANALYSIS_PHRASES, make_teacher_csvs

CSV_HEADER = [
    "proofread root id",
    "current root id",
    "species",
    "xmin",
    "ymin",
    "zmin",
    "xmax",
    "ymax",
    "zmax",
    "unit",
    "index",
    "analysis",
    "llm_answer",
    "model",
    "with_description",
    "prompt",
]


def strict_letter(answer: str) -> str | None:
    """What the project's answer rule reads, with the kit prompt's own option wording."""
    from connectodistill.core.scoring import parse_answer
    from connectodistill.synthetic.teacher import PROMPT_OPTIONS

    return parse_answer(answer, PROMPT_OPTIONS)


def read_csv(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def truth_by_current_id(bench) -> dict[str, str]:
    t = pq.read_table(bench)
    label = "class_description" if "class_description" in t.column_names else "ground_truth"
    return {
        str(c): DESCRIPTION_TO_LETTER[s]
        for c, s in zip(
            t.column("current_root_id").to_pylist(), t.column(label).to_pylist(), strict=True
        )
    }


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_benchmark(tmp_path_factory.mktemp("bench") / "b.parquet", n=120, seed=0)


@pytest.fixture(scope="module")
def meta_bench(tmp_path_factory):
    """400 rows without images: fast, big enough for accuracy statistics."""
    return make_benchmark(
        tmp_path_factory.mktemp("meta") / "m.parquet", n=400, seed=0, with_images=False
    )


@pytest.fixture(scope="module")
def csvs(bench, tmp_path_factory):
    return make_teacher_csvs(bench, tmp_path_factory.mktemp("csv"), k=5, seed=0, files=2)


# ------------------------------------------------------------------ benchmark parquet


def test_loads_with_datasets_and_images_decode(bench, tmp_path):
    import datasets
    from PIL import Image

    ds = datasets.load_dataset(
        "parquet", data_files=str(bench), split="train", cache_dir=str(tmp_path)
    )
    assert len(ds) == 120
    for col in IMAGE_COLUMN_STYLES["new"]:
        assert isinstance(ds.features[col], datasets.Image)
        img = ds[0][col]
        assert isinstance(img, Image.Image)
        assert img.size == (64, 64) and img.mode == "RGB"
    assert ds.features["proofread_root_id"].dtype == "int64"
    assert ds[0]["proofread_root_id"] == pq.read_table(bench).column("proofread_root_id")[0].as_py()


@pytest.mark.parametrize("style,label", [("new", "class_description"), ("old", "ground_truth")])
def test_columns_order_and_types(tmp_path, style, label):
    path = make_benchmark(tmp_path / "b.parquet", n=20, seed=1, column_style=style, image_size=32)
    schema = pq.read_schema(path)
    images = list(IMAGE_COLUMN_STYLES[style])
    assert schema.names == [
        "species",
        "proofread_root_id",
        "current_root_id",
        *BBOX_COLUMNS,
        label,
        *images,
        "option_1_neuron_id",
    ]
    assert schema.field("proofread_root_id").type == pa.int64()
    assert schema.field("current_root_id").type == pa.int64()
    assert all(schema.field(c).type == pa.float64() for c in BBOX_COLUMNS)
    assert schema.field(images[0]).type == pa.struct(
        [("bytes", pa.binary()), ("path", pa.string())]
    )
    assert schema.field("option_1_neuron_id").type == pa.string()
    assert b"huggingface" in schema.metadata
    t = pq.read_table(path)
    assert set(t.column(label).to_pylist()) <= set(CLASSES.values())
    from PIL import Image

    cell = t.column(images[1])[0].as_py()
    assert Image.open(io.BytesIO(cell["bytes"])).size == (32, 32)


def test_ids_are_exact_18_digit_int64_grouped_by_neuron(bench):
    t = pq.read_table(bench)
    pids = t.column("proofread_root_id").to_pylist()
    cids = t.column("current_root_id").to_pylist()
    for x in pids + cids:
        assert isinstance(x, int) and len(str(x)) == 18 and x > 2**53
    assert any(int(float(x)) != x for x in pids)
    assert any(int(float(x)) != x for x in cids)
    assert len(set(cids)) == len(cids)
    sizes = collections.Counter(pids).values()
    assert max(sizes) <= 4 and sum(s > 1 for s in sizes) >= 10
    # rows of one neuron are shared by several segments, ids pass through pandas untouched
    df = pd.read_parquet(bench, columns=["proofread_root_id", "current_root_id"])
    assert str(df["proofread_root_id"].dtype) == "int64"
    assert [int(x) for x in df["current_root_id"]] == cids
    assert t.column("option_1_neuron_id").to_pylist() == [str(c) for c in cids]


def test_bounding_boxes_are_realistic(bench):
    df = pd.read_parquet(bench, columns=list(BBOX_COLUMNS))
    for a in "xyz":
        assert (df[f"{a}max"] > df[f"{a}min"]).all()
        assert df[f"{a}min"].between(1e5, 2e6).all()
    assert (df["xmin"] % 1 != 0).mean() > 0.95  # fractional nm


def test_class_imbalance_and_all_classes(tmp_path):
    big = make_benchmark(tmp_path / "big.parquet", n=2000, seed=5, with_images=False)
    letters = [
        DESCRIPTION_TO_LETTER[s] for s in pq.read_table(big).column("class_description").to_pylist()
    ]
    freq = collections.Counter(letters)
    for letter, p in CLASS_FREQUENCIES.items():
        assert abs(freq[letter] / 2000 - p) < 0.01
    assert freq.most_common(1)[0][0] == "a"
    small = make_benchmark(tmp_path / "small.parquet", n=50, seed=5, with_images=False)
    labels = set(pq.read_table(small).column("class_description").to_pylist())
    assert labels == set(CLASSES.values())


def test_without_images_and_determinism(tmp_path):
    a = make_benchmark(tmp_path / "a.parquet", n=30, seed=7, with_images=False)
    b = make_benchmark(tmp_path / "b.parquet", n=30, seed=7, with_images=False)
    c = make_benchmark(tmp_path / "c.parquet", n=30, seed=8, with_images=False)
    ta, tb, tc = (pq.read_table(p) for p in (a, b, c))
    assert not set(IMAGE_COLUMN_STYLES["new"]) & set(ta.column_names)
    assert ta.column_names[-1] == "option_1_neuron_id"
    assert ta.equals(tb) and not ta.equals(tc)


def test_duplicates_are_exact_copies(tmp_path):
    path = make_benchmark(tmp_path / "d.parquet", n=40, seed=2, duplicates=3, image_size=32)
    t = pq.read_table(path)
    assert t.num_rows == 43
    keys = list(
        zip(
            *(
                t.column(c).to_pylist()
                for c in ("proofread_root_id", "current_root_id", *BBOX_COLUMNS)
            ),
            strict=True,
        )
    )
    dup_rows = [i for i, k in enumerate(keys) if keys.index(k) != i]
    assert len(dup_rows) == 3
    rows = t.to_pylist()
    for i in dup_rows:
        assert rows[i] == rows[keys.index(keys[i])]


def test_class_is_visible_in_images(tmp_path):
    """Nearest-centroid on four crude ink statistics per view beats the majority class."""
    from PIL import Image

    path = make_benchmark(tmp_path / "l.parquet", n=350, seed=3)
    t = pq.read_table(path)
    y = np.array(
        [LETTERS.index(DESCRIPTION_TO_LETTER[s]) for s in t.column("class_description").to_pylist()]
    )

    def feats(png: bytes) -> list[float]:
        g = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
        dark = np.clip(np.median(g) - g, 0, None)
        ink = dark > 40
        edges = (
            np.abs(np.diff(ink.astype(int), axis=1)).sum()
            + np.abs(np.diff(ink.astype(int), axis=0)).sum()
        )
        return [dark.max(), ink.mean(), edges / max(1, ink.sum()), (dark > 8).mean()]

    cols = [t.column(c).to_pylist() for c in IMAGE_COLUMN_STYLES["new"]]
    x = np.array(
        [sum((feats(cell["bytes"]) for cell in row), []) for row in zip(*cols, strict=True)]
    )
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    train, test = slice(0, 250), slice(250, None)
    centroids = np.array([x[train][y[train] == k].mean(0) for k in range(len(LETTERS))])
    pred = np.argmin(((x[test][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    majority = np.bincount(y[test]).max() / len(y[test])
    assert (pred == y[test]).mean() > majority + 0.1


# ------------------------------------------------------------------ teacher CSVs


def test_csv_format_and_exact_ids(bench, csvs):
    first, second = csvs
    assert first.name == "claude-3-7-sonnet-20250219_analysis_results_K5.csv"
    assert second.name == "claude-3-7-sonnet-20250219_analysis_results_K5_v2.csv"
    assert first.read_text().splitlines()[0].split(",") == CSV_HEADER
    df = read_csv(first)
    t = pq.read_table(bench)
    assert len(df) == 5 * t.num_rows
    assert set(df["unit"]) == {"nm"} and set(df["model"]) == {"claude-3-7-sonnet-20250219"}
    assert set(df["with_description"]) == {"True"} and set(df["species"]) == {"mouse"}
    for _, g in df.groupby("current root id"):
        assert sorted(g["index"].astype(int)) == [0, 1, 2, 3, 4]
        assert g["proofread root id"].nunique() == 1
    ids = {
        (str(p), str(c))
        for p, c in zip(
            t.column("proofread_root_id").to_pylist(),
            t.column("current_root_id").to_pylist(),
            strict=True,
        )
    }
    assert set(zip(df["proofread root id"], df["current root id"], strict=True)) == ids
    assert all(re.fullmatch(r"\d{18}", s) for s in df["current root id"])


def test_csv_coordinates_are_float32_prints(bench, csvs):
    df = read_csv(csvs[0]).drop_duplicates("current root id").set_index("current root id")
    table = pq.read_table(bench, columns=["current_root_id", *BBOX_COLUMNS])
    t = table.to_pandas().set_index(table.column("current_root_id").to_pandas().astype(str))
    exact = 0
    for c in BBOX_COLUMNS:
        csv_vals = df[c].astype(float)
        ref = t.loc[csv_vals.index, c]
        assert np.allclose(
            csv_vals.to_numpy(), ref.to_numpy(), rtol=2.5e-7, atol=0
        )  # one float32 ulp
        # the text is the shortest print of the float32 value
        assert (np.float32(csv_vals.to_numpy()) == np.float32(ref.to_numpy())).all()
        assert list(df[c]) == [str(np.float32(v)) for v in ref]
        exact += int((csv_vals.to_numpy() == ref.to_numpy()).sum())
    assert exact == 0


def test_prompt_literal_parses_and_carries_the_views(bench, csvs):
    df = read_csv(csvs[0])
    t = pq.read_table(bench)
    row = df.iloc[0]
    blocks = ast.literal_eval(row["prompt"])
    assert [b["type"] for b in blocks] == ["image", "image", "image", "text"]
    r = t.column("current_root_id").to_pylist().index(int(row["current root id"]))
    for block, col in zip(blocks[:3], IMAGE_COLUMN_STYLES["new"], strict=True):
        assert block["source"]["media_type"] == "image/png"
        assert base64.b64decode(block["source"]["data"]) == t.column(col)[r].as_py()["bytes"]
    text = blocks[3]["text"]
    assert "\n" in text and "'" in text and "mouse" in text
    # the box size as the teacher printed it: maxpt - minpt of the CSV's own coordinates
    from connectodistill.core.prompts import size_text
    from connectodistill.synthetic.teacher import PROMPT_OPTIONS

    size = size_text([float(row[c]) for c in ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax")])
    assert f"measures {size} nm" in text
    for letter, desc in PROMPT_OPTIONS.items():
        assert f"{letter}) {desc}" in text
    assert "<answer>" in text


def test_prompt_without_description_and_without_images(meta_bench, tmp_path):
    [path] = make_teacher_csvs(
        meta_bench, tmp_path, k=2, seed=1, with_description=False, model="m-1"
    )
    assert path.name == "m-1_analysis_results_K2_without_description.csv"
    df = read_csv(path)
    assert set(df["with_description"]) == {"False"}
    blocks = ast.literal_eval(df["prompt"].iloc[0])
    assert len(blocks) == 4 and len(blocks[0]["source"]["data"]) < 100
    assert "visual cortex" not in blocks[3]["text"]


def test_response_accuracy_defects_and_analysis(meta_bench, tmp_path):
    [path] = make_teacher_csvs(meta_bench, tmp_path, k=5, accuracy=0.85, seed=0)
    df = read_csv(path)
    truth = truth_by_current_id(meta_bench)
    parsed = df["llm_answer"].map(strict_letter)
    correct = parsed == df["current root id"].map(truth)
    assert abs(correct.mean() - 0.85) < 0.04
    per_segment = correct.groupby(df["current root id"]).mean()
    assert (per_segment == 1).mean() > 0.4 and (per_segment == 0).sum() >= 3
    answers = set(df["llm_answer"])
    assert answers & set("ABCDEFG")
    assert any(re.fullmatch(r"\(?[a-g]\)", a) for a in answers)
    assert "" in answers and any(" or " in a for a in answers)
    assert any(a != a.strip() and a.strip() for a in answers)
    assert any(re.fullmatch(r"\*\*[a-g]\*\*", a) for a in answers)
    assert any(re.fullmatch(r"[a-g]\) \w.*\.\.\.", a) for a in answers)  # letter + description start
    assert any(re.fullmatch(r"[A-G]\. \w.*", a) for a in answers)  # letter + the prompt's wording
    assert set(CLASSES.values()) & answers  # a description alone
    missing = df["analysis"] == MISSING_ANALYSIS
    assert 0 < missing.mean() < 0.12
    # some lost their analysis tags but kept a valid letter; the rest are unparseable
    assert 0 < parsed[missing].notna().mean() < 1
    # the analysis describes the letter that was answered, right or wrong
    ok = parsed.notna() & ~missing
    assert all(
        a.rsplit(" It spans", 1)[0] in ANALYSIS_PHRASES[p]
        for a, p in zip(df["analysis"][ok], parsed[ok], strict=True)
    )
    # The K analyses of one segment differ (merge counts identical responses once).
    per_segment = df[ok].groupby("current root id")["analysis"]
    assert (per_segment.nunique() / per_segment.size()).mean() > 0.9
    # lower accuracy lowers it
    [low] = make_teacher_csvs(meta_bench, tmp_path / "low", k=5, accuracy=0.5, seed=0)
    low_df = read_csv(low)
    low_acc = (
        low_df["llm_answer"].map(strict_letter) == low_df["current root id"].map(truth)
    ).mean()
    assert abs(low_acc - 0.5) < 0.06


def test_no_defects_perfect_teacher_and_more_files(meta_bench, tmp_path):
    paths = make_teacher_csvs(
        meta_bench, tmp_path, k=3, accuracy=1.0, seed=4, defects=False, files=3
    )
    assert [p.name.split("_results")[1] for p in paths] == ["_K3.csv", "_K3_v2.csv", "_K3_v3.csv"]
    df = read_csv(paths[0])
    assert set(df["llm_answer"]) <= set(LETTERS)
    assert MISSING_ANALYSIS not in set(df["analysis"])
    assert (df["llm_answer"] == df["current root id"].map(truth_by_current_id(meta_bench))).all()


def test_conftest_fixtures(small_benchmark, teacher_csvs):
    """The shared session fixtures build through the package's public imports."""
    assert pq.read_metadata(small_benchmark).num_rows == 120
    assert len(teacher_csvs) == 1 and len(read_csv(teacher_csvs[0])) == 600


def test_second_file_covers_a_subset_with_fresh_responses(csvs):
    first, second = (read_csv(p) for p in csvs)
    ids1, ids2 = set(first["current root id"]), set(second["current root id"])
    assert ids2 < ids1 and abs(len(ids2) / len(ids1) - 0.3) < 0.02
    assert second.groupby("current root id").size().eq(5).all()
    key = ["current root id", "index"]
    joined = first.merge(second, on=key, suffixes=("", "_v2"))
    assert len(joined) == len(second)
    assert (joined["xmin"] == joined["xmin_v2"]).all()
    assert (joined["llm_answer"] != joined["llm_answer_v2"]).any() or (
        joined["analysis"] != joined["analysis_v2"]
    ).any()
