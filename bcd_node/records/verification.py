"""A doctor's verification of a result: accept the AI's stage, or correct it; signing a case
(:func:`sign_case`) and amending a signed case (:func:`amend_case`).

:func:`verify_result` is the one implementation; the console's review page calls it, and so must
any other client (an API or command that verifies). In the caller's transaction it checks that
the result may be verified, records the decision next to the AI's own findings (which stay as
they were), queues the job that makes the VERIFIED SR and PDF when there is an AI SR for them to
supersede, refreshes the study's worklist columns and writes the audit event.

:func:`queue_case_report` is where a verification reaches the laboratory information systems:
when the case was reported to one (its preliminary ORU^R01 queued), a ``lis_report`` job
sends the final result once the case is signed, or a correction of a signed case
(:mod:`bcd_node.analysis.lis`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bcd_node.db.engine import rowcount
from bcd_node.db.models import (
    Delivery,
    Instance,
    Job,
    JobKind,
    LisMessageKind,
    Result,
    Role,
    Stage,
    Study,
    StudyStatus,
    User,
    UserState,
    VerificationState,
    utcnow,
)
from bcd_node.errors import PermanentError, ValidationError
from bcd_node.records import audit
from bcd_node.records.studies import refresh_study

#: The longest comment a doctor may add to a verification.
MAX_COMMENT = 2000


class Decision(enum.StrEnum):
    """What the doctor decides about the AI's stage."""

    ACCEPT = "accept"
    CORRECT = "correct"


class VerificationRefused(PermanentError):
    """The result cannot be verified now; the message says why, for the doctor."""


class NoStageToCorrectError(VerificationRefused):
    """A stage given to a result that has none: no field (or not this field) could be
    diagnosed, so no report would carry the doctor's stage."""


class NotADoctorError(VerificationRefused):
    """Only an active doctor verifies results."""


class AlreadyVerifiedError(VerificationRefused):
    """The result has been verified before; a verification is final."""


class ImageReplacedError(VerificationRefused):
    """The image changed since the result was made; its new result is verified instead."""


def queue_case_report(session: Session, study_id: int, result_id: int) -> bool:
    """After a verification in ``study_id``: queue the ``lis_report`` job that tells each LIS
    (F once the case is signed, C for a change to a signed case) when the case was reported to
    one; returns whether it was queued. The caller commits."""
    study_results = select(Result.id).where(Result.study_fk == study_id)
    reported = session.execute(select(Delivery.id).where(
        Delivery.result_fk.in_(study_results),
        Delivery.kind.in_([k.value for k in LisMessageKind])).limit(1)).first()
    if reported is None:
        return False
    session.add(Job(kind=JobKind.LIS_REPORT, study_fk=study_id, result_fk=result_id))
    return True


@dataclass(frozen=True)
class Verified:
    """What a verification did."""

    result_id: int
    #: The doctor's stage differs from the AI's.
    corrected: bool
    #: A VERIFIED SR and PDF will be made and sent (False when the AI made no SR, e.g. quality
    #: insufficient: the verification then stays on record here only).
    report_queued: bool


def verify_result(session: Session, result: Result, decision: Decision | str, *,
                  stage: Stage | str | None, comment: str | None, user_id: int, actor: str,
                  actor_kind: str, source: str = "") -> Verified:
    """Record a doctor's verification of ``result`` in ``session`` (the caller commits).

    Parameters
    ----------
    result
        The result, loaded in ``session``.
    decision
        Accept the AI's stage, or correct it to ``stage``.
    stage
        The corrected stage (needed for a correction; ignored when accepting). A correction to
        the AI's own stage is an acceptance.
    comment
        The doctor's comment (blank for none; at most :data:`MAX_COMMENT` characters).
    user_id
        The verifying doctor.
    actor, actor_kind, source
        For the audit event.

    Raises
    ------
    VerificationRefused
        When the user is not an active doctor, the result was verified before, or its image
        was replaced by a changed version (whose own result is verified instead).
    ValidationError
        For a decision, stage or comment that is not valid.
    """
    return _verify(session, result, decision, stage=stage, comment=comment, user_id=user_id,
                   actor=actor, actor_kind=actor_kind, source=source)


def _lf(text: str | None) -> str:
    """A doctor's text, stripped, its line breaks as LF (a browser's form sends CRLF)."""
    return (text or "").replace("\r\n", "\n").replace("\r", "\n").strip()


def _verify(session: Session, result: Result, decision: Decision | str, *,
            stage: Stage | str | None, comment: str | None, user_id: int, actor: str,
            actor_kind: str, source: str, amendment: str | None = None,
            with_case: bool = False) -> Verified:
    """:func:`verify_result`; with ``amendment`` (its reason), the new signature of a signed
    case's summary that replaces its signature (:func:`amend_case`, which checks the rest);
    ``with_case``: a field whose cells the doctor reviewed, verified with the signature of its
    case (:func:`_verify_fields_with_rejected_cells`): no stage of the doctor's is recorded
    for it (``verified_stage`` None, ``verified_with`` :data:`VERIFIED_WITH_CASE`)."""
    try:
        decision = Decision(decision)
    except ValueError:
        raise ValidationError(f"decision must be accept or correct, got {decision!r}") from None
    corrected_stage: Stage | None = None
    if decision is Decision.CORRECT:
        try:
            corrected_stage = Stage(stage) if stage else None
        except ValueError:
            raise ValidationError(f"stage must be one of {[s.value for s in Stage]}, got "
                                  f"{stage!r}") from None
        if corrected_stage is None:
            raise ValidationError("Choose the corrected stage.")
    text = _lf(comment)
    if len(text) > MAX_COMMENT:
        raise ValidationError(f"the comment has {len(text)} characters; at most {MAX_COMMENT}")
    user = session.get(User, user_id)
    if user is None or user.role is not Role.DOCTOR or user.state is not UserState.ACTIVE:
        raise NotADoctorError("Only a doctor can verify results.")
    if not (user.full_name or "").strip():
        # The signed report names its signer; a login name is not a name (an account made
        # before doctors needed one).
        raise NotADoctorError("Your account has no full name, which a signed report must give: "
                              "ask an administrator to add it (Users page, or bcd-node users "
                              "set-name).")
    if amendment is None and result.verification != VerificationState.UNVERIFIED:
        raise AlreadyVerifiedError("This case has already been signed." if result.instance_fk
                                   is None else "This result has already been verified.")
    instance = session.get(Instance, result.instance_fk) if result.instance_fk else None
    if instance is not None and instance.revision != result.instance_revision:
        raise ImageReplacedError("This image was replaced by a changed version, which is being "
                                 "analysed. Verify its new result once it is shown.")
    study = session.get(Study, result.study_fk)
    if study is None:  # the foreign key cascades: a result has its study
        raise LookupError(f"result {result.id}: study {result.study_fk} does not exist")

    if corrected_stage is not None and result.stage is None:
        # Nothing would carry it: no report is made without the AI's (there is no diagnostic
        # SR to supersede, no analysed field to show), so the stage would stay here alone.
        raise NoStageToCorrectError(
            ("No field of this case could be diagnosed, so it cannot be given a stage here: "
             "sign it to record that you reviewed it (no report is made), and ask for new "
             "images.") if result.instance_fk is None else
            ("This field could not be diagnosed, so it cannot be given a stage here: verify it "
             "to record that you reviewed it, or ask for a new image."))
    corrected = corrected_stage is not None and corrected_stage != result.stage
    replaced = None
    if amendment is not None:
        # Claimed in the database as a first signature is (below): two doctors amending at
        # once both loaded the same signature; the second must not silently replace the
        # first one's amendment.
        claimed = session.execute(
            update(Result)
            .where(Result.id == result.id, Result.verified_at == result.verified_at,
                   Result.verified_sr_sop_instance_uid.is_not(None))
            .values(verified_sr_sop_instance_uid=None)
            .execution_options(synchronize_session=False))
        if rowcount(claimed) != 1:
            raise AlreadyVerifiedError("This case has just been amended by another doctor: "
                                       "reload it to see their amendment.")
        # The signature this one replaces, for the amended report to name (its SR is the new
        # signed SR's predecessor); its own files stay where they are.
        replaced = {"reason": amendment, "by_fk": result.verified_by_fk,
                    "at": result.verified_at.isoformat() if result.verified_at else None,
                    "stage": None if result.verified_stage is None else str(result.verified_stage),
                    "comment": result.verified_comment,
                    "sr": result.verified_sr_sop_instance_uid}
        result.amends = replaced
        result.verified_sr_sop_instance_uid = None
        result.verified_pdf_path = None
    if amendment is None:
        # Claim the verification in the database, not only on the loaded object: two doctors
        # who opened the same case or field both loaded it unverified, and the second to
        # commit would silently replace the first one's signature (and stage) with their own.
        claimed = session.execute(
            update(Result)
            .where(Result.id == result.id,
                   Result.verification == VerificationState.UNVERIFIED)
            .values(verification=VerificationState.VERIFIED)
            .execution_options(synchronize_session=False))
        if rowcount(claimed) != 1:
            raise AlreadyVerifiedError(
                "This case has just been signed by another doctor: reload it to see their "
                "signature (amend it if you disagree)." if result.instance_fk is None else
                "This result has just been verified by another doctor: reload it to see "
                "their verification.")
    # One state, "verified"; a correction is a verified stage that differs from the AI's.
    result.verification = VerificationState.VERIFIED
    result.verified_stage = (None if with_case else
                             corrected_stage if corrected else result.stage)
    result.verified_with = VERIFIED_WITH_CASE if with_case else None
    result.verified_comment = text or None
    result.verified_by_fk = user.id
    result.verified_at = utcnow()
    # The VERIFIED SR supersedes the AI's diagnostic SR. Without one there is nothing to
    # supersede, and the verification stays on record here only: an image the quality gate
    # refused has a stage of None and, at most, a non-diagnostic SR, which no doctor verifies.
    report = bool(result.sr_sop_instance_uid) and result.stage is not None
    if report:
        session.add(Job(kind=JobKind.VERIFIED_REPORT, result_fk=result.id, study_fk=study.id,
                        instance_fk=result.instance_fk))
    session.flush()
    refresh_study(session, study.id)  # worklist columns: "verified" and the doctors' stage
    queue_case_report(session, study.id, result.id)
    audit.record(session, actor=actor, actor_kind=actor_kind, source=source,
                 action=("verify_cells_with_case" if with_case else
                         ("amend_case_" if amendment is not None else
                          "sign_case_" if result.instance_fk is None else "verify_")
                         + ("correct" if corrected else "accept")),
                 patient_id=study.patient.patient_id,
                 study_instance_uid=study.study_instance_uid, object_ref=f"result:{result.id}",
                 details={"ai_stage": result.stage, "verified_stage": result.verified_stage,
                          "comment": result.verified_comment or "",
                          "verified_report": "queued" if report else "none (no AI SR)",
                          **({} if replaced is None else {
                              "amendment_reason": amendment,
                              "replaces": {key: replaced[key] for key in
                                           ("by_fk", "at", "stage", "comment", "sr")}})})
    return Verified(result.id, corrected, report)


class CaseNotReadyError(VerificationRefused):
    """The case cannot be signed yet (still receiving or analysing, or no summary)."""


def sign_case(session: Session, study: Study, decision: Decision | str, *,
              stage: Stage | str | None, comment: str | None, user_id: int, actor: str,
              actor_kind: str, source: str = "") -> Verified:
    """Sign a case: the doctor's verification of its study summary (accept the AI's case
    stage, or correct it), which queues the VERIFIED summary SR and the signed PDF.

    A case is signed only through its summary: verifying each field does not sign it
    (:mod:`bcd_node.records.cases`). The fields the doctor did not verify one by one are
    covered by the signed summary and get no VERIFIED SR of their own, except those whose
    cells the doctor rejected: they are verified with the case (their stage accepted), so
    that their corrected SEG and count reach the PACS.

    Raises
    ------
    CaseNotReadyError
        The case is still receiving or analysing, or has no summary yet.
    VerificationRefused, ValidationError
        As :func:`verify_result`.
    """
    from bcd_node.records.studies import current_summary, refresh_study

    refresh_study(session, study.id)
    summary = current_summary(session, study.id)
    if summary is None or study.summary_done_at is None or study.status in (
            StudyStatus.ANALYSING,):
        raise CaseNotReadyError("This case is still receiving or being analysed; it can be "
                                "signed once its summary is made.")
    signed = verify_result(session, summary, decision, stage=stage, comment=comment,
                           user_id=user_id, actor=actor, actor_kind=actor_kind, source=source)
    _verify_fields_with_rejected_cells(session, study, user_id=user_id, actor=actor,
                                       actor_kind=actor_kind, source=source)
    return signed


#: ``Result.verified_with`` of a field verified with the signature of its case.
VERIFIED_WITH_CASE = "case"

#: The longest reason a doctor may give for amending a signed case.
MAX_AMENDMENT_REASON = 500


class NotSignedError(VerificationRefused):
    """A case that is not signed (or whose signed report is not made yet) cannot be amended."""


def amend_case(session: Session, study: Study, decision: Decision | str, *,
               stage: Stage | str | None, comment: str | None, reason: str, user_id: int,
               actor: str, actor_kind: str, source: str = "") -> Verified:
    """Amend a signed case: the doctor signs its summary again, with a stage (accepted or
    corrected), a comment and the reason for the amendment.

    The amended signature replaces the earlier one: the case shows it, and a new VERIFIED
    summary SR (whose Predecessor Documents Sequence names the replaced signed SR) and a new
    signed PDF, which says what it amends and why, are made and sent to the PACS; a LIS that
    had the case's ``F`` gets a ``C``. The replaced signature stays in the audit log, and its
    objects at the PACS. Audited as ``amend_case_accept`` or ``amend_case_correct``.

    Raises
    ------
    NotSignedError
        The case is not signed, or its signed report is not made yet (amend it once it is; a
        report that failed is made again first).
    VerificationRefused, ValidationError
        As :func:`verify_result`; also a missing or too long reason.
    """
    from bcd_node.records.studies import current_summary

    refresh_study(session, study.id)
    summary = current_summary(session, study.id)
    if summary is None or summary.verification != VerificationState.VERIFIED:
        raise NotSignedError("This case is not signed: sign it instead of amending it.")
    if summary.stage is None or not summary.sr_sop_instance_uid:
        raise NotSignedError("No field of this case could be diagnosed: its signature made no "
                             "report to amend.")
    if not summary.verified_sr_sop_instance_uid or not summary.verified_pdf_path:
        raise NotSignedError("The signed report is not made yet: amend it once it is shown "
                             "(a report that could not be made is made again first).")
    text = _lf(reason)
    if not text:
        raise ValidationError("Give the reason for the amendment.")
    if len(text) > MAX_AMENDMENT_REASON:
        raise ValidationError(f"the reason has {len(text)} characters; at most "
                              f"{MAX_AMENDMENT_REASON}")
    return _verify(session, summary, decision, stage=stage, comment=comment, user_id=user_id,
                   actor=actor, actor_kind=actor_kind, source=source, amendment=text)


def _verify_fields_with_rejected_cells(session: Session, study: Study, *, user_id: int,
                                       actor: str, actor_kind: str, source: str) -> None:
    """The fields whose cells the doctor rejected and did not verify one by one are verified
    with the case: each gets its corrected SEG and a VERIFIED SR with the corrected count,
    which the signed summary alone cannot carry. Their cells were reviewed, their stage was
    not: no stage and no comment are put in the doctor's name (their reports say the field's
    stage was not reviewed on its own, and what the case was signed as)."""
    from bcd_node.db.models import CellRejection, ResultScope

    rows = session.execute(select(Result).where(
        Result.study_fk == study.id, Result.scope == ResultScope.INSTANCE,
        Result.verification == VerificationState.UNVERIFIED,
        Result.id.in_(select(CellRejection.result_fk))).order_by(Result.id)).scalars().all()
    for field in rows:
        try:
            _verify(session, field, Decision.ACCEPT, stage=None, comment=None,
                    user_id=user_id, actor=actor, actor_kind=actor_kind, source=source,
                    with_case=True)
        except ImageReplacedError:
            continue  # its new version, analysed again, has no rejected cells
        except AlreadyVerifiedError:
            continue  # another doctor verified it on its own meanwhile: theirs stands


def retry_signed_report(session: Session, study: Study, *, actor: str, actor_kind: str,
                        source: str = "") -> bool:
    """Queue the signed report of a signed case again when its job failed for good (a full
    disk, a bug fixed since); returns whether a job was queued. Audited."""
    from bcd_node.records.studies import current_summary, refresh_study, report_job_failed

    summary = current_summary(session, study.id)
    error = report_job_failed(session, summary) if summary is not None else None
    if summary is None or error is None:
        return False
    session.add(Job(kind=JobKind.VERIFIED_REPORT, result_fk=summary.id, study_fk=study.id))
    session.flush()
    refresh_study(session, study.id)
    audit.record(session, actor=actor, actor_kind=actor_kind, source=source,
                 action="signed_report_retry", patient_id=study.patient.patient_id,
                 study_instance_uid=study.study_instance_uid,
                 object_ref=f"result:{summary.id}", details={"error": error[:500]})
    return True
