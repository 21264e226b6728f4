"""DPO and GRPO on real budgets: checkpoints every N steps that a retried attempt resumes from,
an estimate of steps x completion budget before a remote run starts (refused when it outruns
the timeout), and on-policy DPO pairs sampled once, by the main process, for every rank."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from connectodistill.cli import app
from connectodistill.core.config import TrainConfig
from connectodistill.training import train
from remote_fakes import DEPRECATIONS_ARE_ERRORS, LOCAL_WARNING, Offline

runner = CliRunner()
FAST = dict(epochs=1, batch_size=4, gradient_accumulation=1, learning_rate=1e-3, warmup_steps=0,
            logging_steps=1, select_by="last", progress=False, seed=0)


def test_grpo_checkpoints_every_n_steps_and_a_retried_attempt_resumes(trained_run, merged_small, tmp_path):
    from transformers import TrainerCallback

    class Preempted(TrainerCallback):  # the node goes away during step 3 of 4
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("preempted")

    run_dir = tmp_path / "grpo"
    # One prompt of 4 completions per step: 4 steps in the epoch, a checkpoint every 2.
    common = dict(method="grpo", from_run=trained_run, augmented_dataset=merged_small, run_dir=run_dir,
                  num_samples=4, num_generations=4, max_completion_length=8, save_steps=2, **FAST)
    with pytest.raises(RuntimeError, match="preempted"):
        train(**common, callbacks=[Preempted()])
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]  # mid-epoch
    # The retry, as train_in_container starts it: the same folder, resumed since it holds a checkpoint.
    run = train(**common, resume=True)
    cfg = json.loads((run / "training_config.json").read_text())
    assert cfg["resumed_from"].endswith("checkpoint-2") and cfg["global_step"] == 4


def test_the_default_8b_grpo_run_outruns_the_default_timeout():
    """The real benchmark: 377 samples, ~80% in train (301), 38 in val; GRPO's defaults."""
    from connectodistill.remote.app import TRAIN_TIMEOUT
    from connectodistill.training.budget import estimate

    letters = list("abcdefg" * 43)[:301]
    est = estimate(TrainConfig(method="grpo"), train_letters=letters, val_samples=38)
    assert est.steps == 301 * 3 * 8 // 8 and est.completions_per_step == 8 and est.completion_tokens == 512
    assert 4 * 3600 < TRAIN_TIMEOUT + 1 < est.seconds < 7 * 3600
    assert est.parts["generation"] > est.parts["training"]  # plain generate is most of it
    assert est.line().startswith("grpo: 903 steps x 8 completions of <= 512 tokens = about ")
    # On two GPUs half the steps; answer-only (16 tokens) a fraction of the time.
    assert estimate(TrainConfig(method="grpo"), train_letters=letters, val_samples=38, gpus=2).steps == 452
    short = estimate(TrainConfig(method="grpo", answer_only=True), train_letters=letters, val_samples=38)
    assert short.seconds < est.seconds / 2
    dpo = estimate(TrainConfig(method="dpo", on_policy=2), train_letters=letters, val_samples=38)
    assert dpo.parts["sampling"] > 0 and dpo.seconds < est.seconds
    assert estimate(TrainConfig(), train_letters=letters, val_samples=38) is None  # sft: no generation


@pytest.mark.filterwarnings(LOCAL_WARNING)
@pytest.mark.filterwarnings(DEPRECATIONS_ARE_ERRORS)
def test_a_remote_grpo_run_that_outruns_its_timeout_is_refused(trained_run, merged_small, tmp_path, monkeypatch):
    home = tmp_path / "user"
    home.mkdir()
    shutil.copyfile(merged_small, home / "merged.parquet")
    shutil.copyfile(merged_small.with_name("merged_responses.parquet"), home / "merged_responses.parquet")
    monkeypatch.chdir(home)
    offline = Offline(tmp_path / "volumes").install(monkeypatch)
    offline.hold = True  # a spawned run stays running on "Modal"
    args = ["train", "--method", "grpo", "--from", str(trained_run), "--data", "merged.parquet", "--remote",
            "--detach", "--timeout", "600"]
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert "exceed the 10 min timeout of one attempt: raise --timeout (e.g. --timeout " in line
    assert "or pass --yes" in line and "a checkpoint every 20 steps" in line and "Traceback" not in r.output
    assert "estimate: grpo: " in r.output  # said before the refusal
    assert offline.calls == [] and offline.uploads == 0  # nothing sent
    r = runner.invoke(app, [*args, "--yes"])
    assert r.exit_code == 0, r.output
    assert len(offline.calls) == 1 and offline.calls[0]["settings"]["save_steps"] is None


def test_a_bad_save_steps_is_one_line(trained_run, merged_small, tmp_path):
    r = runner.invoke(app, ["train", "--method", "grpo", "--from", str(trained_run), "--data", str(merged_small),
                            "--output-dir", str(tmp_path / "runs"), "--save-steps", "-2"])
    assert r.exit_code == 2 and "save_steps" in r.output and r.output.strip().count("\n") == 0
    assert not (tmp_path / "runs").exists()


def test_on_policy_pairs_are_sampled_once_by_the_main_process(trained_run, merged_small, tmp_path, monkeypatch):
    """Rank 1 of a DDP run must not sample pairs of its own (a different count: different steps,
    and DDP hangs): it reads the pairs.parquet that rank 0 wrote."""
    import accelerate

    from connectodistill.core import generation
    from connectodistill.training.dpo import read_pairs

    common = dict(method="dpo", from_run=trained_run, augmented_dataset=merged_small, on_policy=2,
                  max_completion_length=16, temperature=1.0, **FAST)
    calls = []
    real = generation.generate_answers
    # sampling only (greedy generation also calibrates the run on val when it ends)
    monkeypatch.setattr(generation, "generate_answers",
                        lambda *a, **kw: (kw.get("do_sample") and calls.append(1)) or real(*a, **kw))
    run0 = train(**common, run_dir=tmp_path / "rank0")  # the main process: samples, writes
    assert len(calls) == 1
    written = read_pairs(run0 / "pairs.parquet")
    assert {p.source for p in written} >= {"teacher"}

    class Rank1:  # accelerate's PartialState as rank 1 of 2 sees it (sharing rank 0's folder)
        is_main_process, num_processes = False, 1

        def wait_for_everyone(self):
            pass

    shared = tmp_path / "shared"
    shared.mkdir()
    marker = written[0].__class__(written[0].key, written[0].chosen, "<analysis>x</analysis>\n<answer>a</answer>",
                                  "on-policy", written[0].chosen_order, -1)
    from connectodistill.training.dpo import write_pairs

    write_pairs([*written, marker], shared / "pairs.parquet")  # what rank 0 left there
    monkeypatch.setattr(accelerate, "PartialState", Rank1)
    monkeypatch.setattr(generation, "generate_answers",
                        lambda *a, **kw: pytest.fail("rank 1 sampled") if kw.get("do_sample") else real(*a, **kw))
    run1 = train(**common, run_dir=shared)
    got = read_pairs(run1 / "pairs.parquet")
    assert got == [*written, marker]
    assert json.loads((run1 / "training_config.json").read_text())["dpo"]["pairs"] == len(written) + 1
    assert pd.read_parquet(run1 / "pairs.parquet")["source"].tolist()[-1] == "on-policy"


def test_save_steps_defaults_by_method():
    from connectodistill.training.trainers import save_steps, step_checkpoints

    assert [save_steps(TrainConfig(method=m)) for m in ("sft", "dpo", "grpo")] == [None, 100, 20]
    assert save_steps(TrainConfig(method="grpo", save_steps=0)) is None and step_checkpoints(TrainConfig()) == []
    assert save_steps(TrainConfig(save_steps=7)) == 7 and len(step_checkpoints(TrainConfig(save_steps=7))) == 1
