"""One-pass answers and calibrated confidence (issue 28): answer rows in training, the
temperature fit on val only, one forward pass per answer, rationales only where a human looks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from connectodistill import evaluate, predict, train
from connectodistill.cli import app
from connectodistill.core.calibration import apply_temperature, fit_temperature
from connectodistill.core.task import LETTERS

runner = CliRunner()
FAST = dict(max_new_tokens=48, batch_size=16, progress=False)


@pytest.fixture(scope="module")
def mt_run(merged_small, tiny_student, tmp_path_factory):
    """A multi-task SFT run: every train sample's rows twice, with a rationale and answer-only."""
    return train(augmented_dataset=merged_small, model=str(tiny_student), output_dir=tmp_path_factory.mktemp("mt"),
                 run_name="mt", epochs=2, batch_size=8, gradient_accumulation=1, learning_rate=3e-3,
                 warmup_steps=0, select_by="last", max_new_tokens=48, answer_rows=1.0, progress=False, seed=0)


# ----------------------------------------------------------------------------- training rows
def test_answer_rows_labels_are_the_letter_and_the_turn_end(merged_small, tiny_student):
    from connectodistill.core.modeling import load_processor
    from connectodistill.training.collator import IGNORE_INDEX, DistillCollator
    from connectodistill.training.examples import answer_rows, build_examples, load_training_data

    data = load_training_data(merged_small)
    rationale, _ = build_examples(data.train_df, data, target="teacher", fill_missing=False)
    twins = answer_rows(rationale, 1.0, seed=0)
    assert len(twins) == len(rationale) and all(t.prompt == r.prompt for t, r in zip(twins, rationale, strict=True))
    assert {t.key for t in answer_rows(rationale, 0.5, seed=0)} < {r.key for r in rationale}  # a share of samples
    processor, _ = load_processor(str(tiny_student))
    collate = DistillCollator(processor, data.image_cols, multi_task=True)
    for ex in twins[:5]:
        enc = collate.encode(ex)
        labels = enc["labels"][enc["labels"] != IGNORE_INDEX].tolist()
        assert processor.tokenizer.decode(labels) == f"{ex.letter}</answer><|im_end|>"
        # "<answer>" is there, but as context: the student never learns to open its turn with it
        ids = enc["input_ids"].tolist()
        start = len(ids) - len(labels)
        assert processor.tokenizer.decode(ids[:start]).endswith("<|im_start|>assistant\n<answer>")
    batch = collate(twins[:2] + rationale[:2])
    assert batch["answer_row"].tolist() == [True, True, False, False]


def test_each_task_weighs_its_mean_whatever_the_batch_holds(merged_small, tiny_student, tmp_path):
    """Multi-task loss: the answer rows' token mean plus the rationale rows' token mean, in a
    mixed micro-batch and in a micro-batch of one task alike (a batch of answer rows alone is
    not divided by some other batch's token count)."""
    import torch
    from transformers import TrainingArguments

    from connectodistill.core.modeling import load_model, load_processor
    from connectodistill.training.collator import IGNORE_INDEX, DistillCollator
    from connectodistill.training.examples import answer_rows, build_examples, load_training_data
    from connectodistill.training.sft import DistillTrainer

    data = load_training_data(merged_small)
    rationale, _ = build_examples(data.train_df, data, target="teacher", fill_missing=False)
    twins = answer_rows(rationale, 1.0, seed=0)
    processor, _ = load_processor(str(tiny_student))
    collate = DistillCollator(processor, data.image_cols, multi_task=True)
    model = load_model(str(tiny_student)).eval()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=4,
                             report_to=[], use_cpu=True)
    trainer = DistillTrainer(model=model, args=args, data_collator=collate, train_dataset=twins[:2])

    def task_mean(rows) -> float:  # each row's tokens, pooled over the rows of one task
        total, n = 0.0, 0
        for ex in rows:
            b = collate([ex])
            kept = {k: v for k, v in b.items() if k not in ("labels", "shift_labels", "answer_row")}
            with torch.no_grad():
                logits = model(**kept).logits.float()[0]
            ce = torch.nn.functional.cross_entropy(logits, b["shift_labels"][0], ignore_index=IGNORE_INDEX,
                                                   reduction="sum")
            total, n = total + float(ce), n + int((b["shift_labels"] != IGNORE_INDEX).sum())
        return total / n

    def loss(rows) -> float:
        with torch.no_grad():
            return float(trainer.compute_loss(model, collate(rows), num_items_in_batch=torch.tensor(1000)))

    answers, explained = twins[:2], rationale[2:4]
    assert loss(answers) == pytest.approx(task_mean(answers), rel=1e-4)
    assert loss(answers + explained) == pytest.approx(task_mean(answers) + task_mean(explained), rel=1e-4)


def test_the_run_records_answer_rows_and_its_temperatures(mt_run):
    config = json.loads((mt_run / "training_config.json").read_text())
    assert config["settings"]["answer_rows"] == 1.0 and config["rows"]["answer_rows"] == config["rows"]["rationale_rows"]
    cal = json.loads((mt_run / "calibration.json").read_text())
    assert cal["fit_on"] == "val" and cal["n_val"] == len(config["splits"]["val"])
    for mode in ("generate", "one_pass"):
        assert cal[mode]["temperature"] > 0 and cal[mode]["nll_after"] <= cal[mode]["nll_before"] + 1e-9


# ----------------------------------------------------------------------------- one pass
def test_one_pass_letter_is_the_argmax_of_an_independent_forward_pass(mt_run, tmp_path):
    import torch
    from peft import PeftModel

    from connectodistill.core.conversation import build_messages, load_images
    from connectodistill.core.modeling import load_model, load_processor
    from connectodistill.evaluation.results import read_predictions

    out = evaluate(adapter_path=mt_run, one_pass=True, output_dir=tmp_path, name="one", num_samples=6, **FAST)
    preds = read_predictions(out / "predictions.csv")
    assert (preds["mode"] == "one_pass").all() and preds["parsed"].all()
    settings = json.loads((mt_run / "training_config.json").read_text())
    processor, _ = load_processor(str(mt_run))
    model = PeftModel.from_pretrained(load_model(settings["base_model"]), str(mt_run)).eval()
    prompts = pd.read_parquet(mt_run / "prompts.parquet").set_index(["proofread_root_id", "current_root_id"])
    bench = pd.read_parquet(settings["dataset_name"]).set_index(["proofread_root_id", "current_root_id"])
    tok = processor.tokenizer
    letter_ids = [tok.convert_tokens_to_ids(x) for x in LETTERS]
    for _, row in preds.iterrows():
        key = (row["proofread_root_id"], row["current_root_id"])
        text = processor.apply_chat_template(build_messages(prompts.loc[key, "prompt"], n_images=3,
                                                            layout=prompts.loc[key, "prompt_layout"]),
                                             add_generation_prompt=True, tokenize=False)
        images = load_images(bench.loc[key].to_dict(), ("option_1_front_image", "option_1_side_image",
                                                        "option_1_top_image"))
        enc = processor(text=[text], images=images, return_tensors="pt")
        opening = tok("<answer>", add_special_tokens=False)["input_ids"]
        enc["input_ids"] = torch.cat([enc["input_ids"], torch.tensor([opening])], dim=1)
        enc["attention_mask"] = torch.ones_like(enc["input_ids"])
        enc["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros(1, len(opening), dtype=torch.long)], 1)
        with torch.no_grad():
            logits = model(**enc).logits[0, -1]
        assert row["predicted_letter"] == LETTERS[int(logits[letter_ids].argmax())]
    # preparing the next batch in a thread (an accelerator's default) changes no answer
    from connectodistill.core.generation import one_pass_probabilities

    keys = [(r["proofread_root_id"], r["current_root_id"]) for _, r in preds.iterrows()]
    args = ([prompts.loc[k, "prompt"] for k in keys],
            [load_images(bench.loc[k].to_dict(), ("option_1_front_image", "option_1_side_image",
                                                  "option_1_top_image")) for k in keys])
    kw = dict(layouts=[prompts.loc[k, "prompt_layout"] for k in keys], batch_size=4)
    ahead = one_pass_probabilities(model, processor, *args, prefetch=True, **kw)
    assert np.allclose(ahead, one_pass_probabilities(model, processor, *args, prefetch=False, **kw), atol=1e-6)


# ----------------------------------------------------------------------------- calibration
def test_calibrated_probabilities_sum_to_one_and_keep_the_answer(mt_run, tmp_path):
    from connectodistill.evaluation.results import read_predictions, uncalibrated_probs

    out = evaluate(adapter_path=mt_run, output_dir=tmp_path, name="one", num_samples=10, one_pass=True, **FAST)
    preds = read_predictions(out / "predictions.csv")
    p = preds[[f"p_{x}" for x in LETTERS]].to_numpy(float)
    assert np.allclose(p.sum(1), 1.0)
    s = json.loads((out / "summary.json").read_text())
    temp = json.loads((mt_run / "calibration.json").read_text())["one_pass"]["temperature"]
    assert s["calibration"]["temperature"] == pytest.approx(temp)
    assert np.allclose(preds["temperature"].to_numpy(float), temp)
    assert "ece" in s["uncalibrated"] and "brier" in s["uncalibrated"]
    raw = uncalibrated_probs(preds)
    assert np.allclose(raw.sum(1), 1.0) and (raw.argmax(1) == p.argmax(1)).all()
    assert np.allclose(apply_temperature(raw, temp), p)
    rng = np.random.default_rng(0)
    q = apply_temperature(rng.dirichlet(np.ones(7), size=50), 0.3)
    assert np.allclose(q.sum(1), 1.0)


def test_the_temperature_is_chosen_without_test_samples(mt_run, merged_small, tmp_path):
    """A run without calibration.json is fit at eval time on its val split: flipping a test
    sample's label (which would change a fit on test) leaves the temperature alone; flipping a
    val sample's moves it."""
    run = tmp_path / "run"
    shutil.copytree(mt_run, run, ignore=shutil.ignore_patterns("checkpoints", "calibration.json"))
    config = json.loads((run / "training_config.json").read_text())
    bench = pq.read_table(config["dataset_name"]).to_pandas()
    keys = list(zip(bench["proofread_root_id"], bench["current_root_id"], strict=True))

    def temperature(split: str | None) -> float:
        b = bench.copy()
        if split is not None:
            for pair in config["splits"][split][:6]:  # the confident letter becomes wrong
                i = keys.index(tuple(pair))
                b.loc[i, "class_description"] = "Unsure" if b.loc[i, "class_description"] != "Unsure" else "Nucleus"
        path = tmp_path / f"bench-{split}.parquet"
        b.to_parquet(path)
        out = evaluate(adapter_path=run, dataset_name=str(path), allow_config_mismatch=True, output_dir=tmp_path,
                       name=f"t-{split}", num_samples=4, **FAST)
        s = json.loads((out / "summary.json").read_text())
        assert s["calibration"]["fit_on"] == "val" and "fit at eval time" in s["calibration"]["source"]
        return s["calibration"]["temperature"]

    base = temperature(None)
    assert temperature("test") == pytest.approx(base)
    assert temperature("val") != pytest.approx(base)


def test_fit_temperature_lowers_the_nll_of_an_overconfident_model():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 7, 400)
    logits = rng.normal(size=(400, 7))
    logits[np.arange(400), truth] += 1.0
    p = np.exp(5 * logits) / np.exp(5 * logits).sum(1, keepdims=True)  # five times too sharp
    fit = fit_temperature(p, [LETTERS[i] for i in truth])
    assert fit["temperature"] > 2 and fit["nll_after"] < fit["nll_before"]


# ----------------------------------------------------------------------------- predict
def test_predict_one_pass_resumes_and_explains_exactly_the_human_bound(mt_run, small_benchmark, tmp_path):
    table = pq.read_table(small_benchmark).to_pandas().head(12).drop(columns=["class_description"])
    data = tmp_path / "new.parquet"
    table.to_parquet(data)
    out = tmp_path / "pred"
    args = dict(input=str(data), adapter_path=mt_run, output=out, chunk_size=4, one_pass=True, **FAST)
    cal = json.loads((mt_run / "calibration.json").read_text())["one_pass"]["temperature"]
    full = predict(**args, force=True)
    conf = pd.read_parquet(full / "predictions.parquet")["confidence"].to_numpy()
    threshold = float(np.median(conf))  # half the segments go to a human

    def interrupt(i):
        raise KeyboardInterrupt

    args.update(explain="human", threshold=threshold, output=tmp_path / "explained")
    with pytest.raises(KeyboardInterrupt):
        predict(**args, on_chunk=interrupt)
    done = []
    predict(**args, on_chunk=done.append)
    assert done == [1, 2]  # resumed: the first chunk was not redone
    df = pd.read_parquet(tmp_path / "explained" / "predictions.parquet")
    human = df["triage"] == "human"
    assert 0 < human.sum() < len(df)
    assert df.loc[human, "response"].notna().all() and df.loc[~human, "response"].isna().all()
    assert (df["mode"] == "one_pass").all()
    s = json.loads((tmp_path / "explained" / "predict_summary.json").read_text())
    assert s["mode"] == "one_pass" and s["calibration"]["temperatures"] == [pytest.approx(cal)]


def test_a_triage_threshold_is_used_only_on_the_confidence_it_was_chosen_on(mt_run, small_benchmark, tmp_path):
    """--triage-from an eval: the threshold belongs to that eval's answer mode and temperature. A
    generate-mode threshold is refused for one-pass answers; a run without calibration.json takes
    the temperature the eval fit on val; a temperature that disagrees is refused."""
    table = pq.read_table(small_benchmark).to_pandas().head(4).drop(columns=["class_description"])
    data = tmp_path / "new.parquet"
    table.to_parquet(data)
    temp = json.loads((mt_run / "calibration.json").read_text())["one_pass"]["temperature"]

    def eval_result(name: str, mode: str, t: float, run=mt_run) -> str:
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"adapter": str(run), "settings": {"mode": mode}, "calibration": {"temperature": t},
             "triage": {"threshold": 0.5, "target_accuracy": 0.95}}))
        return str(tmp_path / name)

    def cli(run, triage_from, *extra):
        out = tmp_path / "out" / Path(triage_from).name
        return runner.invoke(app, ["predict", str(data), "--adapter-path", str(run), "--triage-from", triage_from,
                                   "--dry-run", "-o", str(out), *extra])

    r = cli(mt_run, eval_result("gen", "generate", 1.0), "--one-pass")
    assert r.exit_code == 2 and "chosen on generate answers" in r.output and "--generate" in r.output
    r = cli(mt_run, eval_result("other-t", "one_pass", 2 * temp), "--one-pass")
    assert r.exit_code == 2 and "temperature" in r.output and not (tmp_path / "out").exists()
    assert cli(mt_run, eval_result("same", "one_pass", temp), "--one-pass").exit_code == 0
    old = tmp_path / "old-run"  # trained before calibration.json existed
    shutil.copytree(mt_run, old, ignore=shutil.ignore_patterns("checkpoints", "calibration.json"))
    r = cli(old, eval_result("fit-now", "one_pass", 1.7, old), "--one-pass")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "out" / "fit-now" / "predict_summary.json").read_text())
    assert s["calibration"]["temperatures"] == [1.7] and "fit on val by the eval" in s["calibration"]["source"]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args,needle", [
    (["train", "--answer-rows", "1.5"], "--answer-rows 1.5"),
    (["train", "--answer-rows", "some"], "--answer-rows some"),
    (["predict", "X", "--explain", "everything"], "explain"),
    (["predict", "X", "--explain", "human", "--generate"], "--explain human"),
    (["predict", "X", "--explain", "human", "--one-pass"], "--explain human needs a triage"),
])
def test_bad_values_of_the_new_flags_exit_2_with_one_line(args, needle, mt_run, merged_small, small_benchmark,
                                                           tmp_path):
    args = [str(merged_small) if a == "X" and args[0] != "predict" else str(small_benchmark) if a == "X" else a
            for a in args]
    where = ["--data", str(merged_small), "--output-dir", str(tmp_path / "out")] if args[0] == "train" else \
        ["--adapter-path", str(mt_run), "--output", str(tmp_path / "out")]
    r = runner.invoke(app, [*args, *where])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output and r.output.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()
