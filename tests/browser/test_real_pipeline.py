"""The console with the node's real analysis pipeline (an untrained tiny model): a PNG uploaded
in the browser is DICOMized, analysed by a worker, reviewed with its real overlay, verified, and
the VERIFIED report made by the worker's verified-report job is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import select

from bcd_node.db.models import Job, JobState, Result, Role, Study
from bcd_node.records.users import add_user
from dicom.encapsulated import encapsulated_document
from tests.support.browser import downloaded, fill, navigate, sign_in
from tests.support.console import LiveConsole
from tests.support.seed import png_bytes
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(300)]
PASSWORD = "doctor-password-123"


def drain(context: Any, predictor: Any) -> list[Job]:
    """Run every queued job with the real pipeline, in this thread."""
    from bcd_node.analysis.pipeline import Pipeline
    from bcd_node.jobs.workers import Workers
    workers = Workers(context, Pipeline(context, predictor).run, count=0)
    while workers.step("browser-test"):
        pass
    with context.session_factory() as session:
        return list(session.execute(select(Job).order_by(Job.id)).scalars())


def test_upload_analyse_review_verify_with_the_real_pipeline(
        live_console: LiveConsole, browser: Any, screenshot: Callable[[str], Path],
        predictor: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from tests.support.images import smear

    ctx = live_console.context
    with ctx.session_factory.begin() as session:
        add_user(session, "curie", PASSWORD, Role.DOCTOR, full_name="Dr. Marie Curie")
    url = live_console.url
    sign_in(browser, url, "curie", PASSWORD)

    image, _mask = smear(7, "Malignant-Pro", 256)
    upload = tmp_path / "field-7.png"
    upload.write_bytes(png_bytes(image))
    browser.get(url + "/upload")
    browser.find_element(By.NAME, "image").send_keys(str(upload))
    fill(browser, "patient_name", "Franklin, Rosalind")
    fill(browser, "patient_id", "MRN-1920")
    fill(browser, "specimen_id", "SLIDE-7")
    fill(browser, "stain", "Wright-Giemsa")
    navigate(browser, By.ID, "upload")
    wait_for(lambda: "queued for analysis" in browser.page_source, what="upload accepted")

    jobs = drain(ctx, predictor)
    assert [j.state for j in jobs] == [JobState.DONE], [j.last_error for j in jobs]
    with ctx.session_factory() as session:
        result = session.execute(select(Result)).scalar_one()
        assert result.overlay_path and result.pdf_path
        ai_stage, rid, ai_report = result.stage, result.id, result.pdf_path
    assert ai_stage is not None, "the synthetic smear should pass the quality gate"

    browser.refresh()
    viewer = wait_for(lambda: browser.find_elements(
        By.CSS_SELECTOR, ".viewer[data-ready='true'][data-overlay='true']"),
        what="field viewer with its overlay")[0]
    assert viewer.get_attribute("data-image-width") == "256"
    assert "Stage probabilities" in browser.page_source
    screenshot("13-review-real-pipeline")
    # The AI's report, kept once in the Encapsulated PDF sent to the PACS, downloads as a PDF.
    browser.find_element(By.CSS_SELECTOR, "[data-pdf=ai]").click()
    pdf = downloaded(browser, f"bcd-report-{rid}.pdf", what="the AI's PDF report")
    assert pdf.read_bytes() == encapsulated_document(ctx.settings.storage.data_dir / ai_report)

    corrected = "Benign" if ai_stage != "Benign" else "Malignant-Pro"
    Select(browser.find_element(By.CSS_SELECTOR, "[data-decision]")).select_by_value("correct")
    Select(browser.find_element(By.CSS_SELECTOR, "[data-stage]")).select_by_value(corrected)
    browser.find_element(By.NAME, f"r{rid}-comment").send_keys("Checked at the microscope.")
    navigate(browser, By.ID, f"verify-{rid}")
    wait_for(lambda: "Verification recorded" in browser.page_source, what="verification")

    jobs = drain(ctx, predictor)
    assert [j.state for j in jobs] == [JobState.DONE, JobState.DONE], \
        [j.last_error for j in jobs]
    with ctx.session_factory() as session:
        result = session.get(Result, rid)
        assert result.verified_pdf_path and result.verified_sr_sop_instance_uid
        status = session.execute(select(Study.status)).scalar_one()
    browser.refresh()
    browser.find_element(By.CSS_SELECTOR, "[data-pdf=verified]").click()
    pdf = downloaded(browser, "*-verified.pdf", what="verified PDF")
    assert pdf.read_bytes().startswith(b"%PDF")
    screenshot("14-verified-real-pipeline")
    # A field's verification does not sign the case: it stays as it was (no summary yet here).
    assert status in ("analysing", "awaiting_review")
