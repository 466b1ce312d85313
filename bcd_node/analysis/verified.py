"""The verified report: a doctor verified (or corrected) a result, so a VERIFIED SR that
supersedes the AI's SR and an updated PDF go to PACS; for a study summary (the doctor signed
the case), the signed summary SR and PDF (:mod:`bcd_node.analysis.summary`).

When the doctor rejected cells of the field ("not a blast", :mod:`bcd_node.records.cells`), a
corrected SEG goes first: the AI's mask without those cells, derived from the AI's SEG
(:func:`dicom.seg.build_corrected_segmentation`); the VERIFIED SR then references it and counts
the cells that remain, and records the doctor's assessment of the AI's result (accepted,
modified or rejected).

The verified objects live in the result's folder, named by the time of the verification; at
PACS the study's verified SRs, verified PDFs and corrected SEGs are each a series of their own
(:mod:`dicom.series`), numbered by field as the AI's reports are. A verification withdrawn
while its report was made (the image was replaced meanwhile) sends nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from bcd_node.analysis.context import AnalysisContext
from bcd_node.analysis.findings import Combined, decode_for_analysis, overlay_layer, report_data
from bcd_node.analysis.publish import Output, complete_or_raise, publish, write_files
from bcd_node.analysis.summary import StudySummaries
from bcd_node.db.models import Result, ResultScope, User, VerificationState
from bcd_node.errors import PermanentError
from bcd_node.inference.spec import REVIEW_REASONS
from bcd_node.jobs.queue import Claimed
from bcd_node.records.cells import (
    CellList,
    area_without,
    corrected_blast_count,
    label_cells,
    rejected_indices,
    result_cells,
)
from bcd_node.records.names import person_name
from bcd_node.records.studies import current_summary
from bcd_node.records.verification import VERIFIED_WITH_CASE
from bcd_node.report.pdf import render_report
from bcd_node.store.layout import DataLayout
from dicom.encapsulated import build_encapsulated_pdf
from dicom.pixels import read_dataset
from dicom.seg import build_corrected_segmentation
from dicom.sr import Findings, Verification, build_sr

LOGGER = logging.getLogger(__name__)


class VerifiedReports:
    """The ``verified_report`` job."""

    def __init__(self, context: AnalysisContext, summaries: StudySummaries) -> None:
        self.context = context
        self.summaries = summaries

    def make(self, job: Claimed) -> None:
        """A doctor verified a result: build the VERIFIED SR and the updated PDF, queue them.
        A study summary's result (the case signed) goes to
        :meth:`~bcd_node.analysis.summary.StudySummaries.make_verified`."""
        ctx = self.context
        settings = ctx.settings
        with ctx.node.session_factory() as session:
            result = session.get(Result, job.result_fk) if job.result_fk else None
            if result is None:
                raise PermanentError(f"job {job.id}: result {job.result_fk} not found")
            if result.verification != VerificationState.VERIFIED or result.verified_at is None:
                raise PermanentError(f"job {job.id}: result {result.id} is not verified")
            doctor = session.get(User, result.verified_by_fk) if result.verified_by_fk else None
            if result.scope == ResultScope.STUDY:
                session.expunge_all()
                name = (doctor.full_name or doctor.username) if doctor else "unknown"
                self.summaries.make_verified(job, result, name)
                return
            if result.instance_fk is None:
                raise PermanentError(f"job {job.id}: result {result.id} has no image")
            if (not result.sr_sop_instance_uid or result.stage is None
                    or result.overlay_path is None):
                raise PermanentError(f"job {job.id}: result {result.id} has no SR to supersede "
                                     "(quality insufficient)")
            rejected = sorted(rejected_indices(session, result.id))
            corrected_count = corrected_blast_count(session, result)
            # Verified with the signature of its case: what the case was signed as.
            case_stage = None
            if result.verified_with == VERIFIED_WITH_CASE:
                summary = current_summary(session, result.study_fk)
                signed = (summary.verified_stage or summary.stage) if summary else None
                case_stage = str(signed) if signed is not None else "no stage"
            session.expunge_all()
        verified_at = result.verified_at
        inst, _series, study, _patient = ctx.load(job.id, result.instance_fk)
        if inst.revision != result.instance_revision:
            raise PermanentError(f"job {job.id}: result {result.id} is of an earlier version of "
                                 "the image (it was replaced); nothing to verify")
        ds = read_dataset(ctx.store.path(inst.path))
        folder = DataLayout.instance_results(inst.id, result.model_version,
                                             result.instance_revision)
        seg = read_dataset(ctx.store.path(f"{folder}/seg.dcm"))
        predecessor = read_dataset(ctx.store.path(f"{folder}/sr.dcm"))
        name = (doctor.full_name or doctor.username) if doctor else "unknown"
        verification = Verification(
            observer_name=person_name(name),
            organization=settings.dicom.institution_name or "bcd-node",
            datetime=verified_at,
            stage=None if case_stage is not None else result.verified_stage or result.stage,
            comment=result.verified_comment or None, rejected_cells=len(rejected))
        # The report is the analysis' own, signed: it names the model that made it, which may
        # not be the model that runs now.
        algorithm = dataclasses.replace(ctx.algorithm, name=result.model_name,
                                        version=result.model_version)
        field_number = ctx.field_number(inst)
        stamp = verified_at.strftime("%Y%m%dT%H%M%S%f")
        image = decode_for_analysis(ds)[0]
        blast_count, area_fraction = result.blast_count, result.blast_area_fraction
        corrected_seg = None
        if rejected:
            # The doctor rejected cells: a SEG without them, derived from the AI's, and the
            # report counts and shows what it holds.
            mask = corrected_mask(ctx.store.path(result.mask_path or ""), result_cells(result),
                                  rejected)
            corrected_seg = build_corrected_segmentation(
                ds, seg, mask, algorithm=algorithm, reviewer_name=verification.observer_name,
                rejected_cells=len(rejected), uid_root=settings.uids.root,
                field_number=field_number, revision=result.instance_revision,
                verified_stamp=stamp)
            # The area as the console and the signed case report give it (area_without).
            blast_count, area_fraction = corrected_count, area_without(result, set(rejected))
        else:
            mask = stored_mask(ctx.store.path(result.mask_path or ""))
        # The overlay as the AI report draws it, made again from the (corrected) mask: a
        # layer over the field's picture (an earlier version's overlay.png was the field with
        # the overlay laid over it, not a layer).
        over = overlay_layer(mask)
        findings = Findings(stage=result.stage, probabilities=result.probabilities,
                            blast_count=blast_count,
                            blast_area_fraction=min(1.0, area_fraction), quality_ok=True,
                            review_reasons=tuple(r for r in result.review_reasons or ()
                                                 if r in REVIEW_REASONS))
        sr = build_sr(ds, corrected_seg if corrected_seg is not None else seg, findings,
                      algorithm=algorithm, verification=verification,
                      predecessor=predecessor, uid_root=settings.uids.root,
                      revision=result.instance_revision, field_number=field_number,
                      derived_from=seg if corrected_seg is not None else None)
        combined = Combined(result.stage, result.probabilities, blast_count, area_fraction,
                            np.zeros((1, 1, 1), np.uint8), result.quality, result.needs_review,
                            review_reasons=tuple(result.review_reasons or ()),
                            um_per_pixel=result.um_per_pixel, scale_source=result.scale_source)
        data = report_data(ds, image, over, combined, algorithm=algorithm,
                           demonstration_model=self._demonstration(result),
                           created_at=result.created_at, timezone=settings.web.tzinfo)
        data = dataclasses.replace(
            data, verified_by=name, verified_organization=verification.organization,
            verified_stage=None if verification.stage is None else str(verification.stage),
            verified_comment=result.verified_comment, verified_at=verified_at,
            cells_reviewed_with_case=case_stage, rejected_cells=len(rejected),
            ai_blast_count=result.blast_count)
        pdf = render_report(data)
        enc = build_encapsulated_pdf(ds, pdf, algorithm=algorithm,
                                     verified_at=verified_at,
                                     uid_root=settings.uids.root,
                                     revision=result.instance_revision,
                                     field_number=field_number)
        pdf_rel = f"{folder}/report-verified-{stamp}.pdf"
        outputs = [Output("verified_sr", sr, f"{folder}/sr-verified-{stamp}.dcm"),
                   Output("verified_pdf", enc, f"{folder}/pdf-verified-{stamp}.dcm")]
        if corrected_seg is not None:
            # First, so that the PACS holds the SEG before the report that references it.
            outputs.insert(0, Output("corrected_seg", corrected_seg,
                                     f"{folder}/seg-corrected-{stamp}.dcm"))
        write_files(ctx.store, (pdf_rel, pdf), outputs)
        with ctx.node.session_factory.begin() as session:
            row = session.get(Result, result.id)
            if (row is None or row.verification != VerificationState.VERIFIED
                    or row.verified_at != verified_at
                    or row.instance_revision != result.instance_revision):
                # Withdrawn while it was made (the image was replaced): nothing goes to PACS.
                complete_or_raise(session, job)
                LOGGER.info("job %d: verification of result %d was withdrawn meanwhile; no "
                            "verified report", job.id, result.id)
                return
            row.verified_sr_sop_instance_uid = str(sr.SOPInstanceUID)
            row.corrected_seg_sop_instance_uid = (str(corrected_seg.SOPInstanceUID)
                                                  if corrected_seg is not None else None)
            row.verified_pdf_path = pdf_rel
            publish(session, job, row, outputs, settings.destinations, study_id=row.study_fk)
        ctx.node.wake_delivery()
        LOGGER.info("job %d: verified report of result %d queued", job.id, result.id)

    def _demonstration(self, result: Result) -> bool:
        """Whether ``result`` was made by a demonstration model: its own record, else (a result
        stored before the flag was kept) the warm model's flag when that model made it, and
        true otherwise (as the console judges it, :mod:`webadmin.model_use`)."""
        if result.demonstration_model is not None:
            return result.demonstration_model
        made_here = (result.model_name, result.model_version) == (self.context.model_name,
                                                                  self.context.model_version)
        return self.context.demonstration_model if made_here else True


def stored_mask(mask_path: Path) -> np.ndarray:
    """A field's mask as the builders stored it (``mask.png``), 0/1 uint8.

    Raises
    ------
    PermanentError
        It cannot be read.
    """
    try:
        with Image.open(mask_path) as picture:
            return (np.asarray(picture.convert("L")) > 0).astype(np.uint8)
    except OSError as exc:
        raise PermanentError(f"the field's mask cannot be read: {exc}") from exc


def corrected_mask(mask_path: Path, listed: CellList, rejected: list[int]) -> np.ndarray:
    """The field's mask without the ``rejected`` cells (0/1 uint8).

    Raises
    ------
    PermanentError
        The stored mask does not give the cells the doctor saw (it changed, or is missing).
    """
    mask = stored_mask(mask_path)
    labels, n = label_cells(mask, listed.min_area)
    if n != len(listed.cells) or (listed.shape and tuple(listed.shape) != mask.shape):
        raise PermanentError(f"the field's mask gives {n} cells, the doctor reviewed "
                             f"{len(listed.cells)}: the corrected SEG is not made")
    mask[np.isin(labels, rejected)] = 0
    return mask
