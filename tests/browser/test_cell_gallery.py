"""The cell gallery in Chromium (issue 15): a doctor sorts a field's cells, shows one on the
zoomable field, rejects one as "not a blast" (the counts follow) and verifies the field; Orthanc
then signs the case; Orthanc then holds the corrected SEG, the field's VERIFIED SR and the signed
summary SR, both with the corrected count, and the signed PDF.

The field is a synthetic smear; the analysis runs the node's pipeline with a test double of the
model that marks the smear's true blasts (so the cells are known), in the test's thread;
delivery is the node's deliverer, to a real Orthanc.
"""

from __future__ import annotations

import io
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import pydicom
import pytest
from sqlalchemy import select, update

from bcd_node.analysis.summary import enqueue_study_summaries
from bcd_node.db.models import Job, JobState, Result, ResultScope, Role, Study, utcnow
from bcd_node.records.cells import split_cells
from dicom.dicomize import dicomize
from tests.support.browser import navigate, sign_in
from tests.support.console import LiveConsole
from tests.support.images import part10_bytes, smear
from tests.support.peers import Orthanc
from tests.support.predictions import KnownMaskAnalyzer
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow,
              pytest.mark.timeout(300)]
PASSWORD = "doctor-password-123"
STUDY = "2.25.7070707070707"


@pytest.fixture
def console(start_console: Callable[..., LiveConsole], orthanc: Orthanc) -> LiveConsole:
    """A node whose one destination is the Orthanc, with a doctor."""
    return start_console(
        f'[[destinations]]\nname = "orthanc"\nae_title = "{orthanc.ae_title}"\n'
        f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n',
        user=("osler", PASSWORD, Role.DOCTOR, "Dr. William Osler"))


def drain(context: Any, analyzer: KnownMaskAnalyzer) -> list[Job]:
    """Run every queued job with the node's pipeline and the test double, in this thread."""
    from bcd_node.analysis.pipeline import Pipeline
    from bcd_node.jobs.workers import Workers

    workers = Workers(context, Pipeline(context, analyzer).run, count=0)
    while workers.step("browser-test"):
        pass
    with context.session_factory() as session:
        return list(session.execute(select(Job).order_by(Job.id)).scalars())


def deliver(context: Any, orthanc: Orthanc, count: int) -> list[dict[str, Any]]:
    """Send the outbox to the Orthanc until it holds ``count`` instances."""
    from bcd_node.delivery.outbox import Deliverer

    deliverer = Deliverer(context)

    def arrived() -> list[dict[str, Any]] | None:
        deliverer.run_once()
        found = orthanc.instances()
        return found if len(found) >= count else None

    return wait_for(arrived, 60, what=f"{count} instances at Orthanc")


def orthanc_file(orthanc: Orthanc, sop_instance_uid: str) -> pydicom.Dataset:
    [found] = [i for i in orthanc.get("/instances")
               if orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
               == sop_instance_uid]
    url = f"http://127.0.0.1:{orthanc.http_port}/instances/{found}/file"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return pydicom.dcmread(io.BytesIO(answer.read()))


def test_reject_a_cell_in_the_gallery_and_verify(console: LiveConsole, orthanc: Orthanc,
                                                 browser: Any,
                                                 screenshot: Callable[[str], Path]) -> None:
    from selenium.webdriver.common.by import By

    from bcd_node.intake.intake import Intake

    ctx = console.context
    image, mask = smear(21, "Malignant-Pro", 512)
    analyzer = KnownMaskAnalyzer(mask)
    cells = split_cells(analyzer.mask, min_area=160).cells
    assert len(cells) >= 3, "the smear should have a few blasts"
    field = dicomize(image, patient_id="PAT-G", patient_name="Gallery^Test",
                     study_instance_uid=STUDY, specimen_id="SLIDE-G", stain="Wright-Giemsa")
    with Intake(ctx) as intake:
        intake.accept(part10_bytes(field))
    assert [j.state for j in drain(ctx, analyzer)] == [JobState.DONE]
    deliver(ctx, orthanc, 3)  # the AI's SEG, SR and PDF
    with ctx.session_factory() as session:
        result = session.execute(select(Result)).scalar_one()
        rid, ai_count = result.id, result.blast_count

    sign_in(browser, console.url, "osler", PASSWORD)
    browser.get(f"{console.url}/studies/{STUDY}")
    items = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "[data-gallery] li.cell"),
                     what="the gallery's cells")
    assert len(items) == len(cells)
    # The crops are drawn from the picture the field viewer loaded: one download of the field.
    wait_for(lambda: len(browser.find_elements(
        By.CSS_SELECTOR, "[data-gallery] canvas[data-drawn='true']")) == len(cells),
        what="the crops drawn")
    assert browser.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(function (e) { return e.name.indexOf('/image.png') >= 0; }).length") == 1

    def shown(attribute: str) -> list[float]:
        return [float(li.get_attribute(attribute)) for li in
                browser.find_elements(By.CSS_SELECTOR, "[data-gallery] li.cell")]

    browser.find_element(By.CSS_SELECTOR, "[data-sort=score]").click()
    assert shown("data-score") == sorted(shown("data-score"), reverse=True)
    browser.find_element(By.CSS_SELECTOR, "[data-sort=size]").click()
    sizes = shown("data-area")
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    # The smallest cell (last by size) is the one the doctor rejects.
    target = browser.find_elements(By.CSS_SELECTOR, "[data-gallery] li.cell")[-1] \
        .get_attribute("data-cell")

    # A crop shows its cell on the zoomable field.
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".viewer[data-ready='true']"),
             what="the field viewer")
    browser.find_element(By.CSS_SELECTOR, f"li.cell[data-cell='{target}'] .crop").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR,
                                           f".viewer[data-shown-cell='{target}']"),
             what="the cell shown on the field")
    assert browser.find_elements(By.CSS_SELECTOR, f".viewer .cell-mark[data-cell='{target}']")

    # Not a blast: the field's and the case's counts follow, and it can be taken back.
    area = browser.find_element(By.CSS_SELECTOR, f"[data-field-area='{rid}']")
    area_before = area.text
    browser.find_element(By.CSS_SELECTOR,
                         f"li.cell[data-cell='{target}'] [data-action=reject]").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR,
                                                 f"li.cell.rejected[data-cell='{target}']"),
             what="the cell rejected")

    def counts() -> set[str]:
        return {el.text for el in browser.find_elements(
            By.CSS_SELECTOR, f"[data-field-count='{rid}'], [data-case-count]")}

    after = str(len(cells) - 1)
    wait_for(lambda: counts() == {after}, what="the counts after the rejection")
    wait_for(lambda: area.text != area_before, what="the field's area after the rejection")
    browser.find_element(By.CSS_SELECTOR,
                         f"li.cell[data-cell='{target}'] [data-action=restore]").click()
    wait_for(lambda: counts() == {str(ai_count)}, what="the counts after the undo")
    browser.find_element(By.CSS_SELECTOR,
                         f"li.cell[data-cell='{target}'] [data-action=reject]").click()
    wait_for(lambda: counts() == {after}, what="the counts after the second rejection")
    browser.execute_script("document.querySelector('[data-gallery]').scrollIntoView()")
    screenshot("15-cell-gallery")
    # The page, reloaded, shows what was stored.
    browser.refresh()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR,
                                                 f"li.cell.rejected[data-cell='{target}']"),
             what="the rejection after a reload")
    assert counts() == {after}

    # The study is quiet: its summary is made; the doctor signs the case, accepting its stage.
    # The field with the rejected cell is verified with it (its corrected SEG and VERIFIED SR),
    # and the signed summary counts without the rejected cell.
    with ctx.session_factory.begin() as session:
        session.execute(update(Study).values(last_received_at=utcnow() - timedelta(hours=1)))
    assert enqueue_study_summaries(ctx) == 1
    assert [j.state for j in drain(ctx, analyzer)] == [JobState.DONE] * 2
    deliver(ctx, orthanc, 5)  # + the summary SR and PDF
    browser.get(f"{console.url}/cases/{STUDY}")
    navigate(browser, By.ID, "sign-case")
    wait_for(lambda: "Case signed" in browser.page_source, what="the case signed")
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-gallery] [data-action]")
    jobs = drain(ctx, analyzer)
    assert all(j.state == JobState.DONE for j in jobs), [j.last_error for j in jobs]
    # + the corrected SEG, the field's VERIFIED SR and PDF, the signed summary SR and PDF
    found = deliver(ctx, orthanc, 10)
    with ctx.session_factory() as session:
        result = session.get(Result, rid)
        corrected_uid = result.corrected_seg_sop_instance_uid
        verified_uid = result.verified_sr_sop_instance_uid
        summary = session.execute(select(Result).where(
            Result.scope == ResultScope.STUDY)).scalar_one()
        signed_uid = summary.verified_sr_sop_instance_uid
    assert corrected_uid and verified_uid and signed_uid
    assert {corrected_uid, verified_uid, signed_uid} <= {i["SOPInstanceUID"] for i in found}

    seg = orthanc_file(orthanc, corrected_uid)
    assert seg.Modality == "SEG" and int(seg.SeriesNumber) == 908
    sr = orthanc_file(orthanc, verified_uid)
    assert sr.VerificationFlag == "VERIFIED"
    assert _counts(sr) == [len(cells) - 1]
    segments = [item for item in _walk(sr) if item.get("ValueType") == "IMAGE"
                and "ReferencedSOPSequence" in item
                and item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == corrected_uid]
    assert segments, "the VERIFIED SR references the corrected SEG"
    assessments = [item.ConceptCodeSequence[0].CodeValue for item in _walk(sr)
                   if item.get("ValueType") == "CODE"
                   and item.ConceptNameCodeSequence[0].CodeValue == "AI-ASSESSMENT"]
    assert assessments == ["AI-MODIFIED"]
    signed = orthanc_file(orthanc, signed_uid)
    assert (signed.VerificationFlag, signed.CompletionFlag) == ("VERIFIED", "COMPLETE")
    assert _counts(signed) == [len(cells) - 1]  # the case's total, the rejected cell off
    signed_pdfs = [i for i in found if i.get("DocumentTitle")
                   == "Blood smear study summary, signed"]
    assert len(signed_pdfs) == 1
    browser.get(f"{console.url}/studies/{STUDY}")
    screenshot("16-cell-gallery-verified")


def _counts(sr: pydicom.Dataset) -> list[float]:
    """The blast counts an SR states."""
    return [float(item.MeasuredValueSequence[0].NumericValue) for item in _walk(sr)
            if item.get("ValueType") == "NUM"
            and item.ConceptNameCodeSequence[0].CodeValue == "BLAST-COUNT"]


def _walk(ds: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _walk(item)
