"""The demo on a shared machine: K demos started at once, each in a fresh process, as two users
(or a user and a browser) would share a laptop.

Prints, per run, the wall time, the CPU time it used (user + system, from the kernel's rusage of
the child) and the 1-minute load average at the start and the end. On a machine of C cores,
K CPU-bound runs at once should each take about max(1, K / C) times their time alone, using the
same CPU time; CPU time that grows with K is spent waiting, not working (threads spinning at
OpenMP barriers, more threads than cores).

    python bench/shared.py --runs 2 [--samples 3000] [--env OMP_WAIT_POLICY=ACTIVE] [--out FILE]
    python bench/shared.py --runs 1            # the same demo alone, for the ratio

``--env NAME=VALUE`` sets a variable in the children (repeat for more), e.g. to compare the
thread settings the package chooses with the libraries' own defaults.
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


def start(out_dir: Path, samples: int, seed: int, env: dict) -> subprocess.Popen:
    args = [sys.executable, "-m", "connectodistill", "demo", "--output-dir", str(out_dir), "--seed", str(seed),
            "--samples", str(samples)]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2, help="Demos started at once.")
    ap.add_argument("--samples", type=int, default=3000, help="Synthetic benchmark size of each demo.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--out", type=Path, default=None, help="Write the figures here (a new file).")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.update(dict(e.split("=", 1) for e in args.env))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        load_start = os.getloadavg()[0]
        t0 = time.perf_counter()
        procs = {start(Path(tmp) / f"demo-{i}", args.samples, args.seed, env): i for i in range(args.runs)}
        while procs:
            pid, status, usage = os.wait4(-1, 0)
            proc = next(p for p in procs if p.pid == pid)
            i = procs.pop(proc)
            proc.returncode = os.waitstatus_to_exitcode(status)
            report = Path(tmp) / f"demo-{i}" / "report.json"
            runs.append({"run": i, "exit": proc.returncode, "wall_seconds": round(time.perf_counter() - t0, 1),
                         "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
                         "student_accuracy": json.loads(report.read_text())["student_accuracy"]
                         if report.is_file() else None})
        load_end = os.getloadavg()[0]
    result = {"runs_at_once": args.runs, "samples": args.samples, "cpu_count": os.cpu_count(),
              "env": dict(e.split("=", 1) for e in args.env), "load_1min_start": round(load_start, 2),
              "load_1min_end": round(load_end, 2), "runs": sorted(runs, key=lambda r: r["run"])}
    print(json.dumps(result, indent=1))
    if args.out:
        if args.out.exists():
            print(f"{args.out} exists: not overwritten", file=sys.stderr)
            return 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if all(r["exit"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
