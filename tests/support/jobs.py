"""Queued jobs for the tests: adding one, reading its row, running them in the test's thread."""

from __future__ import annotations

from typing import Any

from bcd_node.db.models import Job, JobKind
from bcd_node.runtime import NodeContext


def add_job(ctx: NodeContext, max_attempts: int = 3) -> int:
    """Queue a job that needs no image (a study summary); return its id."""
    with ctx.session_factory.begin() as s:
        job = Job(kind=JobKind.STUDY_SUMMARY, max_attempts=max_attempts)
        s.add(job)
        s.flush()
        return job.id


def job_row(ctx: NodeContext, job_id: int) -> Job:
    """The job's row as the database has it now."""
    with ctx.session_factory() as s:
        job = s.get(Job, job_id)
    assert job is not None, f"no job {job_id}"
    return job


def drain(workers: Any, owner: str = "test-worker") -> int:
    """Run queued jobs with ``workers`` (a :class:`bcd_node.jobs.workers.Workers`) until none is
    due; return how many ran."""
    count = 0
    while workers.step(owner):
        count += 1
    return count
