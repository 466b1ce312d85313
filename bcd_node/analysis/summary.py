"""The study summary: every analysed field of a quiet study combined into a study-level SR and
PDF.

A study is summarised once no image arrived for ``workers.study_quiet_seconds`` and none of its
analyses is still queued or running (:func:`enqueue_study_summaries`, run on a schedule by every
worker process). The summary's stage is the vote of the fields' stages, its probabilities their
mean; a changed field (a new revision) makes a new summary, as a new field does. The summary
counts the fields analysed, non-diagnostic (refused by the quality gate) and failed (their
``analyze`` job failed for good), and references each of them whose file can be read; a study
without any diagnostic field gets a summary too, without a stage.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from bcd_node.analysis.context import AnalysisContext, recorded_image
from bcd_node.analysis.lis import queue_case_messages
from bcd_node.analysis.publish import Output, complete_or_raise, publish, write_files
from bcd_node.db.models import (
    ACTIVE_JOB_STATES,
    Instance,
    Job,
    JobKind,
    JobState,
    Patient,
    Result,
    ResultScope,
    Series,
    Stage,
    Study,
    User,
    VerificationState,
    utcnow,
)
from bcd_node.errors import PermanentError
from bcd_node.jobs.queue import Claimed
from bcd_node.records.cases import case_blast_area, case_blast_count, case_findings, field_flags
from bcd_node.records.cells import corrected_areas, corrected_counts
from bcd_node.records.names import person_name
from bcd_node.records.revisions import clear_verification
from bcd_node.records.studies import refresh_study
from bcd_node.report.summary import Amendment, FieldRow, SummaryData, render_summary
from bcd_node.runtime import NodeContext
from bcd_node.store.layout import DataLayout
from dicom.describe import patient_age, stain
from dicom.encapsulated import build_encapsulated_pdf
from dicom.errors import DicomError
from dicom.pixels import read_dataset
from dicom.series import ResultKind
from dicom.sr import Verification
from dicom.summary import StudyFindings, build_study_summary_sr, summary_kind

LOGGER = logging.getLogger(__name__)


def _summary_done(session: Session, study_id: int) -> None:
    """Record that the study's summary is made (or that it has nothing to summarise)."""
    study = session.get(Study, study_id)
    if study is None:
        raise LookupError(f"study {study_id} does not exist")
    study.summary_done_at = utcnow()


def _summary_done_and_refresh(session: Session, study_id: int) -> None:
    """The summary is made: record it, then the case's status follows (awaiting review)."""
    _summary_done(session, study_id)
    session.flush()
    refresh_study(session, study_id)


class StudySummaries:
    """The ``study_summary`` job."""

    def __init__(self, context: AnalysisContext) -> None:
        self.context = context

    def make(self, job: Claimed) -> None:
        """Combine every analysed field of a quiet study into a study-level SR and PDF."""
        ctx = self.context
        settings = ctx.settings
        with ctx.node.session_factory() as session:
            study = session.get(Study, job.study_fk) if job.study_fk else None
            patient = session.get(Patient, study.patient_fk) if study is not None else None
            if study is None or patient is None:
                raise PermanentError(f"job {job.id}: study {job.study_fk} not found")
            fields = gather_fields(session, study.id, ctx.model_version)
            session.expunge_all()
        sources, referenced = self._sources(job, fields)
        if not sources:
            with ctx.node.session_factory.begin() as session:
                _summary_done_and_refresh(session, study.id)
                complete_or_raise(session, job)
            LOGGER.info("job %d: study %s has no field that can be referenced; no summary",
                        job.id, study.study_instance_uid)
            return
        findings = fields.findings()
        # A changed field (a new revision) makes a new summary, as a new field does.
        revisions = {i.sop_instance_uid: i.revision for i in referenced}
        sr = build_study_summary_sr(sources, findings, algorithm=ctx.algorithm,
                                    uid_root=settings.uids.root, revisions=revisions)
        kind = summary_kind(sources, revisions)
        pdf = render_summary(summary_data(patient, study, fields, findings, ctx.model_name,
                                          ctx.model_version, ctx.demonstration_model,
                                          utcnow(), settings.web.tzinfo, sources[0],
                                          settings.model.review_threshold))
        enc = build_encapsulated_pdf(sources[0], pdf, algorithm=ctx.algorithm,
                                     further_sources=sources[1:],
                                     title="Blood smear study summary", uid_kind=f"{kind}-pdf",
                                     series_kind=ResultKind.SUMMARY_PDF,
                                     field_number=len(sources), uid_root=settings.uids.root)
        folder = DataLayout.study_results(study.id, ctx.model_version)
        pdf_rel = f"{folder}/{kind}.pdf"
        outputs = [Output("summary_sr", sr, f"{folder}/{kind}-sr.dcm"),
                   Output("summary_pdf", enc, f"{folder}/{kind}-pdf.dcm")]
        write_files(ctx.store, (pdf_rel, pdf), outputs)
        stage = findings.stage
        probs = findings.probabilities
        with ctx.node.session_factory.begin() as session:
            result = session.execute(select(Result).where(
                Result.study_fk == study.id, Result.scope == ResultScope.STUDY,
                Result.model_version == ctx.model_version)).scalar_one_or_none()
            if result is None:
                result = Result(study_fk=study.id, scope=ResultScope.STUDY,
                                model_name=ctx.model_name, model_version=ctx.model_version)
                session.add(result)
            if result.sr_sop_instance_uid not in (None, str(sr.SOPInstanceUID)):
                # A new summary (a field arrived or changed after the last one): a signature
                # of the earlier one does not sign this one. The earlier signature stays in
                # the audit log and at the PACS.
                clear_verification(result)  # a new summary: the old signature goes
            result.stage = Stage(stage) if stage is not None else None
            result.probabilities = {str(k): v for k, v in (probs or {}).items()}
            # The case's one confidence (bcd_node.records.cases.case_findings).
            result.confidence = (result.probabilities.get(str(stage))
                                 if stage is not None else None)
            result.blast_count = findings.total_blasts
            result.blast_area_fraction = findings.blast_area_fraction
            result.needs_review = findings.fields_needing_review > 0
            result.demonstration_model = ctx.demonstration_model
            result.quality = {"fields": len(fields.rows) + len(fields.failed),
                              "analysed": findings.fields_analysed,
                              "quality_insufficient": findings.fields_quality_insufficient,
                              "failed": findings.fields_failed}
            result.pdf_path = pdf_rel
            result.sr_sop_instance_uid = str(sr.SOPInstanceUID)
            result.pdf_sop_instance_uid = str(enc.SOPInstanceUID)
            publish(session, job, result, outputs, settings.destinations, study_id=study.id,
                    update_study=_summary_done_and_refresh)
            queue_case_messages(session, ctx.store, settings.lis, study.id)
        ctx.node.wake_delivery()
        LOGGER.info("job %d: study %s summarised: %d field(s) analysed, %d non-diagnostic, %d "
                    "failed: %s", job.id, study.study_instance_uid, findings.fields_analysed,
                    findings.fields_quality_insufficient, findings.fields_failed,
                    stage or "no stage")

    def _sources(self, job: Claimed, fields: Fields) -> tuple[list[Dataset], list[Instance]]:
        """The fields' stored images (every field is referenced, the non-diagnostic and failed
        ones too: the summary speaks of them; a failed field whose file cannot be read is
        counted, not referenced), and their rows in the same order."""
        ctx = self.context
        sources = [self._source(job, i) for _, i in fields.rows]
        referenced = [i for _, i in fields.rows]
        for inst in fields.failed:
            try:
                sources.append(read_dataset(ctx.store.path(inst.path)))
                referenced.append(inst)
            except (DicomError, OSError) as exc:
                LOGGER.warning("job %d: failed field %s is not referenced by the summary: %s",
                               job.id, inst.sop_instance_uid, exc)
        return sources, referenced

    def _source(self, job: Claimed, inst: Instance) -> Dataset:
        """A field's stored image; from its records (:func:`recorded_image`) when its file
        cannot be read any more, as its own "could not be analysed" answer was: the summary
        failed for good on such a field, and its study got none."""
        ctx = self.context
        try:
            return read_dataset(ctx.store.path(inst.path))
        except (DicomError, OSError) as exc:
            LOGGER.warning("job %d: field %s cannot be read (%s); the summary refers to it "
                           "from its records", job.id, inst.sop_instance_uid, exc)
        with ctx.node.session_factory() as session:
            series = session.get(Series, inst.series_fk)
            study = session.get(Study, series.study_fk) if series is not None else None
            patient = session.get(Patient, study.patient_fk) if study is not None else None
            if series is None or study is None or patient is None:
                raise PermanentError(f"job {job.id}: field {inst.id} is no longer on record")
            return recorded_image(inst, series, study, patient)

    def make_verified(self, job: Claimed, result: Result, doctor_name: str) -> None:
        """A doctor signed the case: the VERIFIED successor of the study summary SR and the
        signed summary PDF, queued for the PACS.

        ``result`` is the study's summary result (detached), verified. The signed summary is
        built over the same fields as the summary it supersedes; a study that changed since
        (a field arrived or changed) has a new summary to sign instead.
        """
        ctx = self.context
        settings = ctx.settings
        verified_at = result.verified_at
        if verified_at is None or result.stage is None or not result.sr_sop_instance_uid \
                or not result.pdf_path:
            raise PermanentError(f"job {job.id}: the summary result {result.id} has no stage "
                                 "or no SR to sign")
        with ctx.node.session_factory() as session:
            study = session.get(Study, result.study_fk)
            patient = session.get(Patient, study.patient_fk) if study is not None else None
            if study is None or patient is None:
                raise PermanentError(f"job {job.id}: study {result.study_fk} not found")
            fields = gather_fields(session, study.id, result.model_version)
            # The signed case counts the blasts as the doctor left them (rejected cells off).
            corrected = corrected_counts(session, [r for r, _ in fields.rows])
            areas = corrected_areas(session, [r for r, _ in fields.rows])
            amendment = _amendment(session, result)
            session.expunge_all()
        sources, referenced = self._sources(job, fields)
        revisions = {i.sop_instance_uid: i.revision for i in referenced}
        kind = summary_kind(sources, revisions) if sources else ""
        folder = DataLayout.study_results(study.id, result.model_version)
        if f"{folder}/{kind}.pdf" != result.pdf_path:
            raise PermanentError(
                f"job {job.id}: study {study.study_instance_uid} changed since the summary "
                "that was signed (a field arrived or changed); its new summary is signed "
                "instead")
        # The SR this one succeeds: the AI's summary SR, or for an amendment the signed SR it
        # replaces (itself the AI's summary SR's successor).
        predecessor = read_dataset(ctx.store.path(
            f"{folder}/{kind}-sr.dcm" if amendment is None
            else _signed_sr_path(folder, kind, amendment.replaced_at)))
        organization = settings.dicom.institution_name or "bcd-node"
        comment = result.verified_comment or None
        if amendment is not None:
            said = amendment.said(settings.web.tzinfo)
            comment = f"{said} Comment: {comment}" if comment else said
        verification = Verification(
            observer_name=person_name(doctor_name), organization=organization,
            datetime=verified_at, stage=result.verified_stage or result.stage,
            comment=comment)
        # The signed summary is the analysis' own: it names the model that made it.
        algorithm = dataclasses.replace(ctx.algorithm, name=result.model_name,
                                        version=result.model_version)
        findings = fields.findings(corrected, areas)
        sr = build_study_summary_sr(sources, findings, algorithm=algorithm,
                                    uid_root=settings.uids.root, revisions=revisions,
                                    verification=verification, predecessor=predecessor)
        data = summary_data(patient, study, fields, findings, result.model_name,
                            result.model_version, bool(result.demonstration_model),
                            result.created_at, settings.web.tzinfo,
                            sources[0] if sources else None, settings.model.review_threshold,
                            corrected)
        data = dataclasses.replace(
            data, verified_by=doctor_name, verified_organization=organization,
            verified_stage=str(verification.stage), verified_comment=result.verified_comment,
            verified_at=verified_at, amendment=amendment)
        pdf = render_summary(data)
        stamp = verified_at.strftime("%Y%m%dT%H%M%S%f")
        enc = build_encapsulated_pdf(sources[0], pdf, algorithm=algorithm,
                                     further_sources=sources[1:], verified_at=verified_at,
                                     title="Blood smear study summary, signed"
                                     + (" (amended)" if amendment else ""),
                                     uid_kind=f"{kind}-pdf-verified-"
                                     f"{verified_at:%Y%m%d%H%M%S%f}",
                                     series_kind=ResultKind.SUMMARY_PDF,
                                     field_number=len(sources), uid_root=settings.uids.root)
        pdf_rel = f"{folder}/{kind}-verified-{stamp}.pdf"
        outputs = [Output("verified_summary_sr", sr, _signed_sr_path(folder, kind, verified_at)),
                   Output("verified_summary_pdf", enc,
                          f"{folder}/{kind}-pdf-verified-{stamp}.dcm")]
        write_files(ctx.store, (pdf_rel, pdf), outputs)
        with ctx.node.session_factory.begin() as session:
            row = session.get(Result, result.id)
            if (row is None or row.verification != VerificationState.VERIFIED
                    or row.verified_at != verified_at or row.pdf_path != result.pdf_path):
                complete_or_raise(session, job)
                LOGGER.info("job %d: the signature of summary %d was withdrawn meanwhile; no "
                            "signed summary", job.id, result.id)
                return
            row.verified_sr_sop_instance_uid = str(sr.SOPInstanceUID)
            row.verified_pdf_path = pdf_rel
            publish(session, job, row, outputs, settings.destinations, study_id=row.study_fk)
        ctx.node.wake_delivery()
        LOGGER.info("job %d: signed summary of study %s queued", job.id,
                    study.study_instance_uid)


def _signed_sr_path(folder: str, kind: str, verified_at: datetime) -> str:
    """Where the signed summary SR of a signature made at ``verified_at`` is kept."""
    return f"{folder}/{kind}-sr-verified-{verified_at:%Y%m%dT%H%M%S%f}.dcm"


def _amendment(session: Session, result: Result) -> Amendment | None:
    """What the signature of ``result`` (a summary) amends, when it amends one."""
    amends = result.amends
    if not amends:
        return None
    doctor = session.get(User, amends["by_fk"]) if amends.get("by_fk") else None
    return Amendment(replaced_by=(doctor.full_name or doctor.username) if doctor else "unknown",
                     replaced_at=datetime.fromisoformat(amends["at"]), reason=amends["reason"],
                     replaced_stage=amends.get("stage"), replaced_comment=amends.get("comment"))


@dataclass
class Fields:
    """A study's fields as one model version saw them: each field's result with its image, in
    the order received, and the images whose analysis failed for good without a result."""

    rows: list[tuple[Result, Instance]]
    failed: list[Instance]
    #: Each image's number in its study (by instance id), from 1, in the order received: the
    #: Instance Number of its results at the PACS.
    numbers: dict[int, int]

    @property
    def staged(self) -> list[tuple[Result, Instance]]:
        """The diagnostic fields (with a stage)."""
        return [(r, i) for r, i in self.rows if r.stage]

    @property
    def answered_failures(self) -> set[int]:
        """The results that answer a failed analysis ("could not be analysed")."""
        return {r.id for r, _ in self.rows if (r.quality or {}).get("status") == "failed"}

    def findings(self, corrected: Mapping[int, int] | None = None,
                 areas: Mapping[int, float] | None = None) -> StudyFindings:
        """The combined result: the stage by vote, the mean probabilities, the blast count
        (:func:`~bcd_node.records.cases.case_blast_count`, with the doctor's ``corrected``
        counts by result id for a signed case), the blast area over the analysed pixels (with
        the doctor's ``areas`` by result id: :func:`~bcd_node.records.cells.corrected_areas`),
        and the fields' counts."""
        staged = self.staged
        case = case_findings([r for r, _ in staged])
        fraction = (case_blast_area(staged, areas) or 0.0) if case.stage is not None else 0.0
        failures = self.answered_failures
        return StudyFindings(
            stage=case.stage, probabilities=case.probabilities, fields_analysed=len(staged),
            fields_needing_review=sum(r.needs_review for r, _ in self.rows),
            fields_quality_insufficient=len(self.rows) - len(staged) - len(failures),
            total_blasts=case_blast_count([r for r, _ in staged], corrected),
            blast_area_fraction=min(1.0, fraction),
            fields_failed=len(failures) + len(self.failed))


def gather_fields(session: Session, study_id: int, model_version: str) -> Fields:
    """The fields of study ``study_id`` with their results of ``model_version``."""
    rows = [(r, i) for r, i in session.execute(
        select(Result, Instance).join(Instance, Result.instance_fk == Instance.id)
        .where(Result.study_fk == study_id, Result.scope == ResultScope.INSTANCE,
               Result.model_version == model_version)
        .order_by(Instance.received_at, Instance.id)).all()]
    # Fields whose analysis failed for good (and that have no result of this model).
    with_result = {i.id for _, i in rows}
    failed = [i for i in session.execute(
        select(Instance).join(Job, Job.instance_fk == Instance.id)
        .where(Job.study_fk == study_id, Job.kind == JobKind.ANALYZE,
               Job.state == JobState.FAILED)
        .order_by(Instance.received_at, Instance.id)).scalars().unique()
        if i.id not in with_result]
    ids = session.execute(select(Instance.id).join(Series, Instance.series_fk == Series.id)
                          .where(Series.study_fk == study_id).order_by(Instance.id)).scalars()
    return Fields(rows, failed, {inst: n for n, inst in enumerate(ids, 1)})


def summary_data(patient: Patient, study: Study, fields: Fields, findings: StudyFindings,
                 model_name: str, model_version: str, demonstration_model: bool,
                 created_at: datetime, tz: tzinfo, source: Dataset | None,
                 review_threshold: float = 0.0,
                 corrected: Mapping[int, int] | None = None) -> SummaryData:
    """What the summary PDF shows (unverified; a signed summary adds the doctor's verdict).
    ``source`` is a field's image, for the stain and the patient's age; ``corrected`` the
    doctor's blast counts by result id (a signed case whose cells the doctor rejected), which
    the fields' rows show beside the AI's, as the case's total (``findings``) counts them."""
    failures = fields.answered_failures
    numbers = fields.numbers
    corrected = corrected or {}

    def ai_count(r: Result) -> int | None:
        count = corrected.get(r.id, r.blast_count)
        return r.blast_count if count != r.blast_count else None

    rows = [FieldRow(numbers[i.id], r.stage, r.confidence, corrected.get(r.id, r.blast_count),
                     r.needs_review, failed=r.id in failures,
                     flags=field_flags(r, review_threshold=review_threshold),
                     ai_blast_count=ai_count(r))
            for r, i in fields.rows]
    rows += [FieldRow(numbers[i.id], None, None, 0, False, failed=True) for i in fields.failed]
    rows.sort(key=lambda row: row.number)
    probs = ({str(k): v for k, v in findings.probabilities.items()}
             if findings.probabilities is not None else None)
    return SummaryData(
        patient_name=patient.name or "(no name)", patient_id=patient.patient_id or "(no id)",
        study_instance_uid=study.study_instance_uid,
        accession_number=study.accession_number, study_date=study.study_date,
        stage=str(findings.stage) if findings.stage is not None else None,
        probabilities=probs, total_blasts=findings.total_blasts,
        blast_area_fraction=findings.blast_area_fraction, fields=rows,
        model_name=model_name, model_version=model_version,
        demonstration_model=demonstration_model, created_at=created_at,
        patient_birth_date=patient.birth_date or "", patient_sex=patient.sex or "",
        patient_age=patient_age(source) if source is not None else None,
        stain=stain(source) if source is not None else None, timezone=tz)


def enqueue_study_summaries(context: NodeContext) -> int:
    """Queue a summary for each study quiet for ``workers.study_quiet_seconds``; returns how many.

    A study qualifies when it has no summary since its last image, none of its analyses is
    still queued or running, and no summary job is already waiting, nor failed for good since
    its last image: such a study waits for its next image, or for the failed job to be run
    again (``bcd-node jobs retry``, the System page), instead of a new job failing the same way
    at every schedule.
    """
    quiet = context.settings.workers.study_quiet_seconds
    cutoff = utcnow() - timedelta(seconds=quiet)
    busy = select(Job.study_fk).where(
        Job.kind.in_([JobKind.ANALYZE, JobKind.STUDY_SUMMARY]),
        Job.state.in_(ACTIVE_JOB_STATES), Job.study_fk.is_not(None))
    failed_since = select(Job.id).where(
        Job.kind == JobKind.STUDY_SUMMARY, Job.state == JobState.FAILED,
        Job.study_fk == Study.id, Job.created_at >= Study.last_received_at).exists()
    with context.session_factory.begin() as session:
        # Every worker process runs this on the same schedule. On PostgreSQL a study that
        # another one is queueing right now is locked: skip it. Looking again once the rows
        # are locked (a fresh snapshot) catches a job committed in between.
        ids = list(session.execute(select(Study.id).where(
            Study.summary_done_at.is_(None), Study.last_received_at < cutoff,
            Study.id.not_in(busy), ~failed_since).limit(100)
            .with_for_update(skip_locked=True)).scalars())
        if ids:
            taken = set(session.execute(busy.where(Job.study_fk.in_(ids))).scalars())
            ids = [i for i in ids if i not in taken]
        for study_id in ids:
            session.add(Job(kind=JobKind.STUDY_SUMMARY, study_fk=study_id,
                            max_attempts=context.settings.workers.max_attempts))
    if ids:
        LOGGER.info("queued study summaries for %d quiet stud%s", len(ids),
                    "y" if len(ids) == 1 else "ies")
    return len(ids)
