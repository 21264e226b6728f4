#!/usr/bin/env bash
# Qwen3.5-9B on the GPU machine (one H200), in one call: bench/gpu.py --model qwen3.5-9b with
# flash-linear-attention, then bench/qwen35_kernels.py without and with it (one Gated DeltaNet
# layer of the 9B, and the causal conv that causal-conv1d would replace). Results under $OUT.
#
# Wheels: .whl/ as bench/gpu_device.sh says (pydantic & co. for Python 3.12), plus .whl/fla/
# with flash-linear-attention and fla-core (pure Python + Triton, py3-none-any; einops and
# triton are on the machine):
#
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl/fla \
#     flash-linear-attention==0.6.0 fla-core==0.6.0
#
# On the device (the device tool's `run`, carry [".whl"], timeout_s 560):
#
#   bash bench/gpu_qwen35_device.sh
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/bench/results/device}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/fla .whl/fla/*.whl \
  || { echo "installing flash-linear-attention failed" >&2; exit 3; }

# 1. the kernels, without then with fla (the second compares its output with the first's)
for tokens in 3400; do
  PYTHONPATH="$PWD/src" python3 bench/qwen35_kernels.py --tokens "$tokens" --save /tmp/q35_ref.pt \
    2>"$OUT/kernels.err" | tee -a "$OUT/kernels.jsonl"
  PYTHONPATH="/tmp/fla:$PWD/src" python3 bench/qwen35_kernels.py --tokens "$tokens" --compare /tmp/q35_ref.pt \
    2>>"$OUT/kernels.err" | tee -a "$OUT/kernels.jsonl"
done

# 2. the 9B's training and generation rows, with fla (gpu_device.sh puts its wheels in front)
PYTHONPATH=/tmp/fla GPU_BENCH_TIMEOUT="${GPU_BENCH_TIMEOUT:-330}" OUT="$OUT" bash bench/gpu_device.sh \
  --model qwen3.5-9b --sections train,generation --batch-sizes 1,2,4 --steps 5 --warmup 2 \
  --gen-batch-sizes 1,4,16 --gen-new-tokens 128 --budget-s "${BUDGET_S:-280}"
rc=$?
rm -f "$OUT/pip-project.log"  # at most 8 files come back
exit "$rc"
