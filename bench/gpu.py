"""GPU truth: the real-size student (Qwen3-VL-8B-Instruct's architecture) measured in one run.

Builds Qwen3-VL-8B-Instruct's architecture (``--model qwen3.5-9b``: Qwen3.5-9B's) from its
published config (gpu_shapes.py; no Hub, no checkpoint: random init directly on the GPU in
bf16) and measures, with three views per
sample through the project's own collator (``training.DistillCollator``), processor budget
(``modeling.load_processor``), model building and LoRA (``modeling.build_model_from_config``,
``modeling.add_lora``) and generation (``generation.generate_answers``):

- training: LoRA on the language model (the project's defaults), gradient checkpointing on,
  bf16 autocast, AdamW; batch 1, 2, 4; warm-up then 10 timed steps: step time (collator +
  model), samples/s, tokens/s, peak memory, MFU; the same with ``--tune-vision``; one row at a
  small pixel budget;
- memory: peak memory against pixel budget and batch size (which Modal GPU fits what);
- generation: batched greedy eval at batch 1, 4, 16 with 256 new tokens;
- data preparation: the collator alone on one CPU thread (what a step waits for without data
  loader workers; compare Modal's default fraction of a core), per training batch size;
- 4-bit: bitsandbytes NF4 load (``modeling.load_model(load_in_4bit=True)``) of a saved random
  checkpoint and one training step, if bitsandbytes imports (else the JSON says why).

    python bench/gpu.py                                   # CUDA GPU -> bench/results/gpu.json
    python bench/gpu.py --model qwen3.5-9b --output bench/results/gpu-qwen3.5-9b.json
    python bench/gpu.py --smoke --output /tmp/gpu.json    # tiny config, CPU, ~20 s (the test)

Every run also builds both real configs on the meta device (parameters, LoRA size).

Every section has a time estimate and the whole run a budget (``--budget-s``, default 420 s
so that it ends inside 8 minutes on one H200); the estimates sum under the budget (checked by
tests/test_bench_gpu.py), so every section runs. A section that no longer fits all the same is
skipped with a note, and the JSON is rewritten after every measurement, so a run that is cut
short still leaves its figures.

Wheels to carry to the GPU machine (it has torch, transformers, peft, accelerate, typer,
pandas, pyarrow, pillow, torchvision, but no pydantic, datasets or bitsandbytes): pydantic,
pydantic-core, annotated-types, typing-inspection, typing-extensions (pydantic 2.14 wants
>= 4.16), bitsandbytes, datasets (with dill and multiprocess: the kit's ``make_benchmark``
writes datasets features). ``connectodistill.core.config`` (imported by ``training``) needs
pydantic. ``bench/gpu_device.sh`` installs them (``--no-deps``)
and runs this script; its header has the ``pip download`` command.

The script is split by concern into modules beside it (bench/ is put on ``sys.path`` first, so
they import the same whether this file runs as a script or is loaded by its path with
importlib): ``gpu_shapes`` (the 8B and tiny configs, parameter and LoRA counts on the meta
device), ``gpu_flops`` (the FLOP model behind MFU), ``gpu_inputs`` (the project's functions,
benchmark-like samples), ``gpu_sections`` (the measurements and their printed rows) and
``gpu_machine`` (machine info, memory, OOMs, the JSON report, the budget). This file keeps the
command line, the run presets and the loop over the sections.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The sibling modules: already first on sys.path when run as `python bench/gpu.py`, not when
# this file is loaded by its path with importlib.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from gpu_flops import FLOP_MODEL, H200_BF16_DENSE_FLOPS  # noqa: E402
from gpu_inputs import make_samples, project_api, train_defaults  # noqa: E402
from gpu_machine import (  # noqa: E402
    Budget,
    Memory,
    Report,
    library_versions,
    machine_info,
    now_utc,
    release,
)
from gpu_onepass import section_one_pass  # noqa: E402 - beside its siblings, after the sys.path entry
from gpu_sections import (  # noqa: E402
    Ctx,
    print_table,
    section_4bit,
    section_data_prep,
    section_generation,
    section_memory,
    section_small_budget,
    section_train,
)
from gpu_shapes import MODELS, meta_check, model_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "gpu.json"

# The two run presets: the H200 run's sizes, and the smoke run's (the test, on CPU).
FULL = dict(image_size=1024, max_pixels=None, small_pixels=256 * 256, batch_sizes="1,2,4",
            steps=10, warmup=2, gen_batch_sizes="1,4,16", gen_new_tokens=256,
            memory_pixels="65536,262144,1048576", memory_batch_sizes="1,2,4,8",
            target_chars=800, budget_s=470.0, data_batches=3,
            onepass_pixels="65536,262144,1048576", onepass_batch_sizes="1,4,16", onepass_gen_tokens=200)
SMOKE = dict(image_size=64, max_pixels=64 * 64, small_pixels=32 * 32, batch_sizes="1,2",
             steps=2, warmup=1, gen_batch_sizes="1,2", gen_new_tokens=8,
             memory_pixels="1024,4096", memory_batch_sizes="1,2", target_chars=200,
             budget_s=120.0, data_batches=2,
             onepass_pixels="1024,4096", onepass_batch_sizes="1,2", onepass_gen_tokens=8)
SECTIONS = ("train", "data_prep", "train_small_budget", "memory", "generation", "one_pass", "train_tune_vision",
            "quantized_4bit")
# Rough seconds each section takes on one H200 (skipped when less than this is left), from the
# work each does at ~40% of the H200's bf16 rate plus building the 8B model (not yet measured:
# a run's JSON records each section's seconds, which should replace these). They sum under
# FULL["budget_s"] (tests/test_bench_gpu.py), so that a full run reaches every section: 450 s
# (one-pass: 9 prefill rows of at most 16 x 3.5k tokens, and 200 decode steps at batch 16).
# The 4-bit section: a 17.5 GB random checkpoint written, loaded in bf16 and in NF4, one step.
ESTIMATE_S = {"train": 80, "data_prep": 15, "train_small_budget": 15, "memory": 45, "generation": 70,
              "one_pass": 45, "train_tune_vision": 70, "quantized_4bit": 110}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny config of --model's family on the CPU (or GPU), small everything: the test")
    ap.add_argument("--model", choices=list(MODELS), default="qwen3-vl-8b",
                    help="the real shape measured (default qwen3-vl-8b, the default student)")
    ap.add_argument("--output", type=Path, default=None,
                    help=f"JSON path (default {DEFAULT_OUTPUT.relative_to(ROOT)}; required with --smoke)")
    ap.add_argument("--device", default=None, help="default: cuda:0 when present, else cpu")
    ap.add_argument("--image-size", type=int, help="side of the rendered square PNG views (1024)")
    ap.add_argument("--max-pixels", type=int, help="pixel budget per view (modeling.DEFAULT_MAX_PIXELS)")
    ap.add_argument("--small-pixels", type=int, help="the small-budget row's pixel budget (256*256)")
    ap.add_argument("--batch-sizes", help="training batch sizes (1,2,4)")
    ap.add_argument("--steps", type=int, help="timed training steps per row (10)")
    ap.add_argument("--warmup", type=int, help="warm-up steps per row (2)")
    ap.add_argument("--gen-batch-sizes", help="generation batch sizes (1,4,16)")
    ap.add_argument("--gen-new-tokens", type=int, help="new tokens per generated sample (256)")
    ap.add_argument("--memory-pixels", help="pixel budgets of the memory table")
    ap.add_argument("--memory-batch-sizes", help="batch sizes of the memory table (1,2,4,8)")
    ap.add_argument("--target-chars", type=int, help="characters of teacher analysis per target (800)")
    ap.add_argument("--budget-s", type=float, help="wall-clock budget of the whole run (470)")
    ap.add_argument("--onepass-pixels", help="one-pass rows' pixel budgets (256^2, 512^2, 1024^2)")
    ap.add_argument("--onepass-batch-sizes", help="one-pass rows' batch sizes (1,4,16)")
    ap.add_argument("--onepass-gen-tokens", type=int, help="new tokens of the generation it is compared with (200)")
    ap.add_argument("--data-batches", type=int, help="timed collator batches per data_prep row (3)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    ap.add_argument("--scratch", default=None, help="folder for the 4-bit section's checkpoint (~17 GB)")
    ap.add_argument("--peak-flops", type=float, default=H200_BF16_DENSE_FLOPS,
                    help="the GPU's dense bf16 peak for MFU (989e12: H100/H200 SXM)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (--smoke on CPU: 1; a tiny model's ops only contend for cores)")
    args = ap.parse_args(argv)
    defaults = SMOKE if args.smoke else FULL
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.output is None:
        if args.smoke:
            ap.error("--smoke needs --output (the smoke run never writes bench/results/gpu.json)")
        args.output = DEFAULT_OUTPUT
    if args.smoke and args.output.resolve() == DEFAULT_OUTPUT.resolve():
        ap.error("--smoke must not overwrite bench/results/gpu.json; pass another --output")
    for k in ("batch_sizes", "gen_batch_sizes", "memory_pixels", "memory_batch_sizes", "onepass_pixels",
              "onepass_batch_sizes"):
        setattr(args, k, [int(x) for x in str(getattr(args, k)).split(",") if x.strip()])
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    return args


def main(argv=None) -> int:
    t_start = time.monotonic()
    args = parse_args(argv)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5's renames
    modeling, generate_answers, Example, DistillCollator = project_api()
    if args.max_pixels is None:
        args.max_pixels = modeling.DEFAULT_MAX_PIXELS
    spec = MODELS[args.model]
    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    if args.threads is None and args.smoke and not cuda:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    doc = {
        "_t0": t_start,
        "schema": "connectodistill.bench.gpu/1",
        "mode": "smoke" if args.smoke else "full",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started_utc": now_utc(),
        "machine": machine_info(device),
        "library_versions": library_versions(),
        # The 8B's names as the JSON has always spelt them (TINY_CONFIG now lives in gpu_shapes.py).
        "model": {"name": (f"tiny {spec['kind']} (bench/gpu_shapes.py)" if args.model != "qwen3-vl-8b"
                           else "tiny Qwen3-VL (bench/gpu.py TINY_CONFIG)") if args.smoke
                  else f"{spec['name']} architecture, random init", "key": args.model},
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "assumptions": {
            "views_per_sample": 3,
            "view_image": f"{args.image_size}x{args.image_size} PNG (the real benchmark's rendered "
                          "views assumed 1024x1024; --image-size), the offline kit's synthetic renders",
            "weights": "random init on the device (no checkpoint); speed and memory do not depend on the values",
            "tokenizer": "the offline kit's small BPE with Qwen's special tokens (not Qwen's 151k "
                         "vocabulary): prompt/answer token counts differ a little from the real "
                         "tokenizer; visual tokens, which dominate, are exact",
            "prompt": "conversation.build_prompt (the project's builtin template)",
            "target": f"<analysis> of ~{args.target_chars} characters + <answer> (teacher analyses are 0.5-1.2 KB)",
            "dtype": str(dtype).replace("torch.", ""),
            "attention": "transformers' default (sdpa)",
            "optimizer": "torch AdamW (fused on CUDA), grad-norm clip 1.0, bf16 autocast on CUDA (as the Trainer)",
            "memory_on_cpu": "CUDA allocator figures are null on CPU; host_peak_rss_gib instead",
        },
        "peak_flops": args.peak_flops if cuda else None,
        "flop_model": FLOP_MODEL,
        "checks": {},
        "sections": {name: {"status": "not run", "rows": []} for name in SECTIONS},
        "notes": [],
    }
    report = Report(args.output, doc)
    report.save()
    failed_checks = False
    budget = Budget(args.budget_s - (time.monotonic() - t_start))
    try:
        lora = train_defaults()
        doc["settings"]["lora"] = lora
        work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
        try:
            from connectodistill.synthetic.student import make_processor

            t = time.perf_counter()
            processor_dir = make_processor(work / "processor", spec["kind"])
            from connectodistill.core.modeling import load_processor

            tokenizer = load_processor(str(processor_dir))[0].tokenizer
            for key, tag in (("qwen3-vl-8b", "8b"), ("qwen3.5-9b", "9b")):  # both real shapes, always
                meta = meta_check(modeling, tokenizer, lora, key)
                doc["model"][f"meta_check_{tag}"] = meta
                doc["checks"][f"params_{tag}_in_range"] = meta["params_in_range"]
                doc["checks"][f"lora_trainable_{tag}_in_range"] = meta["lora_trainable_in_range"]
                failed_checks |= not (meta["params_in_range"] and meta["lora_trainable_in_range"])
            n = max([16, *args.gen_batch_sizes, *args.memory_batch_sizes, *args.batch_sizes])
            rows, image_cols, examples = make_samples(work, n, args.image_size, args.target_chars, Example)
            cfg = model_config(spec["tiny"] if args.smoke else spec["config"], tokenizer)
            doc["model"]["config"] = cfg.to_dict()
            doc["setup_s"] = round(time.perf_counter() - t, 2)
            report.save()
            ctx = Ctx(modeling=modeling, generate_answers=generate_answers, Example=Example,
                      DistillCollator=DistillCollator, cfg=cfg, device=device, dtype=dtype, lora=lora,
                      processor_dir=processor_dir, rows=rows, image_cols=image_cols,
                      examples=examples, mem=Memory(device), peak_flops=doc["peak_flops"],
                      budget=budget, args=args)
            args._train_model = None
            for name in SECTIONS:
                sec = report.section(name)
                if name not in args.sections:
                    sec["status"] = "skipped: not in --sections"
                    continue
                est = ESTIMATE_S[name] if not args.smoke else 1
                if budget.left() < est:
                    sec["status"] = (f"skipped: out of time ({budget.left():.0f} s left of the "
                                     f"{args.budget_s:.0f} s budget, the section needs ~{est} s)")
                    report.save()
                    continue
                print(f"[{time.monotonic() - t_start:6.1f} s] {name}", flush=True)
                t = time.perf_counter()
                sec["status"] = "running"
                try:
                    if name == "train":
                        section_train(ctx, sec, report, tune_vision=False)
                    elif name == "train_tune_vision":
                        ctx.args._train_model = None
                        release()
                        section_train(ctx, sec, report, tune_vision=True)
                    elif name == "data_prep":
                        section_data_prep(ctx, sec, report)
                    elif name == "train_small_budget":
                        section_small_budget(ctx, sec, report)
                    elif name == "memory":
                        measured = [*doc["sections"]["train"]["rows"],
                                    *doc["sections"]["train_small_budget"]["rows"]]
                        section_memory(ctx, sec, report, measured)
                    elif name == "generation":
                        section_generation(ctx, sec, report)
                    elif name == "one_pass":
                        section_one_pass(ctx, sec, report)
                    elif name == "quantized_4bit":
                        section_4bit(ctx, sec, report)
                    if sec["status"] == "running":
                        sec["status"] = "done"
                except Exception as e:  # one broken section must not lose the others
                    sec["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                    sec["traceback"] = traceback.format_exc()[-4000:]
                    print(sec["traceback"], file=sys.stderr, flush=True)
                    ctx.args._train_model = None
                    release()
                sec["seconds"] = round(time.perf_counter() - t, 1)
                report.save()
            args._train_model = None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except Exception as e:
        doc["notes"].append(f"run stopped: {type(e).__name__}: {e}")
        doc["traceback"] = traceback.format_exc()[-4000:]
        print(doc["traceback"], file=sys.stderr, flush=True)
        failed_checks = True
    finally:
        doc["finished_utc"] = now_utc()
        report.save()
    print_table(doc)
    print(f"wrote {args.output}", flush=True)
    return 1 if failed_checks else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
