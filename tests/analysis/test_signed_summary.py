"""Signing a case: the doctor's verification of the study summary result makes the VERIFIED
summary SR and the signed summary PDF, queued for the PACS (it failed with "result N not found"
before), and a failed signed-report job shows on the case."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from sqlalchemy import select, update

from bcd_node.analysis.pipeline import Pipeline
from bcd_node.analysis.summary import enqueue_study_summaries
from bcd_node.db.models import (
    AuditEvent,
    Delivery,
    Job,
    JobKind,
    JobState,
    Result,
    ResultScope,
    Role,
    Study,
    StudyStatus,
    User,
    utcnow,
)
from bcd_node.errors import ValidationError
from bcd_node.intake.intake import Intake
from bcd_node.jobs.queue import claim, fail
from bcd_node.records.users import add_user
from bcd_node.records.verification import NotSignedError, amend_case, verify_result
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings
from tests.support.dicomcheck import assert_dciodvfy_clean
from tests.support.images import part10_bytes, vl_micro
from tests.support.pipeline import run_all
from tests.support.postgres import ON_BOTH_DATABASES
from tests.support.predictions import OneBlastAnalyzer
from tests.support.tools import require_tool

PASSWORD = "a long enough password"


@pytest.fixture
def node(database_url, write_config, monkeypatch) -> Any:
    """A node with a PACS destination, on SQLite, or on PostgreSQL (``ON_BOTH_DATABASES``)."""
    monkeypatch.setenv("BCD_WEB_TIMEZONE", "Europe/Zurich")  # web.timezone
    ctx = open_node(load_settings(write_config(
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 1\n',
        database_url=database_url)))
    with ctx.session_factory.begin() as s:
        add_user(s, "dr.house", PASSWORD, Role.DOCTOR, full_name="Gregory House")
    with Intake(ctx) as intake:
        yield ctx, intake, Pipeline(ctx, OneBlastAnalyzer())
    ctx.engine.dispose()


def _summarised_study(ctx: NodeContext, intake: Intake, pipeline: Pipeline, fields: int) -> str:
    study_uid = pydicom.uid.generate_uid(prefix="2.25.")
    for seed in range(fields):
        intake.accept(part10_bytes(vl_micro(seed + 1, study_uid=study_uid)))
    assert run_all(ctx, pipeline) == fields
    with ctx.session_factory.begin() as s:
        s.execute(update(Study).values(last_received_at=utcnow() - timedelta(days=1)))
    assert enqueue_study_summaries(ctx) == 1
    assert run_all(ctx, pipeline) == 1
    return study_uid


def _text(path: Path) -> str:
    """The text of a PDF as poppler's pdftotext reads it."""
    return subprocess.run([require_tool("pdftotext"), str(path), "-"], capture_output=True,
                          text=True, check=True).stdout


def _sign(ctx: NodeContext, decision: str, stage: str | None, comment: str) -> int:
    with ctx.session_factory.begin() as s:
        summary = s.execute(select(Result).where(Result.scope == ResultScope.STUDY)).scalar_one()
        doctor = s.execute(select(User).where(User.username == "dr.house")).scalar_one()
        done = verify_result(s, summary, decision, stage=stage, comment=comment,
                             user_id=doctor.id, actor="dr.house", actor_kind="user")
        assert done.report_queued
        return summary.id


@pytest.mark.integration
@ON_BOTH_DATABASES
def test_signing_the_summary_makes_the_verified_summary_sr_and_pdf(node,
                                                                  encoded_like_pydicom) -> None:
    """On PostgreSQL too: there, the signed case's objects did not fit the outbox's 16
    characters of ``kind`` ("verified_summary_pdf"), and every signed report failed."""
    ctx, intake, pipeline = node
    study_uid = _summarised_study(ctx, intake, pipeline, 2)
    with ctx.session_factory() as s:
        assert s.execute(select(Study.status)).scalar_one() == StudyStatus.AWAITING_REVIEW
    summary_id = _sign(ctx, "correct", "Malignant-Pro", "Blasts on review of all fields.")
    with ctx.session_factory() as s:
        # Signed, but its report is not made yet.
        assert s.execute(select(Study.status)).scalar_one() == StudyStatus.SIGNED_CORRECTED
    assert run_all(ctx, pipeline) == 1
    with ctx.session_factory() as s:
        job = s.execute(select(Job).where(Job.kind == JobKind.VERIFIED_REPORT)).scalar_one()
        assert job.state == JobState.DONE, job.last_error
        summary = s.get(Result, summary_id)
        study = s.execute(select(Study)).scalar_one()
        kinds = {d.kind: d for d in s.execute(select(Delivery).where(
            Delivery.result_fk == summary_id)).scalars()}
    assert (study.status, study.stage) == (StudyStatus.SIGNED_CORRECTED, "Malignant-Pro")
    assert summary.verified_pdf_path and summary.verified_pdf_path != summary.pdf_path
    assert {"verified_summary_sr", "verified_summary_pdf"} <= set(kinds)
    data = Path(ctx.settings.storage.data_dir)
    sr_path = data / kinds["verified_summary_sr"].path
    assert_dciodvfy_clean(sr_path)
    assert_dciodvfy_clean(data / kinds["verified_summary_pdf"].path)
    sr = hd.sr.srread(sr_path)
    assert (sr.VerificationFlag, sr.PreliminaryFlag, sr.CompletionFlag) == (
        "VERIFIED", "FINAL", "COMPLETE")
    assert str(sr.StudyInstanceUID) == study_uid
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "House^Gregory"
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert predecessor == summary.sr_sop_instance_uid
    dump = subprocess.run([require_tool("dsrdump"), "+Pl", str(sr_path)], capture_output=True,
                          text=True, check=True).stdout
    assert "Malignant-Pro" in dump and "Blasts on review of all fields." in dump
    # The signed PDF leads with the doctor's verdict, in the configured zone.
    text = _text(data / summary.verified_pdf_path)
    verdict = text.index("Doctor's verdict")
    assert verdict < text.index("AI finding")
    assert "Stage: Malignant-Pro" in text and "the AI proposed Malignant-Pre" in text
    assert "Signed by Gregory House" in text and "UTC+01:00" in text
    assert study_uid not in text.replace("\n", "").split("Study ")[0]  # UID only in the footer
    # The AI's own summary PDF is still the one served as "AI".
    assert "UNVERIFIED" in _text(data / summary.pdf_path)
    # Every object of the case was written with pydicom's bytes (tests.support.encoding): the
    # fields' SEG, SR and PDF, the summary's SR and PDF, and the signed ones.
    assert encoded_like_pydicom == {"1.2.840.10008.5.1.4.1.1.66.4": 2,
                                    "1.2.840.10008.5.1.4.1.1.88.34": 4,
                                    "1.2.840.10008.5.1.4.1.1.104.1": 4}


@pytest.mark.integration
def test_a_failed_signed_report_shows_on_the_case(node) -> None:
    ctx, intake, pipeline = node
    _summarised_study(ctx, intake, pipeline, 1)
    _sign(ctx, "accept", None, "")
    with ctx.session_factory.begin() as s:
        job = claim(s, "test-worker", 60)
    assert job is not None and job.kind is JobKind.VERIFIED_REPORT
    with ctx.session_factory.begin() as s:
        assert fail(s, job, "boom: the disk is gone")
    pipeline.job_failed(job)
    with ctx.session_factory() as s:
        assert s.execute(select(Study.status)).scalar_one() == StudyStatus.FAILED


@pytest.mark.integration
def test_a_field_after_the_signature_makes_a_new_summary_to_sign(node) -> None:
    ctx, intake, pipeline = node
    study_uid = _summarised_study(ctx, intake, pipeline, 1)
    _sign(ctx, "accept", None, "")
    assert run_all(ctx, pipeline) == 1
    with ctx.session_factory() as s:
        assert s.execute(select(Study.status)).scalar_one() == StudyStatus.SIGNED
    # A late field: the case is receiving again, then its new summary awaits a signature.
    intake.accept(part10_bytes(vl_micro(9, study_uid=study_uid)))
    with ctx.session_factory() as s:
        assert s.execute(select(Study.status)).scalar_one() == StudyStatus.ANALYSING
    assert run_all(ctx, pipeline) == 1
    with ctx.session_factory.begin() as s:
        s.execute(update(Study).values(last_received_at=utcnow() - timedelta(days=1)))
    assert enqueue_study_summaries(ctx) == 1
    assert run_all(ctx, pipeline) == 1
    with ctx.session_factory() as s:
        summary = s.execute(select(Result).where(Result.scope == ResultScope.STUDY)).scalar_one()
        assert summary.verification == "unverified" and summary.verified_pdf_path is None
        assert summary.quality["fields"] == 2
        assert s.execute(select(Study.status)).scalar_one() == StudyStatus.AWAITING_REVIEW


def _amend(ctx: NodeContext, decision: str, stage: str | None, comment: str,
           reason: str) -> None:
    with ctx.session_factory.begin() as s:
        study = s.execute(select(Study)).scalar_one()
        doctor = s.execute(select(User).where(User.username == "dr.house")).scalar_one()
        amend_case(s, study, decision, stage=stage, comment=comment, reason=reason,
                   user_id=doctor.id, actor="dr.house", actor_kind="user")


@pytest.mark.integration
@ON_BOTH_DATABASES
def test_an_amended_case_gets_a_signed_sr_and_pdf_that_replace_the_signed_ones(node) -> None:
    ctx, intake, pipeline = node
    study_uid = _summarised_study(ctx, intake, pipeline, 2)
    summary_id = _sign(ctx, "accept", None, "Looks pre-B.")
    assert run_all(ctx, pipeline) == 1
    with ctx.session_factory() as s:
        first = s.get(Result, summary_id)
        first_sr, first_pdf = first.verified_sr_sop_instance_uid, first.verified_pdf_path
    assert first_sr and first_pdf
    _amend(ctx, "correct", "Malignant-Pro", "Pro-B on second look.",
           "Wrong stage chosen when signing.")
    with ctx.session_factory() as s:
        amended = s.get(Result, summary_id)
        # The amended signature shows at once; its report is being made.
        assert (amended.verified_stage, amended.verified_sr_sop_instance_uid,
                amended.verified_pdf_path) == ("Malignant-Pro", None, None)
        assert amended.amends["reason"] == "Wrong stage chosen when signing."
        assert (amended.amends["sr"], amended.amends["stage"]) == (first_sr, "Malignant-Pre")
        assert s.execute(select(Study.status)).scalar_one() == StudyStatus.SIGNED_CORRECTED
    assert run_all(ctx, pipeline) == 1
    with ctx.session_factory() as s:
        jobs = s.execute(select(Job).where(Job.kind == JobKind.VERIFIED_REPORT)).scalars().all()
        assert [job.state for job in jobs] == [JobState.DONE] * 2, [j.last_error for j in jobs]
        amended = s.get(Result, summary_id)
        deliveries = s.execute(select(Delivery).where(
            Delivery.result_fk == summary_id,
            Delivery.kind.in_(["verified_summary_sr", "verified_summary_pdf"]))).scalars().all()
    # The earlier signed objects stay queued; the amended ones are new objects beside them.
    assert len(deliveries) == 4
    assert amended.verified_sr_sop_instance_uid not in (None, first_sr)
    assert amended.verified_pdf_path not in (None, first_pdf)
    data = Path(ctx.settings.storage.data_dir)
    new_sr, new_pdf = (data / max((d for d in deliveries if d.kind == kind),
                                  key=lambda d: d.id).path
                       for kind in ("verified_summary_sr", "verified_summary_pdf"))
    assert pydicom.dcmread(new_sr).SOPInstanceUID == amended.verified_sr_sop_instance_uid
    assert_dciodvfy_clean(new_sr)
    assert_dciodvfy_clean(new_pdf)
    sr = hd.sr.srread(new_sr)
    assert (sr.VerificationFlag, str(sr.StudyInstanceUID)) == ("VERIFIED", study_uid)
    # Its predecessor is the signed SR it replaces, not the AI's summary.
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert predecessor == first_sr
    dump = subprocess.run([require_tool("dsrdump"), "+Pl", str(new_sr)], capture_output=True,
                          text=True, check=True).stdout
    assert "Malignant-Pro" in dump and "Wrong stage chosen when signing." in dump
    assert "Amended report: it replaces the report signed by Gregory House" in dump
    assert "Pro-B on second look." in dump
    assert pydicom.dcmread(new_pdf).DocumentTitle == "Blood smear study summary, signed (amended)"
    text = " ".join(_text(data / amended.verified_pdf_path).split())
    assert "Doctor's verdict (signed, amended)" in text
    assert "it replaces the report signed by Gregory House on" in text
    assert "Reason: Wrong stage chosen when signing." in text
    # What the replaced report said, so that a reader need not open it to compare.
    assert "(stage Malignant-Pre; comment: Looks pre-B.). Reason:" in text
    assert "(stage Malignant-Pre; comment: Looks pre-B.)" in " ".join(dump.split())
    assert "Stage: Malignant-Pro" in text and "Comment: Pro-B on second look." in text
    # The first signed report is kept as it was.
    assert "amended" not in _text(data / first_pdf)


@pytest.mark.integration
def test_two_doctors_amending_at_once_do_not_overwrite_each_other(node) -> None:
    """Both loaded the signed case; the second amendment to be submitted is refused, and the
    first one stands (amendments were not claimed in the database)."""
    from bcd_node.records.verification import AlreadyVerifiedError, _verify

    ctx, intake, pipeline = node
    _summarised_study(ctx, intake, pipeline, 1)
    summary_id = _sign(ctx, "accept", None, "Looks pre-B.")
    assert run_all(ctx, pipeline) == 1  # the signed report: now it can be amended
    with ctx.session_factory() as late:
        # The second doctor's request has checked the case (signed, its report made) and
        # holds it as it was, when the first doctor's amendment is committed.
        stale = late.get(Result, summary_id)
        assert stale.verified_sr_sop_instance_uid
        doctor = late.execute(select(User).where(User.username == "dr.house")).scalar_one()
        _amend(ctx, "correct", "Malignant-Pro", "Pro-B.", "First amendment.")
        with pytest.raises(AlreadyVerifiedError, match="amended by another doctor"):
            _verify(late, stale, "correct", stage="Malignant-Early", comment="Early.",
                    user_id=doctor.id, actor="dr.house", actor_kind="user", source="",
                    amendment="Second amendment.")
        late.rollback()
    with ctx.session_factory() as s:
        summary = s.get(Result, summary_id)
        assert (summary.verified_stage, summary.amends["reason"]) == ("Malignant-Pro",
                                                                      "First amendment.")


@pytest.mark.integration
def test_a_case_is_amended_only_once_signed_and_its_report_made_and_with_a_reason(
        node) -> None:
    ctx, intake, pipeline = node
    _summarised_study(ctx, intake, pipeline, 1)
    with pytest.raises(NotSignedError, match="not signed"):
        _amend(ctx, "accept", None, "", "Typo.")
    _sign(ctx, "accept", None, "")
    with pytest.raises(NotSignedError, match="not made yet"):
        _amend(ctx, "accept", None, "", "Typo.")
    assert run_all(ctx, pipeline) == 1
    for reason in ("", "   ", "x" * 501):
        with pytest.raises(ValidationError, match="reason"):
            _amend(ctx, "accept", None, "", reason)
    with pytest.raises(ValidationError, match="corrected stage"):
        _amend(ctx, "correct", None, "", "Typo.")
    with ctx.session_factory() as s:
        summary = s.execute(select(Result).where(Result.scope == ResultScope.STUDY)).scalar_one()
        assert summary.amends is None and summary.verified_pdf_path
        assert s.execute(select(Job).where(Job.state != JobState.DONE)).first() is None
    _amend(ctx, "accept", None, "Comment corrected.", "Typo in the comment.")
    with ctx.session_factory() as s:
        events = s.execute(select(AuditEvent).where(
            AuditEvent.action == "amend_case_accept")).scalars().all()
    assert len(events) == 1
    assert events[0].details["amendment_reason"] == "Typo in the comment."
    assert events[0].details["replaces"]["comment"] is None
