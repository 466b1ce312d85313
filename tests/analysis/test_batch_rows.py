"""What a worker's batch reads from the database before its prediction (issue 17): the rows
of all its images in one query, their numbers in their studies and what their results record
in one session, so that the queries do not grow with the batch; each image keeps its own
number in its own study, and an image that no longer exists fails its job alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pydicom
import pytest
from sqlalchemy import event, select

from bcd_node.analysis.pipeline import Pipeline
from bcd_node.db.models import Instance, Job, JobKind, Result
from bcd_node.errors import PermanentError
from bcd_node.intake.intake import Intake
from bcd_node.jobs.workers import Workers
from bcd_node.runtime import NodeContext
from tests.support.images import part10_bytes, vl_micro
from tests.support.pipeline import alone_and_batch
from tests.support.predictions import OneBlastAnalyzer

STUDY_A, STUDY_B = "2.25.7100", "2.25.7200"
#: Received in this order: the two studies' fields interleaved.
RECEIVED = [STUDY_A, STUDY_B, STUDY_A, STUDY_B, STUDY_A]


@pytest.fixture
def nodes(write_config: Callable[..., Path], tmp_path: Path) -> Iterator[dict[str, NodeContext]]:
    images = [part10_bytes(vl_micro(seed, study_uid=study)) for seed, study in enumerate(RECEIVED)]
    with alone_and_batch(write_config, tmp_path, images) as made:
        yield made


class QueriesUntilPrediction(OneBlastAnalyzer):
    """:class:`OneBlastAnalyzer`, noting how many SELECTs the node had issued when each
    prediction was asked for."""

    def __init__(self, context: NodeContext) -> None:
        self.selects = 0
        self.at_prediction: list[int] = []
        event.listen(context.engine, "before_cursor_execute", self._count)

    def _count(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.selects += 1

    def predict(self, images: list[Any], um_per_pixel: Any = None) -> list[Any]:
        self.at_prediction.append(self.selects)
        return super().predict(images, um_per_pixel)


def _step(context: NodeContext, analyzer: Any) -> bool:
    pipeline = Pipeline(context, analyzer)
    workers = Workers(context, pipeline.run, 0, on_failed=pipeline.job_failed,
                      run_batch=pipeline.run_batch)
    return bool(workers.step("test-worker"))


def _numbers(context: NodeContext) -> dict[str, dict[str, int]]:
    """Each image's results' Instance Numbers (by kind), by the image's SOP Instance UID."""
    data = Path(context.settings.storage.data_dir)
    out = {}
    with context.session_factory() as s:
        for uid, result in s.execute(select(Instance.sop_instance_uid, Result).join(
                Result, Result.instance_fk == Instance.id)).all():
            folder = data / Path(str(result.pdf_path)).parent
            out[uid] = {kind: int(pydicom.dcmread(folder / f"{kind}.dcm").InstanceNumber)
                        for kind in ("seg", "sr", "pdf")}
    return out


def test_a_batch_reads_its_rows_in_as_many_queries_as_one_image(
        nodes: dict[str, NodeContext]) -> None:
    alone, batch = QueriesUntilPrediction(nodes["alone"]), QueriesUntilPrediction(nodes["batch"])
    assert _step(nodes["alone"], alone) and _step(nodes["batch"], batch)
    assert len(alone.at_prediction) == 1 and len(batch.at_prediction) == 1
    # The claim, the rows, the field numbers and the results: five images, the same queries.
    assert batch.at_prediction == alone.at_prediction


def test_each_image_of_a_batch_keeps_its_number_in_its_own_study(
        nodes: dict[str, NodeContext]) -> None:
    while _step(nodes["alone"], OneBlastAnalyzer()):
        pass
    assert _step(nodes["batch"], OneBlastAnalyzer())
    for context in nodes.values():
        with context.session_factory() as s:
            order = list(s.execute(select(Instance.sop_instance_uid).order_by(Instance.id))
                         .scalars())
        numbers = _numbers(context)
        # A's fields were received first, third and fifth: 1, 2, 3; B's second and fourth: 1, 2.
        assert [numbers[uid] for uid in order] == [
            {"seg": n, "sr": n, "pdf": n} for n in (1, 1, 2, 2, 3)]


def test_an_image_gone_from_the_database_fails_its_job_alone(
        nodes: dict[str, NodeContext]) -> None:
    context = nodes["batch"]
    with context.session_factory() as s:
        jobs = list(s.execute(select(Job.id, Job.instance_fk).where(
            Job.kind == JobKind.ANALYZE).order_by(Job.id)).tuples())
    rows = Pipeline(context, OneBlastAnalyzer()).images.context
    gone = [*jobs[:2], (jobs[2][0], 999_999), *jobs[3:]]
    loaded = rows.load_many(gone)
    assert isinstance(loaded[2], PermanentError)
    assert str(loaded[2]) == f"job {jobs[2][0]}: instance 999999 no longer exists"
    assert [row.instance.id for k, row in enumerate(loaded) if k != 2] == [
        instance for k, (_job, instance) in enumerate(jobs) if k != 2]
    assert {row.study.study_instance_uid for k, row in enumerate(loaded) if k != 2} == {
        STUDY_A, STUDY_B}


def test_an_image_deleted_while_its_batch_is_read_fails_its_job_alone(
        nodes: dict[str, NodeContext], monkeypatch: pytest.MonkeyPatch) -> None:
    """Its rows were read, then it was gone (a purge) when the batch's numbers were counted."""
    from bcd_node.analysis import image
    from bcd_node.db.models import JobState

    context = nodes["batch"]
    with context.session_factory() as s:
        first = s.execute(select(Job).where(Job.kind == JobKind.ANALYZE)
                          .order_by(Job.id)).scalars().first()
    assert first is not None
    counted = image.field_numbers

    def without_first(session: Any, ids: Any) -> dict[int, int]:
        numbers = counted(session, ids)
        del numbers[first.instance_fk]
        return numbers

    monkeypatch.setattr(image, "field_numbers", without_first)
    assert _step(context, OneBlastAnalyzer())
    with context.session_factory() as s:
        states = {job_id: state for job_id, state in s.execute(
            select(Job.id, Job.state).where(Job.kind == JobKind.ANALYZE))}
        error = s.get(Job, first.id).last_error
    assert states.pop(first.id) == JobState.FAILED
    assert error == f"job {first.id}: instance {first.instance_fk} no longer exists"
    assert set(states.values()) == {JobState.DONE}


def test_an_object_is_queued_once_for_each_destination(ctx: NodeContext) -> None:
    """The outbox's "already queued?" check (one query per result): a re-run queues nothing
    again, and an object queued for one destination is still queued for another."""
    import dataclasses

    from bcd_node.analysis.publish import Output, queue_deliveries
    from bcd_node.db.models import Delivery
    from tests.support.pipeline import run_all

    with Intake(ctx) as intake:
        intake.accept(part10_bytes(vl_micro(0)))
    assert run_all(ctx, Pipeline(ctx, OneBlastAnalyzer())) == 1
    [pacs] = ctx.settings.destinations
    other = dataclasses.replace(pacs, name="other")

    def queued() -> list[tuple[str, str]]:
        with ctx.session_factory() as s:
            return sorted(s.execute(select(Delivery.destination, Delivery.kind)).tuples())

    assert queued() == [("pacs", "pdf"), ("pacs", "seg"), ("pacs", "sr")]
    def identity(delivery: Delivery) -> pydicom.Dataset:
        ds = pydicom.Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = delivery.sop_class_uid, delivery.sop_instance_uid
        return ds

    with ctx.session_factory.begin() as s:
        result = s.execute(select(Result)).scalar_one()
        outputs = [Output(d.kind, identity(d), d.path)
                   for d in s.execute(select(Delivery).order_by(Delivery.id)).scalars()]
        queue_deliveries(s, result.id, outputs, [pacs, other])
    assert queued() == [("other", "pdf"), ("other", "seg"), ("other", "sr"),
                        ("pacs", "pdf"), ("pacs", "seg"), ("pacs", "sr")]
    with ctx.session_factory.begin() as s:
        queue_deliveries(s, result.id, outputs, [other, pacs])
    assert len(queued()) == 6
