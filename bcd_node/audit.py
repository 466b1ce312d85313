"""The audit log: who did what, to which patient, from where — hash-chained.

Each row's ``hash`` is the SHA-256 of its own fields and the previous row's hash, so an edited,
inserted or deleted row breaks the chain and :func:`verify_chain` finds it. Appends are serialised:
on SQLite by the database write lock (the row is inserted before its predecessor is read), on
PostgreSQL by a transaction-scoped advisory lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from bcd_node.db.models import AuditEvent, utcnow

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
