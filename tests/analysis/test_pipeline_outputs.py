"""End to end: an upload becomes an image, its SEG, SR (both versions) and Encapsulated PDF."""

from __future__ import annotations

import datetime as dt

import highdicom as hd
import numpy as np
import pydicom
import pytest

from bcd_node.report import ReportData, render_report
from dicom import pixels
from dicom.algorithm import Algorithm
from dicom.encapsulated import build_encapsulated_pdf
from dicom.seg import build_segmentation
from dicom.sr import Findings, Verification, build_sr
from tests.support.dicomcheck import assert_dciodvfy_clean

PROBS = {"Benign": 0.1, "Malignant-Early": 0.1, "Malignant-Pre": 0.2, "Malignant-Pro": 0.6}


@pytest.mark.integration
def test_upload_to_all_outputs(tmp_path, source_image, blast_mask):
    algorithm = Algorithm("bcd-vgg16-unet", "0.1.0-demo", software_version="0.1.0")
    frames = pixels.decode_frames(source_image)
    image = frames[0]
    overlay = image.copy()
    overlay[blast_mask] = (255, 0, 160)

    seg = build_segmentation(source_image, blast_mask, algorithm=algorithm)
    findings = Findings("Malignant-Pro", PROBS, blast_count=3,
                        blast_area_fraction=float(blast_mask.mean()), quality_ok=True)
    sr = build_sr(source_image, seg, findings, algorithm=algorithm)
    report = ReportData(
        patient_name=str(source_image.PatientName), patient_id=source_image.PatientID,
        image=image, overlay=overlay, stage="Malignant-Pro", probabilities=PROBS,
        blast_count=3, blast_area_fraction=float(blast_mask.mean()), quality_ok=True,
        model_name=algorithm.name, model_version=algorithm.version, demonstration_model=True,
        created_at=dt.datetime(2026, 11, 24, 9, 0), accession_number=source_image.AccessionNumber,
        specimen_id=source_image.ContainerIdentifier,
    )
    pdf = build_encapsulated_pdf(source_image, render_report(report), algorithm=algorithm)

    written = {}
    for name, ds in {"seg": seg, "sr": sr, "pdf": pdf}.items():
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert_dciodvfy_clean(path)
        written[name] = pydicom.dcmread(path)

    when = dt.datetime(2026, 11, 24, 11, 0, tzinfo=dt.timezone.utc)
    verification = Verification("Doe^Anna", "City Hospital", when, "Malignant-Pro", "Agree.")
    verified = build_sr(source_image, written["seg"], findings, algorithm=algorithm,
                        verification=verification, predecessor=written["sr"])
    path = tmp_path / "sr-verified.dcm"
    verified.save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    back = hd.sr.srread(path)
    assert back.VerificationFlag == "VERIFIED"

    # all in the source's study, each in its own series
    outputs = [*written.values(), back]
    assert {o.StudyInstanceUID for o in outputs} == {source_image.StudyInstanceUID}
    assert len({o.SeriesInstanceUID for o in written.values()}) == 3
    assert np.array_equal(
        hd.seg.segread(tmp_path / "seg.dcm").get_pixels_by_source_instance(
            [source_image.SOPInstanceUID], segment_numbers=[1])[0, ..., 0].astype(bool),
        blast_mask,
    )
    document = written["pdf"].EncapsulatedDocument[: written["pdf"].EncapsulatedDocumentLength]
    assert document.startswith(b"%PDF-")
