"""DPO and GRPO after SFT: pairs and rewards against an independent count, a few TRL steps on both
tiny students, a run folder eval can read, and one-line errors for bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from connectodistill.cli import app
from connectodistill.core.data import read_merged
from connectodistill.core.scoring import option_descriptions, parse_response

runner = CliRunner()
IDS = ["proofread_root_id", "current_root_id"]
FAST = dict(epochs=1, batch_size=4, gradient_accumulation=1, learning_rate=1e-3, warmup_steps=0,
            logging_steps=1, select_by="last", progress=False, seed=0)


def responses_of(merged: Path) -> pd.DataFrame:
    return pd.read_parquet(merged.with_name(f"{merged.stem}_responses.parquet"))


def expected_pairs(merged: Path, per_sample: int) -> dict[tuple[int, int], int]:
    """Pairs per train sample, counted from the responses file alone."""
    table, report = read_merged(merged)
    with_views = {tuple(int(x) for x in k) for k in table.to_pandas()[IDS].itertuples(index=False)}
    train = {tuple(p) for p in report["splits"]["train"]} & with_views
    r = responses_of(merged)
    r = r[[(int(a), int(b)) in train for a, b in zip(r[IDS[0]], r[IDS[1]], strict=True)]]
    has = r["teacher_analysis"].notna() & (r["teacher_analysis"].str.strip() != "")
    out = {}
    for key, g in r[has].groupby(IDS):
        right = g[g["teacher_correct"]]["teacher_analysis"].str.strip().nunique()
        wrong = g[~g["teacher_correct"] & g["teacher_answer"].notna()]
        wrong = wrong.drop_duplicates(["teacher_answer", "teacher_analysis"])
        if right and len(wrong):
            out[(int(key[0]), int(key[1]))] = min(per_sample, right * len(wrong))
    return out


def test_pairs_match_an_independent_count(merged_small):
    from connectodistill.training.dpo import candidates, pair_order, teacher_pairs

    _, report = read_merged(merged_small)
    train = {tuple(p) for p in report["splits"]["train"]}
    expected = expected_pairs(merged_small, 4)
    cands = candidates(responses_of(merged_small), train)
    table = read_merged(merged_small)[0].to_pandas()
    with_views = {(int(a), int(b)) for a, b in zip(table[IDS[0]], table[IDS[1]], strict=True)}
    pairs = teacher_pairs({k: v for k, v in cands.items() if k in with_views}, 4)
    got: dict = {}
    for p in pairs:
        got[p.key] = got.get(p.key, 0) + 1
        truth = cands[p.key].truth
        assert p.chosen.endswith(f"<answer>{truth}</answer>") and p.chosen.startswith("<analysis>")
        assert not p.rejected.endswith(f"<answer>{truth}</answer>") and "</analysis>\n<answer>" in p.rejected
    assert got == expected and sum(expected.values()) > 10
    assert len({(p.key, p.chosen, p.rejected) for p in pairs}) == len(pairs)  # distinct
    assert pairs == teacher_pairs({k: v for k, v in cands.items() if k in with_views}, 4)  # deterministic
    for nc, nr in ((1, 1), (2, 3), (3, 2), (2, 4), (4, 6), (5, 5)):  # every pair once, each side in turn
        order = pair_order(nc, nr)
        assert sorted(order) == [(i, j) for i in range(nc) for j in range(nr)]
        assert {i for i, _ in order[:nc]} == set(range(nc)) and {j for _, j in order[:nr]} == set(range(nr))


def test_each_method_has_its_own_default_learning_rate():
    from connectodistill.core.config import METHOD_LEARNING_RATE, TrainConfig

    assert {m: TrainConfig(method=m).learning_rate for m in ("sft", "dpo", "grpo")} == METHOD_LEARNING_RATE
    assert METHOD_LEARNING_RATE["dpo"] < METHOD_LEARNING_RATE["grpo"] < METHOD_LEARNING_RATE["sft"]
    assert TrainConfig(method="dpo", learning_rate=1e-3).learning_rate == 1e-3  # a given one wins
    # what the CLI passes for an absent flag, and a config that went through model_dump
    assert TrainConfig(method="grpo", learning_rate=None).learning_rate == 1e-4
    assert TrainConfig(**TrainConfig(method="dpo").model_dump()).learning_rate == 5e-5


def test_balanced_order_draws_every_class_equally():
    from connectodistill.training.grpo import balanced_order

    letters = list("aaaaaabbc")
    order = balanced_order(letters, seed=0)
    assert sorted(letters[i] for i in order) == list("aaaaaabbbbbbcccccc")
    assert set(order) == set(range(len(letters))) and order == balanced_order(letters, seed=0)
    assert sorted(letters[i] for i in order[:6]) == list("aabbcc")  # any prefix (--num-samples) is balanced


@pytest.fixture(scope="module")
def qwen25_run(merged_small, tmp_path_factory):
    """A quick SFT run of a tiny Qwen2.5-VL student (the parent for its DPO/GRPO runs)."""
    from connectodistill.synthetic import make_tiny_student
    from connectodistill.training import train

    student = make_tiny_student(tmp_path_factory.mktemp("students25") / "qwen2.5-vl", kind="qwen2.5-vl")
    return train(augmented_dataset=merged_small, model=str(student), output_dir=tmp_path_factory.mktemp("runs25"),
                 run_name="parent25", num_samples=16, **{**FAST, "batch_size": 8, "learning_rate": 3e-3})


@pytest.fixture(scope="module")
def qwen35_run(merged_small, tmp_path_factory):
    """A quick SFT run of a tiny Qwen3.5 student (hybrid layers, the <think> template)."""
    from connectodistill.synthetic import make_tiny_student
    from connectodistill.training import train

    student = make_tiny_student(tmp_path_factory.mktemp("students35") / "qwen3.5", kind="qwen3.5")
    return train(augmented_dataset=merged_small, model=str(student), output_dir=tmp_path_factory.mktemp("runs35"),
                 run_name="parent35", num_samples=16, **{**FAST, "batch_size": 8, "learning_rate": 3e-3})


PARENTS = {"qwen3-vl": "trained_run", "qwen2.5-vl": "qwen25_run", "qwen3.5": "qwen35_run"}


@pytest.fixture(params=list(PARENTS))
def parent(request):
    return request.getfixturevalue(PARENTS[request.param])


def finite_losses(run: Path) -> list[float]:
    losses = [h["loss"] for h in json.loads((run / "loss_history.json").read_text()) if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)
    return losses


def check_run_folder(run: Path, parent: Path, method: str) -> dict:
    """Loadable adapter that moved, and everything eval reads, as in the parent."""
    from safetensors.torch import load_file

    from connectodistill.core.modeling import load_adapter, load_model

    cfg = json.loads((run / "training_config.json").read_text())
    up = json.loads((parent / "training_config.json").read_text())
    assert cfg["method"] == method and cfg["parent_run"] == str(parent) and cfg["library_versions"]["trl"]
    for key in ("base_model", "pixel_budget", "splits", "prompt_source", "prompt_setting", "dataset_name",
                "config_name", "dataset_split", "with_description", "image_columns", "model_kind"):
        assert cfg[key] == up[key], key
    assert pd.read_parquet(run / "prompts.parquet").equals(pd.read_parquet(parent / "prompts.parquet"))
    assert (run / "prompt_templates.json").read_text() == (parent / "prompt_templates.json").read_text()
    load_adapter(load_model(cfg["base_model"]), run)  # loadable
    new, old = load_file(run / "adapter_model.safetensors"), load_file(parent / "adapter_model.safetensors")
    assert new.keys() == old.keys() and any(not (new[k] == old[k]).all() for k in new)
    assert not (run / "ref").exists()  # only the trained adapter, not TRL's frozen reference copy
    return cfg


def test_dpo_continues_an_sft_run(parent, merged_small, tmp_path):
    from connectodistill.training import train
    from connectodistill.training.dpo import read_pairs

    common = dict(method="dpo", from_run=parent, augmented_dataset=merged_small, output_dir=tmp_path,
                  run_name="dpo", num_samples=6, rpo_alpha=0.5, **{**FAST, "batch_size": 3})
    run = train(**common)
    assert "_dpo_" in run.name
    cfg = check_run_folder(run, parent, "dpo")
    finite_losses(run)
    d = cfg["dpo"]
    assert d["pairs"] == 6 == cfg["rows"]["train_examples"] and d["loss_type"] == ["sigmoid", "sft"]
    pairs = read_pairs(run / "pairs.parquet")
    expected = expected_pairs(merged_small, 4)
    assert [p.key for p in pairs] == [k for k in sorted(expected) for _ in range(expected[k])][:6]
    assert d["samples_with_pairs"] == len({p.key for p in pairs}) and d["samples_with_teacher_pairs"] <= len(expected)
    if "qwen3" in cfg["model_kind"]:  # --resume continues the last checkpoint, on the same pairs
        run2 = train(**{**common, "epochs": 2, "resume": True})
        again = json.loads((run2 / "training_config.json").read_text())
        assert run2 == run and again["global_step"] == 2 * cfg["global_step"]
        assert again["resumed_from"].endswith(f"checkpoint-{cfg['global_step']}")
        assert read_pairs(run / "pairs.parquet") == pairs


def test_grpo_rewards_match_the_parser(parent, merged_small, tmp_path):
    from connectodistill.training import train

    # the no-thinking variant on two students; on Qwen3.5 after its template's empty think block
    answer_only = parent.name.startswith(("qwen2.5-vl", "qwen3.5"))
    run = train(method="grpo", from_run=parent, augmented_dataset=merged_small, output_dir=tmp_path,
                run_name="grpo", num_samples=2, num_generations=4, max_completion_length=8 if answer_only else 48,
                answer_only=answer_only, **FAST)
    cfg = check_run_folder(run, parent, "grpo")
    finite_losses(run)
    g = cfg["grpo"]
    assert g["answer_only"] is answer_only and g["use_vllm"] is False and g["num_generations"] == 4
    # Every scored completion, re-scored here with the parser and the sample's own prompt.
    prompts = pd.read_parquet(run / "prompts.parquet")
    text = {f"{a}/{b}": t for a, b, t in zip(prompts[IDS[0]], prompts[IDS[1]], prompts["prompt"], strict=True)}
    lines = [json.loads(x) for x in (run / "rewards.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 4 and g["generation_batches"] == 2
    weight = 0.0 if answer_only else 0.1
    per_step: dict = {}
    for x in lines:
        analysis, letter = parse_response(x["completion"], option_descriptions(text[x["sample"]]))
        assert x["correct"] == float(letter == x["answer"])
        assert x["format"] == float(letter is not None and bool(analysis))
        per_step.setdefault(x["step"], []).append(x["correct"] + weight * x["format"])
    logged = [h["reward"] for h in json.loads((run / "loss_history.json").read_text()) if "reward" in h]
    assert logged == pytest.approx([sum(v) / len(v) for _, v in sorted(per_step.items())], abs=1e-6)
    # zero spread counted per group of num_generations completions of one prompt (as TRL
    # normalises), not over the whole generation batch
    per_group: dict = {}
    for x in lines:
        per_group.setdefault((x["step"], x["sample"]), []).append(x["correct"] + weight * x["format"])
    assert g["generation_groups"] == len(per_group) == 2
    assert g["zero_spread_groups"] == sum(len(set(v)) == 1 for v in per_group.values())
    if answer_only:
        from connectodistill.core.modeling import load_processor
        from connectodistill.training.runs import ANSWER_ONLY_PREFILL

        processor, _ = load_processor(run)
        rendered = processor.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                                 tokenize=False)
        assert rendered.endswith(ANSWER_ONLY_PREFILL) and set(g["rewards"]) == {"correct"}
        if cfg["model_kind"] == "qwen3.5":
            assert rendered.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n" + ANSWER_ONLY_PREFILL)
        assert processor.tokenizer.padding_side == "right"  # left padding was only for TRL


def fails(needle: str, *args: str) -> None:
    r = runner.invoke(app, ["train", *args])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert r.output.strip().count("\n") == 0, r.output


def test_bad_inputs_exit_2(trained_run, merged_small, tmp_path):
    out = tmp_path / "runs"
    common = ["--data", str(merged_small), "--output-dir", str(out)]
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()
    fails("not a finished run folder", "--method", "dpo", "--from", str(not_a_run), *common)
    fails("no such folder", "--method", "grpo", "--from", str(tmp_path / "nope"), *common)
    fails("pass --from", "--method", "dpo", *common)
    fails("invalid option method", "--method", "ppo", "--from", str(trained_run), *common)
    fails("--method dpo or grpo", "--from", str(trained_run), *common)
    fails("not a multiple of --num-generations", "--method", "grpo", "--from", str(trained_run),
          "--num-generations", "3", *common)
    # A merged file whose teacher never disagrees with itself on a train sample.
    agree = tmp_path / "agree.parquet"
    agree.write_bytes(merged_small.read_bytes())
    r = responses_of(merged_small)
    r.loc[~r["teacher_correct"], "teacher_analysis"] = None
    r.to_parquet(tmp_path / "agree_responses.parquet")
    fails("no train sample has both a right and a wrong", "--method", "dpo", "--from", str(trained_run),
          "--data", str(agree), "--output-dir", str(out))
    assert not out.exists() or not any(out.iterdir())  # nothing written
