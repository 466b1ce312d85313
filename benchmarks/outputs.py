"""Output-building benchmark: median time to build each result object of one image.

Builds, for 512 x 512 synthetic smears, what the worker builds per image: the PDF report
(reportlab), the SEG, the SR (TID 1500) and the Encapsulated PDF, each serialised to Part 10
bytes as the worker writes it, and the console's PNGs (the overlay as the layer the console lays
over the field; also as the picture of the field it was before, with its size), and prints the
median wall and CPU time of each step. The PDF report draws the same layer over the field's
picture; it is also rendered, in the same run, with the overlay as a picture of its own (a
second JPEG, the way before), and both sizes are printed. For the
SR it also builds, in the same run and on the same inputs, the content tree with highdicom's
templates, then the document with highdicom's templates and its own Comprehensive 3D SR
constructor (the references the node's content tree and document class are tested against,
``tests/dicom/test_srdocument.py``), and prints the ratio to the latter: on a shared machine
the absolute figures move with the load, the ratio much less. Each object's bytes are also
written by pydicom's own writer in the same run (the reference of
:func:`dicom.encode.part10_bytes`), and the console's PNGs by OpenCV's writer (the reference of
the worker's own encoder). The overlay and the field's cells are also made the ways before
issue 17's later changes (``tests/support/references.py``: the whole image blended, the cells
listed over every pixel), with one OpenCV thread, as the builder processes make them.

Reproduce with::

    .venv/bin/python benchmarks/outputs.py                 # 30 images after 3 warm-up ones
    .venv/bin/python benchmarks/outputs.py --images 100 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(call: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = call()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def opencv_png(array: Any) -> bytes:
    """A picture as OpenCV's PNG writer makes it at level 1 (the worker's before issue 17)."""
    import cv2
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    _ok, encoded = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                                cv2.IMWRITE_PNG_STRATEGY,
                                                cv2.IMWRITE_PNG_STRATEGY_RLE])
    return bytes(encoded.tobytes())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.images < 1 or args.warmup < 0:
        parser.error("--images must be at least 1 and --warmup at least 0")

    import cv2
    import highdicom as hd
    import numpy as np

    import dicom.sr
    import dicom.srcontent
    from bcd_node.analysis import findings as F
    from bcd_node.analysis.builders import png
    from bcd_node.analysis.publish import dicom_bytes
    from bcd_node.db.models import utcnow
    from bcd_node.records.cells import split_cells
    from bcd_node.report.pdf import render_report
    from dicom.algorithm import Algorithm
    from dicom.derivation import derivation_source
    from dicom.encapsulated import build_encapsulated_pdf
    from dicom.encode import pydicom_bytes
    from dicom.seg import build_segmentation
    from dicom.sr import Findings, build_sr
    from dicom.srdocument import Comprehensive3DSRDocument
    from tests.support.images import benchmark_field
    from tests.support.references import whole_image_cells, whole_image_overlay

    cv2.setNumThreads(1)  # as in the builder processes (bcd_node.analysis.builders)

    algorithm = Algorithm(name="bcd-vgg16-unet", version="benchmark", software_version="bench")
    direct = dicom.srcontent.measurement_report
    templates = dicom.srcontent.measurement_report_with_templates
    times: dict[str, list[tuple[float, float]]] = {}

    def record(name: str, call: Callable[[], Any], keep: bool) -> Any:
        out, wall, cpu = _timed(call)
        if keep:
            times.setdefault(name, []).append((wall, cpu))
        return out

    pdf_sizes: list[int] = []
    overlay_sizes: list[tuple[int, int]] = []
    for i in range(args.warmup + args.images):
        keep = i >= args.warmup
        ds, image, mask, stage, probabilities = benchmark_field(i, size=args.size)
        combined = F.Combined(stage, probabilities, 3, float(mask.mean()), mask[None],
                              {"status": "ok"}, False)
        layer_array = record("overlay", lambda: F.overlay_layer(mask), keep)
        over = record("overlay as a picture of the field (reference)",
                      lambda: F.overlay(image, mask), keep)
        record("overlay, the whole image blended (reference)",
               lambda: whole_image_overlay(image, mask), keep)
        # The field's cells, with a probability map (the mask, blurred) for their scores.
        probability = cv2.GaussianBlur(mask.astype(np.float32), (9, 9), 3)
        record("cells", lambda: split_cells(mask, probability, min_area=20), keep)
        record("cells, listed over the whole image (reference)",
               lambda: whole_image_cells(mask, probability, 20), keep)
        # The console's pictures (the overlay as a layer over the field, and the mask); the
        # overlay as the picture of the field it was before issue 17's fifth session; and
        # OpenCV's PNG writer as the worker used it before (deflate level 1, run-length
        # matching) on those pictures.
        layer = record("console PNGs (overlay layer, mask)",
                       lambda: (png(layer_array), png(mask * 255)), keep)[0]
        picture = record("console PNGs, the overlay as a picture of the field (reference)",
                         lambda: (png(over), png(mask * 255)), keep)[0]
        record("console PNGs, OpenCV's writer (reference)",
               lambda: (opencv_png(over), opencv_png(mask * 255)), keep)
        if keep:
            overlay_sizes.append((len(layer), len(picture)))
        # The report draws the layer over the field's picture; before, the overlay was a
        # picture of its own, a second JPEG (the reference).
        data = F.report_data(ds, image, layer_array, combined, algorithm=algorithm,
                             demonstration_model=True, created_at=utcnow())
        pdf = record("PDF report (reportlab)", lambda: render_report(data), keep)
        two_jpegs = record("PDF report, the overlay as a picture (reference)",
                           lambda: render_report(dataclasses.replace(data, overlay=over)), keep)
        if keep:
            pdf_sizes.append((len(pdf), len(two_jpegs)))
        source = derivation_source(ds, algorithm.texts)
        seg = record("SEG", lambda: build_segmentation(source, mask, algorithm=algorithm), keep)
        findings = Findings(stage=stage, probabilities=probabilities, blast_count=3,
                            blast_area_fraction=float(mask.mean()), quality_ok=True)
        sr = record("SR", lambda: build_sr(source, seg, findings, algorithm=algorithm), keep)
        # The same SR with highdicom's templates for its content tree (dicom.srcontent's
        # reference), then with highdicom's constructor too: the way before issue 17.
        dicom.srcontent.measurement_report = templates  # type: ignore[assignment]
        try:
            record("SR, highdicom's templates (reference)",
                   lambda: build_sr(source, seg, findings, algorithm=algorithm), keep)
            dicom.sr.Comprehensive3DSRDocument = hd.sr.Comprehensive3DSR  # type: ignore[misc]
            record("SR, highdicom's templates and constructor (reference)",
                   lambda: build_sr(source, seg, findings, algorithm=algorithm), keep)
        finally:
            dicom.sr.Comprehensive3DSRDocument = Comprehensive3DSRDocument  # type: ignore[misc]
            dicom.srcontent.measurement_report = direct  # type: ignore[assignment]
        encapsulated = record("Encapsulated PDF",
                              lambda: build_encapsulated_pdf(source, pdf, algorithm=algorithm),
                              keep)
        # What the worker writes: each object as Part 10 bytes, and pydicom's writer on the
        # same object in the same run (the bytes are the same, tests/dicom/test_encode.py).
        for name, obj in (("SEG", seg), ("SR", sr), ("Encapsulated PDF", encapsulated)):
            record(f"{name} as Part 10 bytes", functools.partial(dicom_bytes, obj), keep)
            record(f"{name} as Part 10 bytes, pydicom's writer (reference)",
                   functools.partial(pydicom_bytes, obj), keep)

    medians = {name: {"wall_ms": round(statistics.median(w for w, _ in v) * 1000, 1),
                      "cpu_ms": round(statistics.median(c for _, c in v) * 1000, 1)}
               for name, v in times.items()}
    reference = medians["SR, highdicom's templates and constructor (reference)"]
    ratio = medians["SR"]["cpu_ms"] / max(reference["cpu_ms"], 1e-9)
    report = {"machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
              "images": args.images, "size": args.size, "medians": medians,
              "sr_cpu_ratio_to_reference": round(ratio, 2),
              "pdf_report_kb": round(statistics.median(a for a, _ in pdf_sizes) / 1000),
              "pdf_report_overlay_picture_kb": round(
                  statistics.median(b for _, b in pdf_sizes) / 1000),
              "overlay_png_kb": round(statistics.median(a for a, _ in overlay_sizes) / 1000, 1),
              "overlay_picture_png_kb": round(
                  statistics.median(b for _, b in overlay_sizes) / 1000, 1),
              "targets_ms": {"SR": 20, "PDF report (reportlab)": 30}}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"output building, {args.images} images of {args.size}x{args.size}, "
          f"{report['machine']} (medians per image):")
    for name, m in medians.items():
        print(f"  {name:<64} {m['wall_ms']:7.1f} ms wall {m['cpu_ms']:7.1f} ms CPU")
    print(f"  SR / reference (CPU, same run): {ratio:.2f}")
    print(f"  PDF report size, median: {report['pdf_report_kb']} KB with the overlay as a layer "
          f"over the field's picture, {report['pdf_report_overlay_picture_kb']} KB with the "
          "overlay as a picture of its own (reference)")
    print(f"  overlay PNG size, median: {report['overlay_png_kb']} KB as a layer, "
          f"{report['overlay_picture_png_kb']} KB as a picture of the field (reference)")
    print("reproduce: .venv/bin/python benchmarks/outputs.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
