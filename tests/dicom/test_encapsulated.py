"""Encapsulated PDF (Modality DOC)."""

from __future__ import annotations

import datetime as dt

import pytest

from dicom import sop, uids
from dicom.encapsulated import build_encapsulated_pdf, encapsulated_document
from dicom.errors import DicomValidationError
from dicom.series import ResultKind, series_uid
from tests.support.dicomcheck import write_checked

#: A minimal, odd-length PDF (the padding byte must not change the document).
PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


@pytest.mark.integration
def test_encapsulated_pdf_round_trip(tmp_path, source_image, algorithm):
    assert len(PDF) % 2 == 1
    ds = build_encapsulated_pdf(source_image, PDF, algorithm=algorithm)
    back = write_checked(ds, tmp_path / "pdf.dcm")
    assert back.SOPClassUID == sop.ENCAPSULATED_PDF
    assert back.Modality == "DOC"
    assert back.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert back.EncapsulatedDocument[: back.EncapsulatedDocumentLength] == PDF
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
        assert back[keyword].value == source_image[keyword].value
    assert back.SourceInstanceSequence[0].ReferencedSOPInstanceUID == source_image.SOPInstanceUID
    assert back.SOPInstanceUID == uids.derive_uid(source_image.SOPInstanceUID, "0.1.0-demo", "pdf")
    assert back.ContributingEquipmentSequence[0].ManufacturerModelName == algorithm.model_name
    assert "ContainerIdentifier" not in back  # no Specimen module in this IOD


def test_verified_report_gets_its_own_uid(source_image, algorithm):
    first = build_encapsulated_pdf(source_image, PDF, algorithm=algorithm)
    when = dt.datetime(2026, 11, 24, 11, 0)
    verified = build_encapsulated_pdf(source_image, PDF, algorithm=algorithm, verified_at=when)
    assert verified.SOPInstanceUID != first.SOPInstanceUID
    # Issue 14: the verified PDFs are a series of their own in the study, not the reports' one.
    assert verified.SeriesInstanceUID != first.SeriesInstanceUID
    assert verified.SeriesInstanceUID == series_uid(source_image.StudyInstanceUID,
                                                    algorithm.version, ResultKind.VERIFIED_PDF)
    assert verified.SeriesNumber != first.SeriesNumber
    assert verified.InstanceNumber == first.InstanceNumber
    again = build_encapsulated_pdf(source_image, PDF, algorithm=algorithm, verified_at=when)
    assert again.SOPInstanceUID == verified.SOPInstanceUID


@pytest.mark.parametrize(
    ("pdf", "kwargs", "error"),
    [
        (b"GIF89a", {}, ValueError),
        ("%PDF-1.4", {}, TypeError),
        (PDF, {"title": ""}, ValueError),
        (PDF, {"verified_at": "2026-11-24"}, TypeError),
        (PDF, {"series_number": 0}, ValueError),
        (PDF, {"algorithm": "bcd"}, TypeError),
    ],
)
def test_arguments_are_validated(source_image, algorithm, pdf, kwargs, error):
    args = {"algorithm": algorithm} | kwargs
    with pytest.raises(error):
        build_encapsulated_pdf(source_image, pdf, **args)


@pytest.mark.parametrize("pdf", [PDF, PDF + b"\n"], ids=["odd length", "even length"])
def test_the_document_is_read_back_as_it_was_given(tmp_path, source_image, algorithm, pdf):
    path = tmp_path / "pdf.dcm"
    build_encapsulated_pdf(source_image, pdf, algorithm=algorithm).save_as(
        path, enforce_file_format=True)
    assert encapsulated_document(path) == pdf


def test_reading_a_file_that_holds_no_pdf_says_so(tmp_path, source_image, algorithm):
    path = tmp_path / "image.dcm"
    source_image.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomValidationError, match="image.dcm holds no Encapsulated PDF"):
        encapsulated_document(path)
    ds = build_encapsulated_pdf(source_image, PDF, algorithm=algorithm)
    ds.EncapsulatedDocumentLength = len(PDF) + 10
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomValidationError, match="Encapsulated Document Length"):
        encapsulated_document(path)
