"""The case: a study as the doctor reviews and signs it. Its figures are defined here once.

A case's stage is the vote of its diagnostic fields (ties go to the more advanced stage), its
probabilities the fields' mean, and its one **confidence** the mean probability of that stage
(:func:`case_findings`). The study summary SR and PDF, the worklist and the case page all show
this one figure. Its blast count is :func:`case_blast_count`, the one place where a doctor's
rejected cells (:mod:`bcd_node.records.cells`) are taken off.

Its **status** (:func:`case_status`, the values of :class:`~bcd_node.db.models.StudyStatus`):

- ``analysing`` while any of its images is queued or being analysed, or while it is still
  receiving: no summary yet (it comes once no image arrived for ``workers.study_quiet_seconds``
  and every analysis is done);
- ``failed`` when no image could be analysed, when the summary of its fields or the signed report
  could not be made;
- ``signed`` once a doctor signed the case, i.e. verified its *current* study summary, and
  ``signed_corrected`` when the doctor changed the AI's stage of the case or of any field;
- ``awaiting_review`` otherwise.

Verifying every field does not sign a case: only the summary's signature does, so a case never
shows as signed while its summary at the PACS is unverified. A new field after the signature
makes a new summary, and the case awaits review again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from bcd_node.db.models import (
    ACTIVE_JOB_STATES,
    AuditEvent,
    Instance,
    Job,
    JobKind,
    JobState,
    Result,
    ResultScope,
    Series,
    Stage,
    Study,
    StudyStatus,
    VerificationState,
)
from bcd_node.records.cells import corrected_areas, corrected_counts


class FieldFigures(Protocol):
    """What the case's figures read of a field's result: a :class:`Result`, or a row of
    those columns alone (:func:`bcd_node.records.studies.refresh_study`)."""

    @property
    def stage(self) -> Stage | None: ...

    @property
    def probabilities(self) -> Mapping[str, Any] | None: ...

    @property
    def verification(self) -> VerificationState: ...

    @property
    def verified_stage(self) -> Stage | None: ...


#: Stages from least to most advanced (the order of :class:`Stage`); a tied vote goes to the
#: more advanced one.
STAGE_ORDER: dict[str, int] = {stage: i for i, stage in enumerate(Stage)}

#: What each status means, for people (the worklist and the case page show these).
STATUS_LABELS: dict[StudyStatus, str] = {
    StudyStatus.ANALYSING: "Analysing",
    StudyStatus.AWAITING_REVIEW: "Awaiting review",
    StudyStatus.SIGNED: "Signed",
    StudyStatus.SIGNED_CORRECTED: "Signed with correction",
    StudyStatus.FAILED: "Failed",
}


def vote(stages: Sequence[str]) -> Stage | None:
    """The most frequent stage; ties go to the more advanced stage."""
    if not stages:
        return None
    votes = Counter(Stage(s) for s in stages)
    return max(votes, key=lambda s: (votes[s], STAGE_ORDER[s]))


@dataclass(frozen=True)
class CaseFindings:
    """The AI's combined finding over a case's diagnostic fields."""

    stage: Stage | None
    #: Mean probability of each stage over the diagnostic fields (summing to 1); None without
    #: a stage.
    probabilities: dict[str, float] | None
    #: The case's one confidence: the mean probability of :attr:`stage`.
    confidence: float | None


def case_findings(results: Iterable[FieldFigures]) -> CaseFindings:
    """Stage by vote, mean probabilities and confidence of the fields' ``results`` (those
    without a stage, non-diagnostic or failed, do not vote)."""
    staged = [r for r in results if r.stage]
    stage = vote([r.stage for r in staged if r.stage])
    if stage is None:
        return CaseFindings(None, None, None)
    means = {name: sum(float((r.probabilities or {}).get(name, 0.0)) for r in staged)
             / len(staged) for name in STAGE_ORDER}
    total = sum(means.values()) or 1.0
    probs = {name: value / total for name, value in means.items()}
    return CaseFindings(stage, probs, probs[stage])


class AttentionFigures(FieldFigures, Protocol):
    """What :func:`case_attention` reads of a field's result besides its figures."""

    @property
    def needs_review(self) -> bool: ...

    @property
    def review_reasons(self) -> Sequence[str] | None: ...


def _fields_text(n: int) -> str:
    return f"{n} field" + ("" if n == 1 else "s")


def case_attention(fields: Sequence[AttentionFigures], stage: Stage | str | None, *,
                   analysing: bool) -> list[str]:
    """Why an unsigned case needs the doctor's attention, in words, for the worklist: the
    review reasons of its fields not verified one by one ("needs review" for a result made
    before reasons were stored), malignant fields in a case whose vote (``stage``) is Benign
    (the vote can outnumber them), and fields that could not be analysed (none at all, once
    nothing is being analysed). Empty when nothing does."""
    reasons: list[str] = []
    for r in fields:
        if r.stage is None or r.verification != VerificationState.UNVERIFIED:
            continue
        for reason in r.review_reasons or (["needs review"] if r.needs_review else []):
            if reason not in reasons:
                reasons.append(str(reason))
    staged = [r.stage for r in fields if r.stage is not None]
    if stage is not None and Stage(stage) is Stage.BENIGN:
        malignant = len([s for s in staged if Stage(s) is not Stage.BENIGN])
        if malignant:
            reasons.append(f"{_fields_text(malignant)} of {len(staged)} staged malignant, "
                           "the case Benign by vote")
    unstaged = len(fields) - len(staged)
    if fields and not staged and not analysing:
        reasons.append("no field could be analysed")
    elif unstaged and staged:
        reasons.append(f"{_fields_text(unstaged)} not analysable")
    return reasons


def case_blast_area(fields: Sequence[tuple[Result, Instance]],
                    corrected: Mapping[int, float] | None = None) -> float | None:
    """The blast area of a case: each diagnostic field's fraction (the doctor's from
    ``corrected`` by result id, :func:`~bcd_node.records.cells.corrected_areas`, else the AI's)
    weighted by its pixels, as the case report computes it; None without a diagnostic field."""
    corrected = corrected or {}
    staged = [(r, i) for r, i in fields if r.stage]
    if not staged:
        return None
    pixels = [max(1, (i.rows or 0) * (i.columns or 0) * (i.frames or 1)) for _, i in staged]
    return min(1.0, sum(corrected.get(r.id, r.blast_area_fraction or 0.0) * p
                        for (r, _), p in zip(staged, pixels)) / sum(pixels))


def case_blast_count(results: Iterable[Result],
                     corrected: Mapping[int, int] | None = None) -> int:
    """The blast cells of a case: the count of each diagnostic field's result, added up.

    The one place the case's count is made. ``corrected`` holds, by result id, the count of a
    field whose cells a doctor rejected (:func:`bcd_node.records.cells.corrected_counts`); the
    AI's count stands for the others.
    """
    corrected = corrected or {}
    return int(sum(corrected.get(r.id, r.blast_count) for r in results if r.stage))


def is_corrected(result: FieldFigures) -> bool:
    """Whether a doctor verified ``result`` with a stage other than the AI's."""
    return (result.verification == VerificationState.VERIFIED
            and result.verified_stage is not None and result.verified_stage != result.stage)


def case_status(*, analysing: bool, summarised: bool, summary: Result | None,
                fields: Sequence[FieldFigures], analysis_failed: bool,
                report_failed: bool, summary_failed: bool = False) -> StudyStatus:
    """The case's status (the rule is the module's).

    Parameters
    ----------
    analysing
        An image of the case is queued or being analysed, or its summary is being made.
    summarised
        The summary of the case's current fields is made (none is due).
    summary
        The case's study summary result, if any.
    fields
        The results of the case's fields.
    analysis_failed
        An image's analysis failed for good.
    report_failed
        The job making the signed report failed for good.
    summary_failed
        The job making the summary of the case's current fields failed for good.
    """
    if analysing or not summarised:
        if not analysing and (summary_failed or not fields and analysis_failed):
            return StudyStatus.FAILED
        return StudyStatus.ANALYSING
    if not fields and analysis_failed:
        return StudyStatus.FAILED
    if summary is not None and summary.verification == VerificationState.VERIFIED:
        if report_failed:
            return StudyStatus.FAILED
        if is_corrected(summary) or any(is_corrected(r) for r in fields):
            return StudyStatus.SIGNED_CORRECTED
        return StudyStatus.SIGNED
    return StudyStatus.AWAITING_REVIEW


#: The analysis's "low confidence" review reason (bcd_node.inference.spec.REASON_LOW_CONFIDENCE,
#: a layer above this module).
LOW_CONFIDENCE = "low confidence"


def field_flags(result: Result | None, *, review_threshold: float = 0.0) -> list[str]:
    """What a doctor must know of a field, in words: no result yet, failure, quality, and why
    it needs review (the reasons its analysis stored: low confidence with its figure, unlike
    the training data, scale unknown; ``review_threshold`` only for results made before
    reasons were stored)."""
    if result is None:
        return ["not analysed yet"]
    quality = result.quality or {}
    flags: list[str] = []
    if quality.get("status") == "failed":
        flags.append("could not be analysed")
    elif result.stage is None:
        flags.append("quality insufficient")
    flags += [str(f).replace("_", " ") for f in quality.get("flags") or []]
    if result.stage is None:
        return flags
    reasons = [str(r) for r in result.review_reasons or []]
    low = (f"low confidence ({result.confidence:.0%})" if result.confidence is not None
           else LOW_CONFIDENCE)
    if reasons:
        # The reasons the analysis stored (and its SR states), whatever today's threshold is.
        flags += [low if r == LOW_CONFIDENCE else r for r in reasons]
    elif result.needs_review:
        # A result from before the reasons were stored: its flag came from the threshold.
        flags.append(low if result.confidence is not None
                     and result.confidence < review_threshold else "needs review")
    return flags


@dataclass(frozen=True)
class CaseField:
    """One field of a case: its number in the study, image, newest result and flags."""

    number: int
    instance: Instance
    result: Result | None
    flags: list[str]

    @property
    def attention(self) -> bool:
        """Whether the doctor should look at this field before signing."""
        return bool(self.flags)

    @property
    def stage(self) -> Stage | None:
        """The field's stage: the doctor's once verified, else the AI's."""
        if self.result is None:
            return None
        return self.result.verified_stage or self.result.stage


#: The audit actions of a case's signature (signing it, amending it).
SIGNATURE_ACTIONS = ("sign_case_accept", "sign_case_correct", "amend_case_accept",
                     "amend_case_correct")


@dataclass(frozen=True)
class EarlierSignature:
    """A signature of an earlier summary of a case that is unsigned now (a field arrived or
    changed since), as the audit log keeps it."""

    by: str
    at: datetime
    stage: str | None


def earlier_signature(session: Session, study: Study) -> EarlierSignature | None:
    """The last signature of ``study``'s case in the audit log (the case's summary keeps only
    its current signature: a new summary clears it)."""
    event = session.execute(select(AuditEvent).where(
        AuditEvent.action.in_(SIGNATURE_ACTIONS),
        AuditEvent.study_instance_uid == study.study_instance_uid)
        .order_by(AuditEvent.id.desc()).limit(1)).scalar_one_or_none()
    if event is None:
        return None
    return EarlierSignature(event.actor, event.at, (event.details or {}).get("verified_stage"))


@dataclass(frozen=True)
class Case:
    """What the case page shows (:func:`load_case`)."""

    study: Study
    status: StudyStatus
    fields: list[CaseField]
    summary: Result | None
    findings: CaseFindings
    blast_count: int
    #: The job making the signed report failed for good: its error.
    report_error: str | None
    #: Images whose analysis failed for good.
    failed_fields: int
    #: While the case is still receiving or analysing: when its summary is due at the
    #: earliest (the last image's arrival plus ``workers.study_quiet_seconds``).
    summary_due: datetime | None
    analysing_fields: int
    #: When the case is not signed: its last signature of an earlier summary, if any (a field
    #: arrived or changed after it was signed).
    signed_before: EarlierSignature | None = None
    #: The blast area over the diagnostic fields' pixels, without the cells the doctor
    #: rejected (:func:`case_blast_area`); None without a diagnostic field.
    blast_area: float | None = None

    @property
    def stage_votes(self) -> list[tuple[Stage, int]]:
        """How many diagnostic fields have each stage, the most first (ties: the more advanced
        stage first, as :func:`vote` breaks them)."""
        votes = Counter(Stage(f.result.stage) for f in self.fields
                        if f.result is not None and f.result.stage)
        return sorted(votes.items(), key=lambda kv: (-kv[1], -STAGE_ORDER[kv[0]]))

    @property
    def signed(self) -> bool:
        """Whether a doctor signed the case (its current summary)."""
        return self.summary is not None and \
            self.summary.verification == VerificationState.VERIFIED

    @property
    def can_sign(self) -> bool:
        """Whether the case can be signed now: its summary is made and not yet signed."""
        return (self.summary is not None and not self.signed
                and self.status == StudyStatus.AWAITING_REVIEW)

    @property
    def attention(self) -> list[CaseField]:
        """The fields that need the doctor's attention."""
        return [f for f in self.fields if f.attention]


def load_case(session: Session, study: Study, *, quiet_seconds: float,
              review_threshold: float) -> Case:
    """The case of ``study`` with its fields in the order received (their numbers)."""
    from bcd_node.records.studies import current_summary, report_job_failed

    instances = session.execute(
        select(Instance).join(Series, Instance.series_fk == Series.id)
        .where(Series.study_fk == study.id).order_by(Instance.id)).scalars().all()
    results = session.execute(select(Result).where(
        Result.study_fk == study.id, Result.scope == ResultScope.INSTANCE)
        .order_by(Result.id)).scalars().all()
    summary = current_summary(session, study.id)
    newest: dict[int, Result] = {}
    for result in results:
        if result.instance_fk is not None and (
                summary is None or result.model_version == summary.model_version
                or result.instance_fk not in newest):
            newest[result.instance_fk] = result
    fields = [CaseField(n, inst, newest.get(inst.id),
                        field_flags(newest.get(inst.id), review_threshold=review_threshold))
              for n, inst in enumerate(instances, 1)]
    states = session.execute(select(Job.kind, Job.state, Job.instance_fk).where(
        Job.study_fk == study.id, Job.kind == JobKind.ANALYZE)).all()
    failed = {i for _, state, i in states if state == JobState.FAILED}
    active = {i for _, state, i in states if state in ACTIVE_JOB_STATES}
    for f in fields:
        if f.result is None and f.instance.id in failed:
            f.flags[:] = ["could not be analysed"]
        elif f.instance.id in active:
            f.flags[:] = ["being analysed"]
    with_stage = [f.result for f in fields if f.result is not None]
    due = None
    if study.summary_done_at is None:
        received = study.last_received_at
        if received.tzinfo is None:
            received = received.replace(tzinfo=timezone.utc)
        due = received + timedelta(seconds=quiet_seconds)
    staged_fields = [(f.result, f.instance) for f in fields if f.result is not None]
    return Case(study=study, status=study.status, fields=fields, summary=summary,
                blast_area=case_blast_area(staged_fields, corrected_areas(session, with_stage)),
                findings=case_findings(with_stage),
                blast_count=case_blast_count(with_stage, corrected_counts(session, with_stage)),
                report_error=report_job_failed(session, summary) if summary else None,
                failed_fields=len(failed - set(newest)), summary_due=due,
                analysing_fields=len(active),
                signed_before=earlier_signature(session, study) if summary is not None
                and summary.verification != VerificationState.VERIFIED else None)
