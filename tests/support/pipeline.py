"""Running a node's queued jobs in the test's own thread, one at a time, as a worker would; nodes
that have received images, for the worker's batch tests; a build request with blasts in it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from bcd_node.analysis.builders import BuildRequest
from bcd_node.analysis.pipeline import Pipeline
from bcd_node.intake.intake import Intake
from bcd_node.jobs.queue import claim
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings


def run_all(ctx: NodeContext, pipeline: Pipeline) -> int:
    """Claim and run every due job with ``pipeline``; returns how many ran."""
    n = 0
    while True:
        with ctx.session_factory.begin() as s:
            job = claim(s, "test-worker", 60)
        if job is None:
            return n
        pipeline.run(job)
        n += 1


def received_node(write_config: Callable[..., Path], tmp_path: Path, name: str,
                  images: list[bytes], *, batch_size: int, workers: str = "") -> NodeContext:
    """A node of its own (SQLite under ``tmp_path / name``) that has received ``images`` (Part
    10 bytes) and analysed none yet, with ``workers.batch_size`` and more ``[workers]`` lines."""
    config = write_config(f"[workers]\nbatch_size = {batch_size}\n{workers}",
                          data_dir=tmp_path / name, name=f"{name}.toml")
    context = open_node(load_settings(config))
    with Intake(context) as intake:
        for data in images:
            intake.accept(data, calling_ae="SCANNER")
    return context


@contextmanager
def alone_and_batch(write_config: Callable[..., Path], tmp_path: Path, images: list[bytes],
                    workers: str = "") -> Iterator[dict[str, NodeContext]]:
    """Two nodes that received the same images: "alone" analyses them one job at a time,
    "batch" up to 8 at once (:func:`received_node`)."""
    made = {"alone": received_node(write_config, tmp_path, "alone", images, batch_size=1,
                                   workers=workers),
            "batch": received_node(write_config, tmp_path, "batch", images, batch_size=8,
                                   workers=workers)}
    try:
        yield made
    finally:
        for context in made.values():
            context.engine.dispose()


def with_blasts(request: BuildRequest) -> BuildRequest:
    """``request`` with two round blasts in its mask (the tests' model finds none in it)."""
    drawn = np.zeros(request.images[0].shape[:2], np.uint8)
    cv2.circle(drawn, (60, 80), 15, 1, -1)
    cv2.circle(drawn, (170, 150), 22, 1, -1)
    return dataclasses.replace(request, predictions=[
        dataclasses.replace(request.predictions[0], mask=drawn)])
