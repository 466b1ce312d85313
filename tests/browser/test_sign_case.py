"""A doctor signs a 12-field case in the browser in at most 3 clicks after opening it; Orthanc
then holds the VERIFIED study summary SR and the signed summary PDF.

Real peers: the node's real pipeline (the tiny model), headless Chromium, Orthanc as the PACS.
Screenshots of the case page and the signed PDF's pages go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import io
import subprocess
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pydicom
import pytest
from sqlalchemy import select, update

from bcd_node.analysis.pipeline import Pipeline
from bcd_node.analysis.summary import enqueue_study_summaries
from bcd_node.db.models import Job, JobState, Result, ResultScope, Role, Study, utcnow
from bcd_node.delivery.outbox import Deliverer
from bcd_node.intake.intake import Intake
from bcd_node.jobs.workers import Workers
from tests.browser.conftest import SCREENSHOTS
from tests.support.browser import fill, navigate, sign_in
from tests.support.console import LiveConsole
from tests.support.images import write_smears
from tests.support.jobs import drain
from tests.support.peers import Orthanc
from tests.support.postgres import ON_BOTH_DATABASES
from tests.support.tools import require_tool
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow,
              pytest.mark.timeout(600)]
PASSWORD = "doctor-password-123"
FIELDS = 12


@pytest.fixture
def pacs(orthanc: Orthanc) -> Orthanc:
    return orthanc


@pytest.fixture
def console(database_url: str, start_console: Callable[..., LiveConsole],
            monkeypatch: pytest.MonkeyPatch, pacs: Orthanc) -> LiveConsole:
    """A node whose destination is Orthanc, with a doctor; on SQLite, and on PostgreSQL
    (where signing once failed for good: the signed summary's objects did not fit the
    outbox's ``kind``, which SQLite does not check)."""
    monkeypatch.setenv("BCD_WEB_TIMEZONE", "Europe/Zurich")
    return start_console(
        '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {pacs.dicom_port}\n", user=("hopper", PASSWORD, Role.DOCTOR, "Grace Hopper"),
        database_url=database_url)


def _instance_file(pacs: Orthanc, instance: str) -> pydicom.Dataset:
    """An instance as Orthanc stores it, read back with pydicom."""
    with urllib.request.urlopen(f"http://127.0.0.1:{pacs.http_port}/instances/{instance}/file",
                                timeout=30) as response:
        return pydicom.dcmread(io.BytesIO(response.read()))


def _count_clicks(browser: Any) -> None:
    """Count every click the page receives from now on (in sessionStorage, across pages)."""
    browser.execute_script(
        "window.sessionStorage.setItem('bcdCount', 'on');"
        "window.sessionStorage.setItem('bcdClicks', '0');")


def _listen(browser: Any) -> None:
    browser.execute_script(
        "if (!window.__bcdListening && sessionStorage.getItem('bcdCount')) {"
        " window.__bcdListening = true;"
        " document.addEventListener('click', function () {"
        "  sessionStorage.setItem('bcdClicks', String(Number("
        "sessionStorage.getItem('bcdClicks')) + 1)); }, true); }")


def _thumbnails_loaded(browser: Any) -> None:
    """Wait until every thumbnail is loaded (they load lazily: scroll them into view)."""
    browser.execute_script("document.querySelectorAll('.thumb img').forEach("
                           "function (i) { i.loading = 'eager'; })")
    wait_for(lambda: browser.execute_script(
        "return Array.from(document.querySelectorAll('.thumb img'))"
        ".every(function (i) { return i.complete && i.naturalWidth > 0; })"),
        timeout=30, what="thumbnails loaded")


def _clicks(browser: Any) -> int:
    return int(browser.execute_script("return sessionStorage.getItem('bcdClicks')"))


@ON_BOTH_DATABASES
def test_a_doctor_signs_a_12_field_case_in_at_most_3_clicks(
        console: LiveConsole, pacs: Orthanc, browser: Any, predictor: Any,
        screenshot: Callable[[str], Path], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    ctx = console.context
    study_uid = pydicom.uid.generate_uid(prefix="2.25.")
    files = write_smears(tmp_path / "in", FIELDS, study_uid=study_uid, size=256,
                         patient_id="MRN-1906")
    with Intake(ctx) as intake:
        for f in files:
            intake.accept(f.read_bytes(), calling_ae="SCANNER")
    workers = Workers(ctx, Pipeline(ctx, predictor).run, count=0)
    assert drain(workers) == FIELDS
    # The study has been quiet long enough: its summary is made.
    with ctx.session_factory.begin() as session:
        session.execute(update(Study).values(last_received_at=utcnow() - timedelta(hours=1)))
    assert enqueue_study_summaries(ctx) == 1
    assert drain(workers) == 1
    Deliverer(ctx).run_once()

    sign_in(browser, console.url, "hopper", PASSWORD)
    browser.get(console.url + "/worklist")
    assert "Awaiting review" in browser.page_source
    navigate(browser, By.CSS_SELECTOR, f'tr[data-uid="{study_uid}"] a')  # open the case
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".thumb img")) == FIELDS,
             what="the case's thumbnails")
    _thumbnails_loaded(browser)
    screenshot("case-01-awaiting-review")
    _count_clicks(browser)
    _listen(browser)
    navigate(browser, By.ID, "sign-case")  # accept the AI's case stage
    _listen(browser)
    wait_for(lambda: "Case signed" in browser.page_source, what="the case signed")
    assert _clicks(browser) <= 3, _clicks(browser)
    screenshot("case-02-signed")

    # The worker makes the signed report; delivery sends it to Orthanc.
    assert drain(workers) == 1
    with ctx.session_factory() as session:
        jobs = session.execute(select(Job)).scalars().all()
        assert all(j.state == JobState.DONE for j in jobs), [j.last_error for j in jobs]
        summary = session.execute(select(Result).where(
            Result.scope == ResultScope.STUDY)).scalar_one()
        status = session.execute(select(Study.status)).scalar_one()
    assert status == "signed"
    assert summary.verified_sr_sop_instance_uid and summary.verified_pdf_path
    Deliverer(ctx).run_once()

    at_pacs = {tags["SOPInstanceUID"]: (i, tags) for i in pacs.get("/instances")
               for tags in [pacs.get(f"/instances/{i}/simplified-tags")]}
    _, sr = at_pacs[summary.verified_sr_sop_instance_uid]
    assert (sr["VerificationFlag"], sr["CompletionFlag"]) == ("VERIFIED", "COMPLETE")
    assert sr["StudyInstanceUID"] == study_uid
    signed_pdfs = [(i, tags) for i, tags in at_pacs.values()
                   if tags.get("DocumentTitle") == "Blood smear study summary, signed"]
    assert len(signed_pdfs) == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{pacs.http_port}/instances/"
                                f"{signed_pdfs[0][0]}/file", timeout=30) as response:
        document = pydicom.dcmread(io.BytesIO(response.read())).EncapsulatedDocument
    pdf = SCREENSHOTS / "case-signed-report.pdf"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pdf.write_bytes(document.rstrip(b"\0"))
    for old in SCREENSHOTS.glob("case-signed-report-*.png"):
        old.unlink()
    subprocess.run([require_tool("pdftoppm"), "-r", "80", "-png", str(pdf),
                    str(SCREENSHOTS / "case-signed-report")], check=True, timeout=60)
    assert list(SCREENSHOTS.glob("case-signed-report-*.png"))
    text = subprocess.run([require_tool("pdftotext"), str(pdf), "-"], check=True, timeout=60,
                          capture_output=True, text=True).stdout
    assert "Doctor's verdict (signed)" in text and "Grace Hopper" in text

    # The page shows the signed report once it is made (the live refresh reloads it).
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "[data-pdf=case-signed]"),
             timeout=40, what="the signed report's link")
    _thumbnails_loaded(browser)
    screenshot("case-03-signed-report-ready")

    # A wrong stage was signed: the doctor amends the signed case. The PACS then holds the
    # amended SR and PDF beside the signed ones; they name the report they replace, and why.
    from selenium.webdriver.support.ui import Select

    first_signed = summary.verified_sr_sop_instance_uid
    browser.find_element(By.CSS_SELECTOR, "[data-amend] summary").click()
    Select(browser.find_element(By.NAME, "amend-decision")).select_by_value("correct")
    Select(browser.find_element(By.NAME, "amend-stage")).select_by_value("Malignant-Pro")
    fill(browser, "amend-reason", "Wrong stage signed.")
    navigate(browser, By.ID, "amend-case")
    wait_for(lambda: "Amendment signed" in browser.page_source, what="the amendment signed")
    screenshot("case-04-amended")
    assert drain(workers) == 1
    Deliverer(ctx).run_once()
    with ctx.session_factory() as session:
        jobs = session.execute(select(Job)).scalars().all()
        assert all(j.state == JobState.DONE for j in jobs), [j.last_error for j in jobs]
        summary = session.execute(select(Result).where(
            Result.scope == ResultScope.STUDY)).scalar_one()
    assert summary.verified_sr_sop_instance_uid not in (None, first_signed)
    at_pacs = {tags["SOPInstanceUID"]: i for i in pacs.get("/instances")
               for tags in [pacs.get(f"/instances/{i}/simplified-tags")]}
    assert first_signed in at_pacs
    amended = _instance_file(pacs, at_pacs[summary.verified_sr_sop_instance_uid])
    assert amended.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first_signed
    titles = [pacs.get(f"/instances/{i}/simplified-tags").get("DocumentTitle")
              for i in at_pacs.values()]
    assert titles.count("Blood smear study summary, signed (amended)") == 1
    assert titles.count("Blood smear study summary, signed") == 1
