"""The console in headless Chromium: approval, upload, review with overlay, verification,
PDF download, and the admin reading it all in the audit log.

The analysis itself is not run here: after the real upload (intake, DICOMized, job queued) the
test writes the analysed result for the uploaded image straight into the database, with a mask,
overlay and PDF it generates, as the worker would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from sqlalchemy import select

from bcd_node.analysis.findings import overlay_layer
from bcd_node.db.models import Instance, Job, JobKind, Result, Study, utcnow
from tests.support.browser import downloaded, fill, navigate, sign_in, sign_out
from tests.support.console import LiveConsole
from tests.support.seed import minimal_pdf, png_bytes, smear_image
from tests.support.waiting import wait_for
from tests.support.web import ADMIN_PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]
DOCTOR_PASSWORD = "doctor-password-123"


def _alert(driver: Any) -> Any:
    from selenium.common.exceptions import NoAlertPresentException
    try:
        return driver.switch_to.alert
    except NoAlertPresentException:
        return None


def _events(console: LiveConsole, action: str) -> list[dict[str, str]]:
    from bcd_node.db.models import AuditEvent
    with console.context.session_factory() as session:
        return [{"object_ref": e.object_ref} for e in session.execute(
            select(AuditEvent).where(AuditEvent.action == action)).scalars()]


def _shot(browser: Any, viewer: Any, slider: Any, opacity: int) -> Any:
    """The field viewer's pixels (RGB) with the overlay at ``opacity`` percent, once drawn."""
    import io

    from PIL import Image
    before = viewer.screenshot_as_png
    browser.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent("
                           "new Event('input'))", slider, opacity)
    wait_for(lambda: float(viewer.get_attribute("data-overlay-opacity")) == opacity / 100,
             what="the overlay's opacity")

    def drawn() -> Any:  # changed, and two shots alike: the viewer has drawn the new opacity
        first = viewer.screenshot_as_png
        return first if first != before and first == viewer.screenshot_as_png else None

    shot = wait_for(drawn, what="the viewer drawn")
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))


def seed_analysis(console: LiveConsole, image: Any, mask: Any) -> int:
    """What the worker would write for the uploaded image: result, mask, overlay and PDF."""
    ctx = console.context
    data_dir = ctx.settings.storage.data_dir
    with ctx.session_factory.begin() as session:
        inst = session.execute(select(Instance)).scalar_one()
        study = inst.series.study
        folder = data_dir / "results" / str(inst.id) / "test"
        folder.mkdir(parents=True)
        (folder / "mask.png").write_bytes(png_bytes(mask.astype("uint8") * 255))
        # The overlay as the builders write it: a layer the viewer lays over the field.
        (folder / "overlay.png").write_bytes(png_bytes(overlay_layer(mask)))
        (folder / "report.pdf").write_bytes(minimal_pdf("AI report Malignant-Early"))
        rel = f"results/{inst.id}/test"
        result = Result(scope="instance", instance_fk=inst.id, study_fk=study.id,
                        model_name="bcd-vgg16-unet", model_version="test",
                        stage="Malignant-Early", confidence=0.48,
                        probabilities={"Benign": 0.12, "Malignant-Early": 0.48,
                                       "Malignant-Pre": 0.31, "Malignant-Pro": 0.09},
                        blast_count=5, blast_area_fraction=float(mask.mean()),
                        quality={"status": "ok", "flags": [],
                                 "measures": {"sharpness": 38.1, "brightness": 181.0}},
                        needs_review=True, mask_path=f"{rel}/mask.png",
                        overlay_path=f"{rel}/overlay.png", pdf_path=f"{rel}/report.pdf",
                        seg_sop_instance_uid=f"{inst.sop_instance_uid}.1",
                        sr_sop_instance_uid=f"{inst.sop_instance_uid}.2")
        session.add(result)
        session.execute(Job.__table__.update().values(state="done"))
        study.status, study.stage, study.confidence = "awaiting_review", "Malignant-Early", 0.48
        study.summary_done_at = utcnow()
        session.flush()
        return result.id


@pytest.mark.slow
def test_doctor_flow_from_approval_to_audit(live_console: LiveConsole, browser: Any,
                                           screenshot: Callable[[str], Path],
                                           tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url = live_console.url

    # A doctor asks for an account.
    browser.get(url + "/login")
    screenshot("01-login")
    navigate(browser, By.LINK_TEXT, "Request one")
    for name, value in (("username", "hopper"), ("full_name", "Dr. Grace Hopper"),
                        ("email", "hopper@hospital.example"), ("password", DOCTOR_PASSWORD),
                        ("confirm", DOCTOR_PASSWORD)):
        fill(browser, name, value)
    screenshot("02-register")
    navigate(browser, By.ID, "register")
    wait_for(lambda: "approval" in browser.page_source, what="pending notice")

    # Not yet: the account waits for an admin.
    fill(browser, "username", "hopper")
    fill(browser, "password", DOCTOR_PASSWORD)
    navigate(browser, By.ID, "sign-in")
    wait_for(lambda: "waiting for an administrator" in browser.page_source, what="refusal")

    # The admin approves.
    sign_in(browser, url, "admin", ADMIN_PASSWORD)
    assert "Waiting for approval (1)" in browser.page_source
    screenshot("03-admin-users-pending")
    navigate(browser, By.XPATH, "//tr[td[text()='hopper']]//button[text()='Approve']")
    wait_for(lambda: "hopper can now sign in" in browser.page_source, what="approval")
    sign_out(browser)

    # The doctor signs in and uploads an image.
    sign_in(browser, url, "hopper", DOCTOR_PASSWORD)
    image, mask = smear_image(384, seed=3)
    upload = tmp_path / "smear.png"
    upload.write_bytes(png_bytes(image))
    navigate(browser, By.LINK_TEXT, "Upload")
    browser.find_element(By.NAME, "image").send_keys(str(upload))
    fill(browser, "patient_name", "Lovelace, Ada")
    fill(browser, "patient_id", "MRN-1815")
    Select(browser.find_element(By.NAME, "sex")).select_by_value("F")
    fill(browser, "accession_number", "ACC-77")
    screenshot("04-upload")
    navigate(browser, By.ID, "upload")
    wait_for(lambda: "queued for analysis" in browser.page_source, what="upload accepted")
    assert "Not analysed yet" in browser.page_source

    # (The worker's part, written directly: see the module docstring.)
    result_id = seed_analysis(live_console, image, mask)

    browser.get(url + "/worklist")
    assert "Lovelace, Ada" in browser.page_source and "Awaiting review" in browser.page_source
    screenshot("05-worklist")
    navigate(browser, By.LINK_TEXT, "Lovelace, Ada")
    # The field is zoomable (OpenSeadragon) at full resolution, its overlay a layer that can be
    # faded and hidden (fieldviewer.js).
    viewer = wait_for(lambda: browser.find_elements(
        By.CSS_SELECTOR, ".viewer[data-ready='true'][data-overlay='true']"), what="field viewer")[0]
    assert "Low confidence" in browser.page_source
    assert viewer.get_attribute("data-image-width") == "384"

    def opacity() -> str:
        return viewer.get_attribute("data-overlay-opacity")

    assert opacity() == "0.6"
    slider = browser.find_element(By.CSS_SELECTOR, "[data-opacity]")
    # The layer marks the blasts and leaves the rest of the field as it is: between the
    # overlay at full opacity and hidden, only the blasts' pixels change, to the tint.
    shown = _shot(browser, viewer, slider, 100)
    hidden = _shot(browser, viewer, slider, 0)
    changed = np.abs(shown.astype(int) - hidden.astype(int)).max(axis=2) > 24
    assert 0 < changed.mean() < 2 * mask.mean() + 0.01, (changed.mean(), mask.mean())
    redder = shown[changed][:, 0].astype(int) - shown[changed][:, 1].astype(int)
    assert np.median(redder) > np.median(hidden[changed][:, 0].astype(int)
                                          - hidden[changed][:, 1].astype(int))
    browser.execute_script("arguments[0].value = 25; arguments[0].dispatchEvent("
                           "new Event('input'))", slider)
    assert opacity() == "0.25"
    browser.find_element(By.CSS_SELECTOR, "[data-toggle]").click()
    assert opacity() == "0"
    browser.find_element(By.CSS_SELECTOR, "[data-toggle]").click()
    assert opacity() == "0.25"
    screenshot("06-review")

    # Verify with a corrected stage.
    Select(browser.find_element(By.CSS_SELECTOR, "[data-decision]")).select_by_value("correct")
    stage = browser.find_element(By.CSS_SELECTOR, "[data-stage]")
    assert stage.is_enabled()
    Select(stage).select_by_value("Malignant-Pre")
    browser.find_element(By.NAME, f"r{result_id}-comment").send_keys(
        "Blasts more mature than the model thinks.")
    navigate(browser, By.ID, f"verify-{result_id}")
    wait_for(lambda: "Verification recorded" in browser.page_source, what="verification")
    assert "Corrected" in browser.page_source and "AI said Malignant-Early" in browser.page_source
    screenshot("07-verified")
    with live_console.context.session_factory() as session:
        result = session.get(Result, result_id)
        assert (result.stage, result.verified_stage) == ("Malignant-Early", "Malignant-Pre")
        jobs = session.execute(select(Job.kind).where(Job.result_fk == result_id)).scalars().all()
        assert jobs == [JobKind.VERIFIED_REPORT]
        # A field's verification does not sign the case (only Sign case does).
        assert session.execute(select(Study.status)).scalar_one() == "awaiting_review"

    # Download the AI's PDF report.
    browser.find_element(By.CSS_SELECTOR, "[data-pdf=ai]").click()
    pdf = downloaded(browser, "*.pdf", what="PDF download")
    assert pdf.read_bytes().startswith(b"%PDF")

    # The worker's VERIFIED_REPORT job (the lead's handler) writes the verified PDF; simulated.
    ctx = live_console.context
    with ctx.session_factory.begin() as session:
        result = session.get(Result, result_id)
        rel = result.pdf_path.replace("report.pdf", "report-verified.pdf")
        (ctx.settings.storage.data_dir / rel).write_bytes(minimal_pdf("VERIFIED Malignant-Pre"))
        result.verified_pdf_path = rel
    browser.refresh()
    browser.find_element(By.CSS_SELECTOR, "[data-pdf=verified]").click()
    verified = downloaded(browser, "*-verified.pdf", what="verified PDF download")
    assert b"VERIFIED Malignant-Pre" in verified.read_bytes()

    navigate(browser, By.LINK_TEXT, "Patients")
    fill(browser, "q", "lovelace")
    navigate(browser, By.XPATH, "//button[text()='Search']")
    navigate(browser, By.LINK_TEXT, "Lovelace, Ada")
    wait_for(lambda: "History" in browser.page_source, what="patient history")
    screenshot("08-patient-history")
    sign_out(browser)

    # The admin reads it all in the audit log.
    sign_in(browser, url, "admin", ADMIN_PASSWORD)
    browser.get(url + "/admin/audit/?user=hopper")
    page = browser.page_source
    for action in ("login", "upload", "view_case", "verify_correct", "download_pdf",
                   "view_patient", "logout"):
        assert f'<td class="action">{action}</td>' in page, action
    screenshot("09-audit-log")
    browser.get(url + "/admin/audit/?action=user_approve")
    assert "user:hopper" in browser.page_source
    browser.get(url + "/admin/audit/")
    navigate(browser, By.ID, "verify-chain")
    wait_for(lambda: "chain is intact" in browser.page_source, what="chain verified")
    browser.get(url + "/admin/system")
    screenshot("10-system")
    browser.get(url + "/admin/statistics")
    assert "<svg" in browser.page_source
    screenshot("11-statistics")
    browser.get(url + "/admin/users/hopper")
    screenshot("12-admin-user")
    # Dangerous buttons ask first (app.js); dismissing sends nothing.
    browser.find_element(By.XPATH, "//button[text()='Disable']").click()
    alert = wait_for(lambda: _alert(browser), what="confirmation")
    assert "Disable hopper?" in alert.text
    alert.dismiss()
    assert "user:hopper" not in [e["object_ref"] for e in _events(live_console, "user_disable")]
    # No script or style was refused by the CSP on the way.
    errors = [e for e in browser.get_log("browser") if "Content Security Policy" in e["message"]
              or "inline" in e["message"]]
    assert errors == []
