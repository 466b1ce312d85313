"""The SR documents the node assembles (dicom/srdocument.py, with the content trees of
dicom/srcontent.py) are the ones highdicom's own Comprehensive 3D SR constructor and templates
write for the same findings, byte for byte."""

from __future__ import annotations

import datetime as dt

import highdicom as hd
import pydicom
import pytest

import dicom.nondiagnostic
import dicom.sop
import dicom.sr
import dicom.srcontent
from dicom.nondiagnostic import NonDiagnostic, build_non_diagnostic_sr
from dicom.seg import build_segmentation
from dicom.sr import Findings, Verification, build_sr, document_reference
from dicom.srdocument import Comprehensive3DSRDocument
from tests.support.dicomcheck import assert_dciodvfy_clean

FINDINGS = Findings(stage="Malignant-Pre", quality_ok=True, blast_count=4,
                    blast_area_fraction=0.031,
                    probabilities={"Benign": 0.1, "Malignant-Early": 0.15,
                                   "Malignant-Pre": 0.6, "Malignant-Pro": 0.15})
VERIFICATION = Verification(observer_name="House^Gregory", organization="PPTH",
                            datetime=dt.datetime(2026, 11, 24, 10, 30, 5,
                                                 tzinfo=dt.timezone.utc),
                            stage="Malignant-Pro", comment="pro-B morphology")
NOW = "20260101120000"


def _timeless(ds: pydicom.Dataset) -> bytes:
    """``ds`` as a Part 10 file with the moments of building it (creation, content and
    contribution times) set to one value."""
    for keyword in ("InstanceCreationDate", "ContentDate"):
        setattr(ds, keyword, NOW[:8])
    for keyword in ("InstanceCreationTime", "ContentTime"):
        setattr(ds, keyword, NOW[8:])
    for item in ds.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = NOW
    buffer = pydicom.filebase.DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _both(monkeypatch, module, build):
    """``build()`` with the node's document class (and content tree), then with highdicom's
    constructor (and templates)."""
    ours = build()
    assert isinstance(ours, Comprehensive3DSRDocument)
    monkeypatch.setattr(module, "Comprehensive3DSRDocument", hd.sr.Comprehensive3DSR)
    monkeypatch.setattr(dicom.srcontent, "measurement_report",
                        dicom.srcontent.measurement_report_with_templates)
    reference = build()
    assert type(reference) is hd.sr.Comprehensive3DSR
    return ours, reference


def _without_specimen(source: pydicom.Dataset) -> pydicom.Dataset:
    copy = pydicom.Dataset(source)
    copy.file_meta = source.file_meta
    del copy.SpecimenDescriptionSequence
    return copy


REVIEWED = Findings(stage="Benign", quality_ok=False, blast_count=2, blast_area_fraction=0.01,
                    probabilities={"Benign": 0.4, "Malignant-Early": 0.3,
                                   "Malignant-Pre": 0.2, "Malignant-Pro": 0.1},
                    review_reasons=("unlike the training data", "scale unknown",
                                    "blast cells found, stage Benign"))


@pytest.mark.parametrize("kind", ["unverified", "verified", "supersedes", "no specimen",
                                  "review reasons", "verified, cells rejected",
                                  "verified, corrected SEG", "frame of reference"])
def test_report_is_the_one_highdicom_writes(monkeypatch, source_image, blast_mask, algorithm,
                                           kind):
    source = _without_specimen(source_image) if kind == "no specimen" else source_image
    if kind == "frame of reference":  # one more image library descriptor
        source = pydicom.Dataset(source_image)
        source.file_meta = source_image.file_meta
        source.FrameOfReferenceUID = "2.25.4242"
    seg = build_segmentation(source, blast_mask, algorithm=algorithm)
    findings = REVIEWED if kind == "review reasons" else FINDINGS
    options: dict[str, object] = {}
    if kind.startswith("verified"):
        predecessor = build_sr(source, seg, FINDINGS, algorithm=algorithm)
        verification = VERIFICATION
        if kind != "verified":  # the AI's stage stands, two cells rejected, no comment
            verification = Verification(observer_name="House^Gregory", organization="PPTH",
                                        datetime=VERIFICATION.datetime,
                                        stage=FINDINGS.stage, rejected_cells=2)
        options = {"verification": verification, "predecessor": predecessor}
        if kind == "verified, corrected SEG":
            corrected = build_segmentation(source, blast_mask[::-1], algorithm=algorithm,
                                           revision=1)
            options["derived_from"], seg = seg, corrected
    elif kind == "supersedes":
        options = {"revision": 1, "supersedes": [document_reference(
            source.StudyInstanceUID, "2.25.1234", "2.25.5678")]}
    ours, reference = _both(monkeypatch, dicom.sr, lambda: build_sr(
        source, seg, findings, algorithm=algorithm, **options))
    assert _timeless(ours) == _timeless(reference)


@pytest.mark.parametrize("why", [NonDiagnostic(flags=("too_blurred",)),
                                 NonDiagnostic(failure="cannot decode the image")])
def test_non_diagnostic_report_is_the_one_highdicom_writes(monkeypatch, source_image, algorithm,
                                                           why):
    ours, reference = _both(monkeypatch, dicom.nondiagnostic, lambda: build_non_diagnostic_sr(
        source_image, why, algorithm=algorithm))
    assert _timeless(ours) == _timeless(reference)


@pytest.mark.integration  # dciodvfy
def test_document_is_clean_and_its_content_reads_back(tmp_path, source_image, blast_mask,
                                                      algorithm):
    seg = build_segmentation(source_image, blast_mask, algorithm=algorithm)
    sr = build_sr(source_image, seg, FINDINGS, algorithm=algorithm)
    # The content items, parsed on demand, are those of the document.
    [group] = sr.content.get_image_measurement_groups()
    assert group.get_qualitative_evaluations()[0].value.value == "STAGE-PRE"
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    back = hd.sr.srread(path)
    [blasts] = back.content.get_volumetric_roi_measurement_groups()
    assert blasts.referenced_segment.has_source_images()
    assert [str(r.ReferencedSOPInstanceUID)
            for s in back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
            for r in s.ReferencedSOPSequence] == [source_image.SOPInstanceUID,
                                                  seg.SOPInstanceUID]


@pytest.mark.parametrize("sop_class", sorted(str(u) for u in dicom.sop.ACCEPTED_SOP_CLASSES))
@pytest.mark.parametrize("frame_of_reference", [False, True])
def test_content_tree_is_the_templates_one_for_every_accepted_image(
        source_image, blast_mask, algorithm, sop_class, frame_of_reference):
    """The image library (its modality, frame of reference, rows and columns) for each kind of
    image the node accepts, as highdicom's templates write it."""
    seg = build_segmentation(source_image, blast_mask, algorithm=algorithm)
    source = pydicom.Dataset(source_image)
    source.SOPClassUID = sop_class
    if frame_of_reference:
        source.FrameOfReferenceUID = "2.25.4242"
    content = dicom.srcontent.ReportContent(
        source=source, segmentation=seg, findings=REVIEWED, algorithm=algorithm,
        device_uid="2.25.1", classification_uid="2.25.2", blasts_uid="2.25.3",
        verification=VERIFICATION)
    ours = dicom.srcontent.measurement_report(content)
    reference = dicom.srcontent.measurement_report_with_templates(content)
    assert _dataset_bytes(ours) == _dataset_bytes(reference)


def _dataset_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buffer, ds)
    return buffer.getvalue()
