"""The non-diagnostic report of an image: "not analysed", and why, as a TID 1500 SR.

An image the quality gate refuses (too small, out of focus, not a blood smear, ...) or whose
analysis failed for good still gets an answer at the PACS: this SR and an Encapsulated PDF that
say so, in the study's SR and PDF series with the field's number (:mod:`dicom.series`), and no
SEG (there is no diagnostic mask). Content tree (see ``docs/conformance.md``)::

    TID 1500 Imaging Measurement Report
      TID 1204 language, TID 1001 observation context (device observer: the algorithm)
      procedure reported: (BCD-SCREEN, 99BCD)
      image library: the source image
      imaging measurements
        TID 1501 measurement group "Blood smear classification" (finding site Blood)
          algorithm identification (TID 4019)
          qualitative evaluation: Image Quality (DCM 111101) = Non-diagnostic quality (RID14)
          qualitative evaluation: Quality Finding (DCM 111052) = each reason (Q-*, or
            ANALYSIS-FAILED; 99BCD)
          text: Comment (DCM 121106) = the reasons in words

No stage and no measurement is given. The document is COMPLETE, UNVERIFIED and PRELIMINARY.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes

from dicom import codes, sop, uids
from dicom.algorithm import Algorithm
from dicom.derivation import derivation_source
from dicom.errors import DicomValidationError
from dicom.series import ResultKind, instance_number, result_series
from dicom.sr import identify_private_codes, separate_containers
from dicom.srdocument import Comprehensive3DSRDocument

__all__ = ["NonDiagnostic", "build_non_diagnostic_sr", "flag_text", "FLAG_TEXT"]

LOGGER = logging.getLogger(__name__)

#: The quality gate's flags in plain words, for the SR's comment and the PDF.
FLAG_TEXT = {
    "too_small": "the image is too small to analyse",
    "too_blurred": "the image is out of focus (too blurred)",
    "too_dark": "the image is too dark",
    "too_bright": "the image is too bright (over-exposed)",
    "low_contrast": "the image's contrast is too low to read",
    "not_a_smear": "the image does not look like a stained blood smear",
    "unexpected_colours": ("the image's colours are not those of a stained smear: its red cells "
                           "are not red, or its background is not pale (are its pixels read "
                           "wrongly: red and blue swapped, or RGB read as YBR?)"),
}
_MAX_REASON = 1024


def flag_text(flag: str) -> str:
    """A quality flag in plain words (an unknown flag as its name, in words)."""
    return FLAG_TEXT.get(flag, str(flag).replace("_", " "))


@dataclass(frozen=True)
class NonDiagnostic:
    """Why an image gets no diagnosis.

    Parameters
    ----------
    flags : Sequence[str]
        The quality gate's flags (``too_small``, ``too_blurred``, ``too_dark``, ``too_bright``,
        ``low_contrast``, ``not_a_smear``, ``unexpected_colours``; another is coded
        ``Q-OTHER``).
    failure : str, optional
        The reason a failed analysis gave; the image is then "could not be analysed" (coded
        ``ANALYSIS-FAILED``), not "quality insufficient".
    """

    flags: tuple[str, ...] = ()
    failure: str | None = None

    def __post_init__(self) -> None:
        flags = tuple(self.flags)
        if any(not isinstance(f, str) or not f for f in flags):
            raise DicomValidationError(f"flags must be non-empty strings, got {self.flags!r}")
        object.__setattr__(self, "flags", flags)
        if self.failure is not None and (not isinstance(self.failure, str)
                                         or not self.failure.strip()):
            raise DicomValidationError(f"failure must be a non-empty str, got {self.failure!r}")

    @property
    def headline(self) -> str:
        """One line: "Not analysed: quality insufficient" or "Could not be analysed"."""
        return ("Could not be analysed" if self.failure is not None
                else "Not analysed: quality insufficient")

    @property
    def reasons(self) -> list[str]:
        """The reasons in plain words (at least one)."""
        out = [flag_text(f) for f in self.flags]
        if self.failure is not None:
            out.append(self.failure.strip())
        return out or ["the image did not pass the quality checks"]

    @property
    def text(self) -> str:
        """The headline and reasons as one sentence (the SR's comment)."""
        text = f"{self.headline}: {'; '.join(self.reasons)}."
        return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."

    @property
    def codes(self) -> list[hd.sr.CodedConcept]:
        """The coded reasons: one per flag, and ANALYSIS-FAILED for a failure."""
        out = [codes.quality_flag_code(f) for f in self.flags]
        if self.failure is not None:
            out.append(codes.ANALYSIS_FAILED)
        unique: list[hd.sr.CodedConcept] = []
        for code in out:
            if all(code.value != u.value for u in unique):
                unique.append(code)
        return unique


def build_non_diagnostic_sr(
    source: Dataset,
    why: NonDiagnostic,
    *,
    algorithm: Algorithm,
    uid_root: str = uids.DEFAULT_ROOT,
    revision: int = 0,
    supersedes: Sequence[Dataset] = (),
    field_number: int | None = None,
    uid_kind: str = "sr-nondiag",
) -> hd.sr.Comprehensive3DSR:
    """Build the non-diagnostic TID 1500 report of an image (COMPLETE, UNVERIFIED).

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The image that was not analysed.
    why : NonDiagnostic
        The reasons.
    algorithm : Algorithm
        The model (device observer, algorithm identification, contributing equipment).
    uid_root : str, optional
        Root of the derived UIDs.
    revision : int, optional
        Revision of the source (0: as first received), see :func:`dicom.uids.derive_uid`.
    supersedes : Sequence[pydicom.dataset.Dataset], optional
        Reports of an earlier version of the source that this one replaces (Predecessor
        Documents Sequence), as in :func:`dicom.sr.build_sr`.
    field_number : int, optional
        The Instance Number: the field's number in its study.
    uid_kind : str, optional
        The output kind the UIDs derive from (``sr-nondiag``; a failed analysis's report
        ``sr-failed``), never the diagnostic report's, so that a later diagnostic result of
        the same image is a document of its own.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        In the study's SR series (:func:`dicom.series.result_series`).

    Raises
    ------
    TypeError, ValueError
        Naming the argument and value that is not valid.
    """
    if not isinstance(source, Dataset):
        raise TypeError(f"source must be a pydicom Dataset, got {type(source).__name__}")
    if str(source.get("SOPClassUID", "")) not in {str(u) for u in sop.ACCEPTED_SOP_CLASSES}:
        raise DicomValidationError(f"source has SOP class {source.get('SOPClassUID')!r}, not "
                                   "an accepted image")
    if not isinstance(why, NonDiagnostic):
        raise TypeError(f"why must be NonDiagnostic, got {type(why).__name__}")
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"algorithm must be an Algorithm, got {type(algorithm).__name__}")
    source = derivation_source(source, (*algorithm.texts, why.text))
    uids.validate_revision(revision)
    supersedes = list(supersedes)
    for i, earlier in enumerate(supersedes):
        if not isinstance(earlier, Dataset) or \
                earlier.get("StudyInstanceUID") != source.StudyInstanceUID:
            raise DicomValidationError(f"supersedes[{i}] is not a document of the source's "
                                       "study")
    series = result_series(str(source.StudyInstanceUID), algorithm, ResultKind.SR,
                           root=uid_root)
    source_uid = str(source.SOPInstanceUID)

    def derived(kind: str) -> str:
        return uids.derive_uid(source_uid, algorithm.version, kind, root=uid_root,
                               revision=revision)

    algo = algorithm.sr_identification()
    device = hd.sr.ObserverContext(
        observer_type=pydicom_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid(uid_root), name=algorithm.name,
            manufacturer_name=algorithm.manufacturer, model_name=algorithm.model_name))
    evaluations = [hd.sr.QualitativeEvaluation(codes.IMAGE_QUALITY,
                                               codes.QUALITY_NON_DIAGNOSTIC)]
    evaluations += [hd.sr.QualitativeEvaluation(codes.QUALITY_FINDING, code)
                    for code in why.codes]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived(f"{uid_kind}-tracking"), identifier="Blood smear classification"),
        finding_type=codes.CLASSIFICATION_GROUP, algorithm_id=algo,
        finding_sites=[hd.sr.FindingSite(codes.BLOOD)],
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)])
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=codes.COMMENT, value=why.text,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.PROCEDURE, imaging_measurements=[group],
        referenced_images=[source])
    sr = Comprehensive3DSRDocument(
        [source], report[0], series_instance_uid=series.uid,
        series_number=series.number, sop_instance_uid=derived(uid_kind),
        instance_number=instance_number(source, field_number),
        manufacturer=algorithm.manufacturer, is_complete=True, is_final=False,
        is_verified=False, institution_name=algorithm.institution_name,
        previous_versions=supersedes or None,
        contributing_equipment=[algorithm.contributing_equipment()])
    sr.SeriesDescription = series.description
    algorithm.write_equipment(sr)
    separate_containers(sr)
    identify_private_codes(sr)
    LOGGER.info("built non-diagnostic SR %s for %s (%s)", sr.SOPInstanceUID, source_uid,
                ", ".join(c.value for c in why.codes))
    return sr
