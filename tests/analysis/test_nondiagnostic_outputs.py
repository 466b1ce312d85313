"""Every analysed image gets an answer at the PACS (issue 14): a field the quality gate refuses
gets a non-diagnostic SR and PDF, queued like a diagnostic result's, and so does a field whose
analysis failed for good ("could not be analysed: reason"); the study summary is always made
and counts the fields analysed, non-diagnostic and failed."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
from sqlalchemy import select, update

from bcd_node.analysis.pipeline import Pipeline
from bcd_node.analysis.summary import enqueue_study_summaries
from bcd_node.db.models import Delivery, Instance, Job, JobState, Result, Study, utcnow
from bcd_node.inference.preprocess import assess_quality
from bcd_node.intake.intake import Intake
from bcd_node.jobs.queue import claim, fail
from bcd_node.records.users import add_user
from bcd_node.records.verification import verify_result
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings
from dicom.dicomize import dicomize
from dicom.series import SERIES_NUMBERS, ResultKind
from tests.support.images import part10_bytes, smear
from tests.support.predictions import PROBS, Pred
from tests.support.readback import stored_report


class GateAnalyzer:
    """The node's own quality gate in front of a model double that says Malignant-Pre."""

    model_info = {"name": "test-model", "version": "1.0"}

    def predict(self, images: list[np.ndarray], um_per_pixel=None) -> list[Pred]:
        out = []
        for image in images:
            quality = assess_quality(image)
            if not quality.ok:
                out.append(Pred(None, None, None, None, None, quality, True))
                continue
            mask = np.zeros(image.shape[:2], np.uint8)
            mask[10:20, 10:20] = 1
            out.append(Pred("Malignant-Pre", PROBS, 1, 0.01, mask, quality))
        return out


@pytest.fixture
def node(write_config) -> Any:
    ctx = open_node(load_settings(write_config(
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 1\n')))
    with Intake(ctx) as intake:
        yield ctx, intake, Pipeline(ctx, GateAnalyzer())
    ctx.engine.dispose()


def _field(image: np.ndarray, study_uid: str) -> pydicom.Dataset:
    return dicomize(np.ascontiguousarray(image), patient_id="PAT-1", patient_name="Test^Patient",
                    stain="Wright", specimen_id="SLIDE-1", study_instance_uid=study_uid,
                    accession_number="ACC1")


def _run_all(ctx: NodeContext, pipeline: Pipeline, *, fail_sop: str | None = None) -> int:
    """Run every queued job; the job of ``fail_sop`` fails for good instead (as the workers
    record a permanent failure)."""
    n = 0
    while True:
        with ctx.session_factory.begin() as s:
            job = claim(s, "test-worker", 60)
        if job is None:
            return n
        if fail_sop is not None and job.instance_fk is not None:
            with ctx.session_factory.begin() as s:
                failing = s.get(Instance, job.instance_fk).sop_instance_uid == fail_sop
                if failing:
                    assert fail(s, job, "cannot decode the image: broken")
            if failing:
                pipeline.job_failed(job)  # as the workers do once the failure is recorded
                n += 1
                continue
        pipeline.run(job)
        n += 1


def _summarise(ctx: NodeContext, pipeline: Pipeline) -> Result:
    with ctx.session_factory.begin() as s:
        s.execute(update(Study).values(last_received_at=utcnow() - timedelta(days=1)))
    assert enqueue_study_summaries(ctx) == 1
    assert _run_all(ctx, pipeline) == 1
    with ctx.session_factory() as s:
        return s.execute(select(Result).where(Result.scope == "study")).scalar_one()


def test_refused_fields_get_a_non_diagnostic_sr_and_pdf_and_the_summary_counts_them(
        node) -> None:
    ctx, intake, pipeline = node
    study_uid = pydicom.uid.generate_uid(prefix="2.25.")
    good, _ = smear(101)
    blurred = cv2.GaussianBlur(good, (0, 0), 15)
    tiny = np.ascontiguousarray(good[:40, :40])
    grey = np.repeat(cv2.cvtColor(good, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    broken, _ = smear(102)
    fields = [_field(img, study_uid) for img in (good, blurred, tiny, grey, broken)]
    for ds in fields:
        intake.accept(part10_bytes(ds))
    assert _run_all(ctx, pipeline, fail_sop=str(fields[4].SOPInstanceUID)) == 5

    with ctx.session_factory() as s:
        results = {i.sop_instance_uid: r for r, i in s.execute(
            select(Result, Instance).join(Instance, Result.instance_fk == Instance.id))}
        deliveries = s.execute(select(Delivery)).scalars().all()
        assert s.execute(select(Job.state).where(Job.state == JobState.FAILED)).all()
    assert len(results) == 5  # the failed field's answer is on record too
    by_result: dict[int, set[str]] = {}
    for d in deliveries:
        by_result.setdefault(d.result_fk, set()).add(d.kind)
    data = Path(ctx.settings.storage.data_dir)
    expected_flags = {1: "too_blurred", 2: "too_small", 3: "not_a_smear"}
    for number, flag in expected_flags.items():
        result = results[str(fields[number].SOPInstanceUID)]
        assert result.stage is None, flag
        assert flag in result.quality["flags"]
        assert result.seg_sop_instance_uid is None
        assert result.sr_sop_instance_uid and result.pdf_sop_instance_uid and result.pdf_path
        assert by_result[result.id] == {"sr", "pdf"}  # queued for the PACS; no SEG
        assert stored_report(data / result.pdf_path).startswith(b"%PDF-")
        [sr_row] = [d for d in deliveries if d.result_fk == result.id and d.kind == "sr"]
        assert sr_row.sop_instance_uid == result.sr_sop_instance_uid
        sr = hd.sr.srread(data / sr_row.path)
        assert sr.SeriesNumber == SERIES_NUMBERS[ResultKind.SR]
        assert sr.InstanceNumber == number + 1  # the field's number
        [group] = sr.content.get_image_measurement_groups()
        values = {e.value.value for e in group.get_qualitative_evaluations()}
        assert "RID14" in values, values
    # the permanent failure is sent as "could not be analysed: reason"
    failed = results[str(fields[4].SOPInstanceUID)]
    assert failed.stage is None and failed.needs_review
    assert failed.quality == {"status": "failed", "reason": "cannot decode the image: broken"}
    assert by_result[failed.id] == {"sr", "pdf"}
    [sr_row] = [d for d in deliveries if d.result_fk == failed.id and d.kind == "sr"]
    sr = hd.sr.srread(data / sr_row.path)
    assert sr.InstanceNumber == 5
    [group] = sr.content.get_image_measurement_groups()
    assert {e.value.value for e in group.get_qualitative_evaluations()} == {
        "RID14", "ANALYSIS-FAILED"}
    assert b"Could not be analysed: cannot decode the image: broken." in (
        data / sr_row.path).read_bytes()
    assert sr_row.sop_instance_uid not in {r.sr_sop_instance_uid for r in results.values()
                                           if r.id != failed.id}
    assert (data / failed.pdf_path).read_bytes().startswith(b"%PDF-")
    diagnostic = results[str(fields[0].SOPInstanceUID)]
    assert diagnostic.stage == "Malignant-Pre" and by_result[diagnostic.id] == {
        "seg", "sr", "pdf"}

    summary = _summarise(ctx, pipeline)
    assert summary.stage == "Malignant-Pre"
    assert summary.quality == {"fields": 5, "analysed": 1, "quality_insufficient": 3,
                               "failed": 1}
    sr = hd.sr.srread(data / next(
        d.path for d in _deliveries(ctx) if d.kind == "summary_sr"))
    [group] = sr.content.get_image_measurement_groups()
    figures = {m.name.value: m.value for m in group.get_measurements()}
    assert (figures["FIELDS-ANALYSED"], figures["FIELDS-LOW-QUAL"],
            figures["FIELDS-FAILED"]) == (1, 3, 1)
    evidence = {r.ReferencedSOPInstanceUID
                for e in sr.CurrentRequestedProcedureEvidenceSequence
                for se in e.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    assert evidence == {str(ds.SOPInstanceUID) for ds in fields}  # the failed field too


def _deliveries(ctx: NodeContext) -> list[Delivery]:
    with ctx.session_factory() as s:
        return list(s.execute(select(Delivery)).scalars())


def test_a_study_without_a_usable_field_gets_a_summary_without_a_stage(node) -> None:
    ctx, intake, pipeline = node
    study_uid = pydicom.uid.generate_uid(prefix="2.25.")
    good, _ = smear(103)
    for image in (good[:30, :30], cv2.GaussianBlur(good, (0, 0), 15)):
        intake.accept(part10_bytes(_field(image, study_uid)))
    assert _run_all(ctx, pipeline) == 2
    summary = _summarise(ctx, pipeline)
    assert summary.stage is None and summary.confidence is None
    assert summary.quality == {"fields": 2, "analysed": 0, "quality_insufficient": 2,
                               "failed": 0}
    assert summary.sr_sop_instance_uid and summary.pdf_sop_instance_uid
    kinds = sorted(d.kind for d in _deliveries(ctx) if d.result_fk == summary.id)
    assert kinds == ["summary_pdf", "summary_sr"]


def test_a_doctor_s_verification_of_a_non_diagnostic_result_queues_no_verified_report(
        node) -> None:
    ctx, intake, pipeline = node
    good, _ = smear(104)
    intake.accept(part10_bytes(_field(good[:30, :30], pydicom.uid.generate_uid())))
    assert _run_all(ctx, pipeline) == 1
    with ctx.session_factory.begin() as s:
        user = add_user(s, "doc", "Long-enough-pass-42", "doctor", full_name="Ann Doc")
        result = s.execute(select(Result)).scalar_one()
        assert result.sr_sop_instance_uid  # it now has the non-diagnostic SR
        done = verify_result(s, result, "accept", stage=None, comment=None, user_id=user.id,
                             actor="doc", actor_kind="user")
        assert not done.report_queued
    with ctx.session_factory() as s:
        assert s.execute(select(Job).where(Job.kind == "verified_report")).first() is None


def test_a_job_whose_worker_died_on_its_last_attempt_is_answered_as_failed(node) -> None:
    """The sweep fails it for good (its lease expired on the last attempt) and the workers
    answer it like any other failure: the "could not be analysed" SR and PDF are queued."""
    from bcd_node.jobs.queue import LOST_ON_LAST_ATTEMPT
    from bcd_node.jobs.workers import Workers

    ctx, intake, pipeline = node
    good, _ = smear(105)
    ds = _field(good, pydicom.uid.generate_uid(prefix="2.25."))
    intake.accept(part10_bytes(ds))
    with ctx.session_factory.begin() as s:
        s.execute(update(Job).values(max_attempts=1))
        dead = claim(s, "a-worker-that-dies", 60)
        assert dead is not None
        # its worker died: the lease has run out
        s.execute(update(Job).where(Job.id == dead.id).values(
            lease_expires_at=utcnow() - timedelta(seconds=1)))
    workers = Workers(ctx, pipeline.run, 0, on_failed=pipeline.job_failed)
    assert workers.step("the-sweeping-worker") is False  # nothing left to claim
    with ctx.session_factory() as s:
        job = s.get(Job, dead.id)
        assert (job.state, job.last_error) == (JobState.FAILED, LOST_ON_LAST_ATTEMPT)
        result = s.execute(select(Result)).scalar_one()
        kinds = sorted(d.kind for d in s.execute(select(Delivery)).scalars())
    assert result.stage is None and result.needs_review
    assert result.quality == {"status": "failed", "reason": LOST_ON_LAST_ATTEMPT}
    assert kinds == ["pdf", "sr"]
    data = Path(ctx.settings.storage.data_dir)
    assert b"Could not be analysed: worker lost on the last attempt" in next(
        (data / d.path).read_bytes() for d in _deliveries(ctx) if d.kind == "sr")


def test_a_retried_failure_that_succeeds_supersedes_its_failed_answer(node) -> None:
    """Retried (``bcd-node jobs retry``), the field's diagnostic SR names the "could not be
    analysed" SR as its predecessor, so the PACS is not left with two contradicting answers;
    the study is summarised again; running the job twice builds the same SR."""
    from bcd_node.db.models import AuditEvent
    from bcd_node.jobs.retry import JobRetryError, retry_failed_jobs

    ctx, intake, pipeline = node
    good, _ = smear(106)
    ds = _field(good, pydicom.uid.generate_uid(prefix="2.25."))
    intake.accept(part10_bytes(ds))
    assert _run_all(ctx, pipeline, fail_sop=str(ds.SOPInstanceUID)) == 1
    with ctx.session_factory.begin() as s:
        failed = s.execute(select(Result)).scalar_one()
        failed_sr = failed.sr_sop_instance_uid
        [job_id] = s.execute(select(Job.id).where(Job.state == JobState.FAILED)).scalars()
        s.execute(update(Study).values(summary_done_at=utcnow()))
    assert failed.quality["status"] == "failed" and failed_sr

    with ctx.session_factory.begin() as s, pytest.raises(JobRetryError, match="no job 999"):
        retry_failed_jobs(s, [job_id, 999], actor="ops", actor_kind="cli")
    with ctx.session_factory.begin() as s:
        assert retry_failed_jobs(s, None, actor="ops", actor_kind="cli") == [job_id]
    with ctx.session_factory.begin() as s, pytest.raises(JobRetryError, match="has not failed"):
        retry_failed_jobs(s, [job_id], actor="ops", actor_kind="cli")
    with ctx.session_factory() as s:
        assert s.execute(select(Study.summary_done_at)).scalar_one() is None
        [event] = s.execute(select(AuditEvent).where(
            AuditEvent.action == "job_retry")).scalars()
        assert event.object_ref == f"job:{job_id}"
    assert _run_all(ctx, pipeline) == 1

    with ctx.session_factory() as s:
        result = s.execute(select(Result)).scalar_one()
        [sr_row] = [d for d in s.execute(select(Delivery)).scalars()
                    if d.kind == "sr" and d.sop_instance_uid == result.sr_sop_instance_uid]
    assert result.stage == "Malignant-Pre" and result.sr_sop_instance_uid != failed_sr
    data = Path(ctx.settings.storage.data_dir)
    sr = pydicom.dcmread(data / sr_row.path)
    [study_ref] = sr.PredecessorDocumentsSequence
    [series_ref] = study_ref.ReferencedSeriesSequence
    assert [r.ReferencedSOPInstanceUID for r in series_ref.ReferencedSOPSequence] == [failed_sr]
    assert series_ref.SeriesInstanceUID == sr.SeriesInstanceUID  # the field's SR series
    # run again (at least once delivery): the same SR, the same predecessor
    with ctx.session_factory.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(state=JobState.QUEUED,
                                                             attempts=0))
    assert _run_all(ctx, pipeline) == 1
    again = pydicom.dcmread(data / sr_row.path)
    assert again.SOPInstanceUID == sr.SOPInstanceUID
    assert again.PredecessorDocumentsSequence == sr.PredecessorDocumentsSequence


@pytest.mark.integration  # dciodvfy
def test_an_image_whose_file_is_lost_is_answered_from_its_records(node, tmp_path) -> None:
    """The image was acknowledged, then its stored file went (a disk, a file system that
    failed): its job fails for good, and its "could not be analysed" answer is made from what
    the node recorded when it arrived. It had no answer at all before, though every
    acknowledged image must get one (a walk found it)."""
    from bcd_node.jobs.workers import Workers
    from tests.support.dicomcheck import assert_dciodvfy_clean

    ctx, intake, pipeline = node
    ds = _field(smear(103)[0], pydicom.uid.generate_uid(prefix="2.25."))
    ds.PatientName = "Łódź^Zofia"
    intake.accept(part10_bytes(ds))
    data = Path(ctx.settings.storage.data_dir)
    with ctx.session_factory() as s:
        inst = s.execute(select(Instance)).scalar_one()
    (data / inst.path).unlink()
    workers = Workers(ctx, pipeline.run, 0, on_failed=pipeline.job_failed,
                      run_batch=pipeline.run_batch)
    assert workers.step("test-worker")  # a missing file fails for good at once
    with ctx.session_factory() as s:
        job = s.execute(select(Job)).scalar_one()
        result = s.execute(select(Result)).scalar_one()
        [sr_row] = s.execute(select(Delivery).where(Delivery.kind == "sr")).scalars().all()
    assert job.state == JobState.FAILED and "stored file" in str(job.last_error)
    assert str(data) not in str(job.last_error)  # the answer names no path of the node's
    assert result.stage is None and result.quality["status"] == "failed"
    assert_dciodvfy_clean(data / sr_row.path)
    sr = pydicom.dcmread(data / sr_row.path)
    assert (sr.PatientID, str(sr.PatientName), sr.StudyInstanceUID, sr.AccessionNumber) == (
        "PAT-1", "Łódź^Zofia", ds.StudyInstanceUID, "ACC1")
    evidence = {r.ReferencedSOPInstanceUID
                for e in sr.CurrentRequestedProcedureEvidenceSequence
                for se in e.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    assert evidence == {ds.SOPInstanceUID}
    assert b"Could not be analysed: stored file" in (data / sr_row.path).read_bytes()
    # The study's summary refers to it from its records too (it failed for good on the
    # unreadable file, and the study got none).
    summary = _summarise(ctx, pipeline)
    assert summary.quality == {"fields": 1, "analysed": 0, "quality_insufficient": 0,
                               "failed": 1}
    summary_sr = pydicom.dcmread(data / next(
        d.path for d in _deliveries(ctx) if d.kind == "summary_sr"))
    assert {r.ReferencedSOPInstanceUID
            for e in summary_sr.CurrentRequestedProcedureEvidenceSequence
            for se in e.ReferencedSeriesSequence for r in se.ReferencedSOPSequence} == {
        ds.SOPInstanceUID}
