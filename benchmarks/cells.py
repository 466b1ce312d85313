"""Cells benchmark: the time the pipeline spends listing a field's cells (bcd_node/records/cells).

Draws synthetic blasts (round and oval, some touching) on an empty mask of a field the size a
scanner sends (default 3700 x 3700), with a probability map, and times
:func:`bcd_node.records.cells.split_cells` after one warm-up run. Prints the field size, the
blasts drawn, the cells found and the mean, best and worst time.

Reproduce with::

    .venv/bin/python benchmarks/cells.py                    # 3700 px, 40 blasts, 5 runs
    .venv/bin/python benchmarks/cells.py --size 1024 --blasts 10 --runs 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bcd_node.records.cells import split_cells  # noqa: E402


def field(size: int, blasts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A mask with ``blasts`` blasts (every fourth touching the one before) and its map."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    radius = max(8, size // 60)
    previous = None
    for i in range(blasts):
        r = int(rng.integers(radius, 2 * radius))
        if previous is not None and i % 4 == 0:
            centre = (min(size - r - 1, previous[0] + previous[1] + r - 2), previous[2])
        else:
            centre = (int(rng.integers(2 * r, size - 2 * r)),
                      int(rng.integers(2 * r, size - 2 * r)))
        cv2.circle(mask, centre, r, 1, thickness=-1)
        previous = (centre[0], r, centre[1])
    depth = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    probability = np.where(mask > 0, 0.5 + 0.5 * np.minimum(depth / radius, 1.0), 0.02)
    return mask, probability.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=3700)
    parser.add_argument("--blasts", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    mask, probability = field(args.size, args.blasts, 0)
    min_area = max(1, int(160 / (256 * 256) * args.size * args.size / 16))
    listed = split_cells(mask, probability, min_area=min_area)  # warm-up
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        split_cells(mask, probability, min_area=min_area)
        times.append(time.perf_counter() - start)
    print(f"field {args.size} x {args.size} px, {args.blasts} blasts drawn, "
          f"{len(listed.cells)} cells listed, {args.runs} runs")
    print(f"split_cells: mean {statistics.mean(times) * 1000:.0f} ms, best "
          f"{min(times) * 1000:.0f} ms, worst {max(times) * 1000:.0f} ms")
    print(f"command: .venv/bin/python benchmarks/cells.py --size {args.size} "
          f"--blasts {args.blasts} --runs {args.runs}")


if __name__ == "__main__":
    main()
