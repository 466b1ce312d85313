#!/usr/bin/env bash
# Fetch, on a machine that reaches PyPI, the wheels benchmarks/gpu.sh needs on a GPU machine
# that cannot reach any registry and whose Python has PyTorch (and JAX), numpy, OpenCV, Pillow
# and h5py, but neither TensorFlow nor the node's own dependencies (the device machines lent to
# this project: Python 3.12). The node runs there on Keras's PyTorch backend (the model and the
# bundled weights are Keras 3, backend-agnostic). The versions are those of constraints.txt,
# the ones CI tests.
#
#     benchmarks/gpu-wheels.sh                  # .whl/ for Python 3.12 (about 25 MB)
#     PYVER=3.11 DEST=/tmp/whl benchmarks/gpu-wheels.sh
#
# gpu.sh installs what it finds in .whl/ when its Python lacks Keras. Keep .whl/ out of git
# (echo /.whl/ >> .git/info/exclude) and carry it to the GPU machine with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
DEST=${DEST:-.whl}
PYTHON=${PYTHON:-python3}
# What the benchmarks import that such a machine lacks: DICOM, the model's Keras, the node's
# database, reports and scheduler (not its web console, PostgreSQL driver or TensorFlow).
NAMES="pydicom pynetdicom highdicom pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg
pylibjpeg-rle pyjpegls keras namex optree SQLAlchemy alembic Mako reportlab rl-accel isal
APScheduler tzlocal tomli_w hl7apy hl7"
pins=()
for name in $NAMES; do
    pin=$(grep -i -E "^${name}==" constraints.txt || true)
    if [ -z "$pin" ]; then
        echo "gpu-wheels: $name is not pinned in constraints.txt" >&2
        exit 2
    fi
    pins+=("$pin")
done
mkdir -p "$DEST"
# Its glibc is 2.39 (Ubuntu 24.04): any manylinux wheel up to that.
platforms=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for n in $(seq 5 39); do
    platforms+=(--platform "manylinux_2_${n}_x86_64")
done
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${platforms[@]}" -d "$DEST" "${pins[@]}"
ls "$DEST"
du -sh "$DEST"
