"""A worker warms its output building up before the first image (Builders.warm_up): it predicts
and builds one synthetic field as for a received image, keeps nothing of it, and never fails
the worker's start; a pool of builder processes starts then, each process warm before its first
image."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any, Callable

import cv2
import pytest
from sqlalchemy import func, select

from bcd_node.analysis import builders
from bcd_node.analysis.builders import Builders
from bcd_node.analysis.pipeline import Pipeline
from bcd_node.db.models import Job, Result
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings
from tests.support.warm import model_frameworks, warm_state


class Refusing:
    """The real predictor's model information, and a model that refuses every image."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor

    @property
    def model_info(self) -> dict[str, Any]:
        return dict(self.predictor.model_info)

    def predict(self, images: list[Any], um_per_pixel: Any = None) -> list[Any]:
        raise ValueError("the model cannot take this image")


@pytest.fixture
def context(write_config: Callable[..., Path]) -> Any:
    made = open_node(load_settings(write_config()))
    yield made
    made.engine.dispose()


def _files(context: NodeContext) -> set[Path]:
    return {p for p in Path(context.settings.storage.data_dir).rglob("*") if p.is_file()}


def test_warm_up_builds_a_diagnostic_field_and_keeps_nothing(
        context: NodeContext, predictor: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    made: list[builders.Built] = []
    real_build = builders.build

    def recording(request: builders.BuildRequest) -> builders.Built:
        built = real_build(request)
        made.append(built)
        return built

    monkeypatch.setattr(builders, "build", recording)
    monkeypatch.setattr(builders, "warmed_up", False)
    before = _files(context)
    with caplog.at_level(logging.INFO):
        Pipeline(context, predictor).warm_up()
    assert builders.warmed_up
    assert "output building warmed up before the first image" in caplog.text
    assert "upload" not in caplog.text  # its synthetic field is no upload, and says none
    [built] = made
    # The whole diagnostic path ran: SEG, SR and Encapsulated PDF, the PDF report, the PNGs.
    assert built.combined.stage is not None
    assert [o.kind for o in built.objects] == ["seg", "sr", "pdf"]
    assert built.pdf and built.mask_png and built.overlay_png
    assert _files(context) == before  # no file written
    with context.session_factory() as s:
        assert s.execute(select(func.count(Job.id))).scalar_one() == 0
        assert s.execute(select(func.count(Result.id))).scalar_one() == 0


def test_warm_up_that_fails_does_not_stop_the_worker(
        context: NodeContext, predictor: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(builders, "warmed_up", False)
    with caplog.at_level(logging.WARNING):
        Pipeline(context, Refusing(predictor)).warm_up()  # the model refuses the field
    assert "no field to warm up the output building with" in caplog.text
    assert "warmed up before" not in caplog.text
    assert not builders.warmed_up

    def broken(_request: builders.BuildRequest) -> builders.Built:
        raise RuntimeError("cannot build")

    monkeypatch.setattr(builders, "build", broken)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Pipeline(context, predictor).warm_up()  # building fails
    assert "warming up the output building failed" in caplog.text
    assert "warmed up before" not in caplog.text
    assert not builders.warmed_up


@pytest.mark.slow  # starts two interpreters
def test_a_pool_starts_at_warm_up_and_each_process_is_warm_before_its_first_task(
        context: NodeContext, predictor: Any) -> None:
    pool = Builders(2)
    try:
        Pipeline(context, predictor, builders=pool).warm_up()
        started = pool._started_pool()
        assert len(started._processes) == 2  # started ahead of the first image
        answers = [started.submit(warm_state).result(timeout=120) for _ in range(8)]
        assert {warm for _pid, warm in answers} == {True}
        assert len({pid for pid, _warm in answers}) <= 2
        # Building a prediction's outputs needs no model framework (2 s, 500 MB a process).
        assert started.submit(model_frameworks).result(timeout=120) == set()
        # One OpenCV thread each: the pool's processes are the parallelism.
        assert started.submit(cv2.getNumThreads).result(timeout=120) == 1
        # What a builder loaded and warmed up is out of the garbage collector's walks (about
        # 400,000 objects: each full collection took 100 ms and more).
        assert started.submit(gc.get_freeze_count).result(timeout=120) > 100_000
    finally:
        pool.close()
