"""The pipeline and a changed image (the next revision of a SOP Instance UID), with a test double
for the model: jobs overtaken by a newer revision, a verification withdrawn while its report is
made or made while the changed image waited, and the study summary of a changed field."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pydicom
import pytest
from sqlalchemy import select, update

import bcd_node.analysis.verified
from bcd_node.analysis.pipeline import Pipeline
from bcd_node.analysis.summary import enqueue_study_summaries
from bcd_node.db.models import (
    AuditEvent,
    Delivery,
    Instance,
    Job,
    JobKind,
    JobState,
    Result,
    Role,
    Study,
    User,
    utcnow,
)
from bcd_node.intake.intake import Intake
from bcd_node.jobs.queue import claim
from bcd_node.records.users import hash_password
from bcd_node.runtime import NodeContext
from dicom.series import ResultKind, series_uid
from tests.support.dicomcheck import assert_dciodvfy_clean
from tests.support.images import part10_bytes, vl_micro
from tests.support.predictions import OneBlastAnalyzer, Pred


class Analyzer(OneBlastAnalyzer):
    """Always Malignant-Pre with a small blast; ``during`` runs inside predict (to let another
    version of the image arrive while the model works)."""

    def __init__(self) -> None:
        self.during: Any = None

    def predict(self, images: list[np.ndarray], um_per_pixel=None) -> list[Pred]:
        if self.during is not None:
            during, self.during = self.during, None
            during()
        return super().predict(images, um_per_pixel)


_FIRST = vl_micro(1, patient_id="PAT-A")


def version(seed: int) -> bytes:
    """Version ``seed`` of one image: other pixels, the same patient, study, series and UID."""
    ds = vl_micro(seed, patient_id="PAT-A")
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(ds, keyword, _FIRST.get(keyword))
    ds.file_meta.MediaStorageSOPInstanceUID = _FIRST.SOPInstanceUID
    return part10_bytes(ds)


@pytest.fixture
def node(ctx: NodeContext) -> Any:
    analyzer = Analyzer()
    with Intake(ctx) as intake:
        yield ctx, intake, analyzer, Pipeline(ctx, analyzer)


def next_job(ctx: NodeContext) -> Any:
    with ctx.session_factory.begin() as s:
        return claim(s, "test-worker", 60)


def run_all(ctx: NodeContext, pipeline: Pipeline) -> int:
    n = 0
    while (job := next_job(ctx)) is not None:
        pipeline.run(job)
        n += 1
    return n


def result_row(ctx: NodeContext, scope: str = "instance") -> Result | None:
    with ctx.session_factory() as s:
        return s.execute(select(Result).where(Result.scope == scope)).scalar_one_or_none()


def verify(ctx: NodeContext) -> None:
    with ctx.session_factory.begin() as s:
        doctor = User(username="dr.a", password_hash=hash_password("x" * 12), role=Role.DOCTOR,
                      full_name="Ada Doctor")
        s.add(doctor)
        s.flush()
        result = s.execute(select(Result).where(Result.scope == "instance")).scalar_one()
        result.verification, result.verified_by_fk = "verified", doctor.id
        result.verified_at, result.verified_stage = utcnow(), "Malignant-Pro"
        s.add(Job(kind=JobKind.VERIFIED_REPORT, result_fk=result.id, study_fk=result.study_fk,
                  instance_fk=result.instance_fk))


def states(ctx: NodeContext) -> list[tuple[JobKind, JobState]]:
    with ctx.session_factory() as s:
        return [(j.kind, j.state) for j in s.execute(select(Job).order_by(Job.id)).scalars()]


def delivered_kinds(ctx: NodeContext) -> list[str]:
    with ctx.session_factory() as s:
        return sorted(d.kind for d in s.execute(select(Delivery)).scalars())


def test_a_job_queued_before_the_change_analyses_the_newest_version(node) -> None:
    ctx, intake, _analyzer, pipeline = node
    intake.accept(version(1))
    first = next_job(ctx)  # claimed, then the image changes before it is loaded
    intake.accept(version(2))
    assert pipeline.analyze(first) is not None
    result = result_row(ctx)
    assert result.instance_revision == 1 and result.supersedes is None
    assert result.mask_path.startswith(f"results/{result.instance_fk}/1.0@r1/")
    assert run_all(ctx, pipeline) == 1  # the new version's own job: the same objects again
    assert set(s for _, s in states(ctx)) == {JobState.DONE}
    assert delivered_kinds(ctx) == ["pdf", "seg", "sr"]


def test_job_whose_file_was_replaced_under_it_completes_without_results(node,
                                                                        monkeypatch) -> None:
    ctx, intake, _analyzer, pipeline = node
    intake.accept(version(1))
    load = pipeline.images._load_many

    def load_then_replace(jobs: Any) -> Any:
        loaded = load(jobs)
        intake.accept(version(2))  # removes the file just loaded
        return loaded

    monkeypatch.setattr(pipeline.images, "_load_many", load_then_replace)
    assert pipeline.analyze(next_job(ctx)) is None
    monkeypatch.undo()
    assert result_row(ctx) is None and delivered_kinds(ctx) == []
    assert states(ctx)[0] == (JobKind.ANALYZE, JobState.DONE)
    assert run_all(ctx, pipeline) == 1
    assert result_row(ctx).instance_revision == 1
    assert delivered_kinds(ctx) == ["pdf", "seg", "sr"]


def test_a_version_arriving_during_the_analysis_wins(node) -> None:
    ctx, intake, analyzer, pipeline = node
    intake.accept(version(1))
    analyzer.during = lambda: intake.accept(version(2))
    assert run_all(ctx, pipeline) == 2  # the first completes without results, then the second
    result = result_row(ctx)
    assert result.instance_revision == 1
    with ctx.session_factory() as s:
        uids = set(s.execute(select(Delivery.sop_instance_uid)).scalars())
    assert uids == {result.seg_sop_instance_uid, result.sr_sop_instance_uid,
                    result.pdf_sop_instance_uid}
    with ctx.session_factory() as s:  # revision 0's objects were made but never queued
        paths = set(s.execute(select(Delivery.path)).scalars())
    assert all(p.startswith(f"results/{result.instance_fk}/1.0@r1/") for p in paths)


def test_verification_withdrawn_while_its_report_is_made_sends_nothing(node,
                                                                       monkeypatch) -> None:
    ctx, intake, _analyzer, pipeline = node
    intake.accept(version(1))
    assert run_all(ctx, pipeline) == 1
    verify(ctx)
    build_sr = bcd_node.analysis.verified.build_sr

    def build_then_replace(*args: Any, **kwargs: Any) -> Any:
        sr = build_sr(*args, **kwargs)
        intake.accept(version(2))  # the doctor's image changes meanwhile
        return sr

    monkeypatch.setattr(bcd_node.analysis.verified, "build_sr", build_then_replace)
    job = next_job(ctx)
    assert job.kind is JobKind.VERIFIED_REPORT
    pipeline.run(job)
    assert "verified_sr" not in delivered_kinds(ctx)
    assert states(ctx)[1] == (JobKind.VERIFIED_REPORT, JobState.DONE)
    assert result_row(ctx).verification == "unverified"


def test_a_verification_made_while_the_change_waited_is_withdrawn_by_the_analysis(node) -> None:
    ctx, intake, _analyzer, pipeline = node
    intake.accept(version(1))
    assert run_all(ctx, pipeline) == 1
    intake.accept(version(2))
    verify(ctx)  # not through the console, which refuses it: straight into the database
    with ctx.session_factory.begin() as s:  # its report job is not the point here
        s.execute(update(Job).where(Job.kind == JobKind.VERIFIED_REPORT)
                  .values(state=JobState.DONE))
    assert run_all(ctx, pipeline) == 1
    result = result_row(ctx)
    assert result.verification == "unverified" and result.instance_revision == 1
    with ctx.session_factory() as s:
        [event] = s.execute(select(AuditEvent).where(
            AuditEvent.action == "verification_withdrawn")).scalars()
    assert event.actor == "system" and event.details["instance_revision"] == 0


@pytest.mark.integration  # dciodvfy
def test_verified_report_of_a_revision_lives_in_its_series(node) -> None:
    ctx, intake, _analyzer, pipeline = node
    intake.accept(version(1))
    intake.accept(version(2))
    assert run_all(ctx, pipeline) == 2  # both jobs analyse the newest version
    verify(ctx)
    assert run_all(ctx, pipeline) == 1
    result = result_row(ctx)
    folder = ctx.settings.storage.data_dir / f"results/{result.instance_fk}/1.0@r1"
    ai = pydicom.dcmread(folder / "sr.dcm")
    verified_path = next(folder.glob("sr-verified-*.dcm"))
    assert_dciodvfy_clean(verified_path)
    assert_dciodvfy_clean(next(folder.glob("pdf-verified-*.dcm")))
    verified = pydicom.dcmread(verified_path)
    assert verified.SOPInstanceUID == result.verified_sr_sop_instance_uid
    # Issue 14: the study's verified SRs are a series of their own, numbered by field as the
    # AI's SRs, whatever the field's revision.
    assert verified.SeriesInstanceUID == series_uid(
        ai.StudyInstanceUID, result.model_version, ResultKind.VERIFIED_SR,
        root=ctx.settings.uids.root)
    assert ai.SeriesInstanceUID == series_uid(ai.StudyInstanceUID, result.model_version,
                                              ResultKind.SR, root=ctx.settings.uids.root)
    assert verified.InstanceNumber == ai.InstanceNumber == 1
    assert verified.VerificationFlag == "VERIFIED"


def test_a_changed_field_gets_a_new_study_summary(node) -> None:
    ctx, intake, _analyzer, pipeline = node

    def summarise() -> Result:
        with ctx.session_factory.begin() as s:
            s.execute(update(Study).values(last_received_at=utcnow() - timedelta(days=1)))
        assert enqueue_study_summaries(ctx) == 1
        assert run_all(ctx, pipeline) == 1
        return result_row(ctx, "study")

    intake.accept(version(1))
    assert run_all(ctx, pipeline) == 1
    first = summarise()
    intake.accept(version(2))
    assert run_all(ctx, pipeline) == 1
    second = summarise()
    assert second.sr_sop_instance_uid != first.sr_sop_instance_uid
    assert second.pdf_sop_instance_uid != first.pdf_sop_instance_uid
    assert delivered_kinds(ctx).count("summary_sr") == 2
    with ctx.session_factory() as s:
        assert s.execute(select(Instance.revision)).scalar_one() == 1
