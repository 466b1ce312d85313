"""The study summary: every analysed field of a quiet study combined into a study-level SR and
PDF.

A study is summarised once no image arrived for ``workers.study_quiet_seconds`` and none of its
analyses is still queued or running (:func:`enqueue_study_summaries`, run on a schedule by every
worker process). The summary's stage is the vote of the fields' stages, its probabilities their
mean; a changed field (a new revision) makes a new summary, as a new field does. The summary
counts the fields analysed, non-diagnostic (refused by the quality gate) and failed (their
``analyze`` job failed for good), and references each of them whose file can be read; a study
without any diagnostic field gets a summary too, without a stage.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from bcd_node.analysis.context import AnalysisContext
from bcd_node.analysis.lis import queue_case_messages
from bcd_node.analysis.publish import Output, complete_or_raise, publish, write_files
from bcd_node.db.models import (
    ACTIVE_JOB_STATES,
    Instance,
    Job,
    JobKind,
    JobState,
    Patient,
    Result,
    ResultScope,
    Study,
    utcnow,
)
from bcd_node.errors import PermanentError
from bcd_node.jobs.queue import Claimed
from bcd_node.records.studies import STAGE_ORDER, vote
from bcd_node.report.summary import FieldRow, SummaryData, render_summary
from bcd_node.runtime import NodeContext
from bcd_node.store.layout import DataLayout
from dicom.encapsulated import build_encapsulated_pdf
from dicom.errors import DicomError
from dicom.pixels import read_dataset
from dicom.series import ResultKind
from dicom.summary import StudyFindings, build_study_summary_sr, summary_kind

LOGGER = logging.getLogger(__name__)


def _summary_done(session: Session, study_id: int) -> None:
    """Record that the study's summary is made (or that it has nothing to summarise)."""
    study = session.get(Study, study_id)
    if study is None:
        raise LookupError(f"study {study_id} does not exist")
    study.summary_done_at = utcnow()


class StudySummaries:
    """The ``study_summary`` job."""

    def __init__(self, context: AnalysisContext) -> None:
        self.context = context

    def make(self, job: Claimed) -> None:
        """Combine every analysed field of a quiet study into a study-level SR and PDF."""
        ctx = self.context
        settings = ctx.settings
        with ctx.node.session_factory() as session:
            study = session.get(Study, job.study_fk) if job.study_fk else None
            patient = session.get(Patient, study.patient_fk) if study is not None else None
            if study is None or patient is None:
                raise PermanentError(f"job {job.id}: study {job.study_fk} not found")
            rows = session.execute(
                select(Result, Instance).join(Instance, Result.instance_fk == Instance.id)
                .where(Result.study_fk == study.id, Result.scope == ResultScope.INSTANCE,
                       Result.model_version == ctx.model_version)
                .order_by(Instance.received_at, Instance.id)).all()
            # Fields whose analysis failed for good (and that have no result of this model).
            with_result = {i.id for _, i in rows}
            failed = [i for i in session.execute(
                select(Instance).join(Job, Job.instance_fk == Instance.id)
                .where(Job.study_fk == study.id, Job.kind == JobKind.ANALYZE,
                       Job.state == JobState.FAILED)
                .order_by(Instance.received_at, Instance.id)).scalars().unique()
                if i.id not in with_result]
            session.expunge_all()
        staged = [(r, i) for r, i in rows if r.stage]
        # A field whose failure was answered "could not be analysed" has a result too.
        answered_failures = {r.id for r, _ in rows if (r.quality or {}).get("status") == "failed"}
        stage = vote([r.stage for r, _ in rows if r.stage])
        # Every field is referenced, the non-diagnostic and failed ones too: the summary speaks
        # of them (a failed field whose file cannot be read is counted, not referenced).
        sources = [read_dataset(ctx.store.path(i.path)) for _, i in rows]
        referenced = [i for _, i in rows]
        for inst in failed:
            try:
                sources.append(read_dataset(ctx.store.path(inst.path)))
                referenced.append(inst)
            except (DicomError, OSError) as exc:
                LOGGER.warning("job %d: failed field %s is not referenced by the summary: %s",
                               job.id, inst.sop_instance_uid, exc)
        if not sources:
            with ctx.node.session_factory.begin() as session:
                _summary_done(session, study.id)
                complete_or_raise(session, job)
            LOGGER.info("job %d: study %s has no field that can be referenced; no summary",
                        job.id, study.study_instance_uid)
            return
        probs: dict[str, float] | None = None
        fraction = 0.0
        if stage is not None:
            names = list(STAGE_ORDER)
            means = {n: float(np.mean([r.probabilities.get(n, 0.0) for r, _ in staged]))
                     for n in names}
            total = sum(means.values()) or 1.0
            probs = {n: v / total for n, v in means.items()}
            pixels = [max(1, i.rows * i.columns * i.frames) for _, i in staged]
            fraction = sum(r.blast_area_fraction * p
                           for (r, _), p in zip(staged, pixels)) / sum(pixels)
        findings = StudyFindings(
            stage=stage, probabilities=probs, fields_analysed=len(staged),
            fields_needing_review=sum(r.needs_review for r, _ in rows),
            fields_quality_insufficient=len(rows) - len(staged) - len(answered_failures),
            total_blasts=int(sum(r.blast_count for r, _ in staged)),
            blast_area_fraction=min(1.0, fraction),
            fields_failed=len(answered_failures) + len(failed))
        # A changed field (a new revision) makes a new summary, as a new field does.
        revisions = {i.sop_instance_uid: i.revision for i in referenced}
        sr = build_study_summary_sr(sources, findings, algorithm=ctx.algorithm,
                                    uid_root=settings.uids.root, revisions=revisions)
        kind = summary_kind(sources, revisions)
        pdf = render_summary(SummaryData(
            patient_name=patient.name or "(no name)", patient_id=patient.patient_id or "(no id)",
            study_instance_uid=study.study_instance_uid,
            accession_number=study.accession_number, study_date=study.study_date, stage=stage,
            probabilities=probs, total_blasts=findings.total_blasts,
            blast_area_fraction=findings.blast_area_fraction,
            fields=[FieldRow(i.sop_instance_uid, r.stage, r.confidence, r.blast_count,
                             r.needs_review, failed=r.id in answered_failures) for r, i in rows]
            + [FieldRow(i.sop_instance_uid, None, None, 0, False, failed=True) for i in failed],
            model_name=ctx.model_name, model_version=ctx.model_version,
            demonstration_model=ctx.demonstration_model, created_at=utcnow()))
        enc = build_encapsulated_pdf(sources[0], pdf, algorithm=ctx.algorithm,
                                     further_sources=sources[1:],
                                     title="Blood smear study summary", uid_kind=f"{kind}-pdf",
                                     series_kind=ResultKind.SUMMARY_PDF,
                                     field_number=len(sources), uid_root=settings.uids.root)
        folder = DataLayout.study_results(study.id, ctx.model_version)
        pdf_rel = f"{folder}/{kind}.pdf"
        outputs = [Output("summary_sr", sr, f"{folder}/{kind}-sr.dcm"),
                   Output("summary_pdf", enc, f"{folder}/{kind}-pdf.dcm")]
        write_files(ctx.store, folder, (pdf_rel, pdf), outputs)
        with ctx.node.session_factory.begin() as session:
            result = session.execute(select(Result).where(
                Result.study_fk == study.id, Result.scope == ResultScope.STUDY,
                Result.model_version == ctx.model_version)).scalar_one_or_none()
            if result is None:
                result = Result(study_fk=study.id, scope=ResultScope.STUDY,
                                model_name=ctx.model_name, model_version=ctx.model_version)
                session.add(result)
            result.stage = stage
            result.probabilities = probs or {}
            result.confidence = probs[stage] if probs is not None and stage is not None else None
            result.blast_count = findings.total_blasts
            result.blast_area_fraction = findings.blast_area_fraction
            result.needs_review = findings.fields_needing_review > 0
            result.demonstration_model = ctx.demonstration_model
            result.quality = {"fields": len(rows) + len(failed),
                              "analysed": findings.fields_analysed,
                              "quality_insufficient": findings.fields_quality_insufficient,
                              "failed": findings.fields_failed}
            result.pdf_path = pdf_rel
            result.sr_sop_instance_uid = str(sr.SOPInstanceUID)
            result.pdf_sop_instance_uid = str(enc.SOPInstanceUID)
            publish(session, job, result, outputs, settings.destinations, study_id=study.id,
                    update_study=_summary_done)
            queue_case_messages(session, ctx.store, settings.lis, study.id)
        ctx.node.wake_delivery()
        LOGGER.info("job %d: study %s summarised: %d field(s) analysed, %d non-diagnostic, %d "
                    "failed: %s", job.id, study.study_instance_uid, len(staged),
                    findings.fields_quality_insufficient, findings.fields_failed,
                    stage or "no stage")


def enqueue_study_summaries(context: NodeContext) -> int:
    """Queue a summary for each study quiet for ``workers.study_quiet_seconds``; returns how many.

    A study qualifies when it has no summary since its last image, none of its analyses is
    still queued or running, and no summary job is already waiting.
    """
    quiet = context.settings.workers.study_quiet_seconds
    cutoff = utcnow() - timedelta(seconds=quiet)
    busy = select(Job.study_fk).where(
        Job.kind.in_([JobKind.ANALYZE, JobKind.STUDY_SUMMARY]),
        Job.state.in_(ACTIVE_JOB_STATES), Job.study_fk.is_not(None))
    with context.session_factory.begin() as session:
        # Every worker process runs this on the same schedule. On PostgreSQL a study that
        # another one is queueing right now is locked: skip it. Looking again once the rows
        # are locked (a fresh snapshot) catches a job committed in between.
        ids = list(session.execute(select(Study.id).where(
            Study.summary_done_at.is_(None), Study.last_received_at < cutoff,
            Study.id.not_in(busy)).limit(100).with_for_update(skip_locked=True)).scalars())
        if ids:
            taken = set(session.execute(busy.where(Job.study_fk.in_(ids))).scalars())
            ids = [i for i in ids if i not in taken]
        for study_id in ids:
            session.add(Job(kind=JobKind.STUDY_SUMMARY, study_fk=study_id,
                            max_attempts=context.settings.workers.max_attempts))
    if ids:
        LOGGER.info("queued study summaries for %d quiet stud%s", len(ids),
                    "y" if len(ids) == 1 else "ies")
    return len(ids)
