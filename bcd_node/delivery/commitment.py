"""Storage commitment reports: what a destination says it committed, recorded in the outbox.

A destination with ``storage_commitment`` leaves each stored object ``committing`` with the
Transaction UID of the N-ACTION that asked for it (:mod:`~bcd_node.delivery.outbox`). Its
report, on that association or on one it opens to our listener (:func:`handle_report`), ends
them: a committed object is ``done``; one in the Failed SOP Sequence is sent again (``pending``,
with backoff), or is ``dead`` with the reason after ``delivery.max_attempts``. A report of an
unknown or superseded transaction changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bcd_node.db.models import Delivery, DeliveryState, utcnow
from bcd_node.settings import DeliverySettings
from dicom.commitment import CommitmentReport, failure_text, report_from_event
from dicom.errors import DicomValidationError

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    """What one report did."""

    committed: int = 0
    resent: int = 0
    dead: int = 0


def _backoff(attempts: int, d: DeliverySettings) -> float:
    return min(d.initial_backoff * 2.0 ** max(0, attempts - 1), d.max_backoff)


def record_report(session: Session, settings: DeliverySettings,
                  report: CommitmentReport) -> Recorded:
    """Apply ``report`` to the rows of its transaction, in ``session`` (the caller commits)."""
    rows = session.execute(select(Delivery).where(
        Delivery.commit_transaction_uid == report.transaction_uid,
        Delivery.state == DeliveryState.COMMITTING).with_for_update()).scalars().all()
    now = utcnow()
    committed = resent = dead = 0
    for row in rows:
        if row.sop_instance_uid in report.failed:
            reason = (f"storage commitment failed: "
                      f"{failure_text(report.failed[row.sop_instance_uid])}")
            row.last_error = reason
            if row.attempts >= settings.max_attempts:
                row.state, row.next_attempt_at = DeliveryState.DEAD, now
                dead += 1
                LOGGER.error("delivery %d (%s %s) to %s needs attention after attempt %d: %s",
                             row.id, row.kind, row.sop_instance_uid, row.destination,
                             row.attempts, reason)
            else:
                row.state = DeliveryState.PENDING
                row.next_attempt_at = now + timedelta(seconds=_backoff(row.attempts, settings))
                resent += 1
                LOGGER.warning("delivery %d (%s %s) to %s: %s; it is sent again", row.id,
                               row.kind, row.sop_instance_uid, row.destination, reason)
        elif row.sop_instance_uid in report.committed:
            row.state, row.committed_at, row.delivered_at = DeliveryState.DONE, now, now
            row.last_error, row.next_attempt_at = None, now
            committed += 1
    if not rows:
        LOGGER.warning("storage commitment report of transaction %s matches no object waiting "
                       "for one (superseded or unknown)", report.transaction_uid)
    else:
        LOGGER.info("storage commitment %s: %d committed, %d to send again, %d need attention",
                    report.transaction_uid, committed, resent, dead)
    return Recorded(committed, resent, dead)


def handle_report(event: Any, session_factory: sessionmaker[Session],
                  settings: DeliverySettings) -> tuple[int, None]:
    """The listener's ``EVT_N_EVENT_REPORT`` handler: record a storage commitment report that
    a destination sent on an association of its own. Returns the DIMSE status."""
    try:
        report = report_from_event(event)
    except DicomValidationError as exc:
        LOGGER.warning("storage commitment report from %s refused: %s",
                       event.assoc.requestor.ae_title, exc)
        return 0x0110, None
    if report is None:
        return 0x0113, None  # no such event type (not a storage commitment report)
    with session_factory.begin() as session:
        record_report(session, settings, report)
    return 0x0000, None
