#!/usr/bin/env bash
# GPU figures of bcd-node, within 10 minutes, on a machine with an NVIDIA GPU.
#
# Run from the repository root after `make install-test` (TensorFlow with CUDA must see the
# GPU: `nvidia-smi` and `python -c "import tensorflow as tf; print(tf.config.list_physical_devices('GPU'))"`):
#
#     benchmarks/gpu.sh                 # figures in ./gpu-results (or $OUT)
#     BUILDERS="0 4 8" benchmarks/gpu.sh
#
# It measures, each step under its own time limit (about 9 minutes in all):
#   1. the full-width (1.0) and the bundled VGG16-UNet: images/s of the batched predictor, in
#      float32 and bfloat16 (benchmarks/inference.py);
#   2. the pipeline: a burst of 200 512x512 images through the real worker (claim -> decode ->
#      one batched prediction -> SEG, SR, PDF -> files -> publish) with N CPU output builder
#      processes for each N in $BUILDERS, against the model alone on the same images in the
#      same run (benchmarks/analysis.py);
#   3. the output builders' cost per image on this CPU (benchmarks/outputs.py).
# Put the printed figures in docs/operations.md ("Capacity") with the GPU's name.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu-results}
BUILDERS=${BUILDERS:-"0 2 4 8"}
BATCH=${BATCH:-32}
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
  nproc; "$PY" -c "import tensorflow as tf; print(tf.__version__, tf.config.list_physical_devices('GPU'))"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

echo "== 1. models alone (full width and bundled), float32 and bfloat16"
timeout 240 "$PY" benchmarks/inference.py --images 512 --full-images 128 --naive 16 \
    --batch-size 64 --json "$OUT/inference.json" 2>&1 | tee "$OUT/inference.txt" | grep -v "^I0000\|^W0000"

echo "== 2. pipeline through the worker, output builders: $BUILDERS"
# shellcheck disable=SC2086
timeout 300 "$PY" benchmarks/analysis.py --burst 200 --batch-size "$BATCH" --builders $BUILDERS \
    2>&1 | tee "$OUT/analysis.txt" | grep -v "^I0000\|^W0000"

echo "== 3. output building per image on this CPU"
timeout 60 "$PY" benchmarks/outputs.py --images 20 2>&1 | tee "$OUT/outputs.txt"

echo "figures in $OUT/"
