"""The analysis pipeline: one function per job kind, callable without the worker framework.

analyse: decode pixels → predict → PDF report → SEG + SR + Encapsulated PDF → result row and one
outbox row per output and destination, all in one transaction with the job's completion.
Output UIDs derive from (input SOP Instance UID, model version, output kind, input revision),
and output paths from our own ids and the revision, so running a job twice writes the same files
and the same rows, while a changed version of an image (the next revision, see
:mod:`bcd_node.records.revisions`) gets new objects in a folder of their own, whose SR supersedes
the earlier revision's reports, and the objects already sent are never overwritten.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from sqlalchemy import select
from sqlalchemy.orm import Session

from bcd_node import __version__
from bcd_node.db.models import (
    Delivery,
    Instance,
    Job,
    JobKind,
    JobState,
    Patient,
    Result,
    Series,
    Study,
    User,
    utcnow,
)
from bcd_node.errors import PermanentError
from bcd_node.jobs.queue import Claimed, LeaseLostError, complete
from bcd_node.records import audit
from bcd_node.records.revisions import clear_verification
from bcd_node.records.studies import STAGE_ORDER, refresh_study, vote
from bcd_node.report.pdf import ReportData, render_report
from bcd_node.report.summary import FieldRow, SummaryData, render_summary
from bcd_node.runtime import NodeContext
from bcd_node.store.layout import DataLayout
from bcd_node.store.storage import Store
from dicom.algorithm import Algorithm
from dicom.encapsulated import build_encapsulated_pdf
from dicom.errors import DicomError
from dicom.outputs import ResultObjects, build_result_objects, write_dataset
from dicom.pixels import assemble_total_pixel_matrix, decode_frames, read_dataset
from dicom.sop import VL_WHOLE_SLIDE_MICROSCOPY_IMAGE
from dicom.sr import Findings, Verification, build_sr, document_reference
from dicom.summary import (
    SUMMARY_SERIES_NUMBER,
    StudyFindings,
    build_study_summary_sr,
    summary_kind,
)

LOGGER = logging.getLogger(__name__)
OVERLAY_COLOUR = np.array([255, 0, 64], np.float32)
MAX_FRAMES = 64


class PredictionLike(Protocol):
    """What the pipeline needs of a prediction (see :class:`bcd_node.inference.predictor`)."""

    stage: str | None
    probabilities: dict[str, float] | None
    blast_count: int | None
    blast_area_fraction: float | None
    mask: np.ndarray | None
    quality: Any
    needs_review: bool


class Analyzer(Protocol):
    """A warm model: :class:`bcd_node.inference.predictor.Predictor` or a test double."""

    model_info: dict[str, Any]

    def predict(self, images: list[Any]) -> list[PredictionLike]: ...


@dataclass(frozen=True)
class Combined:
    """The findings of one instance (all of its frames)."""

    stage: str | None
    probabilities: dict[str, float] | None
    blast_count: int
    blast_area_fraction: float
    masks: np.ndarray          # (frames, rows, cols) uint8
    quality: dict[str, Any]
    needs_review: bool


def combine(predictions: list[PredictionLike], images: list[np.ndarray],
            review_threshold: float) -> Combined:
    """Merge the per-frame predictions of one instance (mean probabilities, summed blasts).

    A frame without a mask (quality insufficient) gets an empty one of its own size.
    """
    masks = np.stack([p.mask if p.mask is not None else np.zeros(img.shape[:2], np.uint8)
                      for p, img in zip(predictions, images)])
    usable = [p for p in predictions if p.stage is not None and p.probabilities]
    quality = predictions[0].quality.as_dict() if len(predictions) == 1 else {
        "status": "ok" if usable else "insufficient",
        "frames": [p.quality.as_dict() for p in predictions]}
    if not usable:
        return Combined(None, None, 0, 0.0, masks, quality, True)
    names = list(usable[0].probabilities)
    probs = {n: float(np.mean([p.probabilities[n] for p in usable])) for n in names}
    total = sum(probs.values())
    probs = {n: v / total for n, v in probs.items()}
    stage = max(probs, key=probs.get)
    area = float(np.mean([p.blast_area_fraction or 0.0 for p in usable]))
    return Combined(stage, probs, int(sum(p.blast_count or 0 for p in usable)), area, masks,
                    quality,
                    any(p.needs_review for p in predictions) or probs[stage] < review_threshold)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image with blast pixels tinted and their outline drawn."""
    import cv2
    out = image.astype(np.float32)
    sel = mask.astype(bool)
    out[sel] = (1 - alpha) * out[sel] + alpha * OVERLAY_COLOUR
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    result = np.ascontiguousarray(out.clip(0, 255).astype(np.uint8))
    cv2.drawContours(result, contours, -1, (255, 0, 64), 1)
    return result


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", optimize=False, compress_level=3)
    return buffer.getvalue()


def _dicom_bytes(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def report_data(ds: Dataset, image: np.ndarray, over: np.ndarray, c: Combined, *,
                algorithm: Algorithm, demonstration_model: bool,
                created_at: dt.datetime) -> ReportData:
    """What the PDF report of ``ds`` shows; identification comes from the image itself."""
    specimen = ds.get("SpecimenDescriptionSequence")

    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return str(value).strip() or None if value not in (None, "") else None

    return ReportData(
        patient_name=text("PatientName") or "(no name)", patient_id=text("PatientID") or "(no id)",
        image=image, overlay=over, stage=c.stage, probabilities=c.probabilities,
        blast_count=c.blast_count, blast_area_fraction=min(1.0, c.blast_area_fraction),
        quality_ok=True, model_name=algorithm.name, model_version=algorithm.version,
        demonstration_model=demonstration_model, created_at=created_at,
        birth_date=text("PatientBirthDate"), sex=text("PatientSex"),
        accession_number=text("AccessionNumber"), study_date=text("StudyDate"),
        study_instance_uid=text("StudyInstanceUID"), specimen_id=text("ContainerIdentifier"),
        stain=(str(specimen[0].get("SpecimenShortDescription", "")) or None)
        if specimen else None)


def decode_for_analysis(ds: Dataset) -> list[np.ndarray]:
    """The RGB image(s) to analyse: the assembled slide, or each frame."""
    try:
        if str(ds.SOPClassUID) == str(VL_WHOLE_SLIDE_MICROSCOPY_IMAGE):
            return [assemble_total_pixel_matrix(ds)]
        frames = decode_frames(ds)
    except DicomError as exc:
        raise PermanentError(f"cannot decode the image: {exc}") from exc
    if len(frames) > MAX_FRAMES:
        raise PermanentError(f"{len(frames)} frames: at most {MAX_FRAMES} are analysed")
    return list(frames)


def analysed_pixels(path: Path) -> np.ndarray:
    """The RGB image the pipeline analyses for a stored file (first frame or whole slide)."""
    try:
        ds = read_dataset(path)
    except DicomError as exc:
        raise PermanentError(f"stored file is not readable: {exc}") from exc
    return decode_for_analysis(ds)[0]


@dataclass(frozen=True)
class Analysis:
    """Everything made from one image: findings, overlay, and (with a stage) PDF and objects."""

    images: list[np.ndarray]
    combined: Combined
    overlay: np.ndarray
    pdf: bytes | None
    objects: ResultObjects | None


def analyze_dataset(ds: Dataset, analyzer: Analyzer, *, algorithm: Algorithm,
                    review_threshold: float, uid_root: str,
                    demonstration_model: bool = True, revision: int = 0,
                    supersedes: list[Dataset] | None = None) -> Analysis:
    """Predict on one image and build what the node sends for it (no database, no files).

    ``bcd-node analyze --dicom-out`` and the worker both call this, so the files a user makes on
    the command line are the ones the node would send. ``revision`` and ``supersedes`` are the
    stored image's revision and the earlier revision's SR documents the new SR replaces.
    """
    images = decode_for_analysis(ds)
    combined = combine(analyzer.predict(images), images, review_threshold)
    over = overlay(images[0], combined.masks[0])
    if combined.stage is None:
        return Analysis(images, combined, over, None, None)
    findings = Findings(stage=combined.stage, probabilities=combined.probabilities,
                        blast_count=combined.blast_count,
                        blast_area_fraction=min(1.0, combined.blast_area_fraction),
                        quality_ok=True)
    pdf = render_report(report_data(ds, images[0], over, combined, algorithm=algorithm,
                                    demonstration_model=demonstration_model,
                                    created_at=utcnow()))
    objects = build_result_objects(ds, combined.masks if len(images) > 1 else combined.masks[0],
                                   findings, algorithm=algorithm, pdf=pdf, uid_root=uid_root,
                                   revision=revision, supersedes=supersedes or ())
    return Analysis(images, combined, over, pdf, objects)


def write_dicom_outputs(analysis: Analysis, folder: Path, stem: str) -> list[Path]:
    """Write the SEG, SR and Encapsulated PDF of ``analysis`` as ``STEM-seg.dcm`` and so on."""
    if analysis.objects is None:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    return [write_dataset(ds, folder / f"{stem}-{kind}.dcm")
            for kind, ds in analysis.objects.by_kind()]


class Pipeline:
    """Runs the jobs of one worker process with a warm analyzer."""

    def __init__(self, context: NodeContext, analyzer: Analyzer,
                 demonstration_model: bool = True) -> None:
        self.context = context
        self.analyzer = analyzer
        self.settings = context.settings
        self.store = Store(context.settings.storage.data_dir,
                           context.settings.storage.min_free_disk)
        info = analyzer.model_info
        self.model_name = str(info["name"])
        self.model_version = str(info["version"])
        self.demonstration_model = demonstration_model
        self.algorithm = Algorithm(name=self.model_name, version=self.model_version,
                                   software_version=__version__)

    def run(self, job: Claimed) -> None:
        """Do ``job`` and complete it in the same transaction as its results.

        A builder that refuses its input (a :class:`~dicom.errors.DicomError` naming the value;
        the node's own raise :class:`~bcd_node.errors.ValidationError`) fails the job at once:
        retrying cannot make the input valid. Any other error is a bug: retried, bounded.
        """
        try:
            self._dispatch(job)
        except DicomError as exc:
            raise PermanentError(f"cannot build the results: {exc}") from exc

    def _dispatch(self, job: Claimed) -> None:
        if job.kind is JobKind.ANALYZE:
            self.analyze(job)
        elif job.kind is JobKind.VERIFIED_REPORT:
            self.verified_report(job)
        elif job.kind is JobKind.STUDY_SUMMARY:
            self.study_summary(job)
        else:
            raise PermanentError(f"job kind {job.kind.value} is not handled by this version")

    # ------------------------------------------------------------------ analyse

    def _load(self, job: Claimed) -> tuple[Instance, Series, Study, Patient]:
        with self.context.session_factory() as session:
            inst = session.get(Instance, job.instance_fk) if job.instance_fk else None
            if inst is None:
                raise PermanentError(f"job {job.id}: instance {job.instance_fk} no longer exists")
            series = session.get(Series, inst.series_fk)
            study = session.get(Study, series.study_fk)
            patient = session.get(Patient, study.patient_fk)
            session.expunge_all()
        return inst, series, study, patient

    def analyze(self, job: Claimed) -> int | None:
        """Analyse one received image; returns the result id (None when a newer version of the
        image arrived meanwhile: its own job makes the result)."""
        inst, _series, study, patient = self._load(job)
        try:
            ds = read_dataset(self.store.path(inst.path))
        except FileNotFoundError as exc:
            if self._superseded(job, inst):
                return None
            raise PermanentError(f"stored file {inst.path} is missing") from exc
        except DicomError as exc:
            # read_dataset reports a missing file as unreadable too.
            if self._superseded(job, inst):
                return None
            raise PermanentError(f"stored file is not readable: {exc}") from exc
        supersedes = self._supersedes(inst, study)
        analysis = analyze_dataset(ds, self.analyzer, algorithm=self.algorithm,
                                   review_threshold=self.settings.model.review_threshold,
                                   uid_root=self.settings.uids.root,
                                   demonstration_model=self.demonstration_model,
                                   revision=inst.revision, supersedes=supersedes)
        combined = analysis.combined
        folder = DataLayout.instance_results(inst.id, self.model_version, inst.revision)
        outputs: list[tuple[str, Dataset, str]] = []  # (kind, dataset, relpath)
        self.store.write(f"{folder}/mask.png", _png(combined.masks[0] * 255))
        self.store.write(f"{folder}/overlay.png", _png(analysis.overlay), sync_dir=True)
        pdf_rel = None
        if analysis.objects is not None and analysis.pdf is not None:
            pdf_rel = f"{folder}/report.pdf"
            self.store.write(pdf_rel, analysis.pdf)
            outputs = [(kind, dataset, f"{folder}/{kind}.dcm") for kind, dataset in
                       analysis.objects.by_kind()]
            for _kind, dataset, rel in outputs:
                self.store.write(rel, _dicom_bytes(dataset))
            self.store.sync_dirs([self.store.path(folder)])

        with self.context.session_factory.begin() as session:
            current = session.get(Instance, inst.id)
            if current is None or current.revision != inst.revision:
                # A changed version arrived while this one was analysed; its job (queued by
                # the intake) makes the result. Nothing of this revision is queued for PACS.
                if not complete(session, job):
                    raise LeaseLostError(f"job {job.id}: lease lost; another worker took it over")
                LOGGER.info("job %d: instance %s changed during the analysis; its newer version "
                            "is analysed by its own job", job.id, inst.sop_instance_uid)
                return None
            result = session.execute(select(Result).where(
                Result.instance_fk == inst.id, Result.scope == "instance",
                Result.model_version == self.model_version)).scalar_one_or_none()
            if result is None:
                result = Result(instance_fk=inst.id, study_fk=study.id, scope="instance",
                                model_name=self.model_name, model_version=self.model_version)
                session.add(result)
            elif result.instance_revision != inst.revision:
                self._withdraw_stale_verification(session, result, inst, study, patient)
            result.instance_revision = inst.revision
            result.stage = combined.stage
            result.probabilities = combined.probabilities or {}
            result.confidence = (combined.probabilities[combined.stage]
                                 if combined.stage else None)
            result.blast_count = combined.blast_count
            result.blast_area_fraction = combined.blast_area_fraction
            result.quality = combined.quality
            result.needs_review = combined.needs_review
            result.demonstration_model = self.demonstration_model
            result.mask_path = f"{folder}/mask.png"
            result.overlay_path = f"{folder}/overlay.png"
            result.pdf_path = pdf_rel
            uids = {kind: str(dataset.SOPInstanceUID) for kind, dataset, _ in outputs}
            result.seg_sop_instance_uid = uids.get("seg")
            result.sr_sop_instance_uid = uids.get("sr")
            result.pdf_sop_instance_uid = uids.get("pdf")
            session.flush()
            self._queue_deliveries(session, result.id, outputs)
            if not complete(session, job):
                raise LeaseLostError(f"job {job.id}: lease lost; another worker took it over")
            self._update_study(session, study.id)
        self.context.wake_delivery()
        LOGGER.info("job %d: instance %s%s analysed: stage %s, %d blasts%s", job.id,
                    inst.sop_instance_uid,
                    f" (revision {inst.revision})" if inst.revision else "",
                    combined.stage or "none (quality insufficient)",
                    combined.blast_count, ", needs review" if combined.needs_review else "")
        return result.id

    def _superseded(self, job: Claimed, inst: Instance) -> bool:
        """Whether ``inst`` changed since the job loaded it (its file then is the replaced one,
        removed by the intake); if so the job completes, and the newer version's job does the
        work."""
        with self.context.session_factory.begin() as session:
            current = session.get(Instance, inst.id)
            if current is None or current.revision == inst.revision:
                return False
            if not complete(session, job):
                raise LeaseLostError(f"job {job.id}: lease lost; another worker took it over")
        LOGGER.info("job %d: instance %s was replaced by a changed version before it was "
                    "analysed; the newer version is analysed by its own job", job.id,
                    inst.sop_instance_uid)
        return True

    def _supersedes(self, inst: Instance, study: Study) -> list[Dataset]:
        """The earlier revision's SR documents that this revision's SR replaces (recorded by
        the intake when the image changed; kept, so that a re-run builds the same SR)."""
        if not inst.revision:
            return []
        with self.context.session_factory() as session:
            recorded = session.execute(select(Result.supersedes).where(
                Result.instance_fk == inst.id, Result.scope == "instance",
                Result.model_version == self.model_version)).scalar_one_or_none()
        return [document_reference(study.study_instance_uid, ref["series"], ref["sop"])
                for ref in recorded or []]

    def _withdraw_stale_verification(self, session: Session, result: Result, inst: Instance,
                                     study: Study, patient: Patient) -> None:
        """The result is of an earlier revision. The intake withdrew its verification when the
        image changed; one made since (the console refuses it) is withdrawn here, audited."""
        if result.verification != "unverified":
            audit.record(session, actor="system", actor_kind="system",
                         action="verification_withdrawn", patient_id=patient.patient_id,
                         study_instance_uid=study.study_instance_uid,
                         object_ref=f"result:{result.id}",
                         details={"reason": "verified while the changed image waited for its "
                                            "analysis", "verified_by_fk": result.verified_by_fk,
                                  "instance_revision": result.instance_revision})
            LOGGER.warning("result %d: verification of an earlier version of instance %s "
                           "withdrawn", result.id, inst.sop_instance_uid)
        clear_verification(result)

    def verified_report(self, job: Claimed) -> None:
        """A doctor verified a result: build the VERIFIED SR and the updated PDF, queue them."""
        with self.context.session_factory() as session:
            result = session.get(Result, job.result_fk) if job.result_fk else None
            if result is None or result.instance_fk is None:
                raise PermanentError(f"job {job.id}: result {job.result_fk} not found")
            if result.verification != "verified" or result.verified_at is None:
                raise PermanentError(f"job {job.id}: result {result.id} is not verified")
            if not result.sr_sop_instance_uid:
                raise PermanentError(f"job {job.id}: result {result.id} has no SR to supersede "
                                     "(quality insufficient)")
            doctor = session.get(User, result.verified_by_fk) if result.verified_by_fk else None
            session.expunge_all()
        job_instance = Claimed(job.id, job.kind, result.instance_fk, job.study_fk, job.result_fk,
                               job.attempts, job.max_attempts, job.owner)
        inst, _series, study, patient = self._load(job_instance)
        if inst.revision != result.instance_revision:
            raise PermanentError(f"job {job.id}: result {result.id} is of an earlier version of "
                                 "the image (it was replaced); nothing to verify")
        ds = read_dataset(self.store.path(inst.path))
        folder = DataLayout.instance_results(inst.id, result.model_version,
                                             result.instance_revision)
        seg = read_dataset(self.store.path(f"{folder}/seg.dcm"))
        predecessor = read_dataset(self.store.path(f"{folder}/sr.dcm"))
        name = (doctor.full_name or doctor.username) if doctor else "unknown"
        verification = Verification(
            observer_name=_person_name(name),
            organization=self.settings.dicom.institution_name or "bcd-node",
            datetime=result.verified_at, stage=result.verified_stage or result.stage,
            comment=result.verified_comment or None)
        findings = Findings(stage=result.stage, probabilities=result.probabilities,
                            blast_count=result.blast_count,
                            blast_area_fraction=min(1.0, result.blast_area_fraction),
                            quality_ok=True)
        sr = build_sr(ds, seg, findings, algorithm=self.algorithm, verification=verification,
                      predecessor=predecessor, uid_root=self.settings.uids.root,
                      revision=result.instance_revision)
        image = decode_for_analysis(ds)[0]
        over = np.asarray(Image.open(self.store.path(result.overlay_path)).convert("RGB"))
        combined = Combined(result.stage, result.probabilities, result.blast_count,
                            result.blast_area_fraction, np.zeros((1, 1, 1), np.uint8),
                            result.quality, result.needs_review)
        data = report_data(ds, image, over, combined, algorithm=self.algorithm,
                           demonstration_model=self.demonstration_model,
                           created_at=result.created_at)
        data = dataclasses.replace(
            data, verified_by=name, verified_organization=verification.organization,
            verified_stage=verification.stage.value if hasattr(verification.stage, "value")
            else str(verification.stage), verified_comment=result.verified_comment,
            verified_at=result.verified_at)
        pdf = render_report(data)
        enc = build_encapsulated_pdf(ds, pdf, algorithm=self.algorithm,
                                     verified_at=result.verified_at,
                                     uid_root=self.settings.uids.root,
                                     revision=result.instance_revision)
        stamp = result.verified_at.strftime("%Y%m%dT%H%M%S%f")
        pdf_rel = f"{folder}/report-verified-{stamp}.pdf"
        self.store.write(pdf_rel, pdf)
        outputs = [("verified_sr", sr, f"{folder}/sr-verified-{stamp}.dcm"),
                   ("verified_pdf", enc, f"{folder}/pdf-verified-{stamp}.dcm")]
        for _kind, dataset, rel in outputs:
            self.store.write(rel, _dicom_bytes(dataset))
        self.store.sync_dirs([self.store.path(folder)])
        with self.context.session_factory.begin() as session:
            row = session.get(Result, result.id)
            if (row is None or row.verification != "verified"
                    or row.verified_at != result.verified_at
                    or row.instance_revision != result.instance_revision):
                # Withdrawn while it was made (the image was replaced): nothing goes to PACS.
                if not complete(session, job):
                    raise LeaseLostError(f"job {job.id}: lease lost; another worker took it over")
                LOGGER.info("job %d: verification of result %d was withdrawn meanwhile; no "
                            "verified report", job.id, result.id)
                return
            row.verified_sr_sop_instance_uid = str(sr.SOPInstanceUID)
            row.verified_pdf_path = pdf_rel
            self._queue_deliveries(session, row.id, outputs)
            if not complete(session, job):
                raise LeaseLostError(f"job {job.id}: lease lost; another worker took it over")
            self._update_study(session, row.study_fk)
        self.context.wake_delivery()
        LOGGER.info("job %d: verified report of result %d queued", job.id, result.id)

    def study_summary(self, job: Claimed) -> None:
        """Combine every analysed field of a quiet study into a study-level SR and PDF."""
        with self.context.session_factory() as session:
            study = session.get(Study, job.study_fk) if job.study_fk else None
            if study is None:
                raise PermanentError(f"job {job.id}: study {job.study_fk} not found")
            patient = session.get(Patient, study.patient_fk)
            rows = session.execute(
                select(Result, Instance).join(Instance, Result.instance_fk == Instance.id)
                .where(Result.study_fk == study.id, Result.scope == "instance",
                       Result.model_version == self.model_version)
                .order_by(Instance.received_at, Instance.id)).all()
            session.expunge_all()
        staged = [(r, i) for r, i in rows if r.stage]
        if not staged:
            with self.context.session_factory.begin() as session:
                session.get(Study, study.id).summary_done_at = utcnow()
                if not complete(session, job):
                    raise LeaseLostError(f"job {job.id}: lease lost")
            LOGGER.info("job %d: study %s has no diagnosable field; no summary", job.id,
                        study.study_instance_uid)
            return
        stage = vote([r.stage for r, _ in staged])
        names = list(STAGE_ORDER)
        probs = {n: float(np.mean([r.probabilities.get(n, 0.0) for r, _ in staged]))
                 for n in names}
        total = sum(probs.values()) or 1.0
        probs = {n: v / total for n, v in probs.items()}
        pixels = [max(1, i.rows * i.columns * i.frames) for _, i in staged]
        fraction = sum(r.blast_area_fraction * p for (r, _), p in zip(staged, pixels)) / sum(pixels)
        findings = StudyFindings(
            stage=stage, probabilities=probs, fields_analysed=len(staged),
            fields_needing_review=sum(r.needs_review for r, _ in rows),
            fields_quality_insufficient=len(rows) - len(staged),
            total_blasts=int(sum(r.blast_count for r, _ in staged)),
            blast_area_fraction=min(1.0, fraction))
        sources = [read_dataset(self.store.path(i.path)) for _, i in staged]
        # A changed field (a new revision) makes a new summary, as a new field does.
        revisions = {i.sop_instance_uid: i.revision for _, i in staged}
        sr = build_study_summary_sr(sources, findings, algorithm=self.algorithm,
                                    uid_root=self.settings.uids.root, revisions=revisions)
        kind = summary_kind(sources, revisions)
        pdf = render_summary(SummaryData(
            patient_name=patient.name or "(no name)", patient_id=patient.patient_id or "(no id)",
            study_instance_uid=study.study_instance_uid,
            accession_number=study.accession_number, study_date=study.study_date, stage=stage,
            probabilities=probs, total_blasts=findings.total_blasts,
            blast_area_fraction=findings.blast_area_fraction,
            fields=[FieldRow(i.sop_instance_uid, r.stage, r.confidence, r.blast_count,
                             r.needs_review) for r, i in rows],
            model_name=self.model_name, model_version=self.model_version,
            demonstration_model=self.demonstration_model, created_at=utcnow()))
        enc = build_encapsulated_pdf(sources[0], pdf, algorithm=self.algorithm,
                                     title="Blood smear study summary", uid_kind=f"{kind}-pdf",
                                     series_number=SUMMARY_SERIES_NUMBER,
                                     uid_root=self.settings.uids.root)
        folder = DataLayout.study_results(study.id, self.model_version)
        pdf_rel = f"{folder}/{kind}.pdf"
        self.store.write(pdf_rel, pdf)
        outputs = [("summary_sr", sr, f"{folder}/{kind}-sr.dcm"),
                   ("summary_pdf", enc, f"{folder}/{kind}-pdf.dcm")]
        for _kind, dataset, rel in outputs:
            self.store.write(rel, _dicom_bytes(dataset))
        self.store.sync_dirs([self.store.path(folder)])
        with self.context.session_factory.begin() as session:
            result = session.execute(select(Result).where(
                Result.study_fk == study.id, Result.scope == "study",
                Result.model_version == self.model_version)).scalar_one_or_none()
            if result is None:
                result = Result(study_fk=study.id, scope="study", model_name=self.model_name,
                                model_version=self.model_version)
                session.add(result)
            result.stage, result.probabilities, result.confidence = stage, probs, probs[stage]
            result.blast_count = findings.total_blasts
            result.blast_area_fraction = findings.blast_area_fraction
            result.needs_review = findings.fields_needing_review > 0
            result.demonstration_model = self.demonstration_model
            result.quality = {"fields": len(rows), "quality_insufficient":
                              findings.fields_quality_insufficient}
            result.pdf_path = pdf_rel
            result.sr_sop_instance_uid = str(sr.SOPInstanceUID)
            result.pdf_sop_instance_uid = str(enc.SOPInstanceUID)
            session.flush()
            self._queue_deliveries(session, result.id, outputs)
            session.get(Study, study.id).summary_done_at = utcnow()
            if not complete(session, job):
                raise LeaseLostError(f"job {job.id}: lease lost; another worker took it over")
        self.context.wake_delivery()
        LOGGER.info("job %d: study %s summarised over %d field(s): %s", job.id,
                    study.study_instance_uid, len(staged), stage)


    def _queue_deliveries(self, session: Session, result_id: int,
                          outputs: list[tuple[str, Dataset, str]]) -> None:
        for dest in self.settings.destinations:
            for kind, dataset, rel in outputs:
                uid = str(dataset.SOPInstanceUID)
                exists = session.execute(select(Delivery.id).where(
                    Delivery.destination == dest.name,
                    Delivery.sop_instance_uid == uid)).first()
                if exists:
                    continue  # a re-run: the same object is already queued or delivered
                session.add(Delivery(result_fk=result_id, destination=dest.name, kind=kind,
                                     sop_class_uid=str(dataset.SOPClassUID),
                                     sop_instance_uid=uid, path=rel))

    def _update_study(self, session: Session, study_id: int) -> None:
        refresh_study(session, study_id)

    def job_failed(self, job: Claimed) -> None:
        """After a job failed for good: the study shows it."""
        if job.study_fk is not None:
            with self.context.session_factory.begin() as session:
                refresh_study(session, job.study_fk)


def enqueue_study_summaries(context: NodeContext) -> int:
    """Queue a summary for each study quiet for ``workers.study_quiet_seconds``; returns how many.

    A study qualifies when it has no summary since its last image, none of its analyses is
    still queued or running, and no summary job is already waiting.
    """
    from datetime import timedelta

    quiet = context.settings.workers.study_quiet_seconds
    cutoff = utcnow() - timedelta(seconds=quiet)
    busy = select(Job.study_fk).where(
        Job.kind.in_([JobKind.ANALYZE, JobKind.STUDY_SUMMARY]),
        Job.state.in_([JobState.QUEUED, JobState.RUNNING]), Job.study_fk.is_not(None))
    with context.session_factory.begin() as session:
        # Every worker process runs this on the same schedule. On PostgreSQL a study that
        # another one is queueing right now is locked: skip it. Looking again once the rows
        # are locked (a fresh snapshot) catches a job committed in between.
        ids = session.execute(select(Study.id).where(
            Study.summary_done_at.is_(None), Study.last_received_at < cutoff,
            Study.id.not_in(busy)).limit(100).with_for_update(skip_locked=True)).scalars().all()
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


def _person_name(name: str) -> str:
    """"Gregory House" → "House^Gregory" (DICOM PN); a name with ^ is kept."""
    name = " ".join(name.replace("\\", " ").split())[:64] or "unknown"
    if "^" in name or " " not in name:
        return name
    given, family = name.rsplit(" ", 1)
    return f"{family}^{given}"

