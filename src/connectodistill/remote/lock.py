"""Refresh the Modal image lock: ``python -m connectodistill.remote.lock``.

Resolves the runtime requirements (pyproject's dependencies plus the ``gpu`` extra, without
``modal``) for the image's platform with ``uv pip compile``, preferring the exact versions
installed in the environment that runs this (the one the tests ran in), and writes
``modal-image.lock`` beside this file. Needs ``uv`` on PATH (``pip install uv``) and PyPI.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import distributions
from pathlib import Path

from .app import LOCK_FILE, PLATFORM, PYTHON_VERSION, read_lock, runtime_requirements

HEADER = """\
# Exact versions of the Modal image (Python {python}, {platform}); the image installs every pin
# below with the same uv. Resolved from pyproject's runtime requirements plus the gpu extra,
# preferring the versions of the environment the tests ran in. Refresh (docs/modal.md):
#   python -m connectodistill.remote.lock
# uv {uv}
"""


def installed_versions() -> list[str]:
    """``name==version`` of every distribution installed here except this project."""
    pins = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name and name.lower() != "connectodistill":
            pins[name.lower()] = f"{name}=={dist.version}"
    return sorted(pins.values())


def refresh(output: Path = LOCK_FILE, uv: str | None = None, prefer_installed: bool = True) -> Path:
    uv = uv or shutil.which("uv")
    if uv is None:
        raise SystemExit("uv not found: pip install uv (or pass --uv PATH)")
    version = subprocess.run([uv, "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    with tempfile.TemporaryDirectory() as tmp:
        reqs, constraints, out = Path(tmp, "image.in"), Path(tmp, "installed.txt"), Path(tmp, "image.lock")
        reqs.write_text("\n".join(runtime_requirements()) + "\n")
        constraints.write_text("\n".join(installed_versions() if prefer_installed else []) + "\n")
        subprocess.run([uv, "pip", "compile", str(reqs), "--constraint", str(constraints),
                        "--python-version", PYTHON_VERSION, "--python-platform", PLATFORM,
                        "--no-header", "--no-annotate", "--quiet", "--output-file", str(out)], check=True)
        body = out.read_text()
    Path(output).write_text(HEADER.format(python=PYTHON_VERSION, platform=PLATFORM, uv=version) + body)
    lock = read_lock(Path(output))
    print(f"wrote {output}: {len(lock.pins)} pins, uv {lock.uv_version}", file=sys.stderr)
    return Path(output)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m connectodistill.remote.lock", description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=LOCK_FILE)
    parser.add_argument("--uv", help="uv executable (default: the one on PATH)")
    parser.add_argument("--latest", action="store_true",
                        help="newest versions within pyproject's ranges, not the installed ones")
    args = parser.parse_args(argv)
    refresh(args.output, args.uv, prefer_installed=not args.latest)


if __name__ == "__main__":
    main()
