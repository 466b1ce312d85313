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
from bcd_node.intake.intake import Intake
from bcd_node.jobs.queue import claim, fail
from bcd_node.records.users import add_user
from bcd_node.records.verification import verify_result
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
