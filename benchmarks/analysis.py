"""Analysis benchmark: where a worker's time goes for one image, stage by stage.

Runs the worker's own code (:func:`bcd_node.analysis.findings.analyze_dataset`, then the SEG,
SR and Encapsulated PDF written as the worker writes them) on 512 x 512 RGB VL Microscopic Images
with the bundled model (or ``--weights``), after a warm-up, and prints the mean time per image of
each stage: decoding, prediction, overlay, PDF report, SEG, SR, Encapsulated PDF and the durable
writes. No database and no network: this is the CPU cost of one analysis.

Reproduce with::

    .venv/bin/python benchmarks/analysis.py                # 10 images after 3 warm-up ones
    .venv/bin/python benchmarks/analysis.py --images 20 --size 256
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bcd_node.analysis import findings  # noqa: E402
from bcd_node.inference.spec import CLASSES  # noqa: E402
from dicom import outputs  # noqa: E402

#: (module, function) pairs that analyze_dataset and build_result_objects call, timed in place.
STAGES = ((findings, "decode_for_analysis"), (findings, "overlay"),
          (findings, "render_report"), (outputs, "build_segmentation"), (outputs, "build_sr"),
          (outputs, "build_encapsulated_pdf"))


def timed(spent: dict[str, float], name: str, call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    def run(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--weights", help="model manifest (default: the bundled model)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.images < 1 or args.warmup < 0:
        parser.error("--images must be at least 1 and --warmup at least 0")

    import numpy as np

    from bcd_node.inference.predictor import Predictor
    from bcd_node.inference.synth import generate_field, patient_params
    from dicom.algorithm import Algorithm
    from dicom.dicomize import dicomize

    predictor = Predictor(weights=args.weights)
    info = predictor.model_info
    algorithm = Algorithm(name=str(info["name"]), version=str(info["version"]),
                          software_version="benchmark")
    spent: dict[str, float] = {}
    for module, name in STAGES:
        setattr(module, name, timed(spent, name, getattr(module, name)))
    predictor.predict = timed(spent, "predict", predictor.predict)  # type: ignore[method-assign]

    classes = CLASSES
    datasets = []
    for i in range(args.warmup + args.images):
        image, _, _ = generate_field(100 + i, classes[i % 4],
                                     patient_params(np.random.default_rng(i)), size=args.size)
        datasets.append(dicomize(image, patient_id=f"BENCH-{i}", patient_name="Bench^Mark",
                                 specimen_id=f"S{i}", stain="Wright-Giemsa"))
    diagnosed = 0
    with tempfile.TemporaryDirectory(prefix="bcd-analysis-") as out:
        total = 0.0
        for i, ds in enumerate(datasets):
            if i == args.warmup:
                spent.clear()
                total = 0.0
            started = time.perf_counter()
            analysis = findings.analyze_dataset(ds, predictor, algorithm=algorithm,
                                                review_threshold=0.6, uid_root="2.25")
            write_started = time.perf_counter()
            findings.write_dicom_outputs(analysis, Path(out), f"img{i}")
            spent["write SEG+SR+PDF files"] = (spent.get("write SEG+SR+PDF files", 0.0)
                                               + time.perf_counter() - write_started)
            total += time.perf_counter() - started
            if i >= args.warmup and analysis.objects is not None:
                diagnosed += 1
    n = args.images
    report = {"machine": f"{os.cpu_count()} cores", "images": n, "size": args.size,
              "diagnosed": diagnosed, "model": f"{info['name']} {info['version']}",
              "per_image_ms": round(total / n * 1000, 1),
              "stages_ms": {k: round(v / n * 1000, 1)
                            for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    refused = f", {n - diagnosed} refused by the quality gate" if diagnosed < n else ""
    print(f"analysis of {n} images of {args.size}x{args.size} ({diagnosed} diagnosed{refused}) "
          f"with {report['model']} on {report['machine']}: "
          f"{report['per_image_ms']:.0f} ms per image")
    for stage, ms in report["stages_ms"].items():
        print(f"  {stage:<28} {ms:7.1f} ms")
    print("reproduce: .venv/bin/python benchmarks/analysis.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
