"""The durable job queue in the database: claim with a lease, finish, fail, retry.

Claiming is one ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING``:
on PostgreSQL several workers on several machines never take the same job; on SQLite the
statement runs under the database's write lock. A job whose lease has expired (its worker died)
is claimable again; delivery is therefore at least once, and the pipeline is idempotent.
Every update after the claim is fenced by the lease owner, so a worker that lost its lease
cannot overwrite the work of the one that took the job over. A worker renews its lease while
it works (:func:`renew`, through :class:`~bcd_node.jobs.leases.LeaseKeeper`), so leases are short
and the job of a worker that died is taken over within one lease.

The queue logs nothing per attempt: the worker logs each failed attempt in one line and a job
that fails for good once, with its reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from bcd_node.db.engine import rowcount
from bcd_node.db.models import ACTIVE_JOB_STATES, Job, JobKind, JobState, utcnow
from bcd_node.errors import BcdError

LOGGER = logging.getLogger(__name__)


class LeaseLostError(BcdError):
    """The job's lease passed to another worker; this worker's results are discarded.

    Neither permanent nor transient: the job has not failed, it is another worker's now, so
    nothing is recorded for it here (the worker logs it as a lost lease).
    """


@dataclass(frozen=True)
class Claimed:
    """A job claimed by one worker."""

    id: int
    kind: JobKind
    instance_fk: int | None
    study_fk: int | None
    result_fk: int | None
    attempts: int
    max_attempts: int
    owner: str


def _due(now: datetime) -> ColumnElement[bool]:
    return or_(
        and_(Job.state == JobState.QUEUED, Job.next_attempt_at <= now),
        and_(Job.state == JobState.RUNNING, Job.lease_expires_at < now),
    )


def claim(session: Session, owner: str, lease_seconds: float,
          kinds: tuple[JobKind, ...] | None = None) -> Claimed | None:
    """Claim the next due job for ``owner``; None when nothing is due. The caller commits."""
    claimed = claim_many(session, owner, lease_seconds, 1, kinds)
    return claimed[0] if claimed else None


def claim_many(session: Session, owner: str, lease_seconds: float, limit: int,
               kinds: tuple[JobKind, ...] | None = None) -> list[Claimed]:
    """Claim up to ``limit`` due jobs for ``owner`` in one statement, each with its own lease,
    in the order they are due; empty when nothing is due. The caller commits."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit!r}")
    now = utcnow()
    pick = select(Job.id).where(_due(now), Job.attempts < Job.max_attempts)
    if kinds:
        pick = pick.where(Job.kind.in_(kinds))
    pick = pick.order_by(Job.next_attempt_at, Job.id).limit(limit).with_for_update(
        skip_locked=True)
    rows = session.execute(
        update(Job).where(Job.id.in_(pick.scalar_subquery()))
        .values(state=JobState.RUNNING, lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Job.attempts + 1, updated_at=now)
        .returning(Job.id, Job.kind, Job.instance_fk, Job.study_fk, Job.result_fk, Job.attempts,
                   Job.max_attempts, Job.next_attempt_at)
        .execution_options(synchronize_session=False)
    ).all()
    claimed = []
    for row in sorted(rows, key=lambda r: (r.next_attempt_at, r.id)):
        LOGGER.debug("job %d (%s) claimed by %s, attempt %d", row.id, row.kind, owner,
                     row.attempts)
        claimed.append(Claimed(id=row.id, kind=JobKind(row.kind), instance_fk=row.instance_fk,
                               study_fk=row.study_fk, result_fk=row.result_fk,
                               attempts=row.attempts, max_attempts=row.max_attempts,
                               owner=owner))
    return claimed


def _fenced(job: Claimed) -> tuple[ColumnElement[bool], ...]:
    return (Job.id == job.id, Job.lease_owner == job.owner, Job.state == JobState.RUNNING)


def complete(session: Session, job: Claimed) -> bool:
    """Mark the job done; False if the lease was lost to another worker."""
    now = utcnow()
    done = session.execute(update(Job).where(*_fenced(job)).values(
        state=JobState.DONE, finished_at=now, updated_at=now, lease_owner=None,
        lease_expires_at=None, last_error=None).execution_options(synchronize_session=False))
    return rowcount(done) == 1


def renew(session: Session, job: Claimed, lease_seconds: float) -> bool:
    """Extend the job's lease by ``lease_seconds`` from now; False if it was lost."""
    now = utcnow()
    done = session.execute(update(Job).where(*_fenced(job)).values(
        lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
        .execution_options(synchronize_session=False))
    return rowcount(done) == 1


def fail(session: Session, job: Claimed, error: str) -> bool:
    """Fail the job for good with ``error`` visible; False if the lease was lost."""
    now = utcnow()
    done = session.execute(update(Job).where(*_fenced(job)).values(
        state=JobState.FAILED, finished_at=now, updated_at=now, lease_owner=None,
        lease_expires_at=None, last_error=error[:4000]).execution_options(
            synchronize_session=False))
    return rowcount(done) == 1


def retry_later(session: Session, job: Claimed, error: str, delay: float) -> bool:
    """Put the job back in the queue after ``delay`` seconds, or fail it when out of tries
    (:func:`will_retry` tells which); False if the lease was lost."""
    if not will_retry(job):
        return fail(session, job, f"gave up after {job.attempts} attempts: {error}")
    now = utcnow()
    done = session.execute(update(Job).where(*_fenced(job)).values(
        state=JobState.QUEUED, next_attempt_at=now + timedelta(seconds=delay), updated_at=now,
        lease_owner=None, lease_expires_at=None, last_error=error[:4000]).execution_options(
            synchronize_session=False))
    return rowcount(done) == 1


def will_retry(job: Claimed) -> bool:
    """Whether :func:`retry_later` queues ``job`` again (it has attempts left)."""
    return job.attempts < job.max_attempts


def release(session: Session, job: Claimed) -> bool:
    """Give a job back without using up an attempt (the disk is full): it is due again at once;
    False if the lease was lost."""
    now = utcnow()
    done = session.execute(update(Job).where(*_fenced(job)).values(
        state=JobState.QUEUED, next_attempt_at=now, updated_at=now, lease_owner=None,
        lease_expires_at=None, attempts=Job.attempts - 1).execution_options(
            synchronize_session=False))
    return rowcount(done) == 1


#: The reason recorded for a job whose worker was lost on its last attempt.
LOST_ON_LAST_ATTEMPT = "worker lost on the last attempt (lease expired)"


def fail_exhausted(session: Session) -> list[Claimed]:
    """Fail jobs whose lease expired on their last allowed attempt; returns them (their
    ``owner`` is the lost worker), so that each failure is answered like any other."""
    now = utcnow()
    rows = session.execute(update(Job).where(
        Job.state == JobState.RUNNING, Job.lease_expires_at < now,
        Job.attempts >= Job.max_attempts).values(
            state=JobState.FAILED, finished_at=now, updated_at=now, lease_owner=None,
            lease_expires_at=None, last_error=LOST_ON_LAST_ATTEMPT)
        .returning(Job.id, Job.kind, Job.instance_fk, Job.study_fk, Job.result_fk, Job.attempts,
                   Job.max_attempts)
        .execution_options(synchronize_session=False)).all()
    return [Claimed(id=row.id, kind=JobKind(row.kind), instance_fk=row.instance_fk,
                    study_fk=row.study_fk, result_fk=row.result_fk, attempts=row.attempts,
                    max_attempts=row.max_attempts, owner="") for row in rows]


@dataclass(frozen=True)
class JobCounts:
    """How many jobs there are of each kind in each state (the one count of the queue, for the
    console, the API, ``bcd-node status`` and the metrics)."""

    #: (kind, state) → jobs; pairs without a job are absent.
    by_kind: dict[tuple[JobKind, JobState], int]

    @property
    def by_state(self) -> dict[JobState, int]:
        """Jobs per state, every state listed (0 when none)."""
        totals = dict.fromkeys(JobState, 0)
        for (_kind, state), n in self.by_kind.items():
            totals[state] += n
        return totals

    @property
    def active(self) -> int:
        """Jobs queued or running: the queue's depth."""
        by_state = self.by_state
        return sum(by_state[state] for state in ACTIVE_JOB_STATES)


def counts(session: Session) -> JobCounts:
    """Count the jobs per kind and state."""
    rows = session.execute(select(Job.kind, Job.state, func.count())
                           .group_by(Job.kind, Job.state))
    found = {(JobKind(kind), JobState(state)): n for kind, state, n in rows}
    order = {member: i for i, member in enumerate([*JobKind, *JobState])}
    return JobCounts(dict(sorted(found.items(), key=lambda item: (order[item[0][0]],
                                                                  order[item[0][1]]))))
