"""The worklist columns of a study (status, stage, confidence), derived from its jobs and results.

One function keeps them current after every change (intake, analysis, summary, failure,
verification), so the worklist reads plain indexed columns and never aggregates. What they
mean is :mod:`bcd_node.records.cases`'s.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from bcd_node.db.models import (
    ACTIVE_JOB_STATES,
    Job,
    JobKind,
    JobState,
    Result,
    ResultScope,
    Study,
    VerificationState,
)
from bcd_node.records.cases import (
    STAGE_ORDER,
    case_attention,
    case_findings,
    case_status,
    vote,
)

__all__ = ["STAGE_ORDER", "vote", "refresh_study", "current_summary", "report_job_failed"]


def current_summary(session: Session, study_id: int) -> Result | None:
    """The study's summary result of the newest model that summarised it, if any."""
    return session.execute(select(Result).where(
        Result.study_fk == study_id, Result.scope == ResultScope.STUDY)
        .order_by(Result.id.desc()).limit(1)).scalar_one_or_none()


def report_job_failed(session: Session, result: Result) -> str | None:
    """The error of the failed job that was to make ``result``'s signed (verified) report, when
    it failed for good and no signed report exists; else None."""
    if result.verification != VerificationState.VERIFIED or result.verified_pdf_path:
        return None
    job = session.execute(select(Job).where(
        Job.result_fk == result.id, Job.kind == JobKind.VERIFIED_REPORT)
        .order_by(Job.id.desc()).limit(1)).scalar_one_or_none()
    if job is None or job.state != JobState.FAILED:
        return None
    return job.last_error or "failed"


#: The columns of a field's result that the case's status, stage and confidence depend on
#: (:class:`~bcd_node.records.cases.FieldFigures`, and the model that made it).
FIELD_COLUMNS = (Result.stage, Result.probabilities, Result.model_version, Result.verification,
                 Result.verified_stage, Result.needs_review, Result.review_reasons)


def refresh_study(session: Session, study_id: int) -> Study:
    """Recompute status, stage and confidence of one study in ``session``.

    The status is :func:`~bcd_node.records.cases.case_status`'s. The stage is the signed
    stage once the case is signed (then without a confidence), otherwise the AI's vote over the
    fields with the case's one confidence (:func:`~bcd_node.records.cases.case_findings`).
    """
    study = session.get(Study, study_id)
    if study is None:
        raise LookupError(f"study {study_id} does not exist")
    # The columns the case's figures read, not whole results: this runs each time one field
    # changes, and a result's other columns (its cells above all) made it slow in large cases.
    results = session.execute(select(*FIELD_COLUMNS).where(
        Result.study_fk == study_id, Result.scope == ResultScope.INSTANCE)).all()
    summary = current_summary(session, study_id)
    states = session.execute(select(Job.kind, Job.state, Job.created_at).where(
        Job.study_fk == study_id,
        Job.kind.in_([JobKind.ANALYZE, JobKind.STUDY_SUMMARY]))).all()
    analysing = any(state in ACTIVE_JOB_STATES for _, state, _ in states)
    failed = any(kind == JobKind.ANALYZE and state == JobState.FAILED for kind, state, _ in states)
    # A summary that failed for good since the last image: none is made until the next image
    # or a retry (bcd_node.analysis.summary.enqueue_study_summaries).
    summary_failed = any(kind == JobKind.STUDY_SUMMARY and state == JobState.FAILED
                         and created >= study.last_received_at for kind, state, created in states)
    # Fields of the summary's model (an older model's results of a re-analysed image do not
    # count twice).
    fields = [r for r in results if summary is None or r.model_version == summary.model_version]
    findings = case_findings(fields)
    signed = summary is not None and summary.verification == VerificationState.VERIFIED
    study.status = case_status(
        analysing=analysing, summarised=study.summary_done_at is not None, summary=summary,
        fields=fields, analysis_failed=failed, summary_failed=summary_failed,
        report_failed=signed and summary is not None
        and report_job_failed(session, summary) is not None)
    if signed and summary is not None:
        # The doctor's stage: the AI's confidence in its own stage would not describe it.
        study.stage = summary.verified_stage or summary.stage
        study.confidence = None
        study.attention = None
    else:
        study.stage = findings.stage
        study.confidence = findings.confidence
        study.attention = case_attention(fields, findings.stage, analysing=analysing) or None
    return study


def field_numbers(session: Session, study_id: int) -> dict[int, int]:
    """Each image of a study by its number in the study (instance id → number, from 1): the
    order the node received them, as the Instance Number of their results
    (:meth:`bcd_node.analysis.context.AnalysisContext.field_number`)."""
    from bcd_node.db.models import Instance, Series

    ids = session.execute(select(Instance.id).join(Series, Instance.series_fk == Series.id)
                          .where(Series.study_fk == study_id).order_by(Instance.id)).scalars()
    return {instance_id: number for number, instance_id in enumerate(ids, start=1)}
