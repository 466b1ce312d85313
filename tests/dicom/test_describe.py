"""What a report reads from a source image: the staining step's stain, the patient's age."""

from __future__ import annotations

import highdicom as hd
import pytest
from pydicom.dataset import Dataset

from dicom import describe


def _with_steps(*steps: hd.SpecimenPreparationStep, short: str = "Peripheral blood smear"
                ) -> Dataset:
    ds = Dataset()
    ds.SpecimenDescriptionSequence = [hd.SpecimenDescription(
        specimen_id="S1", specimen_uid="2.25.1", specimen_preparation_steps=list(steps),
        specimen_short_description=short)]
    return ds


def test_stain_is_the_staining_steps_substance(source_image):
    # the conftest image: "Wright-Giemsa" (no SNOMED CT code: text), short description
    # "Peripheral blood smear", which is not the stain
    assert describe.stain(source_image) == "Wright-Giemsa"
    coded = hd.SpecimenPreparationStep(
        specimen_id="S1", processing_procedure=hd.SpecimenStaining(
            substances=[hd.sr.CodedConcept("373682001", "SCT", "wright stain"), "Eosin"]))
    assert describe.stain(_with_steps(coded)) == "wright stain, Eosin"
    sampling = hd.SpecimenPreparationStep(
        specimen_id="S1", processing_procedure=hd.SpecimenCollection(
            procedure=hd.sr.CodedConcept("17636008", "SCT", "Specimen collection")))
    assert describe.stain(_with_steps(sampling)) is None
    assert describe.stain(Dataset()) is None


@pytest.mark.parametrize(("attributes", "age"), [
    ({"PatientAge": "045Y"}, "45 years"),
    ({"PatientAge": "001Y"}, "1 year"),
    ({"PatientAge": "006M", "PatientBirthDate": "19000101", "StudyDate": "20260101"},
     "6 months"),
    ({"PatientAge": "010W"}, "10 weeks"),
    ({"PatientBirthDate": "19800102", "StudyDate": "20261124"}, "46 years"),
    ({"PatientBirthDate": "19801125", "StudyDate": "20261124"}, "45 years"),
    ({"PatientBirthDate": "20260301", "ContentDate": "20261124"}, "8 months"),
    ({"PatientBirthDate": "20261110", "StudyDate": "20261124"}, "14 days"),
    ({"PatientBirthDate": "19800102"}, None),
    ({"PatientBirthDate": "20270101", "StudyDate": "20261124"}, None),
    ({"PatientAge": "", "PatientBirthDate": "", "StudyDate": "20261124"}, None),
])
def test_patient_age(attributes, age):
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    assert describe.patient_age(ds) == age
