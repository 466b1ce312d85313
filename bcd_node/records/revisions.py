"""What a changed version of a known image does to its earlier results.

A sender may send an image again under the same SOP Instance UID with other content (a corrected
image, other attributes). The intake accepts it only for the same patient, study and series,
and gives it the next revision. Its earlier results then no longer describe the stored image:

- a doctor's verification of them is withdrawn (audited), so no result shows "verified" for an
  image the doctor has not seen;
- the node's SR documents of the earlier revision (the algorithm's and the verified one) are
  recorded as what the next result's SR supersedes (its Predecessor Documents Sequence);
- objects of the earlier revision that have not left for PACS (pending or needing attention)
  are not sent any more, and a verified report still waiting to be made is not made.

The new analysis (a job queued by the intake) then writes new objects under new UIDs (they
derive from the revision) and sends them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from bcd_node.db.engine import rowcount
from bcd_node.db.models import (
    Delivery,
    DeliveryState,
    Job,
    JobKind,
    JobState,
    Result,
    ResultScope,
    VerificationState,
    utcnow,
)
from bcd_node.records import audit
from dicom.series import ResultKind, series_uid

LOGGER = logging.getLogger(__name__)

__all__ = ["Superseded", "clear_verification", "supersede_results", "sr_series_uid"]


@dataclass(frozen=True)
class Superseded:
    """What replacing an image's content changed in its results."""

    results: int = 0
    verifications_withdrawn: int = 0
    deliveries_dropped: int = 0
    reports_cancelled: int = 0


def sr_series_uid(study_instance_uid: str, model_version: str, uid_root: str, *,
                  verified: bool = False) -> str:
    """The series of a result's SR, or of its verified SR, in the study (the same derivation as
    :func:`dicom.sr.build_sr`, :mod:`dicom.series`)."""
    return series_uid(study_instance_uid, model_version,
                      ResultKind.VERIFIED_SR if verified else ResultKind.SR, root=uid_root)


def supersede_results(session: Session, *, instance_id: int, sop_instance_uid: str,
                      old_revision: int, uid_root: str, actor: str, actor_kind: str,
                      source: str, patient_id: str, study_instance_uid: str) -> Superseded:
    """Withdraw what the earlier revision of an instance produced, in ``session``'s transaction.

    Parameters
    ----------
    session
        The intake's transaction that stores the new revision.
    instance_id, sop_instance_uid
        The instance whose content changed.
    old_revision
        Its revision before the change.
    uid_root
        The configured UID root (to name the earlier SR series).
    actor, actor_kind, source, patient_id, study_instance_uid
        For the audit events of withdrawn verifications.

    Returns
    -------
    Superseded
        How many results, verifications, unsent deliveries and verified reports it touched.
    """
    results = session.execute(select(Result).where(
        Result.instance_fk == instance_id, Result.scope == ResultScope.INSTANCE)).scalars().all()
    withdrawn = 0
    for result in results:
        # A result of the revision just replaced names its SRs as what the next SR supersedes;
        # one that is older still (a revision replaced before it was analysed) keeps the list
        # it already has.
        if result.instance_revision == old_revision:
            result.supersedes = [
                {"series": sr_series_uid(study_instance_uid, result.model_version, uid_root,
                                         verified=verified), "sop": uid}
                for uid, verified in ((result.sr_sop_instance_uid, False),
                                      (result.verified_sr_sop_instance_uid, True)) if uid]
        if result.verification != VerificationState.UNVERIFIED:
            withdrawn += 1
            audit.record(session, actor=actor, actor_kind=actor_kind, source=source,
                         action="verification_withdrawn", patient_id=patient_id,
                         study_instance_uid=study_instance_uid, object_ref=f"result:{result.id}",
                         details=_verification(result))
            LOGGER.warning("result %d: verification withdrawn: instance %s was replaced by a "
                           "changed version", result.id, sop_instance_uid)
        clear_verification(result)
    ids = [r.id for r in results]
    dropped = cancelled = 0
    if ids:
        # Not sent yet, and now describing an image that is no longer the stored one. Rows
        # being sent right now (SENDING) finish; what PACS has is superseded by the new SR.
        dropped = rowcount(session.execute(delete(Delivery).where(
            Delivery.result_fk.in_(ids),
            Delivery.state.in_([DeliveryState.PENDING, DeliveryState.DEAD]))))
        now = utcnow()
        cancelled = rowcount(session.execute(update(Job).where(
            Job.result_fk.in_(ids), Job.kind == JobKind.VERIFIED_REPORT,
            Job.state == JobState.QUEUED).values(
                state=JobState.DONE, finished_at=now, updated_at=now,
                last_error="not made: the verification was withdrawn (the image was replaced)")))
    session.flush()
    return Superseded(len(results), withdrawn, dropped, cancelled)


def _verification(result: Result) -> dict[str, Any]:
    return {"reason": "the image was replaced by a changed version under the same SOP "
                      "Instance UID; its result is analysed again",
            "verified_by_fk": result.verified_by_fk,
            "verified_at": result.verified_at.isoformat() if result.verified_at else None,
            "verified_stage": result.verified_stage, "ai_stage": result.stage,
            "instance_revision": result.instance_revision}


def clear_verification(result: Result) -> None:
    """Make ``result`` unverified again: no doctor, verdict, comment or verified objects."""
    result.verification = VerificationState.UNVERIFIED
    result.verified_by_fk = None
    result.verified_at = None
    result.verified_stage = None
    result.verified_with = None
    result.verified_comment = None
    result.verified_sr_sop_instance_uid = None
    result.verified_pdf_path = None
    result.corrected_seg_sop_instance_uid = None
