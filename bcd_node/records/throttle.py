"""Failed authentication: the per-source rate limit and the per-name lockout.

Both live in ``auth_throttles`` rows (:class:`~bcd_node.db.models.AuthThrottle`), so that every
process of a node (several ``bcd-node web`` on PostgreSQL) sees the same counts.

- **Per source** (an address): at most ``limit`` failures within a window; further attempts
  from it are refused unchecked until the window ends.
- **Per name** (as typed, whether an account has it or not, so that a lockout reveals no user
  names): :data:`LOCKOUT_THRESHOLD` failures in a row lock the name for a while; each lockout
  that follows another without a successful sign-in in between doubles the delay, from
  :data:`LOCKOUT_BASE_SECONDS` up to :data:`LOCKOUT_MAX_SECONDS`. A lock always runs out; an
  administrator lifts it at once with ``bcd-node users unlock NAME`` or ``users set-password``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from bcd_node.db.engine import rowcount
from bcd_node.db.models import AuthThrottle, utcnow

#: Failed sign-ins in a row after which a name is locked.
LOCKOUT_THRESHOLD = 5
#: The first lock's length; each further lock in a row doubles it, up to the maximum.
LOCKOUT_BASE_SECONDS = 60
LOCKOUT_MAX_SECONDS = 3600
#: A name without a failure for this long starts again at the first lock's length.
LOCKOUT_MEMORY = timedelta(days=1)

SOURCE = "source"
NAME = "name"


def row(session: Session, kind: str, key: str) -> AuthThrottle:
    """The ``(kind, key)`` row, created when missing, locked for update where the database can.

    Two processes failing for the same key at once both get the one row (insert-or-ignore, then
    select), never a duplicate-key error.
    """
    key = key[:128]
    dialect = session.get_bind().dialect.name
    values = {"kind": kind, "key": key, "failures": 0, "lockouts": 0, "details": {},
              "updated_at": utcnow()}
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        session.execute(pg_insert(AuthThrottle).values(**values).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert
        session.execute(sqlite_insert(AuthThrottle).values(**values).on_conflict_do_nothing())
    return session.execute(select(AuthThrottle).where(
        AuthThrottle.kind == kind, AuthThrottle.key == key)
        .with_for_update().execution_options(populate_existing=True)).scalar_one()


def _find(session: Session, kind: str, key: str) -> AuthThrottle | None:
    return session.execute(select(AuthThrottle).where(
        AuthThrottle.kind == kind, AuthThrottle.key == key[:128])).scalar_one_or_none()


# --------------------------------------------------------------------------- per source


def source_blocked_until(session: Session, source: str, limit: int,
                         now: datetime | None = None) -> datetime | None:
    """Until when ``source`` is refused (``limit`` failures in its current window), or None."""
    now = now or utcnow()
    found = _find(session, SOURCE, source)
    if found is None or found.window_end is None or found.window_end <= now:
        return None
    return found.window_end if found.failures >= limit else None


def count_source_failure(session: Session, source: str, window_seconds: int,
                         now: datetime | None = None) -> int:
    """Count a failure from ``source``; return the failures in its current window."""
    now = now or utcnow()
    entry = row(session, SOURCE, source)
    if entry.window_end is None or entry.window_end <= now:
        # Once per source and window: drop the rows that hold nothing any more, so that
        # names tried once do not pile up.
        prune(session, now, keep=entry.id)
        entry.window_start = now
        entry.window_end = now + timedelta(seconds=window_seconds)
        entry.failures = 0
    entry.failures += 1
    entry.updated_at = now
    return entry.failures


# --------------------------------------------------------------------------- per name


@dataclass(frozen=True)
class NameFailure:
    """What one more failure did to a name: locked it (until when, for how long) or not."""

    locked_until: datetime | None = None
    seconds: int = 0
    lockouts: int = 0


def lock_seconds(lockouts: int) -> int:
    """The length of the ``lockouts``-th lock in a row (1-based)."""
    return min(LOCKOUT_MAX_SECONDS, LOCKOUT_BASE_SECONDS << max(0, min(lockouts - 1, 20)))


def name_locked_until(session: Session, name: str, now: datetime | None = None
                      ) -> datetime | None:
    """Until when ``name`` is locked, or None."""
    now = now or utcnow()
    found = _find(session, NAME, name)
    if found is None or found.locked_until is None or found.locked_until <= now:
        return None
    return found.locked_until


def count_name_failure(session: Session, name: str, now: datetime | None = None) -> NameFailure:
    """Count a wrong password for ``name``; lock it at :data:`LOCKOUT_THRESHOLD` in a row."""
    now = now or utcnow()
    entry = row(session, NAME, name)
    if now - entry.updated_at > LOCKOUT_MEMORY:
        entry.lockouts = 0
        entry.failures = 0
    entry.failures += 1
    entry.updated_at = now
    if entry.failures < LOCKOUT_THRESHOLD:
        return NameFailure()
    entry.failures = 0
    entry.lockouts += 1
    seconds = lock_seconds(entry.lockouts)
    entry.locked_until = now + timedelta(seconds=seconds)
    return NameFailure(entry.locked_until, seconds, entry.lockouts)


def clear_name(session: Session, name: str) -> bool:
    """Forget the failures and locks of ``name``; return whether it was locked."""
    found = _find(session, NAME, name)
    if found is None:
        return False
    was_locked = found.locked_until is not None and found.locked_until > utcnow()
    session.delete(found)
    return was_locked


def prune(session: Session, now: datetime | None = None, keep: int | None = None) -> int:
    """Drop rows that hold nothing any more (idle for :data:`LOCKOUT_MEMORY`, no lock, nothing
    waiting for the audit log), except row ``keep``; return how many."""
    now = now or utcnow()
    result = session.execute(delete(AuthThrottle).where(
        AuthThrottle.id != (keep if keep is not None else -1),
        AuthThrottle.updated_at < now - LOCKOUT_MEMORY,
        (AuthThrottle.locked_until.is_(None)) | (AuthThrottle.locked_until < now),
        (AuthThrottle.kind.in_([SOURCE, NAME])) | (AuthThrottle.failures == 0)))
    return rowcount(result)
