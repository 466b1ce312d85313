"""Comprehensive 3D SR with a TID 1500 Measurement Report of one analysed image.

Content tree (see ``docs/conformance.md``)::

    TID 1500 Imaging Measurement Report
      TID 1204 language, TID 1001 observation context
        device observer: the algorithm (name, manufacturer, model "name version")
        person observer: the verifying doctor (verified successor only)
        subject: the specimen (slide) when the source carries one
      procedure reported: (BCD-SCREEN, 99BCD)
      image library: the source image
      imaging measurements
        TID 1501 measurement group "Blood smear classification" (the whole image; finding
          site Blood, SCT 87612001, as in the blast group)
          algorithm identification (TID 4019)
          qualitative evaluation: stage by the algorithm (BCD-STAGE)
          qualitative evaluation: image quality (DCM 111101: RID12 / RID13)
          qualitative evaluation: stage by the doctor (BCD-STAGE-REV; verified only)
          qualitative evaluation: the doctor's assessment of the AI's result (AI-ASSESSMENT:
            AI-ACCEPTED, AI-MODIFIED or AI-REJECTED; verified only)
          text: doctor's comment (DCM 121106; verified only, if given)
          numeric: probability of each of the four stages (PROB-*, UCUM "%")
        TID 1411 measurement group "Blast cells" (references SEG segment 1, no frame: the
          AI's SEG, or in a verified report with rejected cells the corrected SEG)
          numeric: blast cell count (UCUM {cells}), blast cell area fraction (UCUM "%"), of
            the SEG it references

Every CONTAINER is SEPARATE (:func:`separate_containers`). The algorithm's result is COMPLETE,
UNVERIFIED and PRELIMINARY. The doctor-verified successor is built by the same function with a
:class:`Verification` and the superseded document: VERIFIED and FINAL, the verifying observer
(name, organisation, time), the doctor's stage and comment, and the superseded document in the
Predecessor Documents Sequence. The result of a changed version of the source (same SOP Instance
UID, next revision) is a new unverified document whose Predecessor Documents Sequence names the
reports of the earlier version it replaces (:func:`document_reference`).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from dicom import codes, sop, srcontent, uids
from dicom.algorithm import Algorithm
from dicom.codes import Stage
from dicom.derivation import derivation_source
from dicom.errors import DicomValidationError
from dicom.series import SERIES_NUMBERS, ResultKind, instance_number, result_series
from dicom.srdocument import Comprehensive3DSRDocument

__all__ = ["Findings", "Verification", "build_sr", "document_reference", "SR_SERIES_NUMBER",
           "percent", "separate_containers"]

LOGGER = logging.getLogger(__name__)

SR_SERIES_NUMBER = SERIES_NUMBERS[ResultKind.SR]
_PROBABILITY_SUM_TOLERANCE = 0.01


@dataclass(frozen=True)
class Findings:
    """The algorithm's result for one image.

    Parameters
    ----------
    stage : Stage or str
        The stage with the highest calibrated probability.
    probabilities : Mapping[Stage or str, float]
        Calibrated probability of each of the four stages, in [0, 1], summing to 1 (within 0.01).
    blast_count : int
        Number of blast cells (connected components of the mask).
    blast_area_fraction : float
        Fraction of the image area covered by blast cells, in [0, 1].
    quality_ok : bool
        Whether the image passed the quality checks (focus, exposure, stain).
    review_reasons : Sequence[str], optional
        Why the result needs review (:data:`dicom.codes.REVIEW_REASONS`): written as coded
        evaluations (BCD-REVIEW, 99BCD) of the classification.
    """

    stage: Stage | str
    probabilities: Mapping[Stage | str, float]
    blast_count: int
    blast_area_fraction: float
    quality_ok: bool
    review_reasons: Sequence[str] = ()

    def __post_init__(self) -> None:
        codes.stage_code(self.stage)  # raises on an unknown stage
        object.__setattr__(self, "stage", Stage(self.stage))
        if not isinstance(self.probabilities, Mapping):
            raise TypeError(f"probabilities must be a mapping, got {self.probabilities!r}")
        probs: dict[Stage, float] = {}
        for key, value in self.probabilities.items():
            codes.stage_code(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"probability of {key!r} must be a number, got {value!r}")
            if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise DicomValidationError(f"probability of {key!r} must be in [0, 1], got "
                                           f"{value!r}")
            probs[Stage(key)] = float(value)
        if set(probs) != set(Stage):
            raise DicomValidationError(
                f"probabilities must give all four stages, got {sorted(s.value for s in probs)}"
            )
        total = sum(probs.values())
        if abs(total - 1.0) > _PROBABILITY_SUM_TOLERANCE:
            raise DicomValidationError(f"probabilities must sum to 1, got {total!r}")
        object.__setattr__(self, "probabilities", probs)
        if isinstance(self.blast_count, bool) or not isinstance(self.blast_count, int):
            raise TypeError(f"blast_count must be an int, got {self.blast_count!r}")
        if self.blast_count < 0:
            raise DicomValidationError(f"blast_count must be >= 0, got {self.blast_count!r}")
        fraction = self.blast_area_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise TypeError(f"blast_area_fraction must be a number, got {fraction!r}")
        if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
            raise DicomValidationError(f"blast_area_fraction must be in [0, 1], got {fraction!r}")
        if not isinstance(self.quality_ok, bool):
            raise TypeError(f"quality_ok must be a bool, got {self.quality_ok!r}")
        if isinstance(self.review_reasons, str):
            raise TypeError(f"review_reasons must be a sequence of reasons, got "
                            f"{self.review_reasons!r}")
        for reason in self.review_reasons:
            codes.review_reason_code(reason)  # raises on an unknown reason
        object.__setattr__(self, "review_reasons", tuple(self.review_reasons))


@dataclass(frozen=True)
class Verification:
    """A doctor's verification of a result.

    Parameters
    ----------
    observer_name : str
        The verifying doctor as DICOM PN, ``Family^Given``.
    organization : str
        The doctor's organisation (hospital).
    datetime : datetime.datetime
        When the doctor verified the result (timezone-aware preferred).
    stage : Stage or str or None
        The stage the doctor assigns (may differ from the algorithm's); None when the doctor
        reviewed the cells only (rejected some as not blasts) and not the stage, as when a
        field is verified with the signature of its case: the report then states no reviewed
        stage.
    comment : str, optional
        Free text comment of the doctor.
    rejected_cells : int, optional
        How many of the AI's blast cells the doctor rejected as not blasts (the report then
        references the corrected SEG, and counts without them).
    """

    observer_name: str
    organization: str
    datetime: dt.datetime
    stage: Stage | str | None
    comment: str | None = None
    rejected_cells: int = 0

    @property
    def texts(self) -> tuple[str, ...]:
        """The text values the verification adds to a report (the Specific Character Set of
        the report must represent them: a doctor's name or comment in Polish or Japanese)."""
        return (self.observer_name, self.organization, self.comment or "")

    def assessment(self, ai_stage: Stage | str) -> hd.sr.CodedConcept:
        """The doctor's decision about the AI's result: rejected (another stage), modified
        (the stage stands, cells were rejected) or accepted."""
        if self.stage is not None and Stage(self.stage) != Stage(ai_stage):
            return codes.AI_REJECTED
        return codes.AI_MODIFIED if self.rejected_cells else codes.AI_ACCEPTED

    def __post_init__(self) -> None:
        if not isinstance(self.observer_name, str) or not self.observer_name.strip():
            raise DicomValidationError("observer_name must be a non-empty PN, got "
                                       f"{self.observer_name!r}")
        parts = self.observer_name.split("^")
        if len(parts) > 5 or any(len(p) > 64 for p in parts) or "\\" in self.observer_name:
            raise DicomValidationError("observer_name is not a valid PN, got "
                                       f"{self.observer_name!r}")
        if (
            not isinstance(self.organization, str)
            or not self.organization.strip()
            or len(self.organization) > 64
            or "\\" in self.organization
        ):
            raise DicomValidationError("organization must be 1 to 64 characters, got "
                                       f"{self.organization!r}")
        if not isinstance(self.datetime, dt.datetime):
            raise TypeError(f"datetime must be a datetime.datetime, got {self.datetime!r}")
        if self.stage is None:
            if not self.rejected_cells:
                raise DicomValidationError("a verification without a stage reviews cells: "
                                           "rejected_cells must be at least 1")
        else:
            codes.stage_code(self.stage)
            object.__setattr__(self, "stage", Stage(self.stage))
        if isinstance(self.rejected_cells, bool) or not isinstance(self.rejected_cells, int) \
                or self.rejected_cells < 0:
            raise DicomValidationError(f"rejected_cells must be an int >= 0, got "
                                       f"{self.rejected_cells!r}")
        if self.comment is not None:
            if not isinstance(self.comment, str):
                raise TypeError(f"comment must be a str, got {self.comment!r}")
            if len(self.comment) > 10240:
                raise DicomValidationError(
                    f"comment must be at most 10240 characters, got {len(self.comment)}"
                )


def _check_dataset(name: str, value: object, sop_classes: set[str]) -> Dataset:
    if not isinstance(value, Dataset):
        raise TypeError(f"{name} must be a pydicom Dataset, got {type(value).__name__}")
    if str(value.get("SOPClassUID", "")) not in sop_classes:
        raise DicomValidationError(
            f"{name} has SOP class {value.get('SOPClassUID')!r}, expected {sorted(sop_classes)}"
        )
    return value


def document_reference(study_instance_uid: str, series_instance_uid: str,
                       sop_instance_uid: str,
                       sop_class_uid: str = str(sop.COMPREHENSIVE_3D_SR)) -> Dataset:
    """The identifiers of an earlier SR document, enough to name it as a predecessor.

    Parameters
    ----------
    study_instance_uid, series_instance_uid, sop_instance_uid : str
        Where the earlier document is.
    sop_class_uid : str, optional
        Its SOP class (default Comprehensive 3D SR).

    Returns
    -------
    pydicom.dataset.Dataset
        A data set with only those four attributes (for ``supersedes`` of :func:`build_sr`).

    Raises
    ------
    TypeError, ValueError
        If a UID is not valid.
    """
    ref = Dataset()
    ref.StudyInstanceUID = uids.validate_uid(study_instance_uid, name="study_instance_uid")
    ref.SeriesInstanceUID = uids.validate_uid(series_instance_uid, name="series_instance_uid")
    ref.SOPInstanceUID = uids.validate_uid(sop_instance_uid, name="sop_instance_uid")
    ref.SOPClassUID = uids.validate_uid(sop_class_uid, name="sop_class_uid")
    return ref


def build_sr(
    source: Dataset,
    segmentation: Dataset,
    findings: Findings,
    *,
    algorithm: Algorithm,
    verification: Verification | None = None,
    predecessor: Dataset | None = None,
    uid_root: str = uids.DEFAULT_ROOT,
    series_number: int | None = None,
    institution_name: str | None = None,
    revision: int = 0,
    supersedes: Sequence[Dataset] = (),
    field_number: int | None = None,
    derived_from: Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 report of an image, unverified or as the doctor-verified successor.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The analysed image.
    segmentation : pydicom.dataset.Dataset
        The SEG of the blast cells built from ``source`` (segment 1 is referenced).
    findings : Findings
        The algorithm's result.
    algorithm : Algorithm
        The model, named as device observer and in the measurement groups.
    verification : Verification, optional
        The doctor's verification; builds the VERIFIED successor of ``predecessor``.
    predecessor : pydicom.dataset.Dataset, optional
        The SR this one supersedes; required with ``verification``.
    uid_root : str, optional
        Root of the derived UIDs.
    series_number : int, optional
        Series Number instead of the series' own (:mod:`dicom.series`): the study's SR series,
        or with ``verification`` its verified SR series.
    institution_name : str, optional
        Institution Name written on the SR.
    revision : int, optional
        Revision of the source under its SOP Instance UID (0: as first received); a changed
        source gets new UIDs (:func:`dicom.uids.derive_uid`).
    supersedes : Sequence[pydicom.dataset.Dataset], optional
        The reports of an earlier version of the source that this unverified report replaces
        (e.g. from :func:`document_reference`), named in the Predecessor Documents Sequence.
        Not with ``verification`` (a verified report supersedes ``predecessor``).
    field_number : int, optional
        The field's number in its study: the SR's Instance Number (default: the source's
        Instance Number, see :func:`dicom.series.instance_number`).
    derived_from : pydicom.dataset.Dataset, optional
        With ``verification``, when ``segmentation`` is the doctor's corrected SEG: the AI's
        SEG it derives from, listed in the evidence with it.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        COMPLETE, UNVERIFIED and PRELIMINARY without ``verification``, else COMPLETE, VERIFIED
        and FINAL.

    Raises
    ------
    TypeError, ValueError
        Naming the argument and value that is not valid.
    """
    source = _check_dataset("source", source, {str(u) for u in sop.ACCEPTED_SOP_CLASSES})
    segmentation = _check_dataset("segmentation", segmentation, {str(sop.SEGMENTATION)})
    if not isinstance(findings, Findings):
        raise TypeError(f"findings must be Findings, got {type(findings).__name__}")
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"algorithm must be an Algorithm, got {type(algorithm).__name__}")
    source = derivation_source(source, (*algorithm.texts,
                                        *(verification.texts if verification else ())))
    if segmentation.StudyInstanceUID != source.StudyInstanceUID:
        raise DicomValidationError(
            f"segmentation belongs to study {segmentation.StudyInstanceUID!r}, "
            f"the source to {source.StudyInstanceUID!r}"
        )
    referenced = {
        str(ref.ReferencedSOPInstanceUID)
        for series in segmentation.get("ReferencedSeriesSequence", [])
        for ref in series.get("ReferencedInstanceSequence", [])
    }
    if str(source.SOPInstanceUID) not in referenced:
        raise DicomValidationError(
            f"segmentation {segmentation.SOPInstanceUID!r} does not reference the source "
            f"{source.SOPInstanceUID!r}"
        )
    if derived_from is not None:
        derived_from = _check_dataset("derived_from", derived_from, {str(sop.SEGMENTATION)})
        if verification is None:
            raise DicomValidationError("derived_from names the AI's SEG of a verified report "
                                       "with a corrected SEG; give a verification")
        if derived_from.StudyInstanceUID != source.StudyInstanceUID:
            raise DicomValidationError(f"derived_from belongs to study "
                                       f"{derived_from.StudyInstanceUID!r}")
    if verification is not None and not isinstance(verification, Verification):
        raise TypeError(f"verification must be a Verification, got {type(verification).__name__}")
    if (verification is None) != (predecessor is None):
        raise DicomValidationError(
            "verification and predecessor go together: a verified SR supersedes a document, "
            f"got verification={verification!r}, "
            f"predecessor={'a dataset' if predecessor is not None else None}"
        )
    if predecessor is not None:
        predecessor = _check_dataset("predecessor", predecessor, {str(sop.COMPREHENSIVE_3D_SR)})
        if predecessor.StudyInstanceUID != source.StudyInstanceUID:
            raise DicomValidationError("predecessor belongs to study "
                                       f"{predecessor.StudyInstanceUID!r}")
    series = result_series(str(source.StudyInstanceUID), algorithm,
                           ResultKind.SR if verification is None else ResultKind.VERIFIED_SR,
                           root=uid_root, series_number=series_number)
    number = instance_number(source, field_number)
    uids.validate_revision(revision)
    supersedes = list(supersedes)
    if supersedes and verification is not None:
        raise DicomValidationError("supersedes is for an unverified report of a changed source; a "
                                   "verified "
                                   "report supersedes its predecessor")
    for i, earlier in enumerate(supersedes):
        earlier = _check_dataset(f"supersedes[{i}]", earlier, {str(sop.COMPREHENSIVE_3D_SR)})
        if earlier.get("StudyInstanceUID") != source.StudyInstanceUID:
            raise DicomValidationError(f"supersedes[{i}] belongs to study "
                                       f"{earlier.get('StudyInstanceUID')!r}, the source to "
                                       f"{source.StudyInstanceUID!r}")
        for keyword in ("SeriesInstanceUID", "SOPInstanceUID"):
            uids.validate_uid(str(earlier.get(keyword, "")), name=f"supersedes[{i}].{keyword}")

    source_uid = str(source.SOPInstanceUID)
    version = algorithm.version

    def derived(kind: str) -> str:
        return uids.derive_uid(source_uid, version, kind, root=uid_root, revision=revision)

    if verification is not None and predecessor is not None:  # both or neither (checked above)
        stamp = verification.datetime.strftime("%Y%m%d%H%M%S%f")
        sop_instance_uid = uids.derive_uid(
            str(predecessor.SOPInstanceUID), version, f"sr-verified-{stamp}", root=uid_root
        )
    else:
        sop_instance_uid = derived("sr")

    content = srcontent.ReportContent(
        source=source, segmentation=segmentation, findings=findings, algorithm=algorithm,
        device_uid=algorithm.device_uid(uid_root),
        classification_uid=derived("tracking-classification"),
        blasts_uid=derived("seg-tracking"), verification=verification,
    )
    sr = Comprehensive3DSRDocument(
        [source, segmentation, *([derived_from] if derived_from is not None else [])],
        content=srcontent.measurement_report(content),
        series_instance_uid=series.uid,
        series_number=series.number,
        sop_instance_uid=sop_instance_uid,
        instance_number=number,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
        is_final=verification is not None,  # Preliminary Flag FINAL once verified
        is_verified=verification is not None,
        institution_name=institution_name or algorithm.institution_name,
        verifying_observer_name=verification.observer_name if verification else None,
        verifying_organization=verification.organization if verification else None,
        previous_versions=([predecessor] if predecessor is not None
                           else supersedes or None),
        contributing_equipment=[algorithm.contributing_equipment()],
    )
    if verification is not None:
        when = verification.datetime
        observer = sr.VerifyingObserverSequence[0]
        observer.VerificationDateTime = when.strftime("%Y%m%d%H%M%S") + (
            when.strftime("%z") if when.tzinfo else ""
        )
        observer.VerifyingObserverName = PersonName(verification.observer_name)
    sr.SeriesDescription = series.description
    algorithm.write_equipment(sr)
    identify_private_codes(sr)
    LOGGER.info(
        "built %s SR %s for %s",
        "VERIFIED" if verification else "UNVERIFIED",
        sr.SOPInstanceUID,
        source_uid,
    )
    return sr


def percent(fraction: float) -> float:
    """A fraction in [0, 1] as the percentage an SR carries (UCUM ``%``), to 4 decimals: the
    Decimal String stays short, so a reader shows ``2 %`` rather than ``2.00000000000001 %``."""
    return round(float(fraction) * 100.0, 4)


def separate_containers(sr: Dataset) -> None:
    """Make every CONTAINER of the content tree SEPARATE (highdicom writes CONTINUOUS).

    The items of a TID 1500 container are separate statements, not one running text: with
    CONTINUOUS, DCMTK's ``dsr2html`` renders the numbers of a measurement group without their
    names ("0.02 1"); with SEPARATE it prints "Probability of Benign: 2 %".
    """
    stack: list[Dataset] = [sr]
    while stack:
        item = stack.pop()
        if item.get("ValueType") == "CONTAINER":
            item.ContinuityOfContent = "SEPARATE"
        stack.extend(item.get("ContentSequence", []))


def identify_private_codes(sr: Dataset) -> None:
    """Name our private coding scheme in the SR and our implementation in its file meta."""
    scheme = codes.coding_scheme_identification()
    existing = sr.get("CodingSchemeIdentificationSequence")
    if existing is None:
        sr.CodingSchemeIdentificationSequence = [scheme]
    elif not any(i.get("CodingSchemeDesignator") == codes.SCHEME for i in existing):
        existing.append(scheme)
    sr.file_meta.ImplementationClassUID = uids.IMPLEMENTATION_CLASS_UID
    sr.file_meta.ImplementationVersionName = uids.IMPLEMENTATION_VERSION_NAME
