"""The PDF report renders (pdftoppm) and shows its fields (pdftotext)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import subprocess

import numpy as np
import pytest

from bcd_node.report import NOT_FOR_CLINICAL_USE, ReportData, render_report

pytestmark = pytest.mark.skipif(
    shutil.which("pdftotext") is None or shutil.which("pdftoppm") is None,
    reason="poppler-utils not installed",
)

PROBABILITIES = {"Benign": 0.05, "Malignant-Early": 0.15, "Malignant-Pre": 0.7,
                 "Malignant-Pro": 0.1}


@pytest.fixture
def data(smear_rgb, blast_mask) -> ReportData:
    overlay = smear_rgb.copy()
    overlay[blast_mask] = (255, 0, 160)
    return ReportData(
        patient_name="Müller^Jürgen",
        patient_id="PAT-001",
        image=smear_rgb,
        overlay=overlay,
        stage="Malignant-Pre",
        probabilities=PROBABILITIES,
        blast_count=3,
        blast_area_fraction=0.0451,
        quality_ok=True,
        model_name="bcd-vgg16-unet",
        model_version="0.1.0-demo",
        demonstration_model=True,
        created_at=dt.datetime(2026, 11, 24, 9, 15),
        birth_date="1975-03-09",
        sex="M",
        accession_number="ACC-9",
        study_date="2026-11-24",
        specimen_id="SLIDE-12",
        stain="Wright-Giemsa",
    )


def _text(pdf: bytes, tmp_path) -> str:
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    out = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True,
                         check=True, timeout=60)
    return out.stdout.decode()


def _render(pdf: bytes, tmp_path) -> list:
    path = tmp_path / "render.pdf"
    path.write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(path), str(tmp_path / "page")],
                   check=True, timeout=60, capture_output=True)
    return sorted(tmp_path.glob("page*.png"))


@pytest.mark.integration
def test_unverified_report_shows_its_fields(tmp_path, data):
    pdf = render_report(data)
    assert pdf.startswith(b"%PDF-")
    pages = _render(pdf, tmp_path)
    assert len(pages) >= 1 and pages[0].stat().st_size > 5000
    text = _text(pdf, tmp_path)
    for expected in ("MÜLLER, Jürgen", "PAT-001", "1975-03-09", "ACC-9", "SLIDE-12",
                     "Wright-Giemsa", "Malignant-Pre", "70.0 %", "15.0 %", "5.0 %", "10.0 %",
                     "Blast cell count", "4.51 %", "adequate", "bcd-vgg16-unet version 0.1.0-demo",
                     NOT_FOR_CLINICAL_USE, "UNVERIFIED"):
        assert expected in text, expected
    assert "Verified by" not in text


@pytest.mark.integration
def test_verified_report_names_the_doctor(tmp_path, data):
    verified = dataclasses.replace(
        data,
        demonstration_model=False,
        quality_ok=False,
        quality_notes="out of focus",
        verified_by="House^Gregory",
        verified_organization="Princeton-Plainsboro",
        verified_stage="Malignant-Pro",
        verified_comment="Numerous blasts, pro-B morphology.",
        verified_at=dt.datetime(2026, 11, 24, 10, 30, tzinfo=dt.timezone.utc),
    )
    pdf = render_report(verified)
    assert _render(pdf, tmp_path)
    text = _text(pdf, tmp_path)
    for expected in ("VERIFIED", "HOUSE, Gregory", "Princeton-Plainsboro", "Malignant-Pro",
                     "Numerous blasts, pro-B morphology.", "2026-11-24 10:30 UTC", "LIMITED",
                     "out of focus"):
        assert expected in text, expected
    assert NOT_FOR_CLINICAL_USE not in text
    assert "UNVERIFIED" not in text


def test_same_input_same_pdf(data):
    assert render_report(data) == render_report(data)


def test_large_image_is_scaled(tmp_path, data):
    big = np.zeros((3000, 2000, 3), np.uint8)
    pdf = render_report(dataclasses.replace(data, image=big, overlay=big))
    assert len(pdf) < 2_000_000


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"stage": "Leukaemia"}, ValueError),
        ({"probabilities": {"Benign": 1.0}}, ValueError),
        ({"image": np.zeros((4, 4), np.uint8)}, ValueError),
        ({"overlay": [[1, 2, 3]]}, TypeError),
        ({"blast_area_fraction": 2.0}, ValueError),
        ({"patient_id": ""}, ValueError),
        ({"demonstration_model": "yes"}, TypeError),
        ({"verified_by": "Doe^A"}, ValueError),  # without verified_at
        ({"verified_stage": "Other"}, ValueError),
    ],
)
def test_report_data_is_validated(data, changes, error):
    with pytest.raises(error):
        dataclasses.replace(data, **changes)
