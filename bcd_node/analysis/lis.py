"""The case's result for each laboratory information system (``[[lis]]``): HL7 ORU^R01
messages in the outbox.

:func:`queue_case_messages` is the one place that decides what a LIS hears about a case (a
study) and queues it, in the caller's transaction:

- the AI's result, ``P`` (preliminary), when the study summary is made (a changed summary, after
  a new or changed field, is sent again);
- ``F`` (final) once the case is signed (its summary result is verified);
- ``C`` (corrected) when a doctor signs a case again whose ``F`` (or an earlier ``C``) was queued
  (a field arrived after the signature, so the case was summarised and signed anew). Between the
  two the LIS hears nothing: the new summary is the AI's proposal, and the LIS keeps the signed
  result until the doctor signs again.

It is called by the study summary job and by the ``lis_report`` job, which
:func:`bcd_node.records.verification.verify_result` queues when the case was reported to a LIS
before. Each message is written to a file under the study's results folder and queued as one
outbox row per LIS; its control id (MSH-10) is derived from what it says, so a re-run queues
nothing twice, and the deliverer sends the file as it is on every attempt.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from bcd_node.analysis.context import AnalysisContext
from bcd_node.analysis.publish import complete_or_raise
from bcd_node.db.models import (
    Delivery,
    LisMessageKind,
    Result,
    ResultScope,
    Study,
    User,
    VerificationState,
    utcnow,
)
from bcd_node.errors import PermanentError
from bcd_node.jobs.queue import Claimed
from bcd_node.report.hl7 import (
    CaseResult,
    Doctor,
    Endpoints,
    MessageError,
    ResultStatus,
    build_oru,
)
from bcd_node.settings import LisDestination
from bcd_node.store.layout import DataLayout
from bcd_node.store.storage import Store

LOGGER = logging.getLogger(__name__)
#: ``sop_class_uid`` of an outbox row that carries an HL7 message.
ORU_CLASS = "ORU^R01"
_KIND = {ResultStatus.PRELIMINARY: LisMessageKind.PRELIMINARY,
         ResultStatus.FINAL: LisMessageKind.FINAL,
         ResultStatus.CORRECTED: LisMessageKind.CORRECTED}


@dataclass(frozen=True)
class Signature:
    """Who signed the case, when, and the stage they signed."""

    doctor: User
    at: datetime
    stage: str | None


def case_signature(session: Session, summary: Result) -> Signature | None:
    """The case's signature: the verification of its summary result (signing the case,
    :func:`bcd_node.records.verification.sign_case`); None while unsigned. Verifying every
    field does not sign a case (:mod:`bcd_node.records.cases`)."""
    if summary.verification != VerificationState.VERIFIED or summary.verified_at is None:
        return None
    doctor = session.get(User, summary.verified_by_fk) if summary.verified_by_fk else None
    if doctor is None:
        return None
    return Signature(doctor, summary.verified_at, summary.verified_stage or summary.stage)


def _doctor(user: User) -> Doctor:
    name = " ".join((user.full_name or "").split())
    if not name:
        return Doctor(identifier=user.username, family_name=user.username)
    given, _, family = name.rpartition(" ")
    return Doctor(identifier=user.username, family_name=family, given_name=given)


def _message_id(key: str) -> str:
    """A 20-character MSH-10 derived from what the message says (so a re-run reuses it)."""
    return "B" + hashlib.sha256(key.encode()).hexdigest()[:19].upper()


def case_result(study: Study, summary: Result, status: ResultStatus,
                signature: Signature | None) -> CaseResult:
    """What the message about ``study`` says, from its summary result and signature."""
    quality = summary.quality or {}
    fields = int(quality.get("fields", 0))
    analysed = int(quality.get("analysed", 0))
    stage = signature.stage if signature is not None else summary.stage
    probability = (float(summary.probabilities[stage])
                   if stage and stage in (summary.probabilities or {}) else None)
    patient = study.patient
    return CaseResult(
        status=status, patient_id=patient.patient_id, patient_issuer=patient.issuer,
        patient_name=patient.name, birth_date=patient.birth_date, sex=patient.sex,
        accession_number=study.accession_number, study_instance_uid=study.study_instance_uid,
        study_date=study.study_date, study_time=study.study_time,
        model_name=summary.model_name, model_version=summary.model_version,
        observed_at=summary.created_at, stage=stage, probability=probability,
        blast_count=summary.blast_count, blast_area_fraction=summary.blast_area_fraction,
        fields_analysed=analysed, fields_non_diagnostic=max(0, fields - analysed),
        doctor=_doctor(signature.doctor) if signature is not None else None,
        verified_at=signature.at if signature is not None else None)


def queue_case_messages(session: Session, store: Store, lis: tuple[LisDestination, ...],
                        study_id: int) -> list[str]:
    """Queue what each LIS has not heard yet of study ``study_id``, in ``session``'s
    transaction (the caller commits, then wakes the deliverer); returns the control ids queued.

    Nothing is queued before the study has a summary result (the summary job calls this again).
    """
    if not lis:
        return []
    study = session.get(Study, study_id)
    if study is None:
        raise LookupError(f"study {study_id} does not exist")
    summary = session.execute(select(Result).where(
        Result.study_fk == study_id, Result.scope == ResultScope.STUDY)
        .order_by(Result.created_at.desc(), Result.id.desc()).limit(1)).scalar_one_or_none()
    if summary is None or not summary.sr_sop_instance_uid:
        return []
    signature = case_signature(session, summary)
    if signature is None:
        key = f"P|{summary.sr_sop_instance_uid}"
    else:
        key = (f"S|{summary.sr_sop_instance_uid}|{signature.doctor.id}|"
               f"{signature.at.isoformat()}|{signature.stage or ''}")
    study_results = select(Result.id).where(Result.study_fk == study_id)
    queued: list[str] = []
    now = utcnow()
    for dest in lis:
        message_id = _message_id(f"{dest.name}|{key}")
        earlier = session.execute(select(Delivery.kind, Delivery.sop_instance_uid).where(
            Delivery.destination == dest.name, Delivery.result_fk.in_(study_results),
            Delivery.sop_class_uid == ORU_CLASS)).all()
        if any(uid == message_id for _, uid in earlier):
            continue  # already queued (a re-run)
        signed_before = any(kind in (LisMessageKind.FINAL, LisMessageKind.CORRECTED)
                            for kind, _ in earlier)
        if signature is None and signed_before:
            continue  # the LIS keeps the signed result until the case is signed again
        if signature is None:
            status = ResultStatus.PRELIMINARY
        elif signed_before:
            status = ResultStatus.CORRECTED
        else:
            status = ResultStatus.FINAL
        try:
            text = build_oru(case_result(study, summary, status, signature),
                             Endpoints(dest.sending_application, dest.sending_facility,
                                       dest.receiving_application, dest.receiving_facility),
                             message_id, now)
        except MessageError as exc:
            # The PACS results of the job go all the same. The reason may quote a patient's
            # value, so the log names its kind only.
            LOGGER.error("study %s: its ORU^R01 for %s cannot be built (%s); the LIS does not "
                         "hear of this change", study.study_instance_uid, dest.name,
                         type(exc.__cause__ or exc).__name__)
            continue
        folder = f"{DataLayout.study_results(study_id, summary.model_version)}/hl7"
        rel = f"{folder}/{message_id}.hl7"
        store.write(rel, text.encode("utf-8"), sync_dir=True)
        session.add(Delivery(result_fk=summary.id, destination=dest.name,
                             kind=_KIND[status].value, sop_class_uid=ORU_CLASS,
                             sop_instance_uid=message_id, path=rel))
        queued.append(message_id)
        LOGGER.info("study %s: ORU^R01 %s (%s) queued for %s", study.study_instance_uid,
                    message_id, status.value, dest.name)
    return queued


class LisReports:
    """The ``lis_report`` job: a doctor verified a result of a case reported to a LIS."""

    def __init__(self, context: AnalysisContext) -> None:
        self.context = context

    def make(self, job: Claimed) -> None:
        """Queue the case's F or C for each LIS (nothing when the case is not signed yet)."""
        ctx = self.context
        if job.study_fk is None:
            raise PermanentError(f"job {job.id}: no study")
        with ctx.node.session_factory.begin() as session:
            queued = queue_case_messages(session, ctx.store, ctx.settings.lis, job.study_fk)
            complete_or_raise(session, job)
        if queued:
            ctx.node.wake_delivery()
