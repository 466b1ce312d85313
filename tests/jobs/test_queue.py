"""The job queue's lease fencing (bcd_node.jobs.queue): a claim leases a job to one owner; once
the lease has passed to another owner, nothing the stale owner does reaches the job."""

from __future__ import annotations

from datetime import timedelta
from typing import Callable

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from bcd_node.db.models import Job, JobState, utcnow
from bcd_node.jobs import queue
from bcd_node.runtime import NodeContext
from tests.support.jobs import add_job, job_row
from tests.support.waiting import wait_for


def _expire_lease(ctx: NodeContext, job_id: int) -> None:
    """As if the owner had stalled past its lease (no waiting for the clock)."""
    with ctx.session_factory.begin() as s:
        s.execute(update(Job).where(Job.id == job_id)
                  .values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def _lost_lease(ctx: NodeContext) -> tuple[queue.Claimed, queue.Claimed]:
    """A job claimed by ``stale-worker``, whose lease expired and passed to ``fresh-worker``."""
    job_id = add_job(ctx, max_attempts=3)
    with ctx.session_factory.begin() as s:
        stale = queue.claim(s, "stale-worker", 30)
    assert stale is not None
    _expire_lease(ctx, job_id)
    with ctx.session_factory.begin() as s:
        fresh = queue.claim(s, "fresh-worker", 30)
    assert fresh is not None and fresh.id == stale.id == job_id
    return stale, fresh


#: What a worker may do with a job it claimed; each returns whether it reached the job.
ACTIONS: dict[str, Callable[[Session, queue.Claimed], bool]] = {
    "complete": queue.complete,
    "fail": lambda s, job: queue.fail(s, job, "stale"),
    "renew": lambda s, job: queue.renew(s, job, 30),
    "retry_later": lambda s, job: queue.retry_later(s, job, "stale", 0),
}


def _snapshot(ctx: NodeContext, job_id: int) -> tuple:
    job = job_row(ctx, job_id)
    return (job.state, job.lease_owner, job.lease_expires_at, job.attempts, job.next_attempt_at,
            job.last_error, job.finished_at)


def test_a_claim_leases_the_job_to_one_owner(ctx) -> None:
    job_id = add_job(ctx)
    with ctx.session_factory.begin() as s:
        claimed = queue.claim(s, "worker-a", 30)
    assert claimed is not None
    assert (claimed.id, claimed.owner, claimed.attempts) == (job_id, "worker-a", 1)
    job = job_row(ctx, job_id)
    assert (job.state, job.lease_owner) == (JobState.RUNNING, "worker-a")
    assert job.lease_expires_at > utcnow() + timedelta(seconds=20)
    with ctx.session_factory.begin() as s:  # leased: nobody else takes it
        assert queue.claim(s, "worker-b", 30) is None


def test_an_expired_lease_passes_to_the_next_claimant(ctx) -> None:
    stale, fresh = _lost_lease(ctx)
    assert (fresh.owner, fresh.attempts) == ("fresh-worker", 2)
    job = job_row(ctx, fresh.id)
    assert (job.state, job.lease_owner, job.attempts) == (JobState.RUNNING, "fresh-worker", 2)


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_the_stale_owner_is_refused_while_the_new_owner_works(ctx, action: str) -> None:
    stale, fresh = _lost_lease(ctx)
    before = _snapshot(ctx, fresh.id)
    with ctx.session_factory.begin() as s:
        assert ACTIONS[action](s, stale) is False
    assert _snapshot(ctx, fresh.id) == before
    with ctx.session_factory.begin() as s:  # the new owner's work goes on
        assert queue.complete(s, fresh)
    assert job_row(ctx, fresh.id).state is JobState.DONE


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_the_stale_owner_is_refused_after_the_new_owner_finished(ctx, action: str) -> None:
    stale, fresh = _lost_lease(ctx)
    with ctx.session_factory.begin() as s:
        assert queue.complete(s, fresh)
    before = _snapshot(ctx, fresh.id)
    with ctx.session_factory.begin() as s:
        assert ACTIONS[action](s, stale) is False
    assert _snapshot(ctx, fresh.id) == before
    assert before[0] is JobState.DONE


def test_a_worker_that_lost_its_lease_does_not_publish(ctx) -> None:
    job_id = add_job(ctx)
    with ctx.session_factory.begin() as s:
        stale = queue.claim(s, "stale-worker", 0.01)
    wait_for(lambda: utcnow() > job_row(ctx, job_id).lease_expires_at, 20)
    with ctx.session_factory.begin() as s:
        fresh = queue.claim(s, "fresh-worker", 30)
    assert fresh is not None and fresh.id == stale.id
    with ctx.session_factory.begin() as s:
        assert not queue.renew(s, stale, 30)
        assert not queue.complete(s, stale)
        assert not queue.fail(s, stale, "stale")
    job = job_row(ctx, job_id)
    assert (job.state, job.lease_owner) == (JobState.RUNNING, "fresh-worker")


def _claim_many_in_turns(ctx: NodeContext) -> None:
    ids = [add_job(ctx) for _ in range(5)]
    with ctx.session_factory.begin() as s:
        first = queue.claim_many(s, "worker-a", 30, 3)
    with ctx.session_factory.begin() as s:
        second = queue.claim_many(s, "worker-b", 30, 3)
    with ctx.session_factory.begin() as s:
        assert queue.claim_many(s, "worker-c", 30, 3) == []
    # In the order they are due; each job to one owner, with a lease of its own.
    assert [job.id for job in first] == ids[:3] and [job.id for job in second] == ids[3:]
    assert {job.owner for job in first} == {"worker-a"}
    assert all(job_row(ctx, job.id).lease_owner == job.owner for job in first + second)
    with ctx.session_factory.begin() as s:
        assert queue.complete(s, first[1])
    assert [job_row(ctx, i).state for i in ids] == [JobState.RUNNING, JobState.DONE] + \
        [JobState.RUNNING] * 3


def test_claim_many_leases_each_due_job_to_one_owner(ctx) -> None:
    _claim_many_in_turns(ctx)


@pytest.mark.integration  # PostgreSQL: FOR UPDATE SKIP LOCKED under a LIMIT
def test_claim_many_on_postgres(write_config, postgres_url) -> None:
    from bcd_node.runtime import open_node
    from bcd_node.settings import load_settings

    context = open_node(load_settings(write_config(database_url=postgres_url)))
    try:
        _claim_many_in_turns(context)
    finally:
        context.engine.dispose()
