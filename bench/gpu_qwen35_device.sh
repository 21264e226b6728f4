#!/usr/bin/env bash
# Qwen3.5-9B on the GPU machine (one H200), in one call: bench/qwen35_kernels.py without and
# with flash-linear-attention (one Gated DeltaNet layer of the 9B, and the causal conv that
# causal-conv1d would replace), then bench/gpu.py --model qwen3.5-9b. Results under $OUT.
#
# Wheels: .whl/ as bench/gpu_device.sh says (pydantic & co. for Python 3.12, and datasets 5.2.0,
# dill 0.4.1, multiprocess 0.70.19 for make_benchmark), .whl/extra/ pyarrow 26.0.1, plus .whl/fla/
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

# 2. the 9B's rows. fla 0.6 refuses its chunked backward on Hopper with Triton < 3.7.1 (wrong
#    results, its issue #640); the machine's Triton is 3.6, the Modal image's 3.8. So training is
#    measured here with transformers' reference delta rule, generation (forward only) with fla.
#    make_benchmark needs datasets; pyarrow >= 24 for it only if the machine's is older.
python3 -c "import pyarrow, sys; sys.exit(int(pyarrow.__version__.split('.')[0]) < 24)" \
  || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/extra/*.whl
python3 -c "import triton; print('triton', triton.__version__)"
GPU_BENCH_TIMEOUT=200 OUT="$OUT/train" bash bench/gpu_device.sh --model qwen3.5-9b --sections train \
  --batch-sizes 1,2 --steps 4 --warmup 1 --budget-s 170
PYTHONPATH=/tmp/fla GPU_BENCH_TIMEOUT=150 OUT="$OUT/generate" bash bench/gpu_device.sh --model qwen3.5-9b \
  --sections generation --gen-batch-sizes 1,4,16 --gen-new-tokens 128 --budget-s 120
rc=$?
rm -f "$OUT"/*/pip-project.log  # at most 8 files come back
exit "$rc"
