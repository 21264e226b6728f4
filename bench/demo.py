"""The demo's learning and time targets, checked on its default size (too slow for a test).

Runs `connectodistill demo` in a fresh process, as a user would, and checks report.json:
- the student reaches at least 0.8 accuracy on the held-out synthetic test set;
- with blank images it scores no better than the majority-class rate + 0.1;
- the whole demo takes under 5 minutes (2 CPU cores).

    python bench/demo.py [--seed 0] [--out bench/results/demo.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    exe = Path(sys.executable).with_name("connectodistill")
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp) / "demo-run"
        t0 = time.perf_counter()
        subprocess.run([str(exe), "demo", "--output-dir", str(out_dir), "--seed", str(args.seed)], check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})
        wall = time.perf_counter() - t0
        report = json.loads((out_dir / "report.json").read_text())
    report["wall_seconds_fresh_process"] = round(wall, 1)
    report["cpu_count"] = os.cpu_count()
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    ok = all(report["targets"].values())
    print("targets met" if ok else f"targets missed: {report['targets']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
