"""The worklist columns of a study (status, stage, confidence), derived from its jobs and results.

One function keeps them current after every change (intake, analysis, failure, verification),
so the worklist reads plain indexed columns and never aggregates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from bcd_node.db.models import (
    ACTIVE_JOB_STATES,
    Job,
    JobKind,
    JobState,
    Result,
    ResultScope,
    Stage,
    Study,
    StudyStatus,
    VerificationState,
)

#: Stages from least to most advanced (the order of :class:`Stage`); a tied vote goes to the
#: more advanced one.
STAGE_ORDER: dict[str, int] = {stage: i for i, stage in enumerate(Stage)}


def vote(stages: Sequence[str]) -> Stage | None:
    """The most frequent stage; ties go to the more advanced stage."""
    if not stages:
        return None
    votes = Counter(Stage(s) for s in stages)
    return max(votes, key=lambda s: (votes[s], STAGE_ORDER[s]))


def refresh_study(session: Session, study_id: int) -> Study:
    """Recompute status, stage and confidence of one study in ``session``.

    status: ``analysing`` while any image is queued or running; else ``failed`` when no image
    could be analysed; ``verified`` when a doctor verified every result; ``needs_review`` when
    any result needs review or any image failed; else ``done``. The stage is the doctors' vote
    once everything is verified, otherwise the model's vote.
    """
    study = session.get(Study, study_id)
    if study is None:
        raise LookupError(f"study {study_id} does not exist")
    results = session.execute(select(Result).where(
        Result.study_fk == study_id, Result.scope == ResultScope.INSTANCE)).scalars().all()
    states = session.execute(select(Job.state).where(
        Job.study_fk == study_id, Job.kind == JobKind.ANALYZE)).scalars().all()
    pending = any(s in ACTIVE_JOB_STATES for s in states)
    failed = any(s == JobState.FAILED for s in states)
    verified = bool(results) and all(r.verification != VerificationState.UNVERIFIED
                                     for r in results)
    if verified:
        study.stage = vote([stage for r in results if (stage := r.verified_stage or r.stage)])
        study.confidence = None
    else:
        staged = [(r.stage, r.confidence) for r in results if r.stage]
        if staged:
            study.stage = vote([stage for stage, _ in staged])
            agreeing = [confidence or 0.0 for stage, confidence in staged
                        if stage == study.stage]
            study.confidence = sum(agreeing) / max(1, len(agreeing))
    if pending:
        study.status = StudyStatus.ANALYSING
    elif not results and failed:
        study.status = StudyStatus.FAILED
    elif verified and not failed:
        study.status = StudyStatus.VERIFIED
    elif failed or any(r.needs_review for r in results):
        study.status = StudyStatus.NEEDS_REVIEW
    else:
        study.status = StudyStatus.DONE
    return study


def field_numbers(session: Session, study_id: int) -> dict[int, int]:
    """Each image of a study by its number in the study (instance id → number, from 1): the
    order the node received them, as the Instance Number of their results
    (:meth:`bcd_node.analysis.context.AnalysisContext.field_number`)."""
    from bcd_node.db.models import Instance, Series

    ids = session.execute(select(Instance.id).join(Series, Instance.series_fk == Series.id)
                          .where(Series.study_fk == study_id).order_by(Instance.id)).scalars()
    return {instance_id: number for number, instance_id in enumerate(ids, start=1)}
