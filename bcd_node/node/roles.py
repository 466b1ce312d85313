"""What the roles start in a process, besides the DICOM listener (:mod:`~bcd_node.node.listeners`),
the scheduler (:mod:`~bcd_node.node.scheduler`) and the console (started by
:mod:`~bcd_node.node.serve` alone, the composition root that may import :mod:`webadmin`).

Each starter takes the process's :class:`~bcd_node.runtime.NodeContext` and returns its
:class:`~bcd_node.runtime.Component` and a function that stops it (a :data:`Stopper`), or raises
:class:`StartupError`. Here: the durable intake (of the ``scp`` role, and of the console's
uploads), the analysis workers with their model (the ``worker`` role in this process), and the
worker role as a child process of ``serve`` (:func:`start_worker_process`), for which the model
is described from its manifest without loading it (:func:`model_component`).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable

from bcd_node.errors import BcdError
from bcd_node.node.logs import same_logging
from bcd_node.node.processes import Child, ChildGroup, child_argv
from bcd_node.runtime import Component, NodeContext
from bcd_node.settings import Settings, SettingsError, output_builder_processes

if TYPE_CHECKING:
    from bcd_node.jobs.queue import Claimed
    from bcd_node.node.metrics import Metrics

LOGGER = logging.getLogger(__name__)

#: Stops a started component (called in the reverse order of starting).
Stopper = Callable[[], None]
#: Starts one component of a role in this process.
Starter = Callable[[NodeContext], tuple[Component, Stopper]]


class StartupError(BcdError):
    """A component could not start (e.g. its port is in use)."""


def check_worker_files(settings: Settings) -> None:
    """What the worker role reads beyond the settings' own checks, checked before anything of
    the node starts: the model's weights against their manifest (its sha256, without loading
    the model) and every destination's TLS files. A node whose weights were damaged answered
    images Success and reported itself ready while it could analyse nothing; one whose PACS's
    CA file was damaged started a worker process that failed every 30 s for ever.

    Raises
    ------
    SettingsError
        Naming the key (``model.weights``, ``destinations[0].tls_ca``...).
    """
    from bcd_node.delivery.outbox import check_tls_files
    from bcd_node.inference.loader import WeightsError, verify_weights

    try:
        verify_weights(settings.model.weights)
    except WeightsError as exc:
        raise SettingsError("model.weights", str(settings.model.weights or "(the bundled model)"),
                            f"cannot use the model: {exc}") from None
    check_tls_files(settings)


def stop_on_configuration_error(context: NodeContext) -> Callable[[str], None]:
    """What a group of child processes calls when one of them ends with a configuration error:
    the process stops, and ends with exit code 2 (:func:`bcd_node.node.serve.run`)."""
    def stop(why: str) -> None:
        context.configuration_error = why
        context.stop_requested.set()
    return stop


def start_intake(context: NodeContext) -> tuple[Component, Stopper]:
    """The process's durable intake (group commit), shared by the listener and the console."""
    from bcd_node.intake.intake import Intake

    intake = Intake(context).start()
    context.intake = intake
    return Component("intake", True, "durable intake (group commit)"), intake.stop


def start_workers(context: NodeContext) -> tuple[Component, Stopper]:
    """The analysis workers in this process, with the model loaded here (its component too)."""
    from bcd_node.analysis.builders import Builders
    from bcd_node.analysis.pipeline import Pipeline
    from bcd_node.heap import freeze_loaded
    from bcd_node.inference.loader import WeightsError
    from bcd_node.inference.predictor import Predictor
    from bcd_node.jobs.workers import Workers

    m = context.settings.model
    count = context.settings.workers.count
    if count == 0:
        return Component("workers", False, "workers.count = 0 (run `bcd-node worker`)"), \
            lambda: None
    try:
        predictor = Predictor(m.weights, precision=m.precision, threads=m.threads,
                              batch_size=m.batch_size, review_threshold=m.review_threshold,
                              default_um_per_pixel=m.default_um_per_pixel)
    except (WeightsError, FileNotFoundError) as exc:
        # Checked at start (check_worker_files); changed since: the process cannot work.
        raise SettingsError("model.weights", str(m.weights or "(the bundled model)"),
                            f"cannot use the model: {exc}") from None
    info = predictor.model_info
    LOGGER.info("inputs that state no pixel size are taken as %g µm per pixel "
                "([model] default_um_per_pixel) and marked \"scale unknown\"; the model was "
                "trained at %s µm per pixel", m.default_um_per_pixel,
                "an unstated" if predictor.model_um_per_pixel is None
                else f"{predictor.model_um_per_pixel:g}")
    demo = bool(predictor.manifest.get("demonstration", True))
    note = " — demonstration model, not for clinical use" if demo else ""
    context.components["model"] = Component(
        "model", True, f"{info['name']} {info['version']} (width {info['width']}, "
                       f"{info['precision']}){note}")
    builders = Builders(output_builder_processes(context.settings.workers.output_builders),
                        process_setup=same_logging())
    pipeline = Pipeline(context, predictor, demonstration_model=demo, builders=builders)
    pipeline.warm_up()  # the first image does not wait for what building loads once
    freeze_loaded()  # the model's objects are not walked by every full garbage collection
    metrics: Metrics = context.metrics

    def on_done(_job: Claimed, seconds: float, outcome: str) -> None:
        metrics.processed.labels(outcome).inc()
        metrics.inference_seconds.observe(seconds)

    workers = Workers(context, pipeline.run, count, on_done=on_done,
                      on_failed=pipeline.job_failed, run_batch=pipeline.run_batch).start()
    context.workers = workers
    context.wake_workers = workers.wake
    # Listener processes on this machine wake the workers when they queue jobs.
    from bcd_node.node.wake import WakeListener, workers_address

    try:
        waker: WakeListener | None = WakeListener(
            workers_address(context.settings.storage.data_dir), workers.wake)
    except OSError as exc:
        LOGGER.info("workers poll the queue only (no wake-up socket: %s)", exc)
        waker = None

    def stop() -> None:
        if waker is not None:
            waker.close()
        workers.stop()
        builders.close()

    return Component("workers", True, f"{count} analysis worker(s), "
                     + building_text(builders.processes,
                                     context.settings.workers.decode_in_builders),
                     workers.alive), stop


def building_text(processes: int, decode_in_builders: str) -> str:
    """Where a worker process builds its outputs and decodes its images, for its start-up
    line (``workers.output_builders``, ``workers.decode_in_builders``)."""
    if not processes:
        return "outputs built and images decoded in the worker process"
    decoding = {"compressed": "they decode the compressed images",
                "always": "they decode every image",
                "never": "images decoded in the worker process"}[decode_in_builders]
    return f"{processes} output builder process{'es' if processes != 1 else ''} ({decoding})"


def start_worker_process(context: NodeContext) -> tuple[Component, Stopper]:
    """``serve``: the worker role in a child process, so inference never holds the listener's
    interpreter lock; the child ends with its parent (PR_SET_PDEATHSIG)."""
    settings = context.settings
    if settings.workers.count == 0:
        return Component("workers", False, "workers.count = 0 (run `bcd-node worker`)"), \
            lambda: None
    context.components["model"] = model_component(settings)
    # The child reports "started" (model loaded, threads running) on a pipe; until then the
    # workers component is not healthy and /readyz answers 503.
    argv = child_argv(settings, "worker")
    group = ChildGroup("worker", lambda _i: Child("worker", argv, dict(os.environ)), 1,
                       on_configuration_error=stop_on_configuration_error(context))
    return Component("workers", True, f"{settings.workers.count} analysis worker(s) and the "
                                      f"delivery scheduler in a child process (started again "
                                      f"if it ends)", group.running), group.stop


def model_component(settings: Settings) -> Component:
    """What the manifest says about the model (read without loading it)."""
    import json

    from bcd_node.inference.loader import resolve_manifest

    path = resolve_manifest(settings.model.weights)
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return Component("model", False, f"cannot read {path}: {exc}")
    demo = " — demonstration model, not for clinical use" if m.get("demonstration", True) else ""
    return Component("model", True, f"{m.get('name')} {m.get('version')} "
                                    f"(width {m.get('width')}){demo}")
