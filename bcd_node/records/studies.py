"""The worklist columns of a study (status, stage, confidence), derived from its jobs and results.

One function keeps them current after every change (intake, analysis, failure, verification),
so the worklist reads plain indexed columns and never aggregates.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select
from sqlalchemy.orm import Session

from bcd_node.db.models import Job, JobKind, JobState, Result, Study

#: Stages from least to most advanced; a tied vote goes to the more advanced one.
STAGE_ORDER = {"Benign": 0, "Malignant-Early": 1, "Malignant-Pre": 2, "Malignant-Pro": 3}


def vote(stages: list[str]) -> str | None:
    """The most frequent stage; ties go to the more advanced stage."""
    if not stages:
        return None
    votes = Counter(stages)
    return max(votes, key=lambda s: (votes[s], STAGE_ORDER.get(s, 0)))


def refresh_study(session: Session, study_id: int) -> Study:
    """Recompute status, stage and confidence of one study in ``session``.

    status: ``analysing`` while any image is queued or running; else ``failed`` when no image
    could be analysed; ``verified`` when a doctor verified every result; ``needs_review`` when
    any result needs review or any image failed; else ``done``. The stage is the doctors' vote
    once everything is verified, otherwise the model's vote.
    """
    study = session.get(Study, study_id)
    results = session.execute(select(Result).where(
        Result.study_fk == study_id, Result.scope == "instance")).scalars().all()
    states = session.execute(select(Job.state).where(
        Job.study_fk == study_id, Job.kind == JobKind.ANALYZE)).scalars().all()
    pending = any(s in (JobState.QUEUED, JobState.RUNNING) for s in states)
    failed = any(s == JobState.FAILED for s in states)
    verified = bool(results) and all(r.verification != "unverified" for r in results)
    staged = [r for r in results if r.stage]
    if verified:
        study.stage = vote([r.verified_stage or r.stage for r in results
                            if r.verified_stage or r.stage])
        study.confidence = None
    elif staged:
        study.stage = vote([r.stage for r in staged])
        study.confidence = sum(r.confidence or 0.0 for r in staged if r.stage == study.stage) / \
            max(1, sum(r.stage == study.stage for r in staged))
    if pending:
        study.status = "analysing"
    elif not results and failed:
        study.status = "failed"
    elif verified and not failed:
        study.status = "verified"
    elif failed or any(r.needs_review for r in results):
        study.status = "needs_review"
    else:
        study.status = "done"
    return study
