"""The PDF report of an image shows the staining step's stain and the patient's age."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess

import numpy as np
import pytest

from bcd_node.analysis.findings import Combined, report_data
from bcd_node.report import render_report
from dicom.algorithm import Algorithm

pytestmark = pytest.mark.skipif(shutil.which("pdftotext") is None,
                                reason="poppler-utils not installed")

PROBABILITIES = {"Benign": 0.05, "Malignant-Early": 0.15, "Malignant-Pre": 0.7,
                 "Malignant-Pro": 0.1}


def _text(pdf: bytes, tmp_path) -> str:
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True,
                          check=True, timeout=60).stdout.decode()


@pytest.mark.integration
def test_report_shows_the_stain_the_age_and_the_institution(tmp_path, source_image, smear_rgb):
    source_image.StudyDate = "20261124"  # born 1980-01-02 (conftest)
    combined = Combined("Malignant-Pre", PROBABILITIES, 3, 0.04,
                        np.zeros((1, 1, 1), np.uint8), {}, False)
    algorithm = Algorithm("bcd-vgg16-unet", "0.1.0-demo",
                          institution_name="St. Example Hospital")
    data = report_data(source_image, smear_rgb, smear_rgb, combined, algorithm=algorithm,
                       demonstration_model=True, created_at=dt.datetime(2026, 11, 24, 9, 15))
    assert data.stain == "Wright-Giemsa"  # the staining step, not "Peripheral blood smear"
    assert data.age == "46 years"
    assert data.institution == "St. Example Hospital"
    text = _text(render_report(data), tmp_path)
    for expected in ("Wright-Giemsa", "46 years", "St. Example Hospital"):
        assert expected in text, expected
    assert "Peripheral blood smear" not in text

    source_image.PatientAge = "045Y"  # the source's own statement wins
    data = report_data(source_image, smear_rgb, smear_rgb, combined, algorithm=algorithm,
                       demonstration_model=True, created_at=dt.datetime(2026, 11, 24, 9, 15))
    assert data.age == "45 years"
