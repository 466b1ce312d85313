#!/usr/bin/env bash
# GPU figures of bcd-node, in under 10 minutes, on a machine with an NVIDIA GPU.
#
# Either from the repository root after `make install-test` (TensorFlow with CUDA must see the
# GPU), or on a machine that has a Python with PyTorch (and CUDA) but neither TensorFlow nor
# the node's dependencies and no registry to fetch them from (the device machines lent to this
# project). For the latter, fetch the wheels beforehand where PyPI is reachable, and take the
# folder .whl/ along with the working tree:
#
#     benchmarks/gpu-wheels.sh          # here: .whl/, about 25 MB (git ignores it)
#     benchmarks/gpu.sh                 # there: installs .whl/ into /tmp/site when its Python
#                                       # lacks Keras, and runs Keras on PyTorch
#     BUILDERS="0 4 8" benchmarks/gpu.sh
#     BATCH=64 MODEL_BATCH=192 benchmarks/gpu.sh   # images per worker batch, tiles per call
#
# Figures go to $OUT (default ./gpu-results). The Keras backend is $KERAS_BACKEND, else
# TensorFlow where it can be imported, else PyTorch. It measures, each step under its own time
# limit:
#   1. the full-width (1.0) and the bundled VGG16-UNet: images/s of the batched predictor, in
#      float32 and bfloat16 (benchmarks/inference.py);
#   2. the pipeline: a burst of 200 512x512 images through the real worker (claim -> decode ->
#      one batched prediction -> SEG, SR, PDF -> files -> publish) with N CPU output builder
#      processes for each N in $BUILDERS, against the model alone on the same images in the
#      same run (benchmarks/analysis.py);
#   3. the output builders' cost per image on this CPU (benchmarks/outputs.py);
#   4. the images decoded by the worker process or by the builders (workers.decode_in_builders
#      never and always), uncompressed and JPEG 2000, with the most builders of $BUILDERS.
# Put the printed figures in docs/operations.md ("Capacity") with the GPU's name.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=${OUT:-gpu-results}
BUILDERS=${BUILDERS:-"0 2 4 8"}
BATCH=${BATCH:-32}
# Tiles per call of the model in the pipeline (model.batch_size; the node's default, 8, is for
# CPUs): a worker batch of $BATCH 512x512 images is 9 x $BATCH tiles.
MODEL_BATCH=${MODEL_BATCH:-96}
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} PYTHONUNBUFFERED=1
# analysis.py runs the model alone in a second process beside the worker's: with TensorFlow,
# neither may take the whole GPU's memory at its start.
export TF_FORCE_GPU_ALLOW_GROWTH=${TF_FORCE_GPU_ALLOW_GROWTH:-true}

if ! "$PY" -c "import keras" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "gpu.sh: $PY has no Keras and there is no .whl/ (run benchmarks/gpu-wheels.sh" \
             "where PyPI is reachable, and bring .whl/ along)" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -z "${KERAS_BACKEND:-}" ]; then
    if "$PY" -c "import tensorflow" 2>/dev/null; then KERAS_BACKEND=tensorflow
    else KERAS_BACKEND=torch; fi
fi
export KERAS_BACKEND

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
  echo "cores: $(nproc)"
  "$PY" -c "import keras, sys; from bcd_node.inference.predictor import gpu_devices
print(sys.version.split()[0], 'keras', keras.__version__, keras.backend.backend(), gpu_devices())"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

echo "== 1. models alone (full width and bundled), float32 and bfloat16"
timeout 200 "$PY" benchmarks/inference.py --images 512 --full-images 128 --naive 16 \
    --batch-size 64 --json "$OUT/inference.json" 2>&1 | tee "$OUT/inference.txt" | grep -v "^I0000\|^W0000"

echo "== 2. pipeline through the worker, output builders: $BUILDERS"
# shellcheck disable=SC2086
timeout 240 "$PY" benchmarks/analysis.py --burst 200 --batch-size "$BATCH" --builders $BUILDERS \
    --model-batch-size "$MODEL_BATCH" \
    2>&1 | tee "$OUT/analysis.txt" | grep -v "^I0000\|^W0000"

echo "== 3. output building per image on this CPU"
timeout 45 "$PY" benchmarks/outputs.py --images 20 2>&1 | tee "$OUT/outputs.txt"

MOST=$(echo "$BUILDERS" | tr ' ' '\n' | sort -n | tail -1)
echo "== 4. decoding by the worker process or by the $MOST builders (workers.decode_in_builders)"
timeout 60 "$PY" benchmarks/analysis.py --burst 200 --batch-size "$BATCH" --builders "$MOST" \
    --model-batch-size "$MODEL_BATCH" --compare decode 2>&1 | tee "$OUT/decode.txt" | grep -v "^I0000\|^W0000"
timeout 60 "$PY" benchmarks/analysis.py --burst 100 --batch-size "$BATCH" --builders "$MOST" \
    --model-batch-size "$MODEL_BATCH" --compress jpeg2000 --compare decode 2>&1 | tee "$OUT/decode-jpeg2000.txt" \
    | grep -v "^I0000\|^W0000"

echo "figures in $OUT/"
