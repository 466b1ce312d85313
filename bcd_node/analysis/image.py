"""The analysis of one received image: findings, files, the result row and its outbox rows.

Output UIDs derive from (input SOP Instance UID, model version, output kind, input revision),
and output paths from our own ids and the revision, so running a job twice writes the same files
and the same rows, while a changed version of an image (the next revision, see
:mod:`bcd_node.records.revisions`) gets new objects in a folder of their own, whose SR supersedes
the earlier revision's reports, and the objects already sent are never overwritten. A job whose
image changed before or while it ran completes without results: the newer version's own job
makes them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from bcd_node.analysis.builders import (
    Builders,
    BuildRequest,
    Built,
    BuiltObject,
    ReadImage,
    read_image,
)
from bcd_node.analysis.context import AnalysisContext, Loaded, field_numbers, recorded_image
from bcd_node.analysis.findings import (
    Analyzer,
    PredictionLike,
    decode_for_analysis,
    image_scale,
    non_diagnostic_answer,
    predict_each,
)
from bcd_node.analysis.publish import (
    Output,
    complete_or_raise,
    publish,
    queue_deliveries,
    write_files,
)
from bcd_node.db.models import (
    CellRejection,
    Instance,
    Job,
    JobState,
    Patient,
    Result,
    ResultScope,
    Study,
    VerificationState,
)
from bcd_node.errors import PermanentError
from bcd_node.jobs.queue import Claimed
from bcd_node.records import audit
from bcd_node.records.revisions import clear_verification, sr_series_uid
from bcd_node.records.studies import refresh_study
from bcd_node.store.layout import DataLayout
from bcd_node.store.storage import BatchWrite
from dicom.errors import DicomError
from dicom.nondiagnostic import NonDiagnostic
from dicom.pixels import read_dataset, without_pixels
from dicom.spacing import PixelUm
from dicom.sr import document_reference
from dicom.stages import Stage

LOGGER = logging.getLogger(__name__)


class Prepared(NamedTuple):
    """An image read and decoded for its analysis, with what its results need."""

    job: Claimed
    instance: Instance
    study: Study
    patient: Patient
    dataset: Dataset
    images: list[np.ndarray]
    supersedes: list[Dataset]
    field_number: int
    #: The image's pixel size in µm and where it came from (findings.image_scale).
    um_per_pixel: PixelUm | None = None
    scale_source: str | None = None


class Recorded(NamedTuple):
    """What the database records for an image's result (:meth:`ImageAnalysis._recorded`)."""

    #: Its number in its study (:meth:`AnalysisContext.field_number`).
    field_number: int
    #: The SR documents its result records as superseded (``Result.supersedes``).
    supersedes: list[dict[str, str]]
    #: Whether its result of this revision is a "could not be analysed" answer that was sent.
    failed_answer: bool


def _failure_answer_sr(result: Any, inst: Instance) -> str | None:
    """The SR's SOP Instance UID when ``result`` (a :class:`Result` or a row of its columns;
    None: no result) of image ``inst`` is a "could not be analysed" answer of its revision
    that was sent; else None."""
    if (result is None or result.instance_revision != inst.revision
            or (result.quality or {}).get("status") != "failed"):
        return None
    return str(result.sr_sop_instance_uid) if result.sr_sop_instance_uid else None


def _references(study: Study, recorded: Sequence[dict[str, str]]) -> list[Dataset]:
    """The SR documents of ``study`` that ``Result.supersedes`` records, as references."""
    return [document_reference(study.study_instance_uid, ref["series"], ref["sop"])
            for ref in recorded]


def _identity(made: BuiltObject) -> Dataset:
    """The SOP Class and Instance UIDs of a built object, as the outbox rows take them."""
    ds = Dataset()
    ds.SOPClassUID = made.sop_class_uid
    ds.SOPInstanceUID = made.sop_instance_uid
    return ds


def _compressed(transfer_syntax_uid: str) -> bool:
    """Whether pixels in ``transfer_syntax_uid`` are compressed (encapsulated); False for a
    value that names no transfer syntax pydicom knows (the image's reading says what is
    wrong)."""
    try:
        return bool(UID(transfer_syntax_uid).is_encapsulated)
    except ValueError:
        return False


class ImageAnalysis:
    """The ``analyze`` job: one received image through the warm ``analyzer``."""

    def __init__(self, context: AnalysisContext, analyzer: Analyzer,
                 builders: Builders | None = None) -> None:
        self.context = context
        self.analyzer = analyzer
        #: Where the outputs are built (default: in this process).
        self.builders = builders or Builders(0)
        #: Which images the builders read and decode, rather than this process
        #: (``workers.decode_in_builders``: "compressed", "always" or "never").
        self.decode_in_builders = context.settings.workers.decode_in_builders

    def warm_up(self) -> None:
        """Predict and build the outputs of one synthetic field, as for a received image, and
        keep nothing (no row, no file): what building loads on first use is then loaded
        before the first image arrives (:meth:`Builders.warm_up`). Never raises: the first
        image pays the loading instead."""
        from bcd_node.inference.synth import generate_field, patient_params
        from dicom.dicomize import dicomize

        ctx = self.context
        started = time.perf_counter()
        try:
            field, _mask, _blasts = generate_field(
                0, "Malignant-Pre", patient_params(np.random.default_rng(0)), size=256)
            ds = dicomize(field, patient_id="WARM-UP", patient_name="Warm^Up",
                          specimen_id="WARM-UP", stain="Wright-Giemsa",
                          uid_root=ctx.settings.uids.root)
            images = decode_for_analysis(ds)
            um, source = image_scale(ds, ctx.settings.model.default_um_per_pixel)
            [predicted] = predict_each(self.analyzer, [images], [um])
            if isinstance(predicted, Exception):
                raise predicted
            # As an image's request: its attributes, its pixels decoded beside them.
            request = BuildRequest(without_pixels(ds), images, list(predicted), ctx.algorithm,
                                   ctx.settings.model.review_threshold, ctx.settings.uids.root,
                                   ctx.demonstration_model, 0, [], 1, ctx.settings.web.tzinfo,
                                   um, source)
        except Exception:  # noqa: BLE001 - the first image pays the loading instead
            LOGGER.warning("no field to warm up the output building with", exc_info=True)
            return
        if self.builders.warm_up(request):
            LOGGER.info("output building warmed up before the first image (%.2f s%s)",
                        time.perf_counter() - started,
                        f", {self.builders.processes} builder processes started"
                        if self.builders.processes else "")

    def _load(self, job: Claimed) -> Loaded:
        return self.context.load(job.id, job.instance_fk)

    def _load_many(self, jobs: Sequence[Claimed]) -> list[Loaded | Exception]:
        """Each job's rows (:meth:`AnalysisContext.load_many`: one query for the batch), or
        the error that fails it alone; the database's own error fails them all."""
        try:
            return list(self.context.load_many([(job.id, job.instance_fk) for job in jobs]))
        except Exception as exc:  # noqa: BLE001 - every job's error
            return [exc] * len(jobs)

    def _recorded(self, loaded: Sequence[Loaded]) -> dict[int, Recorded] | Exception:
        """What the results of the images ``loaded`` need from the database, by instance id,
        in one session for the batch: each image's number in its study and what its result
        of this model records (or the database's error, which fails those jobs)."""
        ctx = self.context
        ids = [rows.instance.id for rows in loaded]
        if not ids:
            return {}
        try:
            with ctx.node.session_factory() as session:
                results = {row.instance_fk: row for row in session.execute(select(
                    Result.instance_fk, Result.instance_revision, Result.quality,
                    Result.sr_sop_instance_uid, Result.supersedes).where(
                    Result.instance_fk.in_(ids), Result.scope == ResultScope.INSTANCE,
                    Result.model_version == ctx.model_version))}
                numbers = field_numbers(session, ids)
        except Exception as exc:  # noqa: BLE001 - the jobs' error
            return exc
        out: dict[int, Recorded] = {}
        for rows in loaded:
            inst = rows.instance
            if inst.id not in numbers:
                continue  # deleted since its rows were read: its job fails (_prepared)
            result = results.get(inst.id)
            out[inst.id] = Recorded(numbers[inst.id],
                                    list(result.supersedes or []) if result is not None else [],
                                    _failure_answer_sr(result, inst) is not None)
        return out

    def analyze(self, job: Claimed) -> int | None:
        """Analyse one received image; returns the result id (None when a newer version of the
        image arrived meanwhile: its own job makes the result)."""
        [(result_id, error)] = self._analyze([job])
        if error is not None:
            raise error
        return result_id

    def analyze_many(self, jobs: list[Claimed]) -> list[Exception | None]:
        """Analyse several received images with one batched prediction over all of them; each
        job's results are published in a transaction of its own. Returns each job's error
        (None: done), in order: a job that fails fails alone."""
        return [error for _result, error in self._analyze(jobs)]

    def _analyze(self, jobs: list[Claimed]) -> list[tuple[int | None, Exception | None]]:
        """Read and decode each image, predict all of them at once, build their outputs
        (:attr:`builders`), write every file and make them durable at once
        (:meth:`~bcd_node.store.storage.Store.batch`), then publish each job on its own.
        Returns each job's result id and error."""
        out: list[tuple[int | None, Exception | None]] = [(None, None)] * len(jobs)
        ready: list[tuple[int, Prepared]] = []
        loaded: list[tuple[int, Loaded, str]] = []
        for i, (job, rows) in enumerate(zip(jobs, self._load_many(jobs))):
            try:
                if isinstance(rows, Exception):
                    raise rows
                loaded.append((i, rows, str(self.context.store.path(rows.instance.path))))
            except Exception as exc:  # noqa: BLE001 - this job's own error
                out[i] = (None, exc)
        reads = self._read([(rows.instance, path) for _, rows, path in loaded])
        recorded = self._recorded([rows for (_, rows, _), read in zip(loaded, reads)
                                   if isinstance(read, ReadImage) and read.dataset is not None])
        for (i, rows, _path), read in zip(loaded, reads):
            try:
                if isinstance(read, Exception):  # the process reading it ended
                    raise read
                if isinstance(recorded, Exception):
                    raise recorded
                prepared = self._prepared(jobs[i], rows, read, recorded)
            except Exception as exc:  # noqa: BLE001 - this job's own error
                out[i] = (None, exc)
                continue
            if prepared is not None:
                ready.append((i, prepared))
        predictions = predict_each(self.analyzer, [p.images for _, p in ready],
                                   [p.um_per_pixel for _, p in ready])
        written: list[tuple[int, Prepared, Built]] = []
        # The batch is open before the builders write into it: a write-back error of theirs
        # is then reported to its syncfs.
        with self.context.store.batch() as batch:
            requests: list[tuple[int, Prepared, BuildRequest]] = []
            for (i, prepared), predicted in zip(ready, predictions):
                if isinstance(predicted, Exception):
                    out[i] = (None, predicted)
                else:
                    requests.append((i, prepared, self._request(prepared, predicted, batch)))
            built = self.builders.build_all([request for _, _, request in requests])
            for (i, prepared, _request), made in zip(requests, built):
                if isinstance(made, Exception):  # this job's own error
                    out[i] = (None, made)
                    continue
                batch.adopt(self.context.store.path(self._folder(prepared)))
                written.append((i, prepared, made))
            try:  # every file of the batch made durable at once, before any row names it
                batch.flush()
            except OSError as exc:
                return [(None, exc) if any(i == j for j, _, _ in written) else item
                        for i, item in enumerate(out)]
        for i, prepared, made in written:
            try:
                out[i] = (self._publish(prepared, made), None)
            except Exception as exc:  # noqa: BLE001 - this job's own error
                out[i] = (None, exc)
        return out

    def _read(self, images: list[tuple[Instance, str]]) -> list[ReadImage | Exception]:
        """Each stored image read and decoded (:func:`~bcd_node.analysis.builders.read_image`),
        in order: by the builder processes when ``workers.decode_in_builders`` says so for it
        (by default an image with compressed pixel data, whose decoding takes tens of
        milliseconds of CPU: 20 for a 512 x 512 JPEG, 50 for JPEG 2000 or JPEG-LS, against 1-2
        for uncompressed pixels), else here."""
        mode = self.decode_in_builders
        pooled = [k for k, (inst, _path) in enumerate(images)
                  if self.builders.processes and mode != "never"
                  and (mode == "always" or _compressed(inst.transfer_syntax_uid))]
        reads: list[ReadImage | Exception | None] = [None] * len(images)
        if pooled:
            for k, read in zip(pooled, self.builders.read_all([images[k][1] for k in pooled])):
                reads[k] = read
        return [read if read is not None else read_image(path)
                for read, (_inst, path) in zip(reads, images)]

    def _prepared(self, job: Claimed, rows: Loaded, read: ReadImage,
                  recorded: dict[int, Recorded]) -> Prepared | None:
        """``job``'s image as :func:`~bcd_node.analysis.builders.read_image` read and decoded
        it, with what its results need from the database (``recorded``, by :meth:`_recorded`);
        None when a changed version replaced it (the job is then complete)."""
        ctx = self.context
        inst, _series, study, patient = rows
        if read.dataset is None:
            error = read.error if read.error is not None else RuntimeError("nothing read")
            if not isinstance(error, (FileNotFoundError, DicomError)):
                raise error
            # read_dataset reports a missing file as unreadable too.
            if self._superseded(job, inst):
                return None
            if isinstance(error, FileNotFoundError):
                raise PermanentError(f"stored file {inst.path} is missing") from error
            # Named under the data folder: the reason goes into the answer to the PACS, which
            # has no business with the node's own paths.
            reason = str(error).replace(str(ctx.store.path(inst.path)), inst.path)
            raise PermanentError(f"stored file is not readable: {reason}") from error
        facts = recorded.get(inst.id)
        if facts is None:
            raise PermanentError(f"job {job.id}: instance {inst.id} no longer exists")
        if facts.failed_answer:  # rare: its "could not be analysed" SR was sent
            self._supersede_failure_answer(inst, study)
            supersedes = self._supersedes(inst, study)
        else:
            supersedes = _references(study, facts.supersedes)
        um, source = image_scale(read.dataset, ctx.settings.model.default_um_per_pixel)
        if read.images is None:
            raise read.error if read.error is not None else RuntimeError("nothing decoded")
        return Prepared(job, inst, study, patient, read.dataset, read.images, supersedes,
                        facts.field_number, um, source)

    def _request(self, prepared: Prepared, predictions: Sequence[PredictionLike],
                 batch: BatchWrite) -> BuildRequest:
        """What building ``prepared``'s outputs needs; its files go into ``batch``."""
        ctx = self.context
        # Without its pixels: the builders have them decoded (images), and a builder process
        # would otherwise be sent them twice more (the Pixel Data and pydicom's decoded array).
        return BuildRequest(without_pixels(prepared.dataset), prepared.images, list(predictions),
                            ctx.algorithm, ctx.settings.model.review_threshold,
                            ctx.settings.uids.root, ctx.demonstration_model,
                            prepared.instance.revision, prepared.supersedes,
                            prepared.field_number, ctx.settings.web.tzinfo,
                            prepared.um_per_pixel, prepared.scale_source,
                            store=ctx.store, folder=self._folder(prepared),
                            sync_files=batch.sync_files)

    def _folder(self, prepared: Prepared) -> str:
        inst = prepared.instance
        return DataLayout.instance_results(inst.id, self.context.model_version, inst.revision)

    def _publish(self, prepared: Prepared, built: Built) -> int | None:
        """The result row and its outbox rows, with the job's completion, in one transaction."""
        ctx = self.context
        settings = ctx.settings
        job, inst, study, patient = prepared.job, prepared.instance, prepared.study, \
            prepared.patient
        combined = built.combined
        folder = self._folder(prepared)
        outputs = [Output(made.kind, _identity(made), f"{folder}/{made.kind}.dcm")
                   for made in built.objects]
        pdf_rel = None if built.report_file is None else f"{folder}/{built.report_file}"

        with ctx.node.session_factory.begin() as session:
            current = session.get(Instance, inst.id)
            if current is None or current.revision != inst.revision:
                # A changed version arrived while this one was analysed; its job (queued by
                # the intake) makes the result. Nothing of this revision is queued for PACS.
                complete_or_raise(session, job)
                LOGGER.info("job %d: instance %s changed during the analysis; its newer version "
                            "is analysed by its own job", job.id, inst.sop_instance_uid)
                return None
            result = session.execute(select(Result).where(
                Result.instance_fk == inst.id, Result.scope == ResultScope.INSTANCE,
                Result.model_version == ctx.model_version)).scalar_one_or_none()
            if result is None:
                result = Result(instance_fk=inst.id, study_fk=study.id,
                                scope=ResultScope.INSTANCE, model_name=ctx.model_name,
                                model_version=ctx.model_version)
                session.add(result)
            elif result.instance_revision != inst.revision:
                self._withdraw_stale_verification(session, result, inst, study, patient)
                # The cells of the earlier version are not this version's.
                session.execute(delete(CellRejection).where(
                    CellRejection.result_fk == result.id))
            result.instance_revision = inst.revision
            result.stage = Stage(combined.stage) if combined.stage is not None else None
            result.probabilities = combined.probabilities or {}
            result.confidence = (combined.probabilities[combined.stage]
                                 if combined.stage and combined.probabilities else None)
            result.blast_count = combined.blast_count
            result.blast_area_fraction = combined.blast_area_fraction
            result.quality = combined.quality
            result.needs_review = combined.needs_review
            result.review_reasons = list(combined.review_reasons)
            result.um_per_pixel = combined.um_per_pixel
            result.scale_source = combined.scale_source
            result.demonstration_model = ctx.demonstration_model
            result.mask_path = f"{folder}/mask.png"
            result.overlay_path = f"{folder}/overlay.png"
            result.probability_path = (f"{folder}/probability.png"
                                       if built.probability_png is not None else None)
            result.cells = built.cells
            result.pdf_path = pdf_rel
            uids = {kind: str(dataset.SOPInstanceUID) for kind, dataset, _ in outputs}
            result.seg_sop_instance_uid = uids.get("seg")
            result.sr_sop_instance_uid = uids.get("sr")
            result.pdf_sop_instance_uid = uids.get("pdf")
            publish(session, job, result, outputs, settings.destinations, study_id=study.id)
        ctx.node.wake_delivery()
        LOGGER.info("job %d: instance %s%s analysed: stage %s, %d blasts%s", job.id,
                    inst.sop_instance_uid,
                    f" (revision {inst.revision})" if inst.revision else "",
                    combined.stage or "none (quality insufficient)",
                    combined.blast_count, ", needs review" if combined.needs_review else "")
        return result.id

    def answer_failure(self, job: Claimed) -> int | None:
        """After ``job`` failed for good: send "could not be analysed" and its reason.

        The non-diagnostic SR and PDF (:func:`~bcd_node.analysis.findings.non_diagnostic_answer`)
        are built from the stored image (from its records, :func:`recorded_image`, when its
        file cannot be read any more), recorded on the image's result (no stage, quality
        ``failed`` with the reason, needing review) and queued for every destination. Nothing
        is sent when the image is no longer on record, when it changed meanwhile (its newer
        version has its own job) or when the image already has a result of this revision.
        Returns the result id, or None.
        """
        ctx = self.context
        settings = ctx.settings
        with ctx.node.session_factory() as session:
            row = session.get(Job, job.id)
            if row is None or row.state != JobState.FAILED:
                return None
            reason = (row.last_error or "the analysis failed").strip()
        try:
            inst, series, study, patient = self._load(job)
        except (PermanentError, DicomError, OSError) as exc:
            LOGGER.warning("job %d: the failed image is not on record, so no answer is sent "
                           "for it: %s", job.id, exc)
            return None
        image: np.ndarray | None = None  # without one, the PDF shows no picture
        try:
            ds = read_dataset(ctx.store.path(inst.path))
        except (PermanentError, DicomError, OSError) as exc:
            # The image was acknowledged, so it is answered all the same: from what the node
            # recorded of it when it arrived (its UIDs, its patient and study).
            LOGGER.warning("job %d: the failed image cannot be read (%s); its answer is made "
                           "from its records", job.id, exc)
            ds = recorded_image(inst, series, study, patient)
        else:
            with contextlib.suppress(PermanentError, DicomError, ValueError):
                image = decode_for_analysis(ds)[0]
        pdf, objects = non_diagnostic_answer(
            ds, NonDiagnostic(failure=reason), algorithm=ctx.algorithm,
            demonstration_model=ctx.demonstration_model, uid_root=settings.uids.root,
            image=image, revision=inst.revision, supersedes=self._supersedes(inst, study),
            field_number=ctx.field_number(inst), timezone=settings.web.tzinfo)
        folder = DataLayout.instance_results(inst.id, ctx.model_version, inst.revision)
        pdf_rel = f"{folder}/failed-report.pdf"
        outputs = [Output(kind, dataset, f"{folder}/failed-{kind}.dcm")
                   for kind, dataset in objects.by_kind()]
        write_files(ctx.store, (pdf_rel, pdf), outputs)
        with ctx.node.session_factory.begin() as session:
            current = session.get(Instance, inst.id)
            if current is None or current.revision != inst.revision:
                return None
            result = session.execute(select(Result).where(
                Result.instance_fk == inst.id, Result.scope == ResultScope.INSTANCE,
                Result.model_version == ctx.model_version)).scalar_one_or_none()
            if result is not None and result.instance_revision == inst.revision \
                    and result.sr_sop_instance_uid:
                return None  # this revision has its answer already
            if result is None:
                result = Result(instance_fk=inst.id, study_fk=study.id,
                                scope=ResultScope.INSTANCE, model_name=ctx.model_name,
                                model_version=ctx.model_version)
                session.add(result)
            result.instance_revision = inst.revision
            result.stage, result.probabilities, result.confidence = None, {}, None
            result.blast_count, result.blast_area_fraction = 0, 0.0
            result.quality = {"status": "failed", "reason": reason[:500]}
            result.needs_review = True
            result.demonstration_model = ctx.demonstration_model
            result.mask_path = result.overlay_path = result.probability_path = None
            result.cells = None
            result.pdf_path = pdf_rel
            uids = {kind: str(dataset.SOPInstanceUID) for kind, dataset, _ in outputs}
            result.seg_sop_instance_uid = None
            result.sr_sop_instance_uid = uids.get("sr")
            result.pdf_sop_instance_uid = uids.get("pdf")
            session.flush()
            queue_deliveries(session, result.id, outputs, settings.destinations)
            refresh_study(session, study.id)
            result_id = result.id
        ctx.node.wake_delivery()
        LOGGER.info("job %d: instance %s could not be analysed; its answer is queued: %s",
                    job.id, inst.sop_instance_uid, reason)
        return result_id

    def _superseded(self, job: Claimed, inst: Instance) -> bool:
        """Whether ``inst`` changed since the job loaded it (its file then is the replaced one,
        removed by the intake); if so the job completes, and the newer version's job does the
        work."""
        with self.context.node.session_factory.begin() as session:
            current = session.get(Instance, inst.id)
            if current is None or current.revision == inst.revision:
                return False
            complete_or_raise(session, job)
        LOGGER.info("job %d: instance %s was replaced by a changed version before it was "
                    "analysed; the newer version is analysed by its own job", job.id,
                    inst.sop_instance_uid)
        return True

    def _supersede_failure_answer(self, inst: Instance, study: Study) -> None:
        """Record the "could not be analysed" SR of this revision (its job failed for good and
        was retried) as what the new SR supersedes, so that the PACS is not left with two
        answers that contradict each other; recorded, so that a re-run builds the same SR."""
        ctx = self.context
        with ctx.node.session_factory.begin() as session:
            result = session.execute(select(Result).where(
                Result.instance_fk == inst.id, Result.scope == ResultScope.INSTANCE,
                Result.model_version == ctx.model_version)).scalar_one_or_none()
            sop = _failure_answer_sr(result, inst)
            if result is None or sop is None:
                return
            failed = {"series": sr_series_uid(study.study_instance_uid, ctx.model_version,
                                              ctx.settings.uids.root),
                      "sop": sop}
            if failed not in (result.supersedes or []):
                result.supersedes = [*(result.supersedes or []), failed]
                LOGGER.info("instance %s: its new SR supersedes the 'could not be analysed' SR "
                            "%s", inst.sop_instance_uid, sop)

    def _supersedes(self, inst: Instance, study: Study) -> list[Dataset]:
        """The SR documents that this revision's SR replaces: the earlier revision's (recorded
        by the intake when the image changed) and this revision's "could not be analysed" SR
        (:meth:`_supersede_failure_answer`); kept, so that a re-run builds the same SR."""
        with self.context.node.session_factory() as session:
            recorded = session.execute(select(Result.supersedes).where(
                Result.instance_fk == inst.id, Result.scope == ResultScope.INSTANCE,
                Result.model_version == self.context.model_version)).scalar_one_or_none()
        return _references(study, recorded or [])

    def _withdraw_stale_verification(self, session: Session, result: Result, inst: Instance,
                                     study: Study, patient: Patient) -> None:
        """The result is of an earlier revision. The intake withdrew its verification when the
        image changed; one made since (the console refuses it) is withdrawn here, audited."""
        if result.verification != VerificationState.UNVERIFIED:
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
