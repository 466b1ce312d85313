"""Analysis benchmark: a burst through the real worker against the model alone, and where a
worker's time goes for one image, stage by stage.

**Burst** (the default): ``--burst`` images (200) of 512 x 512 are received by a node's intake
(SQLite in a temporary folder), then drained by the worker's own code in this process
(:class:`bcd_node.jobs.workers.Workers` with the pipeline: claim up to ``workers.batch_size``
jobs, decode, one batched prediction, SEG + SR + PDF built, files written, rows published),
the outputs built as the node builds them by default (``workers.output_builders`` "auto": one
process per core; ``--builders`` to choose). It prints images/s from the first claim to the
last publish, and, in the same run, the rate of
the model alone (:meth:`Predictor.predict` over the same decoded images, in batches of the same
size), timed before the first burst and after each one: each burst's ratio is against the model
alone on either side of it, so that a machine whose speed drifts during the run does not skew
it. The ratio says how much of the worker's time is not the model. The model alone runs in a
process of its own with every core (its best batched rate), idle while the bursts run, so that
``--model-threads`` changes only the worker's model (TensorFlow's thread pools are one per
process: in the worker's process the reference would have had the worker's threads).

**Stages** (``--stages``): runs the worker's own code
(:func:`bcd_node.analysis.findings.analyze_dataset`, then the SEG, SR and Encapsulated PDF
written as the worker writes them) on 512 x 512 RGB VL Microscopic Images
with the bundled model (or ``--weights``), after a warm-up, and prints the mean time per image of
each stage: decoding, prediction, overlay, PDF report, SEG, SR, Encapsulated PDF and the durable
writes. No database and no network: this is the CPU cost of one analysis.

Reproduce with::

    .venv/bin/python benchmarks/analysis.py                # burst of 200, the model alone around it
    .venv/bin/python benchmarks/analysis.py --burst 50 --batch-size 8
    .venv/bin/python benchmarks/analysis.py --burst 64 --repeat 2 --compare part10
    .venv/bin/python benchmarks/analysis.py --burst 200 --repeat 2 --compare sr
    .venv/bin/python benchmarks/analysis.py --burst 200 --repeat 3 --compare files
    .venv/bin/python benchmarks/analysis.py --burst 200 --repeat 2 --compare decode
    .venv/bin/python benchmarks/analysis.py --burst 100 --compress jpeg2000 --compare decode
    .venv/bin/python benchmarks/analysis.py --burst 200 --repeat 3 --model free --compare shared
    .venv/bin/python benchmarks/analysis.py --threads 1 2 --repeat 2   # workers.count side by side
    .venv/bin/python benchmarks/analysis.py --model free --steps   # the network free, as on a GPU
    .venv/bin/python benchmarks/analysis.py --steps        # where the worker's time goes
    .venv/bin/python benchmarks/analysis.py --stages       # 10 images after 3 warm-up ones
    .venv/bin/python benchmarks/analysis.py --stages --images 20 --size 256
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from pydicom.filebase import DicomBytesIO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bcd_node.analysis import findings  # noqa: E402
from bcd_node.inference.spec import CLASSES  # noqa: E402
from bcd_node.settings import ModelSettings  # noqa: E402
from dicom import outputs  # noqa: E402
from dicom.encode import pydicom_bytes  # noqa: E402

#: (module, function) pairs that analyze_dataset and build_result_objects call, timed in place.
STAGES = ((findings, "decode_for_analysis"), (findings, "overlay"),
          (findings, "render_report"), (outputs, "build_segmentation"), (outputs, "build_sr"),
          (outputs, "build_encapsulated_pdf"))


def timed(spent: dict[str, float], name: str, call: Callable[..., Any],
          cpu: dict[str, float] | None = None) -> Callable[..., Any]:
    """``call`` adding its wall seconds to ``spent[name]`` (and its thread's CPU seconds to
    ``cpu[name]``) at each call."""
    @functools.wraps(call)
    def run(*args: Any, **kwargs: Any) -> Any:
        started, started_cpu = time.perf_counter(), time.thread_time()
        try:
            return call(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started
            if cpu is not None:
                cpu[name] = cpu.get(name, 0.0) + time.thread_time() - started_cpu
    return run


def time_steps(wall: dict[str, float], cpu: dict[str, float]) -> None:
    """Time the worker's steps in place (--steps): wall and thread CPU seconds of each, summed
    over every call; the steps run as they do without it."""
    from bcd_node.analysis import builders, image
    from bcd_node.store import storage

    for owner, name, label in (
            (image.ImageAnalysis, "_load_many", "the job's rows"),
            (image.ImageAnalysis, "_recorded", "the job's rows"),
            (image, "read_image", "reading and decoding the images"),
            (builders.Builders, "read_all", "reading and decoding the images"),
            (image.ImageAnalysis, "_prepared", "the job's rows"),
            (image, "predict_each", "prediction (the model and its Python)"),
            (builders.Builders, "build_all", "building and writing the outputs"),
            (storage.BatchWrite, "flush", "making them durable (the batch's syncfs)"),
            (image.ImageAnalysis, "_publish", "publishing (result and outbox rows)")):
        setattr(owner, name, timed(wall, label, getattr(owner, name), cpu))


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds the processes ``pids`` (and all their threads) have used so
    far (:func:`tests.support.procs.cpu_times`); a process that has ended counts 0."""
    from tests.support.procs import cpu_times

    times = [cpu_times(pid) for pid in pids]
    return sum(user for user, _ in times), sum(system for _, system in times)


def model_alone_process(conn: Any, weights: str | None, images_file: str,
                        batch_size: int, model_batch_size: int) -> None:
    """The model alone, in a process of its own (:class:`ModelAlone`): loads the model with
    all cores (``model.threads`` 0, the backend's choice: its best batched rate), the burst's
    decoded images from ``images_file``, warms up, then times one pass over the images in
    batches of ``batch_size`` (``model_batch_size`` tiles per call of the model, as the
    worker's) at each ``"run"`` it receives, and sends back the wall seconds
    and its own CPU seconds (user, system)."""
    import pickle

    from bcd_node.inference.predictor import Predictor

    predictor = Predictor(weights=weights, batch_size=model_batch_size)
    with open(images_file, "rb") as f:
        images = pickle.load(f)

    def one_pass() -> None:
        for start in range(0, len(images), batch_size):
            predictor.predict([frame for frames in images[start:start + batch_size]
                               for frame in frames])

    predictor.predict(images[0])  # the first call's tracing is not timed
    conn.send("ready")
    while conn.recv() == "run":
        before, started = os.times(), time.perf_counter()
        one_pass()
        elapsed, after = time.perf_counter() - started, os.times()
        conn.send((elapsed, after.user - before.user, after.system - before.system))


class ModelAlone:
    """The reference: the model alone on the burst's images, in a process of its own, so that
    it has every core (its best batched rate) whatever ``model.threads`` the worker under test
    runs with (TensorFlow's thread pools are one per process); idle between its runs."""

    def __init__(self, weights: str | None, images: list[Any], batch_size: int,
                 model_batch_size: int, folder: str) -> None:
        import multiprocessing
        import pickle

        images_file = os.path.join(folder, "model-alone-images.pickle")
        with open(images_file, "wb") as f:
            pickle.dump(images, f, protocol=pickle.HIGHEST_PROTOCOL)
        context = multiprocessing.get_context("spawn")  # never a fork of a process with a model
        self.conn, child = context.Pipe()
        self.process = context.Process(target=model_alone_process, name="model-alone",
                                       args=(child, weights, images_file, batch_size,
                                             model_batch_size),
                                       daemon=True)
        # Not the worker's thread count (configure_threads sets it for this process): the
        # spawned process takes this environment.
        omp = os.environ.pop("OMP_NUM_THREADS", None)
        try:
            self.process.start()
        finally:
            if omp is not None:
                os.environ["OMP_NUM_THREADS"] = omp
        child.close()
        try:
            ready = self.conn.poll(600) and self.conn.recv() == "ready"
        except EOFError:  # it ended: its traceback is above
            ready = False
        if not ready:
            self.close()
            raise SystemExit("the model-alone process did not start")

    def run(self) -> tuple[float, float, float]:
        """One timed pass: wall seconds, and the CPU seconds (user, system) it used."""
        self.conn.send("run")
        elapsed, user, system = self.conn.recv()
        return elapsed, user, system

    def close(self) -> None:
        try:
            self.conn.send("stop")
        except OSError:
            pass
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class FreeModel:
    """``--model free``: the worker's predictor with a network that costs nothing, as a
    GPU's nearly does. Each tile's outputs are computed once by the real network (:meth:`learn`,
    before the bursts) and then looked up by a sample of the tile's pixels: everything else
    (the predictor's own Python, decoding, building, writing, publishing) runs as it does, so
    a burst shows what the CPUs can do when the model is no longer the limit."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.network = predictor._run  # noqa: SLF001 - a benchmark swaps the network
        self.outputs: dict[bytes, tuple[Any, Any, Any]] = {}

    @staticmethod
    def _key(tile: Any) -> bytes:
        return bytes(tile[::16, ::16].tobytes()) + str(tile.shape).encode()

    def _learning_run(self, tiles: Any) -> Any:
        stage, mask, features = self.network(tiles)
        for i, tile in enumerate(tiles):
            self.outputs[self._key(tile)] = (stage[i], mask[i],
                                             None if features is None else features[i])
        return stage, mask, features

    def _free_run(self, tiles: Any) -> Any:
        import numpy as np

        found = [self.outputs.get(self._key(tile)) for tile in tiles]
        if any(f is None for f in found):  # not a burst's tile (the warm-up's field)
            return self._learning_run(tiles)
        return (np.stack([f[0] for f in found]), np.stack([f[1] for f in found]),
                None if found[0][2] is None else np.stack([f[2] for f in found]))

    def learn(self, images: list[Any], sizes: list[float | None], batch_size: int) -> None:
        """Run the real network over ``images`` (each a list of frames, of ``sizes`` µm per
        pixel as the worker takes them), recording each tile's outputs; from then on the
        predictor's network is the free one."""
        self.predictor._run = self._learning_run  # noqa: SLF001
        for start in range(0, len(images), batch_size):
            batch = range(start, min(start + batch_size, len(images)))
            self.predictor.predict([frame for i in batch for frame in images[i]],
                                   um_per_pixel=[sizes[i] for i in batch
                                                 for _ in images[i]])
        self.predictor._run = self._free_run  # noqa: SLF001


def builder_pids(builders: Any) -> list[int]:
    """The pids of a :class:`~bcd_node.analysis.builders.Builders` pool's processes."""
    pool = builders._pool  # noqa: SLF001 - a benchmark looks inside
    return list(pool._processes) if pool is not None else []  # noqa: SLF001


#: --compare: the way before issue 17's change, then the node's.
COMPARE = {"png": ("pillow", "node"), "sync": ("fsync", "syncfs"), "sr": ("templates", "node"),
           "files": ("worker-writes", "node"),
           "part10": ("pydicom", "node"),
           "decode": ("decode-in-worker", "decode-in-builders"),
           "shared": ("pipe", "shared-memory")}


class WorkerWrites:
    """--compare files: the way before the builders wrote the files. The request carries the
    image with its pixels and no folder, the files' bytes come back, and the worker's thread
    writes them into the batch (the batch adopts the folder afterwards, as it does now)."""

    def __init__(self) -> None:
        from bcd_node.analysis import image
        from bcd_node.analysis.builders import Builders
        self.image, self.builders = image, Builders
        self.node_request = image.ImageAnalysis._request
        self.node_build_all = Builders.build_all

    def use(self, old: bool) -> None:
        import dataclasses

        from bcd_node.store.storage import write_named
        if not old:
            self.image.ImageAnalysis._request = self.node_request  # type: ignore[method-assign]
            self.builders.build_all = self.node_build_all  # type: ignore[method-assign]
            return
        node_request, node_build_all = self.node_request, self.node_build_all
        where: dict[int, tuple[Any, str, bool]] = {}  # by the request's id

        def request(analysis: Any, prepared: Any, predictions: Any, batch: Any) -> Any:
            made = node_request(analysis, prepared, predictions, batch)
            old_way = dataclasses.replace(made, dataset=prepared.dataset, store=None,
                                          folder=None)
            where[id(old_way)] = (made.store, made.folder, made.sync_files)
            return old_way

        def build_all(pool: Any, requests: Any) -> Any:
            out = node_build_all(pool, requests)
            for r, built in zip(requests, out):
                store, folder, sync = where.pop(id(r))
                if not isinstance(built, Exception):
                    for name, data in built.files().items():
                        write_named(store, f"{folder}/{name}", data, sync=sync)
            return out

        self.image.ImageAnalysis._request = request  # type: ignore[method-assign]
        self.builders.build_all = build_all  # type: ignore[method-assign]


def pillow_png(array: Any) -> bytes:
    """The console's PNGs as they were written before issue 17's change (Pillow, level 1)."""
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def burst(args: argparse.Namespace) -> int:
    """Bursts of images through the real worker, and the model alone on the same images before
    the first burst and after each one."""
    import numpy as np

    from bcd_node.analysis.findings import decode_for_analysis
    from bcd_node.analysis.pipeline import Pipeline
    from bcd_node.heap import freeze_loaded
    from bcd_node.inference.predictor import Predictor
    from bcd_node.inference.synth import generate_field, patient_params
    from bcd_node.intake.intake import Intake
    from bcd_node.jobs.workers import Workers
    from bcd_node.runtime import open_node
    from bcd_node.settings import load_settings
    from dicom.dicomize import dicomize
    from dicom.pixels import read_dataset

    predictor = Predictor(weights=args.weights, threads=args.model_threads,
                          batch_size=args.model_batch_size)
    info = predictor.model_info
    model_settings = (f"model.threads {args.model_threads}, "
                      f"model.batch_size {args.model_batch_size}"
                      + (", the worker's network free (--model free)" if args.model == "free"
                         else ""))
    with tempfile.TemporaryDirectory(prefix="bcd-analysis-") as work:
        config = Path(work) / "bcd-node.toml"
        config.write_text(f'[storage]\ndata_dir = "{work}/data"\nmin_free_disk = "100MB"\n\n'
                          f"[workers]\nbatch_size = {args.batch_size}\n", encoding="utf-8")
        context = open_node(load_settings(config))
        base, _, _ = generate_field(7, "Malignant-Pre",
                                    patient_params(np.random.default_rng(7)), size=args.size)
        with Intake(context) as intake:
            for i in range(args.burst):
                ds = dicomize(np.roll(base, i * 7, axis=1), patient_id=f"BENCH-{i // 20}",
                              patient_name="Bench^Mark", specimen_id=f"S{i}",
                              stain="Wright-Giemsa")
                if args.compress == "jpeg2000":  # as a scanner that sends JPEG 2000 would
                    from pydicom.uid import JPEG2000Lossless
                    ds.compress(JPEG2000Lossless)
                buffer = DicomBytesIO()
                ds.save_as(buffer, enforce_file_format=True)
                intake.accept(buffer.getvalue(), calling_ae="BENCH")
        from sqlalchemy import func, select, update

        from bcd_node.analysis.builders import Builders
        from bcd_node.db.models import Instance, Job, JobKind, JobState
        with context.session_factory() as s:
            paths = list(s.execute(select(Instance.path).order_by(Instance.id)).scalars())
        steps_wall: dict[str, float] = {}
        steps_cpu: dict[str, float] = {}
        if args.steps:
            time_steps(steps_wall, steps_cpu)
        from bcd_node.analysis import builders as builders_module
        from bcd_node.analysis import publish
        from bcd_node.store import storage
        worker_seconds: dict[str, list[float]] = {}
        import dicom.srcontent
        node_png, node_syncfs, node_part10 = (builders_module.png, storage._syncfs,
                                              publish.part10_bytes)
        node_report = dicom.srcontent.measurement_report
        worker_writes = WorkerWrites()
        # The model alone, on the same images decoded, in batches of the same size: before
        # the first burst and after each one, so that each burst's ratio has a reference on
        # either side of it (a shared machine's speed drifts within a run).
        images = [decode_for_analysis(read_dataset(Path(work) / "data" / p)) for p in paths]

        #: CPU seconds (user, system) per image: of the model alone; of each burst, this
        #: process's and its builder processes'.
        cpu_use: dict[str, list[tuple[float, float]]] = {}

        def used_since(before: tuple[float, float], pids: list[int]) -> tuple[float, float]:
            user, system = cpu_seconds(pids)
            return (user - before[0]) / len(images), (system - before[1]) / len(images)

        reference = ModelAlone(args.weights, images, args.batch_size, args.model_batch_size,
                               work)

        def model_alone() -> float:
            elapsed, user, system = reference.run()
            cpu_use.setdefault("the model alone", []).append(
                (user / len(images), system / len(images)))
            return elapsed

        model_runs = [model_alone()]
        if args.model == "free":  # the sizes as the worker takes them (findings.image_scale)
            from bcd_node.analysis.findings import image_scale
            default = context.settings.model.default_um_per_pixel
            FreeModel(predictor).learn(
                images, [image_scale(read_dataset(Path(work) / "data" / p), default)[0]
                         for p in paths], args.batch_size)
        model_reference: dict[str, list[float]] = {}
        # With --compare the order turns each repeat.
        pair = COMPARE[args.compare] if args.compare else ("node",)
        rounds = [(count, threads, variant) for r in range(args.repeat)
                  for count in args.builders
                  for threads in (args.threads if r % 2 == 0 else args.threads[::-1])
                  for variant in (pair if r % 2 == 0 else pair[::-1])]
        for round_, (count, n_threads, variant) in enumerate(rounds):
            builders_module.png = pillow_png if variant == "pillow" else node_png
            storage._syncfs = None if variant == "fsync" else node_syncfs
            publish.part10_bytes = pydicom_bytes if variant == "pydicom" else node_part10
            worker_writes.use(variant == "worker-writes")
            dicom.srcontent.measurement_report = (  # type: ignore[assignment]
                dicom.srcontent.measurement_report_with_templates if variant == "templates"
                else node_report)
            if round_:  # the same burst again: every job queued anew
                with context.session_factory.begin() as s:
                    s.execute(update(Job).values(state=JobState.QUEUED, attempts=0,
                                                 lease_owner=None, lease_expires_at=None))
            builders = Builders(count)
            if variant == "pipe":  # the requests' arrays pickled into the pool's pipe
                builders._shared.share = lambda requests: None  # type: ignore[method-assign]
            pipeline = Pipeline(context, predictor, builders=builders)
            if args.compare == "decode":  # workers.decode_in_builders
                pipeline.images.decode_in_builders = ("always" if variant == "decode-in-builders"
                                                      else "never")
            # As the worker does when it starts (node/roles.py): the pool's processes start
            # now, and what building loads once is loaded before the burst, not timed with it;
            # then what the process loaded is left out of garbage collection.
            pipeline.warm_up()
            freeze_loaded()
            workers = Workers(context, pipeline.run, 0, on_failed=pipeline.job_failed,
                              run_batch=pipeline.run_batch if args.batch_size > 1 else None)
            pids = builder_pids(builders)
            cpu_before = cpu_seconds([os.getpid()]), cpu_seconds(pids)
            started = time.perf_counter()

            def drain(owner: str) -> None:
                while workers.step(owner):
                    pass

            threads = [threading.Thread(target=drain, args=(f"bench-{t}",))
                       for t in range(n_threads)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            label = f"{count} {n_threads}" + (f" {args.compare}: {variant}" if args.compare
                                               else "")
            worker_seconds.setdefault(label, []).append(time.perf_counter() - started)
            with context.session_factory() as s:
                analysed = s.execute(select(func.count(Job.id)).where(
                    Job.kind == JobKind.ANALYZE, Job.state == JobState.DONE)).scalar_one()
            if analysed != args.burst:  # a rate of failed jobs would mean nothing
                raise SystemExit(f"burst {label}: {analysed} of {args.burst} images analysed "
                                 "(the log says why)")
            cpu_use.setdefault(f"{label}: worker process", []).append(
                used_since(cpu_before[0], [os.getpid()]))
            if count:
                cpu_use.setdefault(f"{label}: builder processes", []).append(
                    used_since(cpu_before[1], pids))
            builders.close()
            model_runs.append(model_alone())
            model_reference.setdefault(label, []).append((model_runs[-2] + model_runs[-1]) / 2)
        reference.close()
        with context.session_factory() as s:
            done = s.execute(select(func.count(Job.id)).where(
                Job.kind == JobKind.ANALYZE, Job.state == JobState.DONE)).scalar_one()
        context.engine.dispose()
    n = args.burst
    report = {"machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
              "images": n, "size": args.size, "compress": args.compress, "analysed": done,
              "batch_size": args.batch_size, "model": f"{info['name']} {info['version']}",
              "model_threads": args.model_threads, "model_batch_size": args.model_batch_size,
              "worker_model": args.model,
              "worker_images_per_s": {label: [round(n / sec, 2) for sec in secs]
                                      for label, secs in worker_seconds.items()},
              "model_only_images_per_s": round(n / statistics.median(model_runs), 2),
              "model_only_runs_images_per_s": [round(n / sec, 2) for sec in model_runs],
              # Each burst against the model alone just before and just after it.
              "ratio": {label: [round(ref / sec, 2)
                                for ref, sec in zip(model_reference[label], secs)]
                        for label, secs in worker_seconds.items()},
              # CPU per image (median of the runs), so that the ratio can be read as where the
              # cores went: the model's share of what the burst used.
              "cpu_ms_per_image": {name: {
                  "user": round(statistics.median(u for u, _ in runs) * 1000, 1),
                  "system": round(statistics.median(s for _, s in runs) * 1000, 1)}
                  for name, runs in cpu_use.items()},
              "steps_ms_per_image": {name: {"wall": round(wall / (n * len(rounds)) * 1000, 1),
                                            "thread_cpu": round(steps_cpu[name]
                                                                / (n * len(rounds)) * 1000, 1)}
                                     for name, wall in steps_wall.items()}}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"burst of {n} images of {args.size}x{args.size}"
          + (" (JPEG 2000 lossless)" if args.compress == "jpeg2000" else "")
          + f" with {report['model']} on "
          f"{report['machine']} (workers.batch_size {args.batch_size}, {model_settings}, "
          f"{done} analysed):")
    for label, rates in report["worker_images_per_s"].items():
        count, threads, *encoder = label.split(" ", 2)
        where = (f"workers.count {threads}, "
                 + (f"{count} output builder processes" if int(count)
                    else "outputs built in the worker") + (f", {encoder[0]}" if encoder else ""))
        print(f"  through the worker (claim -> publish), {where}: "
              f"{', '.join(f'{rate:.2f}' for rate in rates)} images/s; "
              + ("worker with its network free / the real model alone " if args.model == "free"
                 else "worker / model alone ")
              + f"{', '.join(f'{ratio:.2f}' for ratio in report['ratio'][label])}")
    print(f"  the model alone, same images, batched: {report['model_only_images_per_s']:.2f} "
          f"images/s (median; before the first burst and after each: "
          f"{', '.join(f'{rate:.2f}' for rate in report['model_only_runs_images_per_s'])}; "
          f"each burst's ratio is against the runs on either side of it)")
    print("  CPU per image (median of the runs; user + system, all threads of the processes):")
    for name, use in report["cpu_ms_per_image"].items():
        label = name
        if name[0].isdigit():  # "<builders> <threads>[ <compare>: <variant>]: <processes>"
            burst_label, _, processes = name.rpartition(": ")
            count, threads, *variant = burst_label.split(" ", 2)
            label = (f"builders {count}, workers.count {threads}"
                     + (f", {variant[0]}" if variant else "") + f": {processes}")
        print(f"    {label:<64} {use['user']:6.1f} + {use['system']:5.1f} ms")
    if report["steps_ms_per_image"]:
        print("  the worker's steps, per image, over every burst (wall; CPU of the thread):")
        for name, step in report["steps_ms_per_image"].items():
            print(f"    {name:<44} {step['wall']:6.1f} ms; {step['thread_cpu']:6.1f} ms CPU")
    print("reproduce: .venv/bin/python benchmarks/analysis.py " + " ".join(sys.argv[1:]))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", action="store_true",
                        help="time each stage of one image instead of a burst")
    parser.add_argument("--burst", type=int, default=200, help="images of the burst")
    parser.add_argument("--batch-size", type=int, default=8, help="workers.batch_size")
    parser.add_argument("--threads", type=int, nargs="+", default=[2],
                        help="workers.count (default: the node's, 2): worker threads draining "
                             "the queue together; several values: one burst each, side by side")
    parser.add_argument("--builders", type=int, nargs="+",
                        help="workers.output_builders (default: the node's, \"auto\": one per "
                             "core); several values: one burst each")
    parser.add_argument("--repeat", type=int, default=1,
                        help="bursts per --builders value, in turn (the same images again)")
    parser.add_argument("--steps", action="store_true",
                        help="also time the worker's steps in place, per image")
    parser.add_argument("--compare", choices=sorted(COMPARE),
                        help="each burst twice, alternating, as before issue 17's change and "
                             "as the node does it: png (the console's PNGs by Pillow at level "
                             "1), sync (each file and folder fsynced, not one syncfs per "
                             "batch), part10 (pydicom's writer, not dicom.encode), sr (the "
                             "SR's content tree by highdicom's templates, not "
                             "dicom.srcontent), files (the files' bytes sent back by the "
                             "builders and written by the worker's thread, the image sent "
                             "with its pixels, not written by the builders); decode: every "
                             "image read and decoded by the worker process, and every one by "
                             "the builders (workers.decode_in_builders never and always); "
                             "shared: the requests' arrays pickled into the builder pool's "
                             "pipe, not sent through shared memory")
    parser.add_argument("--compress", choices=["none", "jpeg2000"], default="none",
                        help="the burst's images as received: uncompressed (default) or JPEG "
                             "2000 lossless, whose decoding costs far more")
    parser.add_argument("--model", choices=["real", "free"], default="real",
                        help="free: the worker's network costs nothing (each tile's outputs "
                             "computed once before the bursts and looked up), as on a fast "
                             "GPU: what the CPUs can do when the model is not the limit; the "
                             "model alone is still the real one")
    parser.add_argument("--model-batch-size", type=int, default=ModelSettings.batch_size,
                        help="model.batch_size: tiles per call of the model, the worker's and "
                             "the model alone's (default: the node's)")
    parser.add_argument("--model-threads", type=int, default=0,
                        help="the worker's model.threads (0: every core); the model alone "
                             "always has every core, in a process of its own")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--weights", help="model manifest (default: the bundled model)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if (args.images < 1 or args.warmup < 0 or args.burst < 1 or args.batch_size < 1
            or args.model_batch_size < 1):
        parser.error("--images, --burst, --batch-size and --model-batch-size must be at least "
                     "1, --warmup at least 0")
    if not args.stages:
        if args.builders is None:
            from bcd_node.settings import output_builder_processes

            args.builders = [output_builder_processes(None)]
        return burst(args)

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
