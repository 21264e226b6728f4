"""Letter probabilities, calibration, self-consistency and triage (issue 13).

The tiny student's figures are recomputed here from predictions.csv by independent code, and
the triage threshold is shown to depend on the val samples only.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from connectodistill.core import calibration as cal
from connectodistill.core.task import LETTERS
from connectodistill.evaluation.recipe import evaluate, read_predictions
from connectodistill.training.runs import RUN_CONFIG

FAST = dict(max_new_tokens=12, batch_size=8, progress=False)
# the tiny fixture student needs ~60 new tokens to reach its answer on some samples
LONG = dict(FAST, max_new_tokens=64)
P_COLS = [f"p_{x}" for x in LETTERS]


@pytest.fixture(scope="module")
def conf_result(trained_run, tmp_path_factory):
    """One eval with every option: letter probabilities, 3 votes, a triage. The tiny student is
    weak (~20% right), so the target is low enough for its threshold to split the samples."""
    return evaluate(adapter_path=trained_run, output_dir=tmp_path_factory.mktemp("conf"), name="student",
                    votes=3, temperature=0.5, target_accuracy=0.1, **LONG)


def _key(df):
    return list(zip(df["proofread_root_id"], df["current_root_id"], strict=True))


# ----------------------------------------------------------------------------- pure metrics
def test_ece_brier_aurc_by_hand():
    conf = [0.95, 0.95, 0.15, 0.0]
    correct = [1, 0, 0, 0]
    # bins: [0.9, 1.0] holds two (mean conf 0.95, accuracy 0.5); [0.1, 0.2) one; [0, 0.1) one
    assert cal.ece(conf, correct) == pytest.approx(0.5 * 0.45 + 0.25 * 0.15 + 0.25 * 0.0)
    probs = np.zeros((2, 7))
    probs[0, 0], probs[1, :2] = 1.0, 0.5
    assert cal.brier(probs, ["a", "c"]) == pytest.approx((0.0 + (0.25 + 0.25 + 1.0)) / 2)
    # distinct confidences: risk after k most confident samples, averaged over k
    cov, risk = cal.risk_coverage([0.9, 0.8, 0.7], [1, 0, 1])
    assert list(cov) == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert list(risk) == pytest.approx([0.0, 0.5, 1 / 3])
    assert cal.aurc([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx((0 + 0.5 + 1 / 3) / 3)


def test_ties_are_never_split_and_order_does_not_matter():
    conf, correct = [0.9, 0.9, 0.5, 0.5], [1, 0, 1, 1]
    # accepting the two 0.9 samples together gives 0.5 accuracy; all four 0.75
    assert cal.threshold_for(conf, correct, 0.75) == 0.5
    assert cal.threshold_for(conf, correct, 0.8) is None
    assert cal.coverage_at_accuracy(conf, correct, 0.75) == 1.0
    assert cal.coverage_at_accuracy(conf, correct, 0.8) == 0.0
    a = cal.aurc(conf, correct)
    assert cal.aurc(conf[::-1], correct[::-1]) == pytest.approx(a)
    # the expected risk over the two orders of the tied top pair: (0.5 + 0.5) / 2 at k = 1
    assert cal.risk_coverage(conf, correct)[1][0] == pytest.approx(0.5)
    t = cal.selective(conf, correct, 0.9)
    assert (t["n_auto"], t["coverage"], t["accuracy"]) == (2, 0.5, 0.5)


# ----------------------------------------------------------------------------- tokenizers
@pytest.mark.parametrize("kind", ["qwen3-vl", "qwen2.5-vl", "qwen2-vl"])
def test_each_letter_is_one_token_after_the_tag(kind, tmp_path):
    from connectodistill.core.generation import letter_token_ids, render_prompts
    from connectodistill.core.modeling import load_processor
    from connectodistill.synthetic.student import make_processor

    processor, _ = load_processor(str(make_processor(tmp_path / kind, kind)))
    rendered = render_prompts(processor, ["Which letter?"], [[None, None, None]])[0]
    contexts = [rendered + r for r in ("<answer>", "<analysis>round.</analysis>\n<answer>", "soma.<answer>",
                                       "x <answer>")]
    ids = letter_token_ids(processor.tokenizer, contexts)
    assert all(len(set(row)) == 7 for row in ids)


@pytest.mark.parametrize("kind", ["qwen2.5-vl", "qwen2-vl"])
def test_batched_letter_probabilities_match_single_passes(kind, small_benchmark, tmp_path):
    """The other model classes (Qwen3-VL is checked on the trained student below): left-padded
    batches give each sample's unpadded distribution, with or without an answer tag."""
    import pyarrow.parquet as pq
    import torch

    from connectodistill.core.conversation import build_prompt, load_images
    from connectodistill.core.generation import answer_context, letter_probabilities, render_prompts
    from connectodistill.core.modeling import load_model, load_processor
    from connectodistill.core.task import image_columns
    from connectodistill.synthetic import make_tiny_student

    table = pq.read_table(small_benchmark).slice(0, 3)
    rows, cols = table.to_pylist(), image_columns(table.column_names)
    prompts, images = [build_prompt(r) for r in rows], [load_images(r, cols) for r in rows]
    responses = ["<analysis>round</analysis>\n<answer>b</answer>", "no tag", "<analysis>x</analysis> <answer>"]
    student = make_tiny_student(tmp_path / kind, kind=kind)
    processor, _ = load_processor(str(student))
    model = load_model(str(student))
    batched = letter_probabilities(model, processor, prompts, images, responses, batch_size=3)
    for i in range(3):
        text = render_prompts(processor, [prompts[i]], [images[i]])[0] + answer_context(responses[i])
        logits = []
        for x in LETTERS:
            inputs = processor(text=[text + x], images=images[i], return_tensors="pt")
            with torch.no_grad():
                out = model(**inputs).logits[0, -2].double()
            logits.append(torch.log_softmax(out, -1)[inputs["input_ids"][0, -1]].item())
        assert np.abs(np.exp(logits) / np.exp(logits).sum() - batched[i]).max() < 1e-5


def test_a_tokenizer_that_splits_a_letter_is_refused():
    from connectodistill.core.errors import UserError
    from connectodistill.core.generation import letter_token_ids

    class Splitting:  # "a" becomes two tokens after the tag
        name_or_path = "stub"

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[1, 2] + ([3, 4] if t.endswith("a") else [ord(t[-1])]) for t in texts]}

        def convert_ids_to_tokens(self, ids):
            return [str(i) for i in ids]

    with pytest.raises(UserError, match="one token right after '<answer>'"):
        letter_token_ids(Splitting(), ["q <answer>"])


# ----------------------------------------------------------------------------- the tiny student
def test_probabilities_sum_to_one_and_confidence_is_the_parsed_letter(conf_result):
    preds = read_predictions(conf_result / "predictions.csv")
    p = preds[P_COLS].to_numpy(float)
    assert np.allclose(p.sum(1), 1.0, atol=1e-9) and (p >= 0).all()
    for row in preds.to_dict("records"):
        letter = row["predicted_letter"]
        if isinstance(letter, str):
            assert row["confidence"] == pytest.approx(row[f"p_{letter}"], abs=1e-12)
        else:
            assert row["confidence"] == 0.0 and not row["correct"]
    for name in ("reliability.png", "risk_coverage.png", "triage.csv", "triage_val.csv"):
        assert (conf_result / name).stat().st_size > 0, name


def test_distribution_equals_an_independent_forward_pass(conf_result, trained_run):
    """Seven separate unpadded forward passes, one per letter, each reading the probability of
    its last token: the renormalised result must equal predictions.csv."""
    import torch

    from connectodistill.core.config import EvalConfig
    from connectodistill.core.conversation import load_images
    from connectodistill.core.data import load_benchmark
    from connectodistill.core.generation import answer_context, render_prompts
    from connectodistill.core.modeling import load_adapter, load_model, load_processor
    from connectodistill.core.task import image_columns
    from connectodistill.evaluation.inputs import choose_prompts, run_settings, select_samples

    cfg = EvalConfig(adapter_path=trained_run)
    settings = run_settings(cfg)
    df, _, _ = select_samples(load_benchmark(settings["dataset_name"], settings["config_name"],
                                             settings["dataset_split"]), settings, cfg)
    rows = df.to_dict("records")
    chosen = choose_prompts(rows, settings, cfg)
    preds = read_predictions(conf_result / "predictions.csv")
    assert _key(preds) == _key(df)
    processor, _ = load_processor(str(trained_run))
    model = load_adapter(load_model(settings["base_model"]), trained_run).eval()
    for i in range(3):
        images = load_images(rows[i], image_columns(df.columns))
        text = render_prompts(processor, [chosen[i].text], [images], [chosen[i].layout])[0]
        text += answer_context(preds["response"][i] if isinstance(preds["response"][i], str) else "")
        p, prefixes = [], set()
        for x in LETTERS:
            inputs = processor(text=[text + x], images=images, return_tensors="pt")
            ids = inputs["input_ids"][0]
            prefixes.add(tuple(ids[:-1].tolist()))
            with torch.no_grad():
                logits = model(**inputs).logits[0, -2].double()
            p.append(torch.softmax(logits, -1)[ids[-1]].item())
        assert len(prefixes) == 1  # the seven letters share every token but the last
        p = np.array(p) / sum(p)
        # the file holds the calibrated distribution; the raw one is the model's own
        from connectodistill.evaluation.results import uncalibrated_probs

        assert np.abs(p - uncalibrated_probs(preds)[i]).max() < 1e-5


def test_calibration_recomputed_from_predictions_csv(conf_result):
    preds = read_predictions(conf_result / "predictions.csv")
    s = json.loads((conf_result / "summary.json").read_text())
    conf, correct = preds["confidence"].to_numpy(float), preds["correct"].to_numpy(float)
    # ECE: 10 equal-width bins, weight = share of samples
    ece = 0.0
    for b in range(10):
        m = (conf >= b / 10) & ((conf < (b + 1) / 10) if b < 9 else (conf <= 1.0))
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - correct[m].mean())
    assert s["ece"] == pytest.approx(ece)
    onehot = np.array([[t == x for x in LETTERS] for t in preds["ground_truth_letter"]], dtype=float)
    # an unparsed answer named no letter: its distribution is the zero vector (Brier 1)
    probs = np.where(preds["predicted_letter"].notna().to_numpy()[:, None], preds[P_COLS].to_numpy(float), 0.0)
    assert s["brier"] == pytest.approx(((probs - onehot) ** 2).sum(1).mean())
    # coverage at accuracy: the largest accepted share (at a confidence cut) that is accurate enough
    for target in (0.9, 0.95, 0.99):
        best = max([(conf >= t).mean() for t in np.unique(conf) if correct[conf >= t].mean() >= target],
                   default=0.0)
        assert s["coverage_at_accuracy"][f"{target:.2f}"] == pytest.approx(best)
    # AURC: the mean risk of the k most confident, averaged over random orders of the ties
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(300):
        order = np.lexsort((rng.random(len(conf)), -conf))
        hits = np.cumsum(correct[order])
        areas.append(np.mean(1 - hits / np.arange(1, len(conf) + 1)))
    assert s["aurc"] == pytest.approx(np.mean(areas), abs=0.01)


def test_votes_give_a_majority_and_its_share(conf_result):
    from connectodistill.core.scoring import majority_vote

    preds = read_predictions(conf_result / "predictions.csv")
    s = json.loads((conf_result / "summary.json").read_text())
    for letters, vote, share in zip(preds["vote_letters"], preds["vote_letter"], preds["vote_share"], strict=True):
        assert len(letters) == 3
        want = majority_vote([x if x != "-" else None for x in letters])
        assert (vote if isinstance(vote, str) else None, share) == pytest.approx(want)
    right = [v == t for v, t in zip(preds["vote_letter"], preds["ground_truth_letter"], strict=True)]
    assert s["vote_accuracy"] == pytest.approx(np.mean(right))
    v = s["votes"]
    assert v["k"] == 3 and v["temperature"] == 0.5 and v["accuracy"] == s["vote_accuracy"]
    assert v["ece"] == pytest.approx(cal.ece(preds["vote_share"], right))
    assert {"brier", "aurc", "coverage_at_accuracy", "accuracy_ci"} <= set(v)


def test_triage_applies_the_val_threshold(conf_result):
    s = json.loads((conf_result / "summary.json").read_text())["triage"]
    val = read_predictions(conf_result / "triage_val.csv")
    preds = read_predictions(conf_result / "predictions.csv")
    triage = read_predictions(conf_result / "triage.csv")
    assert s["chosen_on"] == "val" and s["val"]["n"] == len(val) and s["evaluated_samples_in_val"] == 0
    assert not set(_key(val)) & set(_key(preds))  # val and test are disjoint
    thr = cal.threshold_for(val["confidence"], val["correct"], 0.1)
    assert s["threshold"] == thr
    auto = triage["decision"] == "auto"
    assert list(auto) == ([c >= thr for c in preds["confidence"]] if thr is not None else [False] * len(preds))
    assert s["coverage"] == pytest.approx(auto.mean())
    assert triage.loc[auto, "letter"].tolist() == preds.loc[auto, "predicted_letter"].tolist()
    if auto.any():
        assert s["accuracy"] == pytest.approx(preds.loc[auto, "correct"].mean())


def test_the_threshold_never_sees_a_test_sample(trained_run, tmp_path, monkeypatch):
    """Plant a test sample the model answers wrong at 0.99 confidence: chosen on val and test
    together, the threshold would move. It does not, with or without the planted sample, and
    the threshold is chosen on exactly the val split's samples.

    The model's answers and confidences are planted (generation stubbed, keyed by each
    sample's prompt text) so that the plant is exact; the real forward pass is tested above.
    """
    import connectodistill.evaluation.inputs as inputs
    import connectodistill.evaluation.recipe as ev
    from connectodistill.core.config import EvalConfig
    from connectodistill.core.data import load_benchmark
    from connectodistill.core.scoring import ground_truth_letters
    from connectodistill.core.task import label_column

    cfg = EvalConfig(adapter_path=trained_run)
    settings = inputs.run_settings(cfg)
    bench = load_benchmark(settings["dataset_name"], settings["config_name"], settings["dataset_split"])
    parts = {split: inputs.select_samples(bench, settings, cfg.model_copy(update={"split": split}))[0]
             for split in ("val", "test")}
    plan, conf = {}, {"val": ([], [])}  # prompt text -> (answered letter, confidence)
    pattern = [1, 1, 1, 1, 0, 1, 1, 0, 1, 0, 0, 1, 0, 0]
    for split, df in parts.items():
        prompts = [p.text for p in inputs.choose_prompts(df.to_dict("records"), settings, cfg)]
        truth = ground_truth_letters(df[label_column(df.columns)].tolist())
        for i, (text, t) in enumerate(zip(prompts, truth, strict=True)):
            wrong = "b" if t == "a" else "a"
            if split == "val":
                right, c = bool(pattern[i % len(pattern)]), 0.95 - 0.6 * i / len(prompts)
                conf["val"][0].append(c)
                conf["val"][1].append(right)
            else:  # test: the first sample is the plant, the others are right at 0.5
                right, c = i > 0, 0.99 if i == 0 else 0.5
            plan[text] = (t if right else wrong, c)
    assert len(plan) == len(parts["val"]) + len(parts["test"])  # one prompt text per sample

    def fake_generate(model, processor, prompts, images, **kw):
        return [f"<analysis>planted</analysis>\n<answer>{plan[p][0]}</answer>" for p in prompts]

    def fake_probs(model, processor, prompts, images, responses, **kw):
        out = np.zeros((len(prompts), len(LETTERS)))
        for i, p in enumerate(prompts):
            letter, c = plan[p]
            out[i] = (1 - c) / (len(LETTERS) - 1)
            out[i, LETTERS.index(letter)] = c
        return out

    seen, choose = [], ev.choose_triage
    monkeypatch.setattr(ev, "generate_answers", fake_generate)
    monkeypatch.setattr(ev, "letter_probabilities", fake_probs)
    monkeypatch.setattr(ev, "choose_triage", lambda v, p, t: seen.append(set(_key(v))) or choose(v, p, t))

    target = 0.75
    # triage reads the calibrated confidence: the planted ones at the run's temperature (fit on val)
    temp = json.loads((trained_run / "calibration.json").read_text())["generate"]["temperature"]

    def calibrated(c):
        row = np.full(len(LETTERS), (1 - c) / (len(LETTERS) - 1))
        row[0] = c
        return float(cal.apply_temperature(row, temp)[0])

    vc = np.array([calibrated(c) for c in conf["val"][0]])
    vy = np.array(conf["val"][1], dtype=float)
    on_val = cal.threshold_for(vc, vy, target)
    assert cal.threshold_for(np.append(vc, calibrated(0.99)), np.append(vy, 0.0), target) != on_val  # would move it
    with_it = evaluate(adapter_path=trained_run, output_dir=tmp_path, name="with", target_accuracy=target, **FAST)
    run = tmp_path / "run"  # the same run without the planted sample in its test split
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    run_cfg = json.loads((run / RUN_CONFIG).read_text())
    planted = [int(x) for x in parts["test"][["proofread_root_id", "current_root_id"]].iloc[0]]
    run_cfg["splits"]["test"] = [p for p in run_cfg["splits"]["test"] if list(p) != planted]
    (run / RUN_CONFIG).write_text(json.dumps(run_cfg))
    without = evaluate(adapter_path=run, output_dir=tmp_path, name="without", target_accuracy=target, **FAST)

    a = json.loads((with_it / "summary.json").read_text())
    b = json.loads((without / "summary.json").read_text())
    assert (a["n"], b["n"]) == (len(parts["test"]), len(parts["test"]) - 1)
    assert a["triage"]["threshold"] == b["triage"]["threshold"] == pytest.approx(on_val)
    assert a["triage"]["val"] == b["triage"]["val"]
    val_ids = set(_key(parts["val"]))
    assert seen == [val_ids, val_ids] and not val_ids & set(_key(parts["test"]))
    # the plant itself: accepted (0.99 >= threshold) and wrong, as on any day it would be
    triage = read_predictions(with_it / "triage.csv")
    assert triage["decision"].iloc[0] == "auto" and a["triage"]["accuracy"] < 1.0


# ----------------------------------------------------------------------------- report
def test_report_has_calibration_rows_for_teacher_and_student(conf_result, merged_small, tmp_path):
    from connectodistill.evaluation.reporting import report

    md = report(results=[conf_result], merged=merged_small, output=tmp_path / "report")
    table = pd.read_csv(md.with_suffix(".csv")).set_index("model")
    assert list(table.index) == ["teacher (single response)", "teacher (majority vote)", "student",
                                 "student (majority of 3)"]
    for col in ("ece", "brier", "aurc", "coverage_at_0.95"):
        assert table[col].notna().all(), col
    assert table.loc["teacher (majority vote)", "confidence"] == "vote share"
    assert table.loc["student (majority of 3)", "confidence"] == "vote share"
    assert table.loc["student", "confidence"] == "letter probability (calibrated)"
    s = json.loads((conf_result / "summary.json").read_text())
    assert table.loc["student", "ece"] == pytest.approx(s["ece"])
    assert table.loc["student (majority of 3)", "accuracy"] == pytest.approx(s["vote_accuracy"])
    assert table.loc["student", "triage_coverage"] == pytest.approx(s["triage"]["coverage"])
    text = md.read_text()
    assert "| student (majority of 3) |" in text and "chosen on" in text and "to a human" in text


def test_teacher_threshold_is_chosen_on_val_responses_only(merged_small):
    """Planting a confident wrong teacher answer on a test sample leaves the threshold alone;
    the same answer on a val sample moves it."""
    from connectodistill.core.data import read_merged
    from connectodistill.evaluation.reporting import _figures
    from connectodistill.evaluation.teacher import _row, teacher_answers, teacher_confidence

    splits = read_merged(merged_small, columns=[])[1]["splits"]
    responses = pd.read_parquet(merged_small.with_name("merged_responses.parquet"))
    truth = responses.groupby(["proofread_root_id", "current_root_id"])["ground_truth_letter"].first()
    test = [tuple(k) for k in splits["test"] if tuple(k) in truth.index]
    preds = pd.DataFrame({"proofread_root_id": [k[0] for k in test], "current_root_id": [k[1] for k in test],
                          "ground_truth_letter": [truth[k] for k in test]})

    def threshold(resp):
        rows = [_row("teacher (majority vote)", {"n": 0, "accuracy": 0, "accuracy_ci": None, "balanced_accuracy": 0,
                                                 "balanced_accuracy_ci": None, "unparsed_rate": 0}, "h")]
        ans = teacher_answers(preds, resp)
        return teacher_confidence(rows, ans, preds, merged_small, 0.9, _figures)[0]["triage_threshold"]

    def plant(keys):  # every response on these samples: the same wrong letter (vote share 1)
        r = responses.copy()
        m = [k in keys for k in zip(r["proofread_root_id"], r["current_root_id"], strict=True)]
        wrong = r.loc[m, "ground_truth_letter"].map(lambda t: "a" if t != "a" else "b")
        r.loc[m, "teacher_answer"], r.loc[m, "teacher_correct"] = wrong, False
        return r

    base = threshold(responses)
    assert threshold(plant(set(test))) == base
    val = {tuple(k) for k in splits["val"]}
    assert threshold(plant(val)) != base
