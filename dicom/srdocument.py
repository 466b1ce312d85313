"""A Comprehensive 3D SR document assembled from a content tree the node built itself.

highdicom's :class:`highdicom.sr.Comprehensive3DSR` checks a content tree it has never seen: it
deep-copies the tree and parses the copy back into content items (for its ``content``
property), and searches the whole tree for every referenced image to check that each is in the
evidence. For the tree of :func:`dicom.sr.build_sr` both are known in advance: highdicom's own
templates built it a moment earlier, and the only images it references are the evidence given
(the source image and its SEG). Those two steps took two thirds of an SR's build time.

:class:`Comprehensive3DSRDocument` writes the same data set with the same highdicom calls for
everything else (patient and study module, evidence grouping, predecessors, contributing
equipment, flags) and parses its content back only when ``content`` is read. The tests build
each kind of SR both ways and compare them attribute by attribute.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import highdicom as hd
from highdicom.sr.utils import collect_evidence
from highdicom.valuerep import check_person_name
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DT

from dicom import lookups, sop

__all__ = ["Comprehensive3DSRDocument"]

lookups.install()


class Comprehensive3DSRDocument(hd.sr.Comprehensive3DSR):
    """A :class:`highdicom.sr.Comprehensive3DSR` whose content tree and evidence are trusted.

    Parameters
    ----------
    evidence : Sequence[pydicom.dataset.Dataset]
        Every instance the content references (and no other): the first one gives the patient
        and study.
    content : pydicom.dataset.Dataset
        The root container, built by highdicom's templates (its items are used, not copied).
    series_instance_uid, series_number, sop_instance_uid, instance_number, manufacturer,
    is_complete, is_final, is_verified, institution_name, verifying_observer_name,
    verifying_organization, previous_versions, contributing_equipment
        As for :class:`highdicom.sr.Comprehensive3DSR`.
    """

    def __init__(self, evidence: Sequence[Dataset], content: Dataset, *,
                 series_instance_uid: str, series_number: int, sop_instance_uid: str,
                 instance_number: int, manufacturer: str | None = None,
                 is_complete: bool = False, is_final: bool = False, is_verified: bool = False,
                 institution_name: str | None = None,
                 verifying_observer_name: str | None = None,
                 verifying_organization: str | None = None,
                 previous_versions: Sequence[Dataset] | None = None,
                 contributing_equipment: Sequence[hd.ContributingEquipment] | None = None,
                 ) -> None:
        if not evidence:
            raise ValueError("No evidence was provided.")
        first = evidence[0]
        # The constructor of highdicom's SR, less the copy and search of the content tree.
        hd.SOPClass.__init__(
            self,
            study_instance_uid=first.StudyInstanceUID,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=str(sop.COMPREHENSIVE_3D_SR),
            instance_number=instance_number,
            manufacturer=manufacturer,
            modality="SR",
            transfer_syntax_uid=ExplicitVRLittleEndian,
            patient_id=first.PatientID,
            patient_name=first.PatientName,
            patient_birth_date=first.PatientBirthDate,
            patient_sex=first.PatientSex,
            accession_number=first.AccessionNumber,
            study_id=first.StudyID,
            study_date=first.StudyDate,
            study_time=first.StudyTime,
            referring_physician_name=getattr(first, "ReferringPhysicianName", None),
            specific_character_set=first.get("SpecificCharacterSet"),
        )
        if institution_name is not None:
            self.InstitutionName = institution_name
        self.CompletionFlag = "COMPLETE" if is_complete else "PARTIAL"
        if is_verified:
            if verifying_observer_name is None or verifying_organization is None:
                raise ValueError("a verified SR names its verifying observer and organization")
            observer = Dataset()
            check_person_name(verifying_observer_name)
            observer.VerifyingObserverName = verifying_observer_name
            observer.VerifyingOrganization = verifying_organization
            observer.VerificationDateTime = DT(dt.datetime.now())
            observer.VerifyingObserverIdentificationCodeSequence = []
            self.VerifyingObserverSequence = [observer]
            self.VerificationFlag = "VERIFIED"
        else:
            self.VerificationFlag = "UNVERIFIED"
        self.PreliminaryFlag = "FINAL" if is_final else "PRELIMINARY"
        self._content = None  # type: ignore[assignment]  # parsed when first read
        for tag, value in content.items():
            self[tag] = value
        # Every referenced image is in the evidence by construction: group the evidence
        # without searching the tree for references (an empty tree references nothing).
        nothing = Dataset()
        nothing.ContentSequence = []
        same_study, other_study = collect_evidence(
            evidence, nothing, study_instance_uid=self.StudyInstanceUID)
        if same_study:
            self.CurrentRequestedProcedureEvidenceSequence = same_study
        if other_study:
            self.PertinentOtherEvidenceSequence = other_study
        if previous_versions is not None:
            self.PredecessorDocumentsSequence = self._collect_predecessors(previous_versions)
        self.PerformedProcedureCodeSequence = []
        self.ReferencedPerformedProcedureStepSequence = []
        self.copy_patient_and_study_information(first)
        self._add_contributing_equipment(contributing_equipment, first)

    @property
    def content(self) -> Any:
        """The content tree as highdicom's content items (parsed from a copy when first read)."""
        if self._content is None:
            self._content = hd.sr.Comprehensive3DSR.from_dataset(self, copy=True).content
        return self._content
