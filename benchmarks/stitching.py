"""Stitching benchmark: what the tiles' overlap changes in the stage and the mask, and what it
costs.

A 512 x 512 field is brought to the model's pixel scale and cut into tiles of the model's input
(:meth:`bcd_node.inference.predictor.Predictor._tiles_of`); tiles overlap by
``model.tile_overlap`` pixels and their masks are blended where they overlap
(:func:`bcd_node.inference.preprocess.stitch`). This predicts the same synthetic smears (all
four stages) with each overlap given and prints, against the largest overlap as reference:
tiles per image, model time per image, images whose stage differs, the largest difference of a
stage probability, and the share of mask pixels that differ (and the masks' IoU).

Reproduce with::

    .venv/bin/python benchmarks/stitching.py                        # 24 smears, overlaps 32 16 0
    .venv/bin/python benchmarks/stitching.py --images 40 --overlaps 48 32 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--overlaps", type=int, nargs="+", default=[32, 16, 0])
    parser.add_argument("--weights", help="model manifest (default: the bundled model)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import numpy as np

    from bcd_node.inference.loader import load_model
    from bcd_node.inference.predictor import Predictor
    from bcd_node.inference.spec import CLASSES
    from bcd_node.inference.synth import generate_field, patient_params

    loaded = load_model(args.weights)
    images = [generate_field(300 + i, CLASSES[i % 4],
                             patient_params(np.random.default_rng(300 + i)), size=args.size)[0]
              for i in range(args.images)]
    runs = {}
    for overlap in sorted(set(args.overlaps), reverse=True):
        predictor = Predictor(loaded=loaded, tile_overlap=overlap)
        predictor.predict(images[:2])  # warm
        started = time.perf_counter()
        predictions = [predictor.predict([img])[0] for img in images]
        runs[overlap] = (time.perf_counter() - started, predictions)
    reference_overlap = max(runs)
    _, reference = runs[reference_overlap]
    report: dict = {"machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
                    "images": args.images, "size": args.size,
                    "reference_overlap": reference_overlap, "overlaps": {}}
    for overlap, (seconds, predictions) in runs.items():
        stage_diff = prob_diff = 0.0
        pixels = ious = []
        pixels, ious = [], []
        for ref, got in zip(reference, predictions):
            if ref.stage is None or got.stage is None:
                continue
            stage_diff += ref.stage != got.stage
            prob_diff = max(prob_diff, max(abs(ref.probabilities[c] - got.probabilities[c])
                                           for c in CLASSES))
            pixels.append(float((ref.mask != got.mask).mean()))
            union = np.logical_or(ref.mask, got.mask).sum()
            ious.append(float(np.logical_and(ref.mask, got.mask).sum() / union) if union
                        else 1.0)
        report["overlaps"][overlap] = {
            "tiles_per_image": predictions[0].tiles,
            "model_ms_per_image": round(seconds / len(images) * 1000, 1),
            "stage_differs": int(stage_diff),
            "max_probability_difference": round(prob_diff, 4),
            "mask_pixels_differing_max": round(max(pixels), 5),
            "mask_pixels_differing_mean": round(float(np.mean(pixels)), 5),
            "mask_iou_min": round(min(ious), 4)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"stitching, {args.images} smears of {args.size}x{args.size} on {report['machine']}; "
          f"against overlap {reference_overlap}:")
    for overlap, r in report["overlaps"].items():
        print(f"  overlap {overlap:>3}: {r['tiles_per_image']} tiles, "
              f"{r['model_ms_per_image']:.0f} ms/image; stage differs in {r['stage_differs']}, "
              f"max probability difference {r['max_probability_difference']:.4f}; mask pixels "
              f"differing mean {100 * r['mask_pixels_differing_mean']:.3f}% max "
              f"{100 * r['mask_pixels_differing_max']:.3f}%, IoU min {r['mask_iou_min']:.3f}")
    print("reproduce: .venv/bin/python benchmarks/stitching.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
