"""Ingest benchmark: durable C-STORE throughput and latency, side by side with DCMTK storescp.

Reproduce with::

    .venv/bin/python benchmarks/ingest.py               # 400 images, 512x512 RGB
    .venv/bin/python benchmarks/ingest.py --images 200 --e2e-images 20
    .venv/bin/python benchmarks/ingest.py --repeat 3     # median of 3 runs (noisy hosts)

What it measures, in one run on this machine:

1. images/s received over one association and over four concurrent associations (DCMTK
   ``storescu`` pushing 512x512 RGB VL Microscopic Images, ``TCP_NODELAY=1``) by ``bcd-node
   serve`` as installed (its listener processes and durable intake: file fsynced, rows and job
   committed before Success; no workers), with the C-STORE handler's p50/p99 time from the
   node's own /metrics histogram, the node's CPU time per image and the CPU steal of the
   machine during the run (a busy host slows everything);
2. the same files pushed to DCMTK ``storescp`` (writes files, no fsync) and to Orthanc (the
   PACS a hospital would otherwise receive with; started by the benchmark, its own storage and
   SQLite index) for comparison, with the node's ratio to each, and written durably by the
   node's own file code alone (no DICOM, no database) by as many threads as there are
   associations: the disk's floor under the handler's latency;
2b. (``--analysis``, on by default; alone with ``--analysis-only``) four associations again
   while a worker analyses what arrives (the bundled model, or ``--weights``), once with the
   worker at the listener's priority (``workers.niceness = 0``), once at the default niceness
   and once more so with its outputs built in its own process (``workers.output_builders =
   0``), alternating with a run without workers: the C-STORE handler's p99 of each, side by
   side;
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

from sqlalchemy import select  # noqa: E402

from bcd_node.runtime import open_node  # noqa: E402
from dicom.dicomize import dicomize  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_images(folder: Path, count: int, size: int = 512) -> list[Path]:
    """``count`` distinct 512x512 RGB VL Microscopic Images (synthetic smears, varied by seed)."""
    import numpy as np

    from bcd_node.inference.synth import generate_field, patient_params

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


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def histogram(text: str, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of a Prometheus histogram in ``text``."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        if family.name == name:
            return sorted((float(s.labels["le"]), s.value) for s in family.samples
                          if s.name.endswith("_bucket"))
    return []


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile: linear within the bucket that holds quantile ``q``."""
    total = buckets[-1][1]
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


def fraction_within(buckets: list[tuple[float, float]], bound: float) -> float:
    return next(count for upper, count in buckets if upper >= bound) / buckets[-1][1]


def median_run(runs: list[dict]) -> dict:
    """The run with the median images/s, with the range over all runs added."""
    ordered = sorted(runs, key=lambda r: r["images_per_s"])
    return {**ordered[(len(ordered) - 1) // 2],
            "images_per_s_all": [round(r["images_per_s"], 1) for r in runs]}


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid`` and its children, from /proc."""
    from tests.support.procs import children, cpu_seconds

    return sum(cpu_seconds(p) for p in (pid, *children(pid)))


def cpu_steal() -> tuple[int, int]:
    """(steal, total) jiffies of the machine: time the hypervisor gave to others."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return fields[7], sum(fields)


def start_node(workdir: Path, extra: str = "") -> tuple[subprocess.Popen, int, int]:
    """``bcd-node serve`` on free ports with its data in ``workdir``; returns it when ready."""
    import urllib.error
    import urllib.request

    port, web_port = free_port(), free_port()
    cfg = workdir / "bcd-node.toml"
    workdir.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f"[dicom]\nport = {port}\nmax_associations = 16\n{extra}\n"
                   f"[web]\nport = {web_port}\n\n"
                   f'[storage]\ndata_dir = "{workdir / "data"}"\nmin_free_disk = "100MB"\n\n')
    node = subprocess.Popen([str(ROOT / ".venv/bin/bcd-node"), "--config", str(cfg), "serve"],
                            stdout=open(workdir / "node.log", "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{web_port}/readyz", timeout=2)
            return node, port, web_port
        except urllib.error.HTTPError as exc:
            # Without workers (workers.count = 0) the node says that no `bcd-node worker`
            # runs; that alone is what an ingest benchmark wants.
            if set(json.loads(exc.read() or b"{}").get("reasons", {})) == {"worker (elsewhere)"}:
                return node, port, web_port
            if time.monotonic() > deadline or node.poll() is not None:
                node.kill()
                raise RuntimeError("node did not start: " +
                                   (workdir / "node.log").read_text()[-2000:]) from None
            time.sleep(0.3)
        except OSError:
            if time.monotonic() > deadline or node.poll() is not None:
                node.kill()
                raise RuntimeError("node did not start: " +
                                   (workdir / "node.log").read_text()[-2000:])
            time.sleep(0.3)


def stop_node(node: subprocess.Popen) -> None:
    node.terminate()
    try:
        node.wait(timeout=60)
    except subprocess.TimeoutExpired:
        node.kill()
        node.wait(timeout=10)


def node_ingest(files: list[Path], workdir: Path, associations: int,
                listeners: int | None = None, analysis: str = "") -> dict:
    """The real node (``bcd-node serve``, its listener processes) receiving; without workers,
    or with ``analysis``, the ``[workers]``/``[model]`` settings of a worker that analyses
    what arrives while it arrives."""
    import urllib.request

    extra = "" if listeners is None else f"listener_processes = {listeners}\n"
    node, port, web_port = start_node(workdir, extra + (analysis or "\n[workers]\ncount = 0\n"))
    try:
        cpu0, (steal0, total0) = tree_cpu_seconds(node.pid), cpu_steal()
        seconds = push(port, files, associations=associations)
        cpu1, (steal1, total1) = tree_cpu_seconds(node.pid), cpu_steal()
        # Listener processes report their counters every second; wait until all are in.
        deadline = time.monotonic() + 10
        while True:
            text = urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics",
                                          timeout=5).read().decode()
            buckets = histogram(text, "bcd_store_handler_seconds")
            if (buckets and buckets[-1][1] >= len(files)) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    finally:
        stop_node(node)
    return {"images_per_s": len(files) / seconds, "seconds": seconds,
            "handler_p50_ms": quantile(buckets, 0.50) * 1000,
            "handler_p99_ms": quantile(buckets, 0.99) * 1000,
            "handler_within_20ms": fraction_within(buckets, 0.02),
            "stored": int(buckets[-1][1]) if buckets else 0,
            "node_cpu_ms_per_image": (cpu1 - cpu0) / len(files) * 1000,
            "steal_percent": 100 * (steal1 - steal0) / max(total1 - total0, 1)}


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


def orthanc_ingest(files: list[Path], workdir: Path, associations: int) -> dict:
    """The same files pushed to Orthanc, as the PACS a hospital would receive with."""
    from tests.support.peers import Orthanc

    orthanc = Orthanc(root=workdir / "orthanc").start()
    try:
        seconds = push(orthanc.dicom_port, files, ae=orthanc.ae_title,
                       associations=associations)
    finally:
        orthanc.cleanup()
    return {"images_per_s": len(files) / seconds, "seconds": seconds}


def analysis_config(weights: str | None, niceness: int | None,
                    builders: int | None = None) -> str:
    """``[workers]`` and ``[model]`` of a node whose one worker analyses what arrives
    (``builders``: ``workers.output_builders``, None: the default)."""
    model = f'\n[model]\nweights = "{weights}"\n' if weights else ""
    nice = "" if niceness is None else f"niceness = {niceness}\n"
    built = "" if builders is None else f"output_builders = {builders}\n"
    return f"{model}\n[workers]\ncount = 1\n{nice}{built}"


def disk_alone(files: list[Path], workdir: Path, writers: int) -> dict:
    """The disk's share: the same files made durable the way the intake does it (the node's
    own ``Store``: temporary name, fsync, rename, folder fsync), one folder fsync per file, by
    ``writers`` threads at once; no DICOM, no database. Its per-file latency is a floor under
    the C-STORE handler's, which adds the work and the database commit on top."""
    from bcd_node.store.storage import Store

    store = Store(workdir, 0)
    blobs = [f.read_bytes() for f in files]
    latencies: list[float] = []

    def write(index: int) -> None:
        started = time.perf_counter()
        pending = store.begin_write("disk", blobs[index])
        target = pending.finish(f"{index:06d}.dcm")
        Store.sync_dirs([target.parent])
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(len(blobs))))
    seconds = time.perf_counter() - started
    shutil.rmtree(workdir / "disk", ignore_errors=True)
    return {"images_per_s": len(blobs) / seconds, "seconds": seconds,
            "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99)}


def end_to_end(files: list[Path], workdir: Path, weights: str | None) -> dict:
    """Latency from C-STORE to every output stored at Orthanc, images sent one at a time."""
    from bcd_node.db.models import Delivery, Instance, Result
    from tests.support.peers import Orthanc

    orthanc = Orthanc(root=workdir / "orthanc").start()
    try:
        node, port, _web_port = start_node(
            workdir, (f'\n[model]\nweights = "{weights}"\n' if weights else "")
            + "\n[workers]\ncount = 1\n\n"
            f'[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
            f"port = {orthanc.dicom_port}\n")
        try:
            for f in files:
                push(port, [f])
                time.sleep(1.0)  # one image at a time: latency, not backlog
            deadline = time.monotonic() + 600
            while len(orthanc.get("/instances")) < 3 * len(files) \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            stop_node(node)
    finally:
        orthanc.cleanup()
    cfg = workdir / "bcd-node.toml"
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
    parser.add_argument("--listeners", type=int,
                        help="dicom.listener_processes (default: the node's default)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each ingest measurement; the median run is reported, "
                             "with the range of images/s (a shared host varies run to run)")
    parser.add_argument("--no-analysis", dest="analysis", action="store_false",
                        help="skip the runs with a worker analysing while images arrive")
    parser.add_argument("--analysis-only", action="store_true",
                        help="only the runs with a worker analysing while images arrive")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    for tool in ("storescu", "storescp", "Orthanc"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (make deps-debian)", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="bcd-bench-"))
    try:
        files = make_images(work / "images", args.images)
        size_mb = sum(f.stat().st_size for f in files) / len(files) / 1e6
        report: dict = {"machine": f"{os.cpu_count()} cores", "images": len(files),
                        "image_mb": round(size_mb, 2),
                        "listener_processes": args.listeners or "default (one per core, at most 4)"}
        report["repeats"] = args.repeat
        for n in () if args.analysis_only else (1, 4):
            # Node, storescp and disk runs alternate, so a slow spell of the host hits all.
            nodes, scps, orthancs, disks = [], [], [], []
            for r in range(args.repeat):
                nodes.append(node_ingest(files, work / f"n{n}-{r}", n, args.listeners))
                scps.append(storescp_ingest(files, work / f"s{n}-{r}", n))
                orthancs.append(orthanc_ingest(files, work / f"o{n}-{r}", n))
                disks.append(disk_alone(files, work / f"d{n}-{r}", n))
            report[f"node_{n}_assoc"] = median_run(nodes)
            report[f"storescp_{n}_assoc"] = median_run(scps)
            report[f"orthanc_{n}_assoc"] = median_run(orthancs)
            report[f"disk_{n}_writers"] = median_run(disks)
        if args.analysis:
            # The same 4-association push while a worker analyses the images as they arrive:
            # at the listener's priority, at the default niceness (with the default output
            # builder processes, and with the outputs built in the worker), and without one.
            runs: dict[str, list[dict]] = {"no worker": [], "worker, niceness 0": [],
                                           "worker, default niceness": [],
                                           "the same, built in worker": []}
            for r in range(args.repeat):
                runs["no worker"].append(node_ingest(files, work / f"a0-{r}", 4,
                                                     args.listeners))
                runs["worker, niceness 0"].append(node_ingest(
                    files, work / f"a1-{r}", 4, args.listeners, analysis_config(args.weights, 0)))
                runs["worker, default niceness"].append(node_ingest(
                    files, work / f"a2-{r}", 4, args.listeners,
                    analysis_config(args.weights, None)))
                runs["the same, built in worker"].append(node_ingest(
                    files, work / f"a3-{r}", 4, args.listeners,
                    analysis_config(args.weights, None, 0)))
            report["while_analysing_4_assoc"] = {name: median_run(v) for name, v in runs.items()}
        if args.e2e_images:
            report["end_to_end"] = end_to_end(files[:args.e2e_images], work / "e2e",
                                              args.weights)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"ingest of {report['images']} images of {report['image_mb']} MB "
          f"(512x512 RGB VL Microscopic) on {report['machine']}, by `bcd-node serve` "
          f"(listener processes: {report['listener_processes']}, no workers):")
    for n in (n for n in (1, 4) if f"node_{n}_assoc" in report):
        node, scp = report[f"node_{n}_assoc"], report[f"storescp_{n}_assoc"]
        orthanc = report[f"orthanc_{n}_assoc"]
        print(f"  {n} association(s): bcd-node {node['images_per_s']:.1f} images/s "
              f"(durable: fsync + commit before Success), storescp {scp['images_per_s']:.1f} "
              f"images/s (no fsync) -> ratio {node['images_per_s'] / scp['images_per_s']:.2f}, "
              f"Orthanc {orthanc['images_per_s']:.1f} images/s -> ratio "
              f"{node['images_per_s'] / orthanc['images_per_s']:.2f}")
        if report["repeats"] > 1:
            print(f"      median of {report['repeats']} runs; bcd-node runs "
                  f"{node['images_per_s_all']} images/s, storescp {scp['images_per_s_all']}, "
                  f"disk alone {report[f'disk_{n}_writers']['images_per_s_all']} files/s")
        print(f"      C-STORE handler p50 {node['handler_p50_ms']:.1f} ms, p99 "
              f"{node['handler_p99_ms']:.1f} ms (histogram_quantile over /metrics buckets); "
              f"{100 * node['handler_within_20ms']:.1f}% within 20 ms; node CPU "
              f"{node['node_cpu_ms_per_image']:.1f} ms per image; CPU steal "
              f"{node['steal_percent']:.1f}%")
        disk = report[f"disk_{n}_writers"]
        print(f"      disk alone, {n} writer(s) (temporary file, fsync, rename, folder fsync; "
              f"no DICOM, no database): {disk['images_per_s']:.0f} files/s, per file p50 "
              f"{disk['p50_ms']:.1f} ms, p99 {disk['p99_ms']:.1f} ms")
    if "while_analysing_4_assoc" in report:
        print("  4 associations while a worker analyses what arrives (runs alternated):")
        for name, run in report["while_analysing_4_assoc"].items():
            print(f"      {name:<26} {run['images_per_s']:6.1f} images/s, C-STORE handler "
                  f"p50 {run['handler_p50_ms']:.1f} ms, p99 {run['handler_p99_ms']:.1f} ms; "
                  f"CPU steal {run['steal_percent']:.1f}%")
    if "end_to_end" in report:
        e = report["end_to_end"]
        print(f"  end to end (C-STORE -> SEG+SR+PDF stored at Orthanc), {e['complete']}/"
              f"{e['images']} images: p50 {e['p50_s']:.2f} s, p95 {e['p95_s']:.2f} s"
              if e["p50_s"] is not None else "  end to end: no image completed")
    print("reproduce: .venv/bin/python benchmarks/ingest.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
