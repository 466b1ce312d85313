"""Retry of jobs that failed for good: an operator's second chance, audited.

A job fails for good on a permanent error or after its last attempt; its image is then answered
"could not be analysed" at the PACS (:meth:`bcd_node.analysis.pipeline.Pipeline.job_failed`).
Once the cause is fixed (a model file restored, a peer back), ``bcd-node jobs retry`` queues
such jobs again with their attempts reset. An image's analysis that then succeeds sends a
diagnostic SR that supersedes the "could not be analysed" SR (its Predecessor Documents
Sequence, :mod:`bcd_node.analysis.image`), and its study is summarised again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from bcd_node.db.models import Instance, Job, JobState, Study, utcnow
from bcd_node.errors import BcdError
from bcd_node.records import audit

LOGGER = logging.getLogger(__name__)

__all__ = ["JobRetryError", "retry_failed_jobs"]


class JobRetryError(BcdError):
    """A retry that names a job that does not exist or has not failed."""


def retry_failed_jobs(session: Session, ids: Sequence[int] | None = None, *, actor: str,
                      actor_kind: str, source: str = "") -> list[int]:
    """Queue failed jobs again (attempts reset), one audit event each; the caller commits.
    Returns the ids queued again.

    Parameters
    ----------
    ids
        The jobs to retry; None (or empty) retries every failed job.

    Raises
    ------
    JobRetryError
        When an id is unknown or its job has not failed; nothing is changed then.
    """
    query = select(Job).where(Job.state == JobState.FAILED)
    if ids:
        wanted = sorted(set(ids))
        found = {j.id: j for j in session.execute(select(Job).where(
            Job.id.in_(wanted))).scalars()}
        problems = []
        unknown = [i for i in wanted if i not in found]
        if unknown:
            problems.append(f"no job {', '.join(map(str, unknown))}")
        problems += [f"job {i} has not failed (it is {found[i].state.value})" for i in wanted
                     if i in found and found[i].state is not JobState.FAILED]
        if problems:
            raise JobRetryError("; ".join(problems) + ": nothing was queued again")
        query = query.where(Job.id.in_(wanted))
    rows = session.execute(query.order_by(Job.id).with_for_update()).scalars().all()
    now = utcnow()
    for job in rows:
        study = session.get(Study, job.study_fk) if job.study_fk else None
        if study is None and job.instance_fk:
            instance = session.get(Instance, job.instance_fk)
            study = instance.series.study if instance is not None else None
        audit.record(session, actor=actor, actor_kind=actor_kind, source=source,
                     action="job_retry",
                     patient_id=study.patient.patient_id if study is not None else "",
                     study_instance_uid=study.study_instance_uid if study is not None else "",
                     object_ref=f"job:{job.id}",
                     details={"kind": job.kind.value, "attempts": job.attempts,
                              "last_error": (job.last_error or "")[:200]})
        job.state, job.attempts, job.next_attempt_at = JobState.QUEUED, 0, now
        job.lease_owner = job.lease_expires_at = job.finished_at = None
        job.updated_at = now
        if study is not None:
            # The field's answer may change: the study is summarised again once it is quiet.
            study.summary_done_at = None
    if rows:
        LOGGER.info("%s queued %d failed job%s again: %s", actor, len(rows),
                    "" if len(rows) == 1 else "s", ", ".join(str(j.id) for j in rows[:20]))
    return [j.id for j in rows]
