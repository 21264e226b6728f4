#!/usr/bin/env bash
# The real ConnectomeBench workflow (needs the Hugging Face Hub and a Modal account).
# CSV paths are where ConnectomeBench's segmentation_classification.py writes them.
set -euo pipefail

CSV_DIR=output/mouse_segment_classification
MERGED=data/connectomebench_with_claude_responses_correct_only.parquet

# 1. Match Claude's K=5 responses (two files) to the benchmark, score, split by neuron.
#    Expect 377/377 matched and response_accuracy near 0.844 in ${MERGED%.parquet}_metadata.json.
connectodistill merge \
  "$CSV_DIR/claude-3-7-sonnet-20250219_analysis_results_K5_v2.csv" \
  "$CSV_DIR/claude-3-7-sonnet-20250219_analysis_results_K5.csv" \
  --output "$MERGED" --filter-correct-only

# 2. LoRA fine-tune Qwen3-VL-8B-Instruct on a Modal GPU (the run folder comes back to runs/).
connectodistill train --data "$MERGED" --remote --gpu A100-80GB \
  --epochs 3 --batch-size 2 --gradient-accumulation 4 --use-wandb --run-name claude_teacher_v1

RUN=$(ls -td runs/*claude_teacher_v1* | head -1)

# 3. Held-out evaluation: the student, the untrained base, and the blank-image ablation,
#    all on the adapter's test ids.
connectodistill eval --adapter-path "$RUN" --remote --name student
connectodistill eval --base-model Qwen/Qwen3-VL-8B-Instruct --merged "$MERGED" --remote --name base
connectodistill eval --adapter-path "$RUN" --blank-images --remote --name student_blank-images

# 4. One table, with the teacher scored on exactly the same ids.
connectodistill report results/student results/base results/student_blank-images --merged "$MERGED"
