"""Delivery benchmark: result objects per second from the node to a PACS, beside DCMTK storescu.

Builds the SEG, SR and Encapsulated PDF of ``--images`` synthetic 512 x 512 fields, as the
worker writes them, then sends them with :func:`dicom.scu.send_files` (what the delivery's
outbox calls: one association per batch) to two peers started here on loopback: DCMTK
``storescp`` (writes files, no fsync: the sender's own cost shows) and Orthanc (a PACS that
stores and indexes each object). Each peer also gets the same files from DCMTK ``storescu``
(``TCP_NODELAY=1``), the reference, and, with ``--compare nodelay``, from ``send_files`` with
Nagle's algorithm left on (the way before), runs alternating.

Reproduce with::

    .venv/bin/python benchmarks/delivery.py                     # 20 images: 60 objects
    .venv/bin/python benchmarks/delivery.py --images 40 --repeat 3 --compare nodelay
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicom import scu  # noqa: E402


def build_objects(folder: Path, images: int) -> list[Path]:
    """The SEG, SR and Encapsulated PDF of ``images`` fields, written as the worker writes
    them."""
    from bcd_node.analysis import findings as F
    from bcd_node.analysis.publish import dicom_bytes
    from bcd_node.db.models import utcnow
    from bcd_node.report.pdf import render_report
    from dicom.algorithm import Algorithm
    from dicom.derivation import derivation_source
    from dicom.encapsulated import build_encapsulated_pdf
    from dicom.seg import build_segmentation
    from dicom.sr import Findings, build_sr
    from tests.support.images import benchmark_field

    algorithm = Algorithm(name="bcd-vgg16-unet", version="benchmark", software_version="bench")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(images):
        ds, image, mask, stage, probabilities = benchmark_field(i, patient_id=f"BENCH-{i // 10}")
        combined = F.Combined(stage, probabilities, 3, float(mask.mean()), mask[None],
                              {"status": "ok"}, False)
        pdf = render_report(F.report_data(ds, image, F.overlay_layer(mask), combined,
                                          algorithm=algorithm, demonstration_model=True,
                                          created_at=utcnow()))
        source = derivation_source(ds, algorithm.texts)
        seg = build_segmentation(source, mask, algorithm=algorithm)
        sr = build_sr(source, seg, Findings(stage=stage, probabilities=probabilities,
                                            blast_count=3,
                                            blast_area_fraction=float(mask.mean()),
                                            quality_ok=True), algorithm=algorithm)
        for kind, obj in (("seg", seg), ("sr", sr),
                          ("pdf", build_encapsulated_pdf(source, pdf, algorithm=algorithm))):
            path = folder / f"{i:04d}-{kind}.dcm"
            path.write_bytes(dicom_bytes(obj))
            paths.append(path)
    return paths


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--compare", choices=["nodelay"],
                        help="also send with Nagle's algorithm on (the way before)")
    args = parser.parse_args()

    from tests.support.peers import Orthanc, StoreScp

    node_no_delay = scu.no_delay
    env = {**os.environ, "TCP_NODELAY": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = build_objects(work / "objects", args.images)
        size = sum(p.stat().st_size for p in files)
        print(f"{len(files)} objects ({size / 1e6:.1f} MB) of {args.images} images, "
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; objects/s, "
              f"median of {args.repeat}:")
        for name in ("storescp", "Orthanc"):
            if name == "storescp":
                peer_proc: Any = StoreScp(work / "storescp", ae_title="PACS").start()
                port, title = peer_proc.port, "PACS"
            else:
                peer_proc = Orthanc(root=work / "orthanc").start()
                port, title = peer_proc.dicom_port, peer_proc.ae_title
            peer = scu.Peer(ae_title=title, host="127.0.0.1", port=port)
            ways: dict[str, Callable[[], Any]] = {
                "send_files (the node)": lambda: scu.send_files(peer, files),
                "storescu (reference)": lambda: subprocess.run(
                    ["storescu", "-R", "-aec", title, "127.0.0.1", str(port),
                     *map(str, files)], env=env, check=True, capture_output=True)}
            if args.compare:
                def nagle() -> Any:
                    scu.no_delay = lambda assoc: None  # type: ignore[assignment]
                    try:
                        return scu.send_files(peer, files)
                    finally:
                        scu.no_delay = node_no_delay  # type: ignore[assignment]
                ways["send_files, Nagle's algorithm on (the way before)"] = nagle
            rates: dict[str, list[float]] = {way: [] for way in ways}
            try:
                for _ in range(args.repeat):
                    for way, call in ways.items():
                        rates[way].append(len(files) / timed(call))
            finally:
                peer_proc.stop() if name == "storescp" else peer_proc.cleanup()
            for way, values in rates.items():
                print(f"  to {name:<9} {way:<52} {statistics.median(values):7.1f} "
                      f"({', '.join(f'{v:.1f}' for v in values)})")
    print("reproduce: .venv/bin/python benchmarks/delivery.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
