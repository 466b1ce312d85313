"""DICOMized uploads: VL Microscopic Image and Secondary Capture."""

from __future__ import annotations

import datetime as dt

import highdicom as hd
import numpy as np
import pytest

from dicom import describe, pixels, sop
from dicom.dicomize import dicomize
from tests.support.dicomcheck import write_checked

FIELDS = {
    "patient_id": "PAT-001",
    "patient_name": "Müller^Jürgen",
    "birth_date": "1975-03-09",
    "sex": "M",
    "accession_number": "ACC-9",
    "specimen_id": "SLIDE-12",
    "stain": "May-Grünwald-Giemsa",
}


@pytest.mark.integration
def test_vl_microscopic_round_trip(tmp_path, smear_rgb):
    ds = dicomize(smear_rgb, **FIELDS, study_description="Blood smear")
    path = tmp_path / "vl.dcm"
    back = write_checked(ds, path)
    assert back.SOPClassUID == sop.VL_MICROSCOPIC_IMAGE
    assert back.Modality == "GM"
    assert back.PatientID == "PAT-001"
    assert str(back.PatientName) == "Müller^Jürgen"
    assert back.PatientBirthDate == "19750309"
    assert back.PatientSex == "M"
    assert back.AccessionNumber == "ACC-9"
    assert back.ContainerIdentifier == "SLIDE-12"
    assert back.SOPInstanceUID.startswith("2.25.")
    specimen = hd.SpecimenDescription.from_dataset(back.SpecimenDescriptionSequence[0])
    assert specimen.specimen_id == "SLIDE-12"
    staining = specimen.specimen_preparation_steps[0].processing_procedure
    # a stain of CID 8112 is written coded (it was text before issue 14)
    assert list(staining.substances) == [
        hd.sr.CodedConcept("255803006", "SCT", "may-Grunwald giemsa stain")
    ]
    # the reader accepts what the node writes, pixel for pixel
    np.testing.assert_array_equal(pixels.decode_file(path)[0], smear_rgb)


@pytest.mark.parametrize("name", ["山田^太郎=ヤマダ^タロウ", "Yamada^Tarou=山田^太郎=やまだ^たろう",
                                  "Hong^Gildong=洪^吉洞=홍^길동"])
def test_a_name_of_several_component_groups_is_kept(tmp_path, smear_rgb, name):
    """A PN's alphabetic, ideographic and phonetic groups (PS3.5 6.2.1.2), as a Japanese or
    Korean hospital writes a name: `bcd-node import` and the console's upload refused them."""
    ds = dicomize(smear_rgb, **{**FIELDS, "patient_name": name})
    back = write_checked(ds, tmp_path / "name.dcm")
    assert str(back.PatientName) == name
    assert back.SpecificCharacterSet == "ISO_IR 192"


@pytest.mark.parametrize(("stain", "substance"), [
    ("Wright", hd.sr.CodedConcept("373682001", "SCT", "wright stain")),
    ("giemsa stain", hd.sr.CodedConcept("373646006", "SCT", "giemsa stain")),
    ("MGG", hd.sr.CodedConcept("255803006", "SCT", "may-Grunwald giemsa stain")),
    ("Leishman", hd.sr.CodedConcept("255802001", "SCT", "Leishman stain")),
    # no verified SNOMED CT code: kept as the text the user typed
    ("Wright-Giemsa", "Wright-Giemsa"),
])
def test_stain_is_coded_where_a_standard_code_exists(tmp_path, smear_rgb, stain, substance):
    ds = dicomize(smear_rgb, **(FIELDS | {"stain": stain}))
    back = write_checked(ds, tmp_path / "vl.dcm")
    specimen = hd.SpecimenDescription.from_dataset(back.SpecimenDescriptionSequence[0])
    staining = specimen.specimen_preparation_steps[0].processing_procedure
    assert list(staining.substances) == [substance]
    assert describe.stain(back) == (substance if isinstance(substance, str)
                                    else substance.meaning)


@pytest.mark.integration
def test_secondary_capture_round_trip(tmp_path, smear_rgb):
    fields = {k: v for k, v in FIELDS.items() if k not in ("specimen_id", "stain")}
    study = "1.2.3.4.5"
    ds = dicomize(smear_rgb, **fields, secondary_capture=True, study_instance_uid=study,
                  lossy_source=True, uid_root="1.2.3.4.6")
    path = tmp_path / "sc.dcm"
    back = write_checked(ds, path)
    assert back.SOPClassUID == sop.SECONDARY_CAPTURE_IMAGE
    assert back.StudyInstanceUID == study
    assert back.SOPInstanceUID.startswith("1.2.3.4.6.")
    assert back.LossyImageCompression == "01"
    np.testing.assert_array_equal(pixels.decode_file(path)[0], smear_rgb)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"patient_id": ""}, ValueError, "patient_id"),
        ({"patient_id": "x" * 65}, ValueError, "patient_id"),
        ({"patient_name": "A^B^C^D^E^F"}, ValueError, "patient_name"),
        ({"patient_name": "A=B=C=D"}, ValueError, "patient_name"),
        ({"patient_name": "A=B^C^D^E^F^G"}, ValueError, "patient_name"),
        ({"patient_name": None}, ValueError, "patient_name"),
        ({"birth_date": "1975-13-40"}, ValueError, "birth_date"),
        ({"birth_date": "09/03/1975"}, ValueError, "birth_date"),
        ({"birth_date": str(dt.date.today() + dt.timedelta(days=2))}, ValueError, "future"),
        ({"sex": "X"}, ValueError, "sex"),
        ({"accession_number": "A" * 17}, ValueError, "accession_number"),
        ({"specimen_id": None}, ValueError, "specimen_id"),
        ({"stain": "a\\b"}, ValueError, "stain"),
        ({"study_instance_uid": "1.02"}, ValueError, "study_instance_uid"),
        ({"uid_root": "1.2.826.0.1.3680043.8.498"}, ValueError, "toolkit"),
    ],
)
def test_fields_are_validated(smear_rgb, kwargs, error, match):
    with pytest.raises(error, match=match):
        dicomize(smear_rgb, **(FIELDS | kwargs))


@pytest.mark.parametrize(
    ("image", "error"),
    [
        (np.zeros((10, 10), np.uint8), ValueError),
        (np.zeros((10, 10, 4), np.uint8), ValueError),
        (np.zeros((10, 10, 3), np.float32), TypeError),
        ([[0, 0, 0]], TypeError),
        (np.zeros((0, 10, 3), np.uint8), ValueError),
    ],
)
def test_image_is_validated(image, error):
    with pytest.raises(error):
        dicomize(image, **FIELDS)
