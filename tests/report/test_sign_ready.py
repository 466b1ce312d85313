"""The reports a doctor signs: the verdict first, then the AI's finding as supporting
information; dates formatted, times with their zone, stain and age shown; the case report lists
fields by number with stage, blasts and flags; a signature block; UIDs only in the footer.

Each report's pages are rendered with poppler's pdftoppm and kept under
``test-artifacts/reports/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import zoneinfo
from pathlib import Path

import pytest
from reportlab.lib.units import mm
from reportlab.pdfbase.pdfmetrics import stringWidth

from bcd_node.report import ReportData, render_report
from bcd_node.report.pdf import NotAnalysedData, _fonts, patient_footer, render_not_analysed
from bcd_node.report.summary import FieldRow, SummaryData, render_summary
from tests.support.tools import require_tool

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "reports"
ZURICH = zoneinfo.ZoneInfo("Europe/Zurich")
STUDY_UID = "2.25.123456789012345678901234567890"
PROBS = {"Benign": 0.05, "Malignant-Early": 0.15, "Malignant-Pre": 0.7, "Malignant-Pro": 0.1}
SIGNED_AT = dt.datetime(2026, 12, 2, 14, 5, tzinfo=dt.timezone.utc)


def _pages(pdf: bytes, name: str) -> tuple[str, list[Path]]:
    """The PDF's text (pdftotext, in reading order) and its pages as PNG (pdftoppm)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.pdf"
    path.write_bytes(pdf)
    for old in ARTIFACTS.glob(f"{name}-*.png"):
        old.unlink()
    subprocess.run([require_tool("pdftoppm"), "-r", "80", "-png", str(path),
                    str(ARTIFACTS / name)], check=True, timeout=60, capture_output=True)
    text = subprocess.run([require_tool("pdftotext"), str(path), "-"], check=True, timeout=60,
                          capture_output=True, text=True).stdout
    return text, sorted(ARTIFACTS.glob(f"{name}-*.png"))


def _body(text: str) -> str:
    """The text without the page footers (they carry the study UID)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("Study 2.25."))


@pytest.fixture
def field_report(smear_rgb, blast_mask) -> ReportData:
    overlay = smear_rgb.copy()
    overlay[blast_mask] = (255, 0, 160)
    return ReportData(
        patient_name="Müller^Jürgen", patient_id="PAT-001", image=smear_rgb, overlay=overlay,
        stage="Malignant-Pre", probabilities=PROBS, blast_count=3, blast_area_fraction=0.0451,
        quality_ok=True, model_name="bcd-vgg16-unet", model_version="0.1.0",
        demonstration_model=False, created_at=dt.datetime(2026, 12, 2, 9, 15),
        birth_date="19750309", age="51 years", sex="M", accession_number="ACC-9",
        study_date="20261202", study_instance_uid=STUDY_UID, specimen_id="SLIDE-12",
        stain="May-Grünwald Giemsa", institution="St. Example Hospital", timezone=ZURICH)


@pytest.fixture
def case_report() -> SummaryData:
    stages = ["Malignant-Pre"] * 8 + ["Malignant-Early"] * 2 + [None, None]
    fields = [FieldRow(n, stage, None if stage is None else 0.6 + n / 100, 4 if stage else 0,
                       needs_review=n in (3, 11), failed=n == 12,
                       flags=(["could not be analysed"] if n == 12 else
                              ["quality insufficient", "blurry"] if n == 11 else
                              ["low confidence (63 %)"] if n == 3 else []))
              for n, stage in enumerate(stages, 1)]
    return SummaryData(
        patient_name="Müller^Jürgen", patient_id="PAT-001", study_instance_uid=STUDY_UID,
        accession_number="ACC-9", study_date="20261202", stage="Malignant-Pre",
        probabilities=PROBS, total_blasts=40, blast_area_fraction=0.031, fields=fields,
        model_name="bcd-vgg16-unet", model_version="0.1.0", demonstration_model=False,
        created_at=dt.datetime(2026, 12, 2, 9, 20, tzinfo=dt.timezone.utc),
        patient_birth_date="19750309", patient_sex="M", patient_age="51 years",
        stain="May-Grünwald Giemsa", institution="St. Example Hospital", timezone=ZURICH)


def _signed(data, **changes):
    return dataclasses.replace(data, verified_by="Gregory House",
                               verified_organization="St. Example Hospital",
                               verified_at=SIGNED_AT, **changes)


@pytest.mark.integration  # poppler
def test_a_verified_field_report_leads_with_the_doctors_verdict(field_report) -> None:
    data = _signed(field_report, verified_stage="Malignant-Pro",
                   verified_comment="Numerous blasts, pro-B morphology.")
    text, pages = _pages(render_report(data), "field-verified")
    assert pages
    first = text.split("\f")[0]  # the verdict is on page 1, before the AI's finding
    assert first.index("Doctor's verdict") < first.index("AI finding (supporting information)")
    for expected in ("Stage: Malignant-Pro", "the AI proposed Malignant-Pre",
                     "Numerous blasts, pro-B morphology.", "Gregory House",
                     "2026-12-02 15:05 (CET, UTC+01:00)", "1975-03-09", "2026-12-02",
                     "51 years", "May-Grünwald Giemsa", "Signature"):
        assert expected in text, expected
    assert "20261202" not in text and STUDY_UID not in _body(text)


@pytest.mark.integration  # poppler
def test_an_unverified_field_report_says_so_and_leaves_the_signature_blank(field_report) -> None:
    text, pages = _pages(render_report(field_report), "field-unverified")
    assert pages and "UNVERIFIED" in text and "Doctor's verdict" not in text
    assert "2026-12-02 10:15 (CET, UTC+01:00)" in text  # the analysis, in the zone


@pytest.mark.integration  # poppler
def test_the_signed_case_report_lists_fields_and_is_signed(case_report) -> None:
    data = _signed(case_report, verified_stage="Malignant-Pre",
                   verified_comment="Agree; field 11 unreadable.")
    text, pages = _pages(render_summary(data), "case-signed")
    assert pages
    assert text.index("Doctor's verdict") < text.index("AI finding (supporting information)") \
        < text.index("Fields") < text.index("Electronically signed by Gregory House")
    for expected in ("The doctor accepted the AI's stage.", "Agree; field 11 unreadable.",
                     "2026-12-02 15:05 (CET, UTC+01:00)", "1975-03-09", "51 years",
                     "May-Grünwald Giemsa", "could not be analysed", "low confidence (63 %)",
                     "70 % (mean probability of"):
        assert expected in text, expected
    assert "20261202" not in text and STUDY_UID not in _body(text)


@pytest.mark.integration  # poppler
def test_the_unsigned_case_report_says_it_is_the_ais_proposal(case_report) -> None:
    text, pages = _pages(render_summary(case_report), "case-unsigned")
    assert pages and "UNVERIFIED" in text and "Not signed." in text
    assert "Doctor's verdict" not in text
    flat = " ".join(text.split())
    assert "12 fields: " in flat and " need attention." in flat and "(s)" not in flat


def _page_texts(text: str) -> list[str]:
    """pdftotext's text page by page (it ends each page with a form feed)."""
    return text.split("\f")[:-1]


@pytest.mark.integration  # poppler
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_every_page_of_a_long_case_report_names_the_patient_and_counts_the_pages(
        case_report, signed) -> None:
    fields = [FieldRow(n, "Malignant-Pre", 0.8, 4, needs_review=False, failed=False,
                       flags=[]) for n in range(1, 61)]
    data = dataclasses.replace(case_report, fields=fields)
    if signed:
        data = _signed(data, verified_stage="Malignant-Pre")
    name = f"case-60-fields-{'signed' if signed else 'unsigned'}"
    text, pictures = _pages(render_summary(data), name)
    pages = _page_texts(text)
    assert len(pages) == len(pictures) >= 3
    for number, page in enumerate(pages, 1):
        assert f"MÜLLER, Jürgen · patient ID PAT-001 · page {number} of {len(pages)}" in page


@pytest.mark.integration  # poppler
def test_a_field_report_of_several_pages_names_the_patient_on_each(field_report) -> None:
    single, _ = _pages(render_report(field_report), "field-one-page")
    assert _page_texts(single)[0].count("page 1 of 1") == 1
    assert "MÜLLER, Jürgen · patient ID PAT-001 · page 1 of 1" in single
    comment = "\n\n".join(f"Paragraph {n}: " + "the blasts are large, with fine chromatin and "
                          "prominent nucleoli; " * 6 for n in range(1, 13))
    text, pictures = _pages(render_report(_signed(field_report, verified_comment=comment)),
                            "field-several-pages")
    pages = _page_texts(text)
    assert len(pages) == len(pictures) >= 2
    for number, page in enumerate(pages, 1):
        assert f"MÜLLER, Jürgen · patient ID PAT-001 · page {number} of {len(pages)}" in page


@pytest.mark.integration  # poppler
def test_a_not_analysed_report_names_the_patient_and_counts_its_page() -> None:
    data = NotAnalysedData(patient_name="Müller^Jürgen", patient_id="PAT-001",
                           headline="Not analysed: quality insufficient",
                           reasons=("the image is blurred",), model_name="bcd-vgg16-unet",
                           model_version="0.1.0", demonstration_model=True,
                           created_at=dt.datetime(2026, 12, 2, 9, 15),
                           study_instance_uid=STUDY_UID)
    text, pictures = _pages(render_not_analysed(data), "not-analysed")
    assert len(pictures) == 1
    assert "MÜLLER, Jürgen · patient ID PAT-001 · page 1 of 1" in _page_texts(text)[0]


@pytest.mark.parametrize("name", ["Müller^Jürgen", "^".join(["W" * 64] * 5)],
                         ids=["short", "five components of 64 characters"])
def test_a_footer_keeps_the_id_and_the_page_and_shortens_only_a_long_name(name) -> None:
    regular, _bold = _fonts()
    width = 170 * mm  # the field report's
    patient_id = "ID-" + "9" * 61
    footer = patient_footer(name, patient_id, 12, 12, font=regular, size=7, width=width)
    assert footer.endswith(f" · patient ID {patient_id} · page 12 of 12")
    assert stringWidth(footer, regular, 7) <= width
    if name == "Müller^Jürgen":
        assert footer.startswith("MÜLLER, Jürgen · ")
    else:
        assert footer.startswith("WWW") and "…" in footer


@pytest.mark.integration  # poppler
def test_names_and_comments_in_chinese_japanese_or_korean_are_printed(field_report,
                                                                      case_report) -> None:
    """DejaVu has no Chinese, Japanese or Korean characters, and reportlab drew them as
    nothing: a patient named 山田^太郎 was blank on a signed report, and a comment lost its
    Japanese words. They are drawn by the bundled fallback font now, in the text and in every
    page's footer, and Latin text around them stays in DejaVu."""
    name, comment = "山田^太郎", "Ärztin Łódź: 東京 검토 完了."
    field = dataclasses.replace(
        _signed(field_report, patient_name=name, verified_stage="Malignant-Pro",
                verified_comment=comment), verified_by="김민준")
    case = _signed(dataclasses.replace(case_report, patient_name=name),
                   verified_stage="Malignant-Pre", verified_comment=comment)
    not_analysed = NotAnalysedData(
        patient_name=name, patient_id="PAT-001", headline="Not analysed: quality insufficient",
        reasons=("the image is too dark",),
        model_name="bcd-vgg16-unet", model_version="0.1.0", demonstration_model=True,
        created_at=dt.datetime(2026, 12, 2, 9, 15))
    for label, pdf in (("field-cjk", render_report(field)), ("case-cjk", render_summary(case)),
                       ("not-analysed-cjk", render_not_analysed(not_analysed))):
        text, pages = _pages(pdf, label)
        assert pages
        for page in _page_texts(text):  # the footer of each page names the patient
            assert "山田, 太郎 · patient ID PAT-001 · page" in page, (label, page)
        if label != "not-analysed-cjk":
            assert "Ärztin Łódź: 東京 검토 完了." in text, label
        fonts = subprocess.run([require_tool("pdffonts"), str(ARTIFACTS / f"{label}.pdf")],
                               check=True, timeout=60, capture_output=True, text=True).stdout
        assert "+DroidSansFallback " in fonts and "+DejaVuSans " in fonts, fonts
    assert "김민준" in _pages(render_report(field), "field-cjk")[0]
