"""Ingest benchmark: durable C-STORE throughput and latency, side by side with DCMTK storescp.

Reproduce with::

    .venv/bin/python benchmarks/ingest.py               # 400 images, 512x512 RGB
    .venv/bin/python benchmarks/ingest.py --images 200 --e2e-images 20

What it measures, in one run on this machine:

1. images/s received over one association and over four concurrent associations (DCMTK
   ``storescu`` pushing 512x512 RGB VL Microscopic Images, ``TCP_NODELAY=1``) by the node's real
   listener and durable intake (file fsynced, rows and job committed before Success), with the
   C-STORE handler's p50/p99 time;
2. the same files pushed to DCMTK ``storescp`` (writes files, no fsync) for comparison;
3. end-to-end latency from C-STORE to the SEG, SR and PDF stored at Orthanc (p50, p95), with the
   bundled model (or ``--weights``), images sent one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pynetdicom import evt  # noqa: E402
from sqlalchemy import select  # noqa: E402

from bcd_node.intake import Intake  # noqa: E402
from bcd_node.runtime import open_node  # noqa: E402
from bcd_node.scp_handlers import handle_store  # noqa: E402
from bcd_node.settings import settings_from_mapping  # noqa: E402
from dicom.dicomize import dicomize  # noqa: E402
from dicom.scp import ScpPolicy, start_scp, storage_contexts  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_images(folder: Path, count: int, size: int = 512) -> list[Path]:
    """``count`` distinct 512x512 RGB VL Microscopic Images (synthetic smears, varied by seed)."""
    from bcd_node.inference.synth import generate_field, patient_params
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    base, _, _ = generate_field(7, "Malignant-Pre", patient_params(np.random.default_rng(7)),
                                size=size)
    paths = []
    for i in range(count):
        img = np.roll(base, i * 3, axis=1)  # distinct pixels, same cost to encode
        ds = dicomize(img, patient_id=f"BENCH-{i // 50}", patient_name="Bench^Mark",
                      specimen_id=f"S{i}", stain="Wright-Giemsa")
        path = folder / f"img{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def push(port: int, files: list[Path], ae: str = "BCD_NODE", associations: int = 1) -> float:
    """Seconds for ``associations`` storescu processes to push ``files`` (split evenly)."""
    chunks = [files[i::associations] for i in range(associations)]

    def one(chunk: list[Path]) -> subprocess.CompletedProcess:
        return subprocess.run(["storescu", "-aet", "BENCH", "-aec", ae, "127.0.0.1", str(port),
                               *map(str, chunk)], capture_output=True, text=True, env=ENV,
                              timeout=1800)

    start = time.perf_counter()
    with ThreadPoolExecutor(associations) as pool:
        done = list(pool.map(one, chunks))
    elapsed = time.perf_counter() - start
    for d in done:
        if d.returncode != 0:
            raise RuntimeError(f"storescu failed: {d.stderr[-500:]}")
    return elapsed


class Timings:
    """Stands in for the node's metrics and keeps every handler time."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        outer = self

        class _H:
            def observe(self, value: float) -> None:
                outer.samples.append(value)

        class _C:
            def labels(self, *_a: str) -> "_C":
                return self

            def inc(self) -> None:
                pass

        self.store_seconds = _H()
        self.received = _C()
        self.refused = _C()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def node_ingest(files: list[Path], workdir: Path, associations: int) -> dict:
    settings = settings_from_mapping({"storage": {"data_dir": str(workdir / "node"),
                                                  "min_free_disk": "100MB"}}, environ={})
    ctx = open_node(settings)
    intake = Intake(ctx).start()
    timings = Timings()
    port = free_port()
    server = start_scp(ScpPolicy(ae_title="BCD_NODE", max_associations=16,
                                 storage_contexts=storage_contexts()), "127.0.0.1", port,
                       [(evt.EVT_C_STORE, handle_store, [intake, ctx.session_factory, timings])])
    try:
        seconds = push(port, files, associations=associations)
    finally:
        server.shutdown()
        intake.stop()
        ctx.engine.dispose()
    return {"images_per_s": len(files) / seconds, "seconds": seconds,
            "handler_p50_ms": percentile(timings.samples, 50) * 1000,
            "handler_p99_ms": percentile(timings.samples, 99) * 1000,
            "stored": len(timings.samples)}


def storescp_ingest(files: list[Path], workdir: Path, associations: int) -> dict:
    out = workdir / "storescp"
    out.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(["storescp", "--aetitle", "BCD_NODE", "--output-directory", str(out),
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ENV)
    try:
        from tests.support.net import wait_for_port
        wait_for_port(port)
        seconds = push(port, files, associations=associations)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"images_per_s": len(files) / seconds, "seconds": seconds}


def end_to_end(files: list[Path], workdir: Path, weights: str | None) -> dict:
    """Latency from C-STORE to every output stored at Orthanc, images sent one at a time."""
    from bcd_node.db.models import Delivery, Instance, Result
    from tests.support.peers import Orthanc

    orthanc = Orthanc(root=workdir / "orthanc").start()
    port, web_port = free_port(), free_port()
    cfg = workdir / "e2e.toml"
    cfg.write_text(
        f'[dicom]\nport = {port}\n\n[web]\nport = {web_port}\n\n'
        f'[storage]\ndata_dir = "{workdir / "e2e"}"\nmin_free_disk = "100MB"\n\n'
        + (f'[model]\nweights = "{weights}"\n\n' if weights else "")
        + "[workers]\ncount = 1\n\n[delivery]\ninterval = 2.0\n\n"
        f'[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {orthanc.dicom_port}\n")
    node = subprocess.Popen([str(ROOT / ".venv/bin/bcd-node"), "--config", str(cfg), "serve"],
                            stdout=open(workdir / "e2e.log", "wb"), stderr=subprocess.STDOUT)
    try:
        import urllib.request
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{web_port}/readyz", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or node.poll() is not None:
                    raise RuntimeError("node did not start: " +
                                       (workdir / "e2e.log").read_text()[-2000:])
                time.sleep(0.3)
        for f in files:
            push(port, [f])
            time.sleep(1.0)  # one image at a time: latency, not backlog
        deadline = time.monotonic() + 600
        while len(orthanc.get("/instances")) < 3 * len(files) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        node.terminate()
        node.wait(timeout=60)
        orthanc.cleanup()
    from bcd_node.settings import load_settings
    ctx = open_node(load_settings(cfg), migrate=False)
    latencies = []
    with ctx.session_factory() as s:
        for inst in s.execute(select(Instance)).scalars():
            delivered = s.execute(select(Delivery.delivered_at).join(
                Result, Delivery.result_fk == Result.id).where(
                Result.instance_fk == inst.id, Result.scope == "instance")).scalars().all()
            if len(delivered) == 3 and all(delivered):
                latencies.append((max(delivered) - inst.received_at).total_seconds())
    return {"images": len(files), "complete": len(latencies),
            "p50_s": percentile(latencies, 50) if latencies else None,
            "p95_s": percentile(latencies, 95) if latencies else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--e2e-images", type=int, default=20)
    parser.add_argument("--weights", help="model manifest (default: the bundled model)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for tool in ("storescu", "storescp", "Orthanc"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (make deps-debian)", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="bcd-bench-"))
    try:
        files = make_images(work / "images", args.images)
        size_mb = sum(f.stat().st_size for f in files) / len(files) / 1e6
        report: dict = {"machine": f"{os.cpu_count()} cores", "images": len(files),
                        "image_mb": round(size_mb, 2)}
        for n in (1, 4):
            report[f"node_{n}_assoc"] = node_ingest(files, work / f"n{n}", n)
            report[f"storescp_{n}_assoc"] = storescp_ingest(files, work / f"s{n}", n)
        if args.e2e_images:
            report["end_to_end"] = end_to_end(files[:args.e2e_images], work / "e2e",
                                              args.weights)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"ingest of {report['images']} images of {report['image_mb']} MB "
          f"(512x512 RGB VL Microscopic) on {report['machine']}:")
    for n in (1, 4):
        node, scp = report[f"node_{n}_assoc"], report[f"storescp_{n}_assoc"]
        print(f"  {n} association(s): bcd-node {node['images_per_s']:.1f} images/s "
              f"(durable: fsync + commit before Success), storescp {scp['images_per_s']:.1f} "
              f"images/s (no fsync) -> ratio {node['images_per_s'] / scp['images_per_s']:.2f}; "
              f"C-STORE handler p50 {node['handler_p50_ms']:.1f} ms, "
              f"p99 {node['handler_p99_ms']:.1f} ms")
    if "end_to_end" in report:
        e = report["end_to_end"]
        print(f"  end to end (C-STORE -> SEG+SR+PDF stored at Orthanc), {e['complete']}/"
              f"{e['images']} images: p50 {e['p50_s']:.2f} s, p95 {e['p95_s']:.2f} s"
              if e["p50_s"] is not None else "  end to end: no image completed")
    print("reproduce: .venv/bin/python benchmarks/ingest.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
