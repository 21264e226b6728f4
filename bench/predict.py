"""predict at scale: peak memory and segments/s for 10k and 100k synthetic segments.

Each measurement is a fresh process running the ``connectodistill predict`` CLI (its peak RSS:
its own ``VmHWM`` at exit), on inputs generated once and cached under $TMPDIR/connectodistill-bench-predict/:

- ``dataset``: a parquet in the benchmark's schema without labels (ids, species, box, three
  PNG views as struct<bytes, path>), written in row groups of 1000, or as ONE row group with
  ``--one-row-group`` (the worst case for a streaming reader);
- ``table``: a segment table CSV (teacher-CSV header spellings) + an images folder of
  ``<pid>_<cid>_{front,side,top}.png`` (hard links to 64 rendered segments' views).

Every segment has fresh 18-digit ids, so every prompt is the run's teacher template. The
model is skipped (``--dry-run``): what is measured is reading, checking and decoding every
view, choosing prompts and writing chunks and outputs, i.e. everything but the GPU. With
``--tiny N`` the offline kit's tiny Qwen3-VL (untrained, exported with
``connectodistill_export.json``, ``--model``) also classifies N segments for real on CPU.

    python bench/predict.py                       # 10k and 100k, both kinds, dry run
    python bench/predict.py --sizes 2000 --kinds dataset --tiny 64 --out bench/results/predict.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(tempfile.gettempdir()) / "connectodistill-bench-predict"
BOX = ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax")
VIEWS = ("front", "side", "top")


def base_rows(n: int = 64) -> list[dict]:
    import pyarrow.parquet as pq

    from connectodistill.synthetic import make_benchmark

    path = CACHE / f"base-{n}.parquet"
    if not path.is_file():
        make_benchmark(path, n=n, seed=0)
    return pq.read_table(path).to_pylist()


def ids(i: int) -> tuple[int, int]:
    return 864691200000000000 + i // 3, 864691300000000000 + i  # 18 digits, never float-exact


def make_dataset(n: int, one_group: bool) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = CACHE / f"dataset-{n}{'-1rg' if one_group else ''}.parquet"
    if path.is_file():
        return path
    base = base_rows()
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("species", pa.string()), ("proofread_root_id", pa.int64()), ("current_root_id", pa.int64()),
                        *[(c, pa.float64()) for c in BOX], *[(f"option_1_{v}_image", image) for v in VIEWS]])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as w:
        step = 1000
        for s in range(0, n, step):
            rows = []
            for i in range(s, min(s + step, n)):
                r = base[i % len(base)]
                p, c = ids(i)
                rows.append({"species": r["species"], "proofread_root_id": p, "current_root_id": c,
                             **{b: r[b] for b in BOX}, **{f"option_1_{v}_image": r[f"option_1_{v}_image"] for v in VIEWS}})
            t = pa.Table.from_pylist(rows, schema=schema)
            w.write_table(t, row_group_size=n if one_group else step)
    if one_group:  # rewrite as one row group (ParquetWriter.write_table splits per call)
        t = pq.read_table(tmp)
        pq.write_table(t, tmp, row_group_size=n)
        del t
    tmp.replace(path)
    return path


def make_table(n: int) -> tuple[Path, Path]:
    folder = CACHE / f"table-{n}"
    table, images = folder / "segments.csv", folder / "images"
    if table.is_file():
        return table, images
    base = base_rows()
    src = CACHE / "views"
    src.mkdir(parents=True, exist_ok=True)
    for k, r in enumerate(base):
        for v in VIEWS:
            f = src / f"{k}_{v}.png"
            if not f.is_file():
                f.write_bytes(r[f"option_1_{v}_image"]["bytes"])
    images.mkdir(parents=True, exist_ok=True)
    tmp = table.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["proofread root id", "current root id", "species", *BOX])
        for i in range(n):
            k = i % len(base)
            r, (p, c) = base[k], ids(i)
            for v in VIEWS:
                dst = images / f"{p}_{c}_{v}.png"
                if not dst.exists():
                    os.link(src / f"{k}_{v}.png", dst)
            w.writerow([p, c, r["species"], *(repr(r[b]) for b in BOX)])
    tmp.replace(table)
    return table, images


def stub_run() -> Path:
    """A run folder with what predict reads (settings, the teacher template), no weights."""
    from connectodistill.core.conversation import prompt_template_hash
    from connectodistill.synthetic.teacher import teacher_prompt_text

    run = CACHE / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "training_config.json").write_text(json.dumps({
        "base_model": "unused-in-a-dry-run", "pixel_budget": {"min_pixels": 3136, "max_pixels": 1048576},
        "splits": {"train": [], "val": [], "test": []}, "prompt_source": "teacher",
        "prompt_setting": "with_description", "with_description": True, "prompt_template_hash": prompt_template_hash()}))
    template = teacher_prompt_text("{species}", "{bbox_size}", True)
    (run / "prompt_templates.json").write_text(json.dumps({"mouse|with_description": {
        "species": "mouse", "setting": "with_description", "template": template,
        "layout": "image,image,image,text", "prompts": 1, "reproduced": 1, "reason": None}}))
    return run


def tiny_export() -> Path:
    """The offline kit's tiny Qwen3-VL as an exported folder (connectodistill_export.json)."""
    from connectodistill.synthetic import make_tiny_student

    folder = CACHE / "tiny-export"
    if not (folder / "connectodistill_export.json").is_file():
        make_tiny_student(folder, kind="qwen3-vl")
        config = json.loads((stub_run() / "training_config.json").read_text())
        config.update(base_model=str(folder), pixel_budget={"min_pixels": 3136, "max_pixels": 65536})
        (folder / "connectodistill_export.json").write_text(json.dumps(config))
        (folder / "prompt_templates.json").write_text((stub_run() / "prompt_templates.json").read_text())
    return folder


# The CLI in a fresh process that writes its own peak RSS (VmHWM) at exit: ru_maxrss of a child
# would also count the pages it shared with this process between fork and exec.
WRAP = """
import atexit, sys
path = sys.argv.pop(1)
def peak():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM"))
    with open(path, "w") as f:
        f.write(kb)
atexit.register(peak)
from connectodistill.cli import main
sys.argv[0] = "connectodistill"
main()
"""


def measure(args: list[str], out: Path) -> dict:
    hwm = out.with_suffix(".hwm")
    cmd = [sys.executable, "-c", WRAP, str(hwm), "predict", *args, "--output", str(out), "--force"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"predict failed:\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "predict_summary.json").read_text())
    return {"segments": summary["rows"], "predicted": summary["predicted"], "wall_s": round(wall, 1),
            "predict_s": summary["seconds"], "segments_per_s": summary["segments_per_second"],
            "peak_rss_mb": round(int(hwm.read_text()) / 1024, 1), "chunks": summary["chunks"],
            "prompt_sources": summary["prompt_source_counts"],
            "output_mb": round((out / "predictions.parquet").stat().st_size / 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--kinds", nargs="+", default=["dataset", "table"], choices=["dataset", "table"])
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--one-row-group", action="store_true", help="dataset: one row group (worst case)")
    ap.add_argument("--tiny", type=int, default=0, help="also run the tiny student on this many segments")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    run, results = stub_run(), []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            for kind in args.kinds:
                if kind == "dataset":
                    inp = [str(make_dataset(n, args.one_row_group))]
                else:
                    table, images = make_table(n)
                    inp = [str(table), "--images-dir", str(images)]
                r = measure([*inp, "--adapter-path", str(run), "--dry-run", "--chunk-size", str(args.chunk_size)],
                            Path(tmp) / f"{kind}-{n}")
                r.update(kind=kind, mode="dry run (no model)", one_row_group=args.one_row_group and kind == "dataset")
                print(json.dumps(r), flush=True)
                results.append(r)
        if args.tiny:
            inp = str(make_dataset(args.tiny, False))
            r = measure([inp, "--model", str(tiny_export()), "--max-new-tokens", "32", "--batch-size", "8",
                         "--chunk-size", "64"], Path(tmp) / "tiny")
            r.update(kind="dataset", mode="tiny Qwen3-VL, CPU, 32 new tokens, batch 8")
            print(json.dumps(r), flush=True)
            results.append(r)
    if args.out:
        args.out.write_text(json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
