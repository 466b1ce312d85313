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
                     "Numerous blasts, pro-B morphology.", "2026-11-24 10:30 (UTC)", "LIMITED",
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


@pytest.mark.integration  # pdfimages (poppler)
@pytest.mark.parametrize("rows_given", [False, True], ids=["deflated here", "rows given"])
def test_pictures_are_lossless_and_deflated_without_ascii85(tmp_path, data, rows_given):
    """The field and its overlay go in pixel for pixel, as deflated binary streams with PNG's
    row filters (poppler applies the predictor); an overlay whose rows the caller made already
    (the worker, for the console's PNG) is embedded as given."""
    from PIL import Image

    from bcd_node.report.pictures import filtered_rows_deflated

    if rows_given:
        rows = filtered_rows_deflated(data.overlay)
        data = dataclasses.replace(data, overlay_rows=rows)
    pdf = render_report(data)
    if rows_given:
        assert rows in pdf
    assert b"/ASCII85Decode" not in pdf  # ASCII85 made reports a fifth larger, and slow
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    listing = subprocess.run(["pdfimages", "-list", str(path)], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    rows = [line.split() for line in listing.splitlines()[2:] if line.strip()]
    assert [(r[3], r[4], r[5], r[8]) for r in rows] == [
        (str(data.image.shape[1]), str(data.image.shape[0]), "rgb", "image")] * 2, listing
    subprocess.run(["pdfimages", "-png", str(path), str(tmp_path / "img")], check=True,
                   timeout=60, capture_output=True)
    extracted = sorted(tmp_path.glob("img-*.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(extracted[0]).convert("RGB")),
                                  data.image)
    np.testing.assert_array_equal(np.asarray(Image.open(extracted[1]).convert("RGB")),
                                  data.overlay)


def test_reportlab_runs_with_its_c_accelerator():
    import importlib.util

    import reportlab.lib.rl_accel as accel

    assert importlib.util.find_spec("_rl_accel") is not None, "rl-accel is not installed"
    assert accel.fp_str.__module__ != "reportlab.lib.rl_accel"


def test_a_field_report_renders_quickly(data):
    """A report is made for every analysed image: 512 x 512 pictures render in well under the
    end-to-end budget (it took 530 ms with ASCII85 in Python and a PNG re-encode; 60 ms now)."""
    import time

    from bcd_node.inference.synth import generate_field, patient_params

    field, _mask, _blasts = generate_field(7, "Malignant-Pre",
                                           patient_params(np.random.default_rng(7)), size=512)
    report = dataclasses.replace(data, image=field, overlay=field[::-1].copy())
    render_report(report)  # fonts registered, caches warm
    times = []
    for _ in range(3):
        started = time.perf_counter()
        render_report(report)
        times.append(time.perf_counter() - started)
    assert sorted(times)[1] < 0.25, times
