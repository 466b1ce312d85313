"""The case page: the conclusion, the fields as thumbnails, one field large, Sign case; its
live state; and an audit log an auditor can read (one view per page, one event per download)."""

from __future__ import annotations

import html
import io
import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from bcd_node.db.models import AuditEvent, Job, JobKind, Result, Study, StudyStatus
from tests.support.seed import add_case
from tests.support.web import csrf_token

UID = "1.2.826.0.1.3680043.10.7.1"


@pytest.fixture
def case(app: Flask) -> dict[str, Any]:
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        study, summary = add_case(session, ctx.settings.storage.data_dir, fields=4,
                                  stages=("Malignant-Pre", "Malignant-Pre", "Benign"))
        return {"study_id": study.id, "summary_id": summary.id}


def _events(app: Flask) -> list[AuditEvent]:
    with app.extensions["bcd_node"].session_factory() as session:
        return list(session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars())


def test_the_case_page_leads_with_the_conclusion_and_signs_in_one_click(
        app: Flask, doctor_client: FlaskClient, case: dict[str, Any]) -> None:
    page = doctor_client.get(f"/cases/{UID}").get_data(as_text=True)
    conclusion = page.index("Case conclusion")
    assert conclusion < page.index("Fields") < page.index('id="field"')
    assert "Awaiting review" in page and "AI case stage" in page
    # The one confidence of the case: the mean probability of its stage over the fields.
    with app.extensions["bcd_node"].session_factory() as session:
        study = session.get(Study, case["study_id"])
        summary = session.get(Result, case["summary_id"])
    assert study.confidence == pytest.approx(summary.confidence)
    assert f"confidence {study.confidence * 100:.0f} %" in page
    assert len(re.findall(r'class="thumb[ "]', page)) == 4
    assert 'id="sign-case"' in page and "live.js" in page
    # Sign: accept the AI's stage, one click.
    resp = doctor_client.post(f"/cases/{UID}/sign", data={
        "csrf_token": csrf_token(doctor_client, f"/cases/{UID}"), "decision": "accept"})
    assert resp.status_code == 302
    with app.extensions["bcd_node"].session_factory() as session:
        study = session.get(Study, case["study_id"])
        summary = session.get(Result, case["summary_id"])
        job = session.execute(select(Job)).scalar_one()
    assert study.status == StudyStatus.SIGNED and summary.verification == "verified"
    assert (job.kind, job.result_fk) == (JobKind.VERIFIED_REPORT, summary.id)
    page = doctor_client.get(f"/cases/{UID}").get_data(as_text=True)
    assert "data-signed" in page and "data-report-pending" in page
    assert 'id="sign-case"' not in page
    assert [e.action for e in _events(app) if e.action.startswith("sign_case")] == [
        "sign_case_accept"]


def test_a_correction_of_the_case_stage_needs_a_stage_and_is_signed_with_correction(
        app: Flask, doctor_client: FlaskClient, case: dict[str, Any]) -> None:
    token = csrf_token(doctor_client, f"/cases/{UID}")
    doctor_client.post(f"/cases/{UID}/sign", data={"csrf_token": token, "decision": "correct"})
    with app.extensions["bcd_node"].session_factory() as session:
        assert session.get(Study, case["study_id"]).status == StudyStatus.AWAITING_REVIEW
    doctor_client.post(f"/cases/{UID}/sign", data={
        "csrf_token": token, "decision": "correct", "stage": "Malignant-Pro",
        "comment": "Blasts throughout."})
    with app.extensions["bcd_node"].session_factory() as session:
        assert session.get(Study, case["study_id"]).status == StudyStatus.SIGNED_CORRECTED
    state = doctor_client.get(f"/cases/{UID}/state.json").get_json()
    assert state["status_label"] == "Signed with correction" and state["signed"]


def test_a_comment_with_line_breaks_as_browsers_send_them_fits_its_maxlength(
        app: Flask, doctor_client: FlaskClient, case: dict[str, Any]) -> None:
    """The textarea's maxlength counts a line break as one character, the browser sends it as
    CRLF: 1961 characters on 40 lines are 2000 typed, 2039 sent; accepted, stored with LF."""
    page = doctor_client.get(f"/cases/{UID}").get_data(as_text=True)
    assert re.search(r'<textarea[^>]*maxlength="2000"[^>]*name="comment"', page)
    lines = [f"{n:02d}" + "x" * 47 for n in range(39)] + ["y" * 50]
    typed = "\n".join(lines)
    assert len(typed) == 2000
    resp = doctor_client.post(f"/cases/{UID}/sign", data={
        "csrf_token": csrf_token(doctor_client, f"/cases/{UID}"), "decision": "accept",
        "comment": typed.replace("\n", "\r\n")})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    with app.extensions["bcd_node"].session_factory() as session:
        summary = session.get(Result, case["summary_id"])
    assert summary.verification == "verified" and summary.verified_comment == typed


def _textarea(page: str, name: str) -> str:
    match = re.search(rf'<textarea[^>]*name="{name}"[^>]*>(.*?)</textarea>', page, re.S)
    assert match, f"no textarea {name}"
    return html.unescape(match.group(1)).lstrip("\r\n")


def test_a_refused_field_verification_comes_back_as_typed_on_the_case_page(
        app: Flask, doctor_client: FlaskClient, case: dict[str, Any]) -> None:
    """A field's "Correct" without a stage, sent from the case page: that page again (400), on
    the same field, the comment as typed and the error at the stage; nothing verified."""
    with app.extensions["bcd_node"].session_factory() as session:
        field_results = session.execute(select(Result.id).where(
            Result.study_fk == case["study_id"], Result.scope == "instance")
            .order_by(Result.id)).scalars().all()
    rid = field_results[1]  # field 2
    comment = "Two blasts at the edge;\r\nsee the <i>lower</i> left & repeat."
    resp = doctor_client.post(f"/results/{rid}/verify", data={
        "csrf_token": csrf_token(doctor_client, f"/cases/{UID}?field=2"), "back": "case",
        "field": "2", f"r{rid}-decision": "correct", f"r{rid}-comment": comment})
    assert resp.status_code == 400
    page = resp.get_data(as_text=True)
    assert _textarea(page, f"r{rid}-comment") == comment.replace("\r\n", "\n")
    assert re.search(r'class="thumb [^"]*current[^"]*" data-field="2"', page)
    assert "Choose the corrected stage." in page
    with app.extensions["bcd_node"].session_factory() as session:
        assert session.get(Result, rid).verification == "unverified"
    # Sent again with the stage: verified, back to the same field (Post/Redirect/Get).
    resp = doctor_client.post(f"/results/{rid}/verify", data={
        "csrf_token": csrf_token(doctor_client, f"/cases/{UID}?field=2"), "back": "case",
        "field": "2", f"r{rid}-decision": "correct", f"r{rid}-stage": "Malignant-Pro",
        f"r{rid}-comment": comment})
    assert resp.status_code == 302 and resp.headers["Location"] == f"/cases/{UID}?field=2#field"
    with app.extensions["bcd_node"].session_factory() as session:
        assert session.get(Result, rid).verified_stage == "Malignant-Pro"


def test_a_refused_signature_comes_back_as_typed_with_the_error_at_its_field(
        app: Flask, doctor_client: FlaskClient, case: dict[str, Any]) -> None:
    """"Correct" without a stage: the case page again (400), the comment and the decision as
    the doctor left them, the error next to the stage; nothing signed."""
    comment = "Blasts in fields 2 and 3;\r\nsee <b>field 3</b> & repeat."
    resp = doctor_client.post(f"/cases/{UID}/sign", data={
        "csrf_token": csrf_token(doctor_client, f"/cases/{UID}?field=2"), "decision": "correct",
        "comment": comment, "field": "2"})
    assert resp.status_code == 400
    page = resp.get_data(as_text=True)
    assert _textarea(page, "comment") == comment.replace("\r\n", "\n")
    assert re.search(r'<option selected value="correct">|<option value="correct" selected',
                     page)
    stage_field = re.search(r'<div class="field has-error">\s*<label for="stage".*?</div>', page,
                            re.S)
    assert stage_field and "Choose the corrected stage." in stage_field.group(0)
    assert "The case was not signed" in page
    assert re.search(r'class="thumb [^"]*current[^"]*" data-field="2"', page)  # as shown
    with app.extensions["bcd_node"].session_factory() as session:
        assert session.get(Result, case["summary_id"]).verification == "unverified"
    # Corrected and sent again from that page: signed, then Post/Redirect/Get.
    resp = doctor_client.post(f"/cases/{UID}/sign", data={
        "csrf_token": csrf_token(doctor_client, f"/cases/{UID}"), "decision": "correct",
        "stage": "Malignant-Pro", "comment": comment})
    assert resp.status_code == 302 and resp.headers["Location"] == f"/cases/{UID}"
    with app.extensions["bcd_node"].session_factory() as session:
        assert session.get(Result, case["summary_id"]).verified_comment == \
            comment.replace("\r\n", "\n")


def test_a_case_still_receiving_cannot_be_signed_and_says_when_its_summary_comes(
        app: Flask, doctor_client: FlaskClient, case: dict[str, Any]) -> None:
    with app.extensions["bcd_node"].session_factory.begin() as session:
        study = session.get(Study, case["study_id"])
        study.summary_done_at = None
        study.status = StudyStatus.ANALYSING
    page = doctor_client.get(f"/cases/{UID}").get_data(as_text=True)
    assert "Still receiving" in page and "data-summary-due" in page
    assert 'id="sign-case"' not in page
    doctor_client.post(f"/cases/{UID}/sign", data={
        "csrf_token": csrf_token(doctor_client, f"/cases/{UID}"), "decision": "accept"})
    with app.extensions["bcd_node"].session_factory() as session:
        assert session.get(Result, case["summary_id"]).verification == "unverified"
    assert doctor_client.get(f"/cases/{UID}/state.json").get_json()["summary_due"]


def test_one_case_review_is_one_view_event_plus_one_per_download(
        app: Flask, doctor_client: FlaskClient, case: dict[str, Any]) -> None:
    before = len(_events(app))
    page = doctor_client.get(f"/cases/{UID}").get_data(as_text=True)
    # Everything the page shows: thumbnails, the large field and its overlay (which the
    # zoomable viewer loads), the field's cells (the gallery); and its polling.
    pictures = re.findall(r'<img[^>]+src="([^"]+)"', page)
    pictures += [url for url in re.findall(
        r'data-(?:image|overlay|cells)-url="([^"]*)"', page) if url]
    assert len(pictures) >= 7
    for src in pictures:
        assert doctor_client.get(src.replace("&amp;", "&")).status_code == 200, src
    for _ in range(3):
        assert doctor_client.get(f"/cases/{UID}/state.json").status_code == 200
    # Two downloads.
    downloads = [f"/results/{case['summary_id']}/report.pdf?version=ai"]
    downloads += [href.replace("&amp;", "&")
                  for href in re.findall(r'href="([^"]+download=1)"', page)]
    assert len(downloads) == 2
    for url in downloads:
        assert doctor_client.get(url).status_code == 200, url
    events = _events(app)[before:]
    assert [e.action for e in events] == ["view_case", "download_pdf", "download_image"]
    assert {e.study_instance_uid for e in events} == {UID}


def test_thumbnails_are_small_and_gone_with_their_image(app: Flask, doctor_client: FlaskClient,
                                                        case: dict[str, Any]) -> None:
    from PIL import Image

    from bcd_node.db.models import Instance

    with app.extensions["bcd_node"].session_factory() as session:
        inst = session.execute(select(Instance).order_by(Instance.id)).scalars().first()
        iid = inst.id
    first = doctor_client.get(f"/instances/{iid}/thumb.png")
    assert first.status_code == 200
    assert max(Image.open(io.BytesIO(first.data)).size) <= 320
    assert doctor_client.get(f"/instances/{iid}/thumb.png").data == first.data
    with app.extensions["bcd_node"].session_factory.begin() as session:
        session.get(Instance, iid).path = ""  # purged by retention
    assert doctor_client.get(f"/instances/{iid}/thumb.png").status_code == 404


def test_a_failed_signed_report_is_shown_and_can_be_made_again(
        app: Flask, doctor_client: FlaskClient, case: dict[str, Any]) -> None:
    from bcd_node.db.models import JobState
    from bcd_node.records.studies import refresh_study

    doctor_client.post(f"/cases/{UID}/sign", data={
        "csrf_token": csrf_token(doctor_client, f"/cases/{UID}"), "decision": "accept"})
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        job = session.execute(select(Job)).scalar_one()
        job.state, job.last_error = JobState.FAILED, "disk full"
        session.flush()
        refresh_study(session, case["study_id"])
    page = doctor_client.get(f"/cases/{UID}").get_data(as_text=True)
    assert "data-report-failed" in page and "disk full" in page and "Failed" in page
    assert "data-report-pending" not in page  # not "being made" forever
    doctor_client.post(f"/cases/{UID}/retry-report",
                       data={"csrf_token": csrf_token(doctor_client, f"/cases/{UID}")})
    with ctx.session_factory() as session:
        jobs = session.execute(select(Job).order_by(Job.id)).scalars().all()
        study = session.get(Study, case["study_id"])
    assert [j.state for j in jobs] == [JobState.FAILED, JobState.QUEUED]
    assert jobs[1].kind == JobKind.VERIFIED_REPORT and study.status == StudyStatus.SIGNED
    assert [e.action for e in _events(app)].count("signed_report_retry") == 1
    # Nothing to make again now.
    doctor_client.post(f"/cases/{UID}/retry-report",
                       data={"csrf_token": csrf_token(doctor_client, f"/cases/{UID}")})
    with ctx.session_factory() as session:
        assert len(session.execute(select(Job)).all()) == 2


def test_a_signed_case_is_amended_with_a_reason_and_shows_the_amendment(
        app: Flask, doctor_client: FlaskClient, admin_client: FlaskClient,
        case: dict[str, Any]) -> None:
    ctx = app.extensions["bcd_node"]
    token = csrf_token(doctor_client, f"/cases/{UID}")
    doctor_client.post(f"/cases/{UID}/sign", data={"csrf_token": token, "decision": "accept"})
    # Not while the signed report is being made.
    assert 'id="amend-case"' not in doctor_client.get(f"/cases/{UID}").get_data(as_text=True)
    with ctx.session_factory.begin() as session:  # made, as the worker's job records it
        summary = session.get(Result, case["summary_id"])
        summary.verified_sr_sop_instance_uid = "1.2.826.0.1.3680043.10.7.9"
        summary.verified_pdf_path = "signed.pdf"
    page = doctor_client.get(f"/cases/{UID}").get_data(as_text=True)
    assert 'id="amend-case"' in page and "Amend the signed report" in page
    amend = {"amend-csrf_token": token, "amend-decision": "correct",
             "amend-stage": "Malignant-Pro", "amend-comment": "Pro-B on second look."}
    # Without a reason: a message that says so, the form open as the doctor filled it in,
    # and nothing changed.
    resp = doctor_client.post(f"/cases/{UID}/amend", data=amend)
    page = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "Give the reason for the amendment." in page
    assert "<details class=\"amend\" data-amend open>" in page
    assert _textarea(page, "amend-comment") == "Pro-B on second look."
    assert re.search(r'<option selected value="Malignant-Pro">|'
                     r'<option value="Malignant-Pro" selected', page)
    with ctx.session_factory() as session:
        summary = session.get(Result, case["summary_id"])
        assert (summary.amends, summary.verified_stage) == (None, "Malignant-Pre")
    # An administrator cannot amend.
    assert admin_client.post(f"/cases/{UID}/amend", data={
        **amend, "amend-csrf_token": csrf_token(admin_client, f"/cases/{UID}"),
        "amend-reason": "x"}).status_code == 403
    page = doctor_client.post(f"/cases/{UID}/amend", data={
        **amend, "amend-reason": "Wrong stage signed."},
        follow_redirects=True).get_data(as_text=True)
    assert "Amendment signed." in page
    # No LIS is configured: the message names none.
    assert "replaces the earlier signed report there." in page
    assert "laboratory system" not in page
    with ctx.session_factory() as session:
        summary = session.get(Result, case["summary_id"])
        study = session.get(Study, case["study_id"])
        jobs = session.execute(select(Job).where(Job.kind == JobKind.VERIFIED_REPORT)).all()
    assert (summary.verified_stage, summary.verified_comment) == ("Malignant-Pro",
                                                                  "Pro-B on second look.")
    assert summary.amends["reason"] == "Wrong stage signed."
    assert summary.amends["sr"] == "1.2.826.0.1.3680043.10.7.9"
    assert study.status == StudyStatus.SIGNED_CORRECTED and len(jobs) == 2
    assert "data-amended" in page and "Wrong stage signed." in page
    assert "data-report-pending" in page and 'id="amend-case"' not in page
    assert [e.action for e in _events(app) if e.action.startswith("amend_case")] == [
        "amend_case_correct"]


def test_fields_that_disagree_are_counted_by_stage_on_the_case_page(
        doctor_client: FlaskClient, case: dict[str, Any]) -> None:
    """The AI's case stage is a vote of the fields; when they disagree, the page says how
    (a tie went to the more advanced stage, with a low mean probability and no word why)."""
    page = doctor_client.get(f"/cases/{UID}").get_data(as_text=True)
    votes = re.search(r"data-stage-votes[^>]*>([^<]*)<", page)
    assert votes is not None and votes.group(1) == "3 Malignant-Pre, 1 Benign (fields disagree)"


def test_a_case_signed_before_a_field_arrived_says_so(
        app: Flask, doctor_client: FlaskClient, case: dict[str, Any]) -> None:
    """A field that arrives after signing makes a new summary, which clears the signature: the
    case page said nothing of the earlier one. It shows it now, from the audit log."""
    from bcd_node.records.revisions import clear_verification
    from bcd_node.records.studies import refresh_study

    doctor_client.post(f"/cases/{UID}/sign", data={
        "csrf_token": csrf_token(doctor_client, f"/cases/{UID}"), "decision": "correct",
        "stage": "Malignant-Pro"})
    assert 'data-signed-before' not in doctor_client.get(f"/cases/{UID}").get_data(as_text=True)
    with app.extensions["bcd_node"].session_factory.begin() as session:  # a new summary
        clear_verification(session.get(Result, case["summary_id"]))
        session.flush()
        refresh_study(session, case["study_id"])
    page = doctor_client.get(f"/cases/{UID}").get_data(as_text=True)
    assert 'id="sign-case"' in page
    note = re.search(r"data-signed-before>([^<]*)<", page)
    assert note is not None and note.group(1).startswith("Signed before by doctor, ")
    assert ", as Malignant-Pro. A field arrived or changed since" in note.group(1)


def test_a_case_no_field_could_diagnose_is_signed_as_reviewed_without_a_stage(
        app: Flask, doctor_client: FlaskClient, case: dict[str, Any]) -> None:
    with app.extensions["bcd_node"].session_factory.begin() as session:
        for result in session.execute(select(Result)).scalars():
            result.stage, result.probabilities, result.confidence = None, None, None
            result.sr_sop_instance_uid = None
    page = doctor_client.get(f"/cases/{UID}").get_data(as_text=True)
    assert "data-no-stage" in page and "Sign as reviewed" in page
    assert 'name="stage"' not in page.split('id="sign-case"')[0].split("Sign case</h3>")[1]
    resp = doctor_client.post(f"/cases/{UID}/sign", data={
        "csrf_token": csrf_token(doctor_client, f"/cases/{UID}"), "decision": "accept"})
    assert resp.status_code == 302
    with app.extensions["bcd_node"].session_factory() as session:
        summary = session.get(Result, case["summary_id"])
        assert (summary.verification, summary.verified_stage) == ("verified", None)
