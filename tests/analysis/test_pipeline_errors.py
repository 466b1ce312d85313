"""How the pipeline's errors end a job: a builder's refusal of its input fails it at once; a
bug's ValueError or an unreachable peer does not (the worker retries it, bounded)."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import pytest

from bcd_node.analysis.pipeline import Pipeline
from bcd_node.db.models import Job, JobState
from bcd_node.intake.intake import Intake
from bcd_node.jobs.workers import Workers
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings
from dicom.errors import DicomValidationError
from dicom.scu import PeerUnavailableError
from tests.support.images import vl_micro_bytes


class Raising:
    """A model whose prediction raises ``error``."""

    model_info = {"name": "test-model", "version": "1.0"}

    def __init__(self, error: Exception) -> None:
        self.error = error

    def predict(self, images: list[np.ndarray], um_per_pixel=None) -> list[Any]:
        raise self.error


@pytest.fixture
def ctx(write_config: Callable[..., Any]) -> Iterator[NodeContext]:
    context = open_node(load_settings(write_config(
        "[workers]\nmax_attempts = 3\nretry_delay = 0.01\n")))
    with Intake(context) as intake:
        intake.accept(vl_micro_bytes(1), calling_ae="SCANNER")
    yield context
    context.engine.dispose()


def _run_once(ctx: NodeContext, error: Exception) -> Job:
    workers = Workers(ctx, Pipeline(ctx, Raising(error)).run, 0)
    assert workers.step("test-worker")
    with ctx.session_factory() as s:
        [job] = s.query(Job).all()
        return job


def test_a_builders_refusal_fails_the_job_at_once(ctx: NodeContext) -> None:
    job = _run_once(ctx, DicomValidationError("mask shape (3, 3) does not match the source"))
    assert (job.state, job.attempts) == (JobState.FAILED, 1)
    assert job.last_error == "cannot build the results: mask shape (3, 3) does not match the " \
                             "source"


@pytest.mark.parametrize("error", [ValueError("operands could not be broadcast together"),
                                   PeerUnavailableError("cannot associate with MODEL@host:1")],
                         ids=["bug", "peer"])
def test_a_bug_or_an_unreachable_peer_is_retried_not_failed(ctx: NodeContext,
                                                           error: Exception) -> None:
    job = _run_once(ctx, error)
    assert (job.state, job.attempts) == (JobState.QUEUED, 1)
    assert job.last_error == f"{type(error).__name__}: {error}"
