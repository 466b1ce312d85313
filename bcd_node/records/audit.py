"""The audit log: who did what, to which patient, from where — hash-chained.

Each row's ``hash`` is the SHA-256 of its own fields and the previous row's hash, so an edited,
inserted or deleted row breaks the chain and :func:`verify_chain` finds it. Appends are serialised:
on SQLite by the database write lock (the row is inserted before its predecessor is read), on
PostgreSQL by a transaction-scoped advisory lock.

Repeated failures of anonymous clients (wrong passwords, bad tokens, refused sign-ins) would let
anyone grow the log without limit, so :func:`record_failure` writes the first failure of a kind
from one source in full and only counts the others of the same window; :func:`flush_failures`
then writes one row with their count (and the names tried). Every other event is written as it
happens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from bcd_node.db.models import AuditEvent, AuthThrottle, utcnow
from bcd_node.records import throttle

LOGGER = logging.getLogger(__name__)
GENESIS = "0" * 64
_PG_LOCK_KEY = 0x6263645F61756474  # "bcd_audt"


def _digest(event: AuditEvent, prev_hash: str) -> str:
    body = {
        "id": event.id,
        "at": event.at.isoformat(timespec="microseconds"),
        "actor": event.actor,
        "actor_kind": event.actor_kind,
        "source": event.source,
        "action": event.action,
        "outcome": event.outcome,
        "patient_id": event.patient_id,
        "study_instance_uid": event.study_instance_uid,
        "object_ref": event.object_ref,
        "details": event.details,
        "prev_hash": prev_hash,
    }
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def record(session: Session, *, actor: str, actor_kind: str, action: str, source: str = "",
           outcome: str = "success", patient_id: str = "", study_instance_uid: str = "",
           object_ref: str = "", details: dict[str, Any] | None = None) -> AuditEvent:
    """Append an audit event in ``session``'s transaction (the caller commits).

    Parameters
    ----------
    actor
        Username, calling AE title, or ``"system"``.
    actor_kind
        ``user``, ``api``, ``dicom``, ``cli`` or ``system``.
    action
        What happened, e.g. ``login``, ``view_study``, ``user_add``, ``security_alert``.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    event = AuditEvent(at=utcnow(), actor=actor[:64],
                       actor_kind=actor_kind, source=source[:128], action=action, outcome=outcome,
                       patient_id=patient_id[:64], study_instance_uid=study_instance_uid[:64],
                       object_ref=object_ref[:255], details=details or {},
                       prev_hash=GENESIS, hash=f"pending-{uuid.uuid4().hex}")
    session.add(event)
    session.flush()  # takes the write lock on SQLite and assigns the id
    prev = session.execute(select(AuditEvent.hash).where(AuditEvent.id < event.id)
                           .order_by(AuditEvent.id.desc()).limit(1)).scalar()
    event.prev_hash = prev or GENESIS
    event.hash = _digest(event, event.prev_hash)
    session.flush()
    LOGGER.debug("audit %s by %s (%s) event %d", action, actor, outcome, event.id)
    return event


_AGGREGATE = "audit:"
#: At most this many distinct names and reasons are listed in one aggregated row.
_MAX_LISTED = 20


def record_failure(session: Session, *, action: str, source: str, actor: str, actor_kind: str,
                   window_seconds: int, object_ref: str = "", reason: str = "",
                   details: dict[str, Any] | None = None) -> AuditEvent | None:
    """Audit a failure of an unauthenticated client, aggregated per source and window.

    The first ``action`` failure from ``source`` in a window of ``window_seconds`` is written in
    full (and returned); the others of that window are counted and written by
    :func:`flush_failures` as one row once the window is over. The caller commits.
    """
    now = utcnow()
    flush_failures(session, now)
    entry = throttle.row(session, _AGGREGATE + action, source)
    if entry.window_end is None or entry.window_end <= now:
        entry.window_start = now
        entry.window_end = now + timedelta(seconds=window_seconds)
        entry.failures = 0
        entry.details = {"actor_kind": actor_kind}
        entry.updated_at = now
        return record(session, actor=actor, actor_kind=actor_kind, action=action, source=source,
                      outcome="failure", object_ref=object_ref,
                      details={**(details or {}), **({"reason": reason} if reason else {}),
                               "aggregation": f"further {action} from this source until "
                                              f"{entry.window_end.isoformat(timespec='seconds')} "
                                              "are counted in one row"})
    listed = dict(entry.details or {})
    names = list(listed.get("names", []))
    if actor and actor not in names and len(names) < _MAX_LISTED:
        names.append(actor[:64])
    reasons = dict(listed.get("reasons", {}))
    if reason and (reason in reasons or len(reasons) < _MAX_LISTED):
        reasons[reason] = reasons.get(reason, 0) + 1
    listed.update(names=names, reasons=reasons, last_at=now.isoformat(timespec="seconds"))
    entry.details = listed  # a new dict: the JSON column notices the change
    entry.failures += 1
    entry.updated_at = now
    return None


def flush_failures(session: Session, now: datetime | None = None) -> int:
    """Write one row for each source whose aggregation window is over and that failed again
    within it (the count, the names tried, the reasons); return how many rows were written."""
    now = now or utcnow()
    due = session.execute(select(AuthThrottle).where(
        AuthThrottle.kind.startswith(_AGGREGATE), AuthThrottle.failures > 0,
        AuthThrottle.window_end <= now).order_by(AuthThrottle.id)
        .with_for_update(skip_locked=True)).scalars().all()
    for entry in due:
        action = entry.kind[len(_AGGREGATE):]
        listed = entry.details or {}
        record(session, actor="?", actor_kind=str(listed.get("actor_kind", "user")),
               action=action, source=entry.key, outcome="failure",
               details={"count": entry.failures,
                        "from": entry.window_start.isoformat(timespec="seconds")
                        if entry.window_start else "",
                        "to": listed.get("last_at", ""),
                        "names": listed.get("names", []),
                        "reasons": listed.get("reasons", {}),
                        "aggregated": True})
        entry.failures = 0
        entry.details = {}
    return len(due)


@dataclass(frozen=True)
class ChainReport:
    """The outcome of :func:`verify_chain`."""

    ok: bool
    checked: int
    first_bad_id: int | None = None
    reason: str = ""


def verify_chain(session: Session, batch: int = 5000) -> ChainReport:
    """Recompute the whole chain in id order; report the first row that does not match."""
    # After a retention purge the oldest remaining event anchors the chain (the purge itself is
    # an audited event further down the chain).
    first = session.execute(select(AuditEvent.prev_hash).order_by(AuditEvent.id).limit(1)).scalar()
    purged = session.execute(select(AuditEvent.id).where(
        AuditEvent.action == "audit_purged").limit(1)).first() is not None
    prev = first if (first and purged) else GENESIS
    checked = 0
    last_id = 0
    while True:
        rows = session.execute(select(AuditEvent).where(AuditEvent.id > last_id)
                               .order_by(AuditEvent.id).limit(batch)).scalars().all()
        if not rows:
            return ChainReport(ok=True, checked=checked)
        for event in rows:
            if event.prev_hash != prev:
                return ChainReport(False, checked, event.id,
                                   "previous hash does not match: a row before it was changed, "
                                   "removed or inserted")
            if _digest(event, prev) != event.hash:
                return ChainReport(False, checked, event.id, "row content does not match its hash")
            prev = event.hash
            checked += 1
            last_id = event.id
        session.expunge_all()
