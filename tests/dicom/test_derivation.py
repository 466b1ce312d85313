"""An image whose patient or study values are not valid DICOM still gets its results."""

from __future__ import annotations

import logging

import pydicom
import pytest
from pydicom import config

from dicom.algorithm import Algorithm
from dicom.derivation import derivation_source, unusable_values
from dicom.outputs import build_result_objects, write_dataset
from dicom.sr import Findings
from dicom.summary import StudyFindings, build_study_summary_sr
from tests.support.dicomcheck import assert_dciodvfy_clean

FINDINGS = Findings("Benign", {"Benign": 0.9, "Malignant-Early": 0.05, "Malignant-Pre": 0.03,
                               "Malignant-Pro": 0.02}, 0, 0.0, True)
ALGORITHM = Algorithm("bcd-vgg16-unet", "0.1.0-demo")
#: What scanners send now and then; highdicom refuses to copy each of them.
MALFORMED = {"PatientBirthDate": "1980-01-02", "PatientSex": "U", "StudyDate": "2026/12/01",
             "StudyTime": "25:61"}


@pytest.fixture
def malformed_source(source_image):
    modes = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    # As a scanner would write them (a new element takes pydicom's reading mode).
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = \
        config.IGNORE
    try:
        for keyword, value in MALFORMED.items():
            del source_image[keyword]
            setattr(source_image, keyword, value)
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = modes
    return source_image


def test_valid_values_are_kept_and_the_source_itself_is_used(source_image) -> None:
    assert unusable_values(source_image) == []
    assert derivation_source(source_image) is source_image


def test_unusable_values_are_emptied_in_a_copy(malformed_source, caplog) -> None:
    assert unusable_values(malformed_source) == list(MALFORMED)
    with caplog.at_level(logging.WARNING, "dicom.derivation"):
        derived = derivation_source(malformed_source)
    assert derived is not malformed_source
    for keyword, value in MALFORMED.items():
        assert keyword in derived and derived[keyword].value == ""  # Type 2: present, empty
        assert malformed_source[keyword].value == value  # the received image is untouched
    assert derived.PatientName == malformed_source.PatientName
    assert derived.PixelData == malformed_source.PixelData
    assert "PatientBirthDate" in caplog.text
    assert not any(value in caplog.text for value in MALFORMED.values())  # no patient data


@pytest.mark.integration
def test_results_of_an_image_with_malformed_values(malformed_source, blast_mask, tmp_path):
    objects = build_result_objects(malformed_source, blast_mask, FINDINGS, algorithm=ALGORITHM,
                                   pdf=b"%PDF-1.4\n%%EOF\n")
    for name, ds in objects.named():
        path = write_dataset(ds, tmp_path / name)
        assert_dciodvfy_clean(path)
        read = pydicom.dcmread(path)
        for keyword in MALFORMED:
            assert read.get(keyword, "") == "", (name, keyword)
        assert read.PatientID == "PAT-001" and str(read.PatientName) == "Doe^Jane"
    summary = build_study_summary_sr(
        [malformed_source], StudyFindings("Benign", FINDINGS.probabilities, 1, 0, 0, 0, 0.0),
        algorithm=ALGORITHM)
    assert summary.PatientBirthDate == "" and summary.PatientID == "PAT-001"


ABSENT = ("PatientSex", "AccessionNumber", "StudyID", "StudyTime")


@pytest.mark.integration
def test_results_of_an_image_without_type_2_attributes(source_image, blast_mask, tmp_path):
    for keyword in ABSENT:  # highdicom reads each without a default
        if keyword in source_image:
            del source_image[keyword]
    objects = build_result_objects(source_image, blast_mask, FINDINGS, algorithm=ALGORITHM,
                                   pdf=b"%PDF-1.4\n%%EOF\n")
    assert not any(keyword in source_image for keyword in ABSENT)  # the source is untouched
    for name, ds in objects.named():
        path = write_dataset(ds, tmp_path / name)
        assert_dciodvfy_clean(path)
        read = pydicom.dcmread(path)
        for keyword in ABSENT:
            assert keyword in read and read.get(keyword) == "", (name, keyword)


@pytest.mark.integration
def test_a_name_longer_than_dicom_allows_is_cut_in_the_results(source_image, blast_mask,
                                                               tmp_path, caplog) -> None:
    """A Patient's Name of 112 characters in one component group (at most 64): the node's SEG,
    SR and PDF failed dciodvfy at the PACS. Now they carry it cut at 64 characters; the image
    keeps it as it came, and the log names the attribute, not the name."""
    long_family = "Averyveryverylongfamilyname" * 4 + "abcd"  # 112 characters
    modes = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = \
        config.IGNORE  # as a scanner writes it
    try:
        source_image.PatientName = f"{long_family}^Jane"
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = modes
    with caplog.at_level(logging.WARNING, "dicom.derivation"):
        objects = build_result_objects(source_image, blast_mask, FINDINGS, algorithm=ALGORITHM,
                                       pdf=b"%PDF-1.4\n%%EOF\n")
    assert "PatientName" in caplog.text and long_family not in caplog.text
    assert str(source_image.PatientName) == f"{long_family}^Jane"  # the received image
    for name, ds in objects.named():
        path = write_dataset(ds, tmp_path / name)
        assert_dciodvfy_clean(path)
        read = pydicom.dcmread(path)
        assert str(read.PatientName) == f"{long_family}^Jane"[:64], name
        assert read.PatientID == "PAT-001"
