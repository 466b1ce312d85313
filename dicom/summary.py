"""The study-level summary: one TID 1500 SR that combines every analysed field of a study.

Built when a study has been quiet for a while (no new images): the stage by vote with the mean
calibrated probabilities, the total blast count, the blast area fraction across all fields, and
how many fields were analysed, need review, were of insufficient quality (non-diagnostic) or
could not be analysed. A study without any diagnostic field gets a summary too: no stage, Image
Quality "Non-diagnostic quality" (RID14) and the counts. Every field is evidence and source.
A doctor's signature of the case makes the summary's VERIFIED, FINAL successor: the doctor as
observer, the stage as signed as Reviewed Stage Finding, the comment, the summary as predecessor.
Codes: :mod:`dicom.codes` plus three private ``99BCD`` codes defined here (see the conformance
statement).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.valuerep import PersonName

from dicom import codes, sop, uids
from dicom.algorithm import Algorithm
from dicom.codes import Stage
from dicom.derivation import derivation_source
from dicom.errors import DicomValidationError
from dicom.series import SERIES_NUMBERS, ResultKind, result_series
from dicom.sr import Verification, identify_private_codes, percent, separate_containers

__all__ = ["StudyFindings", "build_study_summary_sr", "summary_kind", "FIELDS_ANALYSED",
           "FIELDS_NEEDING_REVIEW", "FIELDS_QUALITY_INSUFFICIENT", "FIELDS_FAILED",
           "STUDY_SUMMARY_GROUP"]

LOGGER = logging.getLogger(__name__)
SUMMARY_SERIES_NUMBER = SERIES_NUMBERS[ResultKind.SUMMARY_SR]

STUDY_SUMMARY_GROUP = codes._private("BCD-STUDY-SUM", "Blood smear study summary")
FIELDS_ANALYSED = codes._private("FIELDS-ANALYSED", "Fields analysed")
FIELDS_NEEDING_REVIEW = codes._private("FIELDS-REVIEW", "Fields needing review")
FIELDS_QUALITY_INSUFFICIENT = codes._private("FIELDS-LOW-QUAL", "Fields of insufficient quality")
FIELDS_FAILED = codes._private("FIELDS-FAILED", "Fields that could not be analysed")
UNIT_FIELDS = hd.sr.CodedConcept("{fields}", "UCUM", "fields")


@dataclass(frozen=True)
class StudyFindings:
    """The combined result of a study's fields.

    Parameters
    ----------
    stage : Stage or str or None
        The stage that won the vote of the fields; None when no field has one.
    probabilities : Mapping[Stage or str, float] or None
        Mean calibrated probability of each stage over the fields, summing to 1 (within 0.01);
        None with ``stage`` None.
    fields_analysed : int
        Fields with a diagnosis (quality sufficient); 0 exactly when ``stage`` is None.
    fields_needing_review : int
        Fields flagged for review (low confidence or quality insufficient).
    fields_quality_insufficient : int
        Fields the quality gate refused.
    total_blasts : int
        Blast cells over all fields.
    blast_area_fraction : float
        Blast pixels over all analysed pixels, in [0, 1].
    fields_failed : int, optional
        Fields whose analysis failed for good.
    """

    stage: Stage | str | None
    probabilities: Mapping[Stage | str, float] | None
    fields_analysed: int
    fields_needing_review: int
    fields_quality_insufficient: int
    total_blasts: int
    blast_area_fraction: float
    fields_failed: int = 0

    def __post_init__(self) -> None:
        for name in ("fields_analysed", "fields_needing_review", "fields_quality_insufficient",
                     "total_blasts", "fields_failed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DicomValidationError(f"{name} must be an int >= 0, got {value!r}")
        f = self.blast_area_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) \
                or not 0 <= f <= 1:
            raise DicomValidationError(f"blast_area_fraction must be in [0, 1], got {f!r}")
        if self.stage is None:
            if self.probabilities is not None or self.fields_analysed:
                raise DicomValidationError(
                    "a summary without a stage has no probabilities and no analysed field, got "
                    f"probabilities={self.probabilities!r}, "
                    f"fields_analysed={self.fields_analysed!r}")
            if not self.fields_quality_insufficient + self.fields_failed:
                raise DicomValidationError("a summary must speak of at least one field")
            return
        object.__setattr__(self, "stage", Stage(codes._as_stage(self.stage)))
        if self.probabilities is None:
            raise DicomValidationError("a summary with a stage gives the probabilities")
        probs = {Stage(codes._as_stage(k)): v for k, v in dict(self.probabilities).items()}
        if set(probs) != set(Stage):
            raise DicomValidationError("probabilities must give all four stages, got "
                                       f"{self.probabilities!r}")
        for key, value in probs.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or not 0 <= value <= 1:
                raise DicomValidationError(f"probability of {key.value} must be in [0, 1], got "
                                           f"{value!r}")
        if abs(sum(probs.values()) - 1) > 0.01:
            raise DicomValidationError(f"probabilities must sum to 1, got {sum(probs.values())!r}")
        object.__setattr__(self, "probabilities", probs)
        if self.fields_analysed < 1:
            raise DicomValidationError("fields_analysed must be at least 1, got "
                                       f"{self.fields_analysed!r}")


def summary_kind(sources: Sequence[Dataset],
                 revisions: Mapping[str, int] | None = None) -> str:
    """The output kind of a summary over ``sources``: one per set of fields (and revisions of
    them), so a study that receives more images, or a changed version of one, gets a new
    summary while the same fields always give the same UIDs.

    ``revisions`` maps a field's SOP Instance UID to its revision (absent: 0); a field at
    revision 0 counts as it did before revisions existed.
    """
    revisions = revisions or {}

    def field(ds: Dataset) -> str:
        uid = str(ds.SOPInstanceUID)
        revision = uids.validate_revision(revisions.get(uid, 0))
        return f"{uid}#{revision}" if revision else uid

    key = ",".join(sorted(field(ds) for ds in sources))
    return "study-summary-" + hashlib.sha256(key.encode("ascii")).hexdigest()[:16]


def build_study_summary_sr(sources: Sequence[Dataset], findings: StudyFindings, *,
                           algorithm: Algorithm, uid_root: str = uids.DEFAULT_ROOT,
                           institution_name: str | None = None,
                           revisions: Mapping[str, int] | None = None,
                           verification: Verification | None = None,
                           predecessor: Dataset | None = None,
                           ) -> hd.sr.Comprehensive3DSR:
    """Build the study-level TID 1500 report (COMPLETE, UNVERIFIED), or the doctor's signed
    successor of one (COMPLETE, VERIFIED, FINAL).

    Parameters
    ----------
    sources : Sequence[pydicom.dataset.Dataset]
        The analysed images of one study (at least one).
    findings : StudyFindings
        The combined result.
    algorithm : Algorithm
        The model (device observer, algorithm identification, contributing equipment).
    uid_root : str, optional
        Root of the derived UIDs; they derive from the Study Instance UID, the model version
        and the set of fields, so the same summary is built twice with the same UID.
    revisions : Mapping[str, int], optional
        Revision of each field by SOP Instance UID (absent: 0), see :func:`summary_kind`.
    verification : dicom.sr.Verification, optional
        The doctor's signature of the case: the doctor is a person observer, the case's stage
        as signed is the Reviewed Stage Finding next to the AI's, the comment a Comment, and
        the document is VERIFIED and FINAL with its own UID (one per signature). Needs
        ``predecessor`` and a ``findings.stage``.
    predecessor : pydicom.dataset.Dataset, optional
        The unverified summary SR the signed one supersedes (Predecessor Documents Sequence).

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The summary, in the study's summary SR series (:func:`dicom.series.result_series`),
        with the number of fields it covers as its Instance Number (a summary over more fields
        comes later in the series).

    Raises
    ------
    TypeError, ValueError
        Naming the argument and value that is not valid.
    """
    if not isinstance(findings, StudyFindings):
        raise TypeError(f"findings must be StudyFindings, got {type(findings).__name__}")
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"algorithm must be an Algorithm, got {type(algorithm).__name__}")
    if not sources:
        raise DicomValidationError("sources must hold at least one image, got none")
    accepted = {str(u) for u in sop.ACCEPTED_SOP_CLASSES}
    for i, ds in enumerate(sources):
        if not isinstance(ds, Dataset):
            raise TypeError(f"sources[{i}] must be a Dataset, got {type(ds).__name__}")
        if str(ds.get("SOPClassUID", "")) not in accepted:
            raise DicomValidationError(f"sources[{i}] has SOP class {ds.get('SOPClassUID')!r}, "
                                       "not an accepted image")
    study_uids = {str(ds.StudyInstanceUID) for ds in sources}
    if len(study_uids) != 1:
        raise DicomValidationError(f"sources belong to {len(study_uids)} studies: "
                                   f"{sorted(study_uids)}")
    study_uid = study_uids.pop()
    if verification is not None and not isinstance(verification, Verification):
        raise TypeError(f"verification must be a Verification, got {type(verification).__name__}")
    if (verification is None) != (predecessor is None):
        raise DicomValidationError(
            "verification and predecessor go together: a signed summary supersedes the "
            f"unverified one, got verification={verification!r}, "
            f"predecessor={'a dataset' if predecessor is not None else None}")
    if predecessor is not None:
        if not isinstance(predecessor, Dataset):
            raise TypeError(f"predecessor must be a Dataset, got {type(predecessor).__name__}")
        if str(predecessor.get("SOPClassUID", "")) != str(sop.COMPREHENSIVE_3D_SR):
            raise DicomValidationError(f"predecessor has SOP class "
                                       f"{predecessor.get('SOPClassUID')!r}, not an SR")
        if str(predecessor.get("StudyInstanceUID", "")) != study_uid:
            raise DicomValidationError("predecessor belongs to study "
                                       f"{predecessor.get('StudyInstanceUID')!r}")
    if verification is not None and findings.stage is None:
        raise DicomValidationError("a summary without a stage cannot be signed with one")
    added = (*algorithm.texts, *(verification.texts if verification is not None else ()))
    sources = [derivation_source(ds, added) for ds in sources]
    kind = summary_kind(sources, revisions)
    series = result_series(study_uid, algorithm, ResultKind.SUMMARY_SR, root=uid_root)

    def derived(suffix: str) -> str:
        return uids.derive_uid(study_uid, algorithm.version, f"{kind}{suffix}", root=uid_root)

    if verification is not None and predecessor is not None:
        stamp = verification.datetime.strftime("%Y%m%d%H%M%S%f")
        sop_instance_uid = uids.derive_uid(str(predecessor.SOPInstanceUID), algorithm.version,
                                           f"summary-verified-{stamp}", root=uid_root)
    else:
        sop_instance_uid = derived("")

    device = hd.sr.ObserverContext(
        observer_type=pydicom_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid(uid_root), name=algorithm.name,
            manufacturer_name=algorithm.manufacturer, model_name=algorithm.model_name))
    person = None
    if verification is not None:
        person = hd.sr.ObserverContext(
            observer_type=pydicom_codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=verification.observer_name, organization_name=verification.organization))
    context = hd.sr.ObservationContext(observer_person_context=person,
                                       observer_device_context=device)
    algo = algorithm.sr_identification()

    def count(name: hd.sr.CodedConcept, value: float, unit: hd.sr.CodedConcept,
              derivation: hd.sr.CodedConcept | None = None) -> hd.sr.Measurement:
        return hd.sr.Measurement(name=name, value=value, unit=unit, algorithm_id=algo,
                                 derivation=derivation)

    # Derivation (121401, DCM): the probabilities are the fields' mean, the counts their total.
    measurements: list[hd.sr.Measurement] = []
    evaluations: list[hd.sr.QualitativeEvaluation] = []
    if findings.stage is not None and findings.probabilities is not None:
        probabilities = findings.probabilities
        measurements += [count(codes.probability_code(stage), percent(probabilities[stage]),
                               codes.UNIT_PERCENT, codes.MEAN) for stage in Stage]
        measurements += [
            count(codes.BLAST_COUNT, findings.total_blasts, codes.UNIT_CELLS, codes.TOTAL),
            count(codes.BLAST_AREA_FRACTION, percent(findings.blast_area_fraction),
                  codes.UNIT_PERCENT)]
        evaluations.append(hd.sr.QualitativeEvaluation(codes.STAGE_FINDING,
                                                       codes.stage_code(findings.stage)))
        if verification is not None and verification.stage is not None:
            evaluations.append(hd.sr.QualitativeEvaluation(
                codes.REVIEWED_STAGE_FINDING, codes.stage_code(verification.stage)))
    else:  # no field could be diagnosed: the study gets an answer that says so
        evaluations.append(hd.sr.QualitativeEvaluation(codes.IMAGE_QUALITY,
                                                       codes.QUALITY_NON_DIAGNOSTIC))
    measurements += [
        count(FIELDS_ANALYSED, findings.fields_analysed, UNIT_FIELDS, codes.TOTAL),
        count(FIELDS_NEEDING_REVIEW, findings.fields_needing_review, UNIT_FIELDS, codes.TOTAL),
        count(FIELDS_QUALITY_INSUFFICIENT, findings.fields_quality_insufficient, UNIT_FIELDS,
              codes.TOTAL),
        count(FIELDS_FAILED, findings.fields_failed, UNIT_FIELDS, codes.TOTAL),
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived("-tracking"),
                                                     identifier="Study summary"),
        finding_type=STUDY_SUMMARY_GROUP, algorithm_id=algo, measurements=measurements,
        finding_sites=[hd.sr.FindingSite(codes.BLOOD)],
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)
                       for ds in sources])
    if findings.stage is None:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.COMMENT, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            value=(f"No field could be diagnosed: {findings.fields_quality_insufficient} of "
                   f"insufficient quality, {findings.fields_failed} could not be analysed.")))
    if verification is not None and verification.comment:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.COMMENT, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            value=verification.comment))
    report = hd.sr.MeasurementReport(observation_context=context,
                                     procedure_reported=codes.PROCEDURE,
                                     imaging_measurements=[group], referenced_images=list(sources))
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(sources), content=report[0], series_instance_uid=series.uid,
        series_number=series.number, sop_instance_uid=sop_instance_uid,
        instance_number=len(sources), manufacturer=algorithm.manufacturer, is_complete=True,
        is_final=verification is not None, is_verified=verification is not None,
        institution_name=institution_name or algorithm.institution_name,
        verifying_observer_name=verification.observer_name if verification else None,
        verifying_organization=verification.organization if verification else None,
        previous_versions=[predecessor] if predecessor is not None else None,
        contributing_equipment=[algorithm.contributing_equipment()])
    if verification is not None:
        when = verification.datetime
        observer = sr.VerifyingObserverSequence[0]
        observer.VerificationDateTime = when.strftime("%Y%m%d%H%M%S") + (
            when.strftime("%z") if when.tzinfo else "")
        observer.VerifyingObserverName = PersonName(verification.observer_name)
    sr.SeriesDescription = series.description
    algorithm.write_equipment(sr)
    separate_containers(sr)
    identify_private_codes(sr)
    LOGGER.info("built %s study summary SR %s over %d field(s)",
                "VERIFIED" if verification else "UNVERIFIED", sr.SOPInstanceUID, len(sources))
    return sr
