"""The study summary's objects, made by the pipeline with a test double of the model: they
reference every field, the non-diagnostic ones too, and name the node's institution."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from sqlalchemy import select, update

from bcd_node.analysis.pipeline import Pipeline
from bcd_node.analysis.summary import enqueue_study_summaries
from bcd_node.db.models import (
    Delivery,
    Job,
    JobKind,
    JobState,
    Result,
    Study,
    StudyStatus,
    utcnow,
)
from bcd_node.intake.intake import Intake
from bcd_node.records.studies import refresh_study
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from tests.support.dicomcheck import assert_dciodvfy_clean
from tests.support.images import part10_bytes, vl_micro
from tests.support.pipeline import run_all
from tests.support.predictions import PROBS, Pred, Quality

INSTITUTION = "St. Example Hospital"


class Analyzer:
    """Malignant-Pre for the first image it sees, quality insufficient for the others."""

    model_info = {"name": "test-model", "version": "1.0"}

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, images: list[np.ndarray], um_per_pixel=None) -> list[Pred]:
        self.calls += 1
        out = []
        for image in images:
            if self.calls == 1:
                mask = np.zeros(image.shape[:2], np.uint8)
                mask[10:20, 10:20] = 1
                out.append(Pred("Malignant-Pre", PROBS, 1, 0.01, mask))
            else:
                out.append(Pred(None, None, None, None, None, Quality(False, ("blur",)), True))
        return out


@pytest.fixture
def node(write_config, monkeypatch) -> Any:
    monkeypatch.setenv("BCD_DICOM_INSTITUTION_NAME", INSTITUTION)  # dicom.institution_name
    ctx = open_node(load_settings(write_config(
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 1\n'
        '[[lis]]\nname = "lab"\nhost = "127.0.0.1"\nport = 1\nreceiving_application = "LIS"\n'
    )))
    with Intake(ctx) as intake:
        yield ctx, intake, Pipeline(ctx, Analyzer())
    ctx.engine.dispose()


@pytest.mark.integration
def test_summary_references_every_field_and_every_output_names_the_institution(node) -> None:
    ctx, intake, pipeline = node
    study_uid = pydicom.uid.generate_uid(prefix="2.25.")
    fields = [vl_micro(seed, study_uid=study_uid) for seed in (1, 2)]
    for ds in fields:
        intake.accept(part10_bytes(ds))
    assert run_all(ctx, pipeline) == 2
    with ctx.session_factory.begin() as s:
        s.execute(update(Study).values(last_received_at=utcnow() - timedelta(days=1)))
    assert enqueue_study_summaries(ctx) == 1
    assert run_all(ctx, pipeline) == 1
    with ctx.session_factory() as s:
        summary = s.execute(select(Result).where(Result.scope == "study")).scalar_one()
        field = s.execute(select(Result).where(Result.scope == "instance",
                                               Result.stage.is_not(None))).scalar_one()
    data = Path(ctx.settings.storage.data_dir)
    folder = data / f"results/study-{summary.study_fk}/1.0"
    sr = pydicom.dcmread(next(folder.glob("*-sr.dcm")))
    pdf = pydicom.dcmread(next(folder.glob("*-pdf.dcm")))
    every = {str(ds.SOPInstanceUID) for ds in fields}
    evidence = {r.ReferencedSOPInstanceUID
                for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    assert evidence == every  # the non-diagnostic field too
    assert {r.ReferencedSOPInstanceUID for r in pdf.SourceInstanceSequence} == every
    field_folder = data / f"results/{field.instance_fk}/1.0"
    outputs = [*folder.glob("*.dcm"), *field_folder.glob("*.dcm")]
    assert len(outputs) == 5  # summary SR and PDF, the field's SEG, SR and PDF
    for path in outputs:
        assert_dciodvfy_clean(path)
        ds = pydicom.dcmread(path)
        assert ds.InstitutionName == INSTITUTION, path.name
        assert (ds.Manufacturer, ds.ManufacturerModelName) == ("bcd-node", "test-model 1.0")
    # The LIS hears of the case: its preliminary ORU^R01, queued with the summary.
    with ctx.session_factory() as s:
        (oru,) = s.execute(select(Delivery).where(Delivery.destination == "lab")).scalars()
    assert (oru.kind, oru.result_fk, oru.sop_class_uid) == ("oru_p", summary.id, "ORU^R01")
    text = (data / oru.path).read_bytes().decode()
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert message.validate() and message.msh.msh_10.to_er7() == oru.sop_instance_uid


def test_a_summary_that_failed_for_good_is_not_queued_again_until_an_image_arrives(
        node) -> None:
    """A summary job that fails for good (an input no object could be built from) was queued
    anew at every schedule, about every two minutes, and failed again, without end."""
    ctx, intake, pipeline = node
    study_uid = pydicom.uid.generate_uid(prefix="2.25.")
    intake.accept(part10_bytes(vl_micro(1, study_uid=study_uid)))
    assert run_all(ctx, pipeline) == 1

    def quiet() -> None:
        with ctx.session_factory.begin() as s:
            s.execute(update(Study).values(last_received_at=utcnow() - timedelta(days=1)))

    quiet()
    assert enqueue_study_summaries(ctx) == 1
    with ctx.session_factory.begin() as s:  # as the worker leaves it after its last attempt
        job = s.execute(select(Job).where(Job.kind == JobKind.STUDY_SUMMARY)).scalar_one()
        job.state, job.last_error = JobState.FAILED, "ValueError: cannot be built"
        s.flush()
        refresh_study(s, job.study_fk)  # as the worker does (Pipeline.job_failed)
    assert enqueue_study_summaries(ctx) == 0
    assert enqueue_study_summaries(ctx) == 0
    with ctx.session_factory() as s:  # the case says so, instead of "analysing" for ever
        assert s.execute(select(Study.status)).scalar_one() == StudyStatus.FAILED
    # Run again by hand (bcd-node jobs retry): it is the one job, not a second one.
    with ctx.session_factory.begin() as s:
        s.execute(update(Job).where(Job.kind == JobKind.STUDY_SUMMARY)
                  .values(state=JobState.QUEUED))
    assert enqueue_study_summaries(ctx) == 0
    assert run_all(ctx, pipeline) == 1
    with ctx.session_factory() as s:
        assert s.execute(select(Study.summary_done_at)).scalar_one() is not None
    # A study whose summary failed is summarised again once a further image arrives.
    with ctx.session_factory.begin() as s:  # failed before the image (quiet() backdates it)
        s.execute(update(Job).where(Job.kind == JobKind.STUDY_SUMMARY).values(
            state=JobState.FAILED, created_at=utcnow() - timedelta(days=2)))
    intake.accept(part10_bytes(vl_micro(2, study_uid=study_uid)))
    assert run_all(ctx, pipeline) == 1
    quiet()
    assert enqueue_study_summaries(ctx) == 1
