#!/usr/bin/env bash
# Run bench/gpu.py on the GPU machine (one H200) and leave its results under $OUT.
#
# The machine has python3 3.12 (/opt/torch/.venv) with torch, transformers, peft, accelerate,
# typer, pandas, pyarrow, pillow, torchvision, but no pydantic (connectodistill.core.config needs it),
# datasets (the kit's make_benchmark writes datasets features) or bitsandbytes, and it reaches no
# package registry: those wheels
# travel in the repository tree, in .whl/ (git-ignored, ~46 MB of the 64 MiB a call may carry).
#
# Preparation, once, here (linux x86_64, CPython 3.12 like the device; for a 3.11 image use
# --python-version 3.11: only pydantic-core is version-specific):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     typing-extensions==4.16.0 bitsandbytes==0.50.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
#
# (datasets 5.2 wants pyarrow >= 24: bench/gpu_qwen35_device.sh installs a carried pyarrow 26.0.1
# from .whl/extra/ only where the machine's is older.)
#
# (pydantic 2.14.4 pins pydantic-core 2.50.5 and wants typing-extensions >= 4.16; bitsandbytes
# 0.50.2 ships libbitsandbytes_cuda130.so for the device's torch 2.11+cu130.)
#
# On the device (the device tool's `run`, carry [".whl"], timeout_s 600):
#
#   bash bench/gpu_device.sh
#
# then copy $OUT/gpu.json (files_at/gpu.json) to bench/results/gpu.json. Extra arguments go to
# gpu.py (e.g. `bash bench/gpu_device.sh --sections quantized_4bit` for a second, shorter call).
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/bench/results/device}"
WHEELS="${WHEELS:-.whl}"
SITE="${SITE:-/tmp/site}"
LIMIT_S="${GPU_BENCH_TIMEOUT:-570}"  # gpu.py budgets itself to 470 s; this is the backstop
mkdir -p "$OUT"

if compgen -G "$WHEELS/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl || { echo "installing the carried wheels failed" >&2; exit 3; }
else
  echo "no wheels in $WHEELS/: pydantic (needed) and bitsandbytes (4-bit section) will be missing" >&2
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# The project itself, without its dependencies (they are the image's or the wheels above).
if ! python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
    --no-cache-dir --upgrade --target "$SITE" . >"$OUT/pip-project.log" 2>&1; then
  echo "pip install of the project failed (see pip-project.log); using src/ on PYTHONPATH" >&2
  export PYTHONPATH="$PWD/src:$PYTHONPATH"
fi

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
python3 -c "import connectodistill, pydantic, torch, transformers, peft; print('imports ok', torch.cuda.get_device_name())" \
  || { echo "imports failed" >&2; exit 4; }

timeout --signal=TERM --kill-after=15 "$LIMIT_S" \
  python3 bench/gpu.py --output "$OUT/gpu.json" "$@" 2>&1 | tee "$OUT/gpu.log"
rc=${PIPESTATUS[0]}
echo "bench/gpu.py exit status $rc (124: stopped at ${LIMIT_S} s; the JSON holds what was measured)"
exit "$rc"
