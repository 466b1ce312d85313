"""Doctor's pages: worklist, review, verification, images, PDFs, patients, upload."""

from __future__ import annotations

import html
import io
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select

from bcd_node.db.models import AuditEvent, Instance, Job, JobKind, Result, Study
from bcd_node.errors import PermanentError
from bcd_node.report.pictures import laid_over
from tests.support.seed import add_analysed_study, add_study, png_bytes, seed_worklist, smear_image
from tests.support.web import DOCTOR_PASSWORD, post_form

UID = "1.2.826.0.1.3680043.10.1.1"


@pytest.fixture
def analysed(app: Flask) -> dict[str, Any]:
    """One analysed study (low confidence) with overlay, mask, preview and PDF."""
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        study, inst, result = add_analysed_study(session, ctx.settings.storage.data_dir, uid=UID)
        return {"study_id": study.id, "instance_id": inst.id, "result_id": result.id}


def audit_rows(app: Flask, action: str) -> list[AuditEvent]:
    with app.extensions["bcd_node"].session_factory() as session:
        return list(session.execute(select(AuditEvent).where(AuditEvent.action == action)
                                    .order_by(AuditEvent.id)).scalars())


def test_worklist_filters_and_pages(app: Flask, doctor_client: FlaskClient) -> None:
    ctx = app.extensions["bcd_node"]
    app.config["PAGE_SIZE"] = 25
    with ctx.session_factory.begin() as session:
        seed_worklist(session, 120)
        add_study(session, patient_id="X-42", name="Lovelace^Ada", uid="9.9.9", status="failed")
    page = doctor_client.get("/worklist").get_data(as_text=True)
    assert "121 in all" in page and "page 1 of 5" in page
    page = doctor_client.get("/worklist?patient=lovelace").get_data(as_text=True)
    assert "Lovelace, Ada" in page and "1 in all" in page
    page = doctor_client.get("/worklist?patient=X-42&status=failed").get_data(as_text=True)
    assert "1 in all" in page
    page = doctor_client.get("/worklist?page=2").get_data(as_text=True)
    assert "page 2 of 5" in page
    # A page beyond the last (however large the number) shows the last one.
    for beyond in ("6", "99999999999999999999", "1" * 400):
        page = doctor_client.get(f"/worklist?page={beyond}").get_data(as_text=True)
        assert "page 5 of 5" in page, beyond
    with ctx.session_factory() as session:
        n_verified = len(session.execute(select(Study.id).where(
            Study.status == "signed")).all())
    assert f"{n_verified} in all" in doctor_client.get("/worklist?status=signed").get_data(
        as_text=True)
    assert "0 in all" in doctor_client.get("/worklist?from=2000-01-01&to=2000-01-02").get_data(
        as_text=True)
    assert doctor_client.get("/worklist?from=nonsense&page=x").status_code == 200


def test_review_page_shows_findings_and_warning(app: Flask, doctor_client: FlaskClient,
                                                analysed: dict[str, Any]) -> None:
    page = doctor_client.get(f"/studies/{UID}").get_data(as_text=True)
    assert "Malignant-Pre" in page and "Low confidence" in page
    assert f"/results/{analysed['result_id']}/overlay.png" in page
    assert f"/results/{analysed['result_id']}/mask.png" in page
    assert "review.js" in page and "data-opacity" in page
    assert "Blast cells" in page and "55.0 %" in page
    rows = audit_rows(app, "view_study")
    assert rows[-1].actor == "doctor" and rows[-1].patient_id == "P0001" \
        and rows[-1].study_instance_uid == UID and rows[-1].source == "127.0.0.1"


def test_quality_insufficient_is_shown(app: Flask, doctor_client: FlaskClient,
                                       analysed: dict[str, Any]) -> None:
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        result = session.get(Result, analysed["result_id"])
        result.stage = None
        result.confidence = None
        result.quality = {"status": "insufficient", "flags": ["too_blurry"], "measures": {}}
    page = doctor_client.get(f"/studies/{UID}").get_data(as_text=True)
    assert "Quality insufficient" in page and "too blurry" in page


def test_review_reasons_are_shown(app: Flask, doctor_client: FlaskClient,
                                  analysed: dict[str, Any]) -> None:
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        result = session.get(Result, analysed["result_id"])
        result.confidence = 0.97
        result.needs_review = True
        result.review_reasons = ["unlike the training data", "scale unknown",
                                 "blast cells found, stage Benign"]
        result.um_per_pixel, result.scale_source = 0.25, "default"
        result.stage, result.blast_count = "Benign", 3
    page = doctor_client.get(f"/studies/{UID}").get_data(as_text=True)
    assert "Unlike the training data" in page and "Scale unknown" in page
    assert "taken as 0.25 µm per pixel" in page
    assert "Blast cells found, stage Benign: 3 blast cell(s) were segmented" in page
    assert "Flagged for review by the pipeline" not in page and "Low confidence" not in page


def test_a_downloaded_overlay_is_the_field_with_the_blasts_marked(
        app: Flask, doctor_client: FlaskClient, analysed: dict[str, Any]) -> None:
    rid, iid = analysed["result_id"], analysed["instance_id"]

    def picture(url: str) -> Image.Image:
        resp = doctor_client.get(url)
        assert resp.status_code == 200, url
        return Image.open(io.BytesIO(resp.data))

    # The viewer lays the stored layer over the field; a download is the picture itself.
    layer = picture(f"/results/{rid}/overlay.png")
    assert layer.mode == "RGBA"
    field = np.asarray(picture(f"/instances/{iid}/image.png").convert("RGB"))
    downloaded = picture(f"/results/{rid}/overlay.png?download=1")
    assert downloaded.mode == "RGB"
    assert np.array_equal(np.asarray(downloaded), laid_over(field, np.asarray(layer)))
    blasts = np.asarray(layer)[..., 3] > 0
    assert blasts.any() and not np.array_equal(np.asarray(downloaded)[blasts], field[blasts])
    assert np.array_equal(np.asarray(downloaded)[~blasts], field[~blasts])
    # An overlay stored by an earlier version is that picture already: downloaded as it is.
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory() as session:
        stored = ctx.settings.storage.data_dir / session.get(Result, rid).overlay_path
    earlier = png_bytes(np.asarray(downloaded)[::-1].copy())
    stored.write_bytes(earlier)
    assert doctor_client.get(f"/results/{rid}/overlay.png?download=1").data == earlier


def test_images_and_pdf_are_served_and_downloads_audited(
        app: Flask, doctor_client: FlaskClient, analysed: dict[str, Any]) -> None:
    rid, iid = analysed["result_id"], analysed["instance_id"]
    urls = (f"/instances/{iid}/image.png", f"/results/{rid}/overlay.png",
            f"/results/{rid}/mask.png")
    for url in (*urls, f"/instances/{iid}/thumb.png"):
        resp = doctor_client.get(url)
        assert resp.status_code == 200 and resp.data.startswith(b"\x89PNG"), url
        assert resp.headers["Cache-Control"] == "no-store"
    # Pictures shown on a page are part of that page's one audited view...
    assert audit_rows(app, "download_image") == []
    # ... a download is an event of its own.
    for url in urls:
        resp = doctor_client.get(url + "?download=1")
        assert "attachment" in resp.headers["Content-Disposition"]
    resp = doctor_client.get(f"/results/{rid}/report.pdf?version=ai")
    assert resp.status_code == 200 and resp.data.startswith(b"%PDF")
    assert "attachment" in resp.headers["Content-Disposition"]
    assert [r.object_ref for r in audit_rows(app, "download_image")] == [
        f"instance:{iid}", f"result:{rid}:overlay", f"result:{rid}:mask"]
    assert audit_rows(app, "download_pdf")[0].patient_id == "P0001"
    assert doctor_client.get("/results/999/report.pdf").status_code == 404
    # No signed report yet: its link never serves the AI's.
    assert doctor_client.get(f"/results/{rid}/report.pdf?version=verified").status_code == 404


def test_image_is_rendered_from_the_stored_dicom(app: Flask, doctor_client: FlaskClient,
                                                 analysed: dict[str, Any]) -> None:
    """Without a cached preview, the stored DICOM file is decoded (through the upload path)."""
    from bcd_node.intake.upload import dicomize_upload_bytes
    ctx = app.extensions["bcd_node"]
    data_dir = ctx.settings.storage.data_dir
    dicom_bytes = dicomize_upload_bytes(png_bytes(smear_image(64)[0]), "x.png",
                                        {"patient_id": "P0001", "patient_name": "Doe^Jane"},
                                        uid_root="2.25")
    (data_dir / "store").mkdir(exist_ok=True)
    (data_dir / f"store/{UID}.dcm").write_bytes(dicom_bytes)
    for preview in (data_dir / "previews").glob(f"{analysed['instance_id']}-*.png"):
        preview.unlink()
    resp = doctor_client.get(f"/instances/{analysed['instance_id']}/image.png")
    assert resp.status_code == 200 and resp.data.startswith(b"\x89PNG")


def test_data_paths_cannot_leave_the_data_folder(app: Flask, doctor_client: FlaskClient,
                                                 analysed: dict[str, Any]) -> None:
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        session.get(Result, analysed["result_id"]).mask_path = "../../../../etc/passwd"
    assert doctor_client.get(f"/results/{analysed['result_id']}/mask.png").status_code == 404


def test_verify_with_correction_keeps_ai_finding_and_queues_report(
        app: Flask, doctor_client: FlaskClient, analysed: dict[str, Any]) -> None:
    rid = analysed["result_id"]
    resp = post_form(doctor_client, f"/studies/{UID}", f"/results/{rid}/verify",
                     {f"r{rid}-decision": "correct", f"r{rid}-stage": "Malignant-Pro",
                      f"r{rid}-comment": "Many blasts in the periphery."})
    assert resp.status_code == 302
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory() as session:
        result = session.get(Result, rid)
        assert result.stage == "Malignant-Pre"  # the AI's own finding stays
        assert (result.verification, result.verified_stage) == ("verified", "Malignant-Pro")
        assert result.verified_comment == "Many blasts in the periphery."
        assert result.verified_by_fk is not None and result.verified_at is not None
        job = session.execute(select(Job)).scalar_one()
        assert job.kind == JobKind.VERIFIED_REPORT and job.result_fk == rid
        study = session.get(Study, analysed["study_id"])
        # A field's correction does not sign the case: its summary does.
        assert study.status == "awaiting_review" and study.stage == "Malignant-Pre"
    event = audit_rows(app, "verify_correct")[0]
    assert event.details["ai_stage"] == "Malignant-Pre"
    assert event.details["verified_stage"] == "Malignant-Pro"
    assert event.patient_id == "P0001" and event.study_instance_uid == UID
    page = doctor_client.get(f"/studies/{UID}").get_data(as_text=True)
    assert "Corrected" in page and "AI said Malignant-Pre" in page
    # A second verification is refused; nothing more is queued.
    post_form(doctor_client, f"/studies/{UID}", f"/results/{rid}/verify",
              {f"r{rid}-decision": "accept"})
    with ctx.session_factory() as session:
        assert len(session.execute(select(Job)).all()) == 1


def test_a_field_verified_with_its_case_is_not_shown_as_accepted(
        app: Flask, doctor_client: FlaskClient, analysed: dict[str, Any]) -> None:
    """Its cells were reviewed with the case, its stage was not: the page says so, the API
    gives no doctor's stage and no correction, and the statistics count no verdict."""
    import base64

    from bcd_node.db.models import User, utcnow

    ctx = app.extensions["bcd_node"]
    rid = analysed["result_id"]
    with ctx.session_factory.begin() as session:
        result = session.get(Result, rid)
        doctor = session.execute(select(User).where(User.username == "doctor")).scalar_one()
        result.verification, result.verified_by_fk = "verified", doctor.id
        result.verified_at, result.verified_with = utcnow(), "case"
    page = doctor_client.get(f"/studies/{UID}").get_data(as_text=True)
    assert "Cells reviewed with the signed case" in page and "data-verified-with-case" in page
    assert "not reviewed on its own" in page
    assert "<strong>Accepted</strong>" not in page and "<strong>Corrected</strong>" not in page
    basic = {"Authorization": "Basic " + base64.b64encode(
        f"doctor:{DOCTOR_PASSWORD}".encode()).decode()}
    one = doctor_client.get(f"/api/v1/results/{rid}", headers=basic).get_json()
    assert (one["verified_with_case"], one["verified_stage"], one["corrected"]) == \
        (True, None, False)


def test_the_worklist_marks_every_case_that_needs_review_with_its_reasons(
        app: Flask, doctor_client: FlaskClient, analysed: dict[str, Any]) -> None:
    """Not only a low confidence: a case whose field is unlike the training data is marked
    too, its reasons in the mark's title, and the live refresh gets them."""
    import re

    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        study = session.get(Study, analysed["study_id"])
        study.confidence = 0.95
        study.attention = ["unlike the training data", "scale unknown"]
    page = doctor_client.get("/worklist").get_data(as_text=True)
    row = re.search(rf'<tr class="([^"]*)" data-uid="{UID}">(.*?)</tr>', page, re.S)
    assert row and "attention" in row.group(1)
    assert 'title="Needs review: unlike the training data; scale unknown"' in row.group(2)
    state = doctor_client.get("/worklist/state.json").get_json()
    [one] = [r for r in state["rows"] if r["uid"] == UID]
    assert one["attention"] == ["unlike the training data", "scale unknown"]
    with ctx.session_factory.begin() as session:  # nothing to review, a good confidence
        session.get(Study, analysed["study_id"]).attention = None
    page = doctor_client.get("/worklist").get_data(as_text=True)
    row = re.search(rf'<tr class="([^"]*)" data-uid="{UID}">(.*?)</tr>', page, re.S)
    assert row and "attention" not in row.group(1) and "data-attention" not in row.group(2)
    with ctx.session_factory.begin() as session:  # a low confidence alone, as before
        session.get(Study, analysed["study_id"]).confidence = 0.3
    [one] = [r for r in doctor_client.get("/worklist/state.json").get_json()["rows"]
             if r["uid"] == UID]
    assert one["attention"] == ["low confidence"]


def test_verify_accept(app: Flask, doctor_client: FlaskClient, analysed: dict[str, Any]) -> None:
    rid = analysed["result_id"]
    post_form(doctor_client, f"/studies/{UID}", f"/results/{rid}/verify",
              {f"r{rid}-decision": "accept"})
    with app.extensions["bcd_node"].session_factory() as session:
        result = session.get(Result, rid)
        assert (result.verification, result.verified_stage) == ("verified", "Malignant-Pre")
        assert session.execute(select(Job.kind)).scalars().all() == [JobKind.VERIFIED_REPORT]
    assert len(audit_rows(app, "verify_accept")) == 1


def test_verify_without_ai_report_queues_nothing(app: Flask, doctor_client: FlaskClient,
                                                 analysed: dict[str, Any]) -> None:
    rid = analysed["result_id"]
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        result = session.get(Result, rid)
        result.stage, result.confidence, result.sr_sop_instance_uid = None, None, None
        result.quality = {"status": "insufficient", "flags": ["too_dark"], "measures": {}}
    # A stage for a field that could not be diagnosed would go nowhere: no report carries it.
    resp = post_form(doctor_client, f"/studies/{UID}", f"/results/{rid}/verify",
                     {f"r{rid}-decision": "correct", f"r{rid}-stage": "Benign"},
                     follow_redirects=True)
    assert "This field could not be diagnosed, so it cannot be given a stage here" in \
        resp.get_data(as_text=True)
    with ctx.session_factory() as session:
        assert session.get(Result, rid).verification == "unverified"
    assert audit_rows(app, "verify_correct") == []
    # Verified as reviewed, it is recorded; nothing is made.
    resp = post_form(doctor_client, f"/studies/{UID}", f"/results/{rid}/verify",
                     {f"r{rid}-decision": "accept"}, follow_redirects=True)
    assert "No verified report is produced" in resp.get_data(as_text=True)
    with ctx.session_factory() as session:
        result = session.get(Result, rid)
        assert (result.verification, result.verified_stage) == ("verified", None)
        assert session.execute(select(Job)).first() is None
    assert audit_rows(app, "verify_accept")[0].details["verified_report"] == "none (no AI SR)"


def test_correction_needs_a_stage(app: Flask, doctor_client: FlaskClient,
                                  analysed: dict[str, Any]) -> None:
    rid = analysed["result_id"]
    comment = "Three blasts & a smudge cell <not counted>."
    resp = post_form(doctor_client, f"/studies/{UID}", f"/results/{rid}/verify",
                     {f"r{rid}-decision": "correct", f"r{rid}-comment": comment})
    # The study page again, the comment as typed: a refusal loses nothing the doctor wrote.
    assert resp.status_code == 400
    page = resp.get_data(as_text=True)
    assert "Choose the corrected stage" in page
    assert html.escape(comment, quote=False) in page
    with app.extensions["bcd_node"].session_factory() as session:
        assert session.get(Result, rid).verification == "unverified"


def test_admin_may_not_verify(admin_client: FlaskClient, analysed: dict[str, Any]) -> None:
    rid = analysed["result_id"]
    resp = post_form(admin_client, f"/studies/{UID}", f"/results/{rid}/verify",
                     {f"r{rid}-decision": "accept"})
    assert resp.status_code == 403


def test_patient_search_and_history(app: Flask, doctor_client: FlaskClient,
                                    analysed: dict[str, Any]) -> None:
    page = doctor_client.get("/patients/?q=doe").get_data(as_text=True)
    assert "Doe, Jane" in page and "1 in all" in page
    with app.extensions["bcd_node"].session_factory() as session:
        pk = session.get(Study, analysed["study_id"]).patient_fk
    page = doctor_client.get(f"/patients/{pk}").get_data(as_text=True)
    assert UID in page and "Malignant-Pre" in page
    assert audit_rows(app, "view_patient")[0].patient_id == "P0001"
    assert audit_rows(app, "search_patients")[0].details["q"] == "doe"
    assert doctor_client.get("/patients/9999").status_code == 404


UPLOAD_FIELDS = {"patient_name": "Doe, John", "patient_id": "P-77", "birth_date": "1980-02-03",
                 "sex": "M"}


def _upload(client: FlaskClient, data: bytes, name: str, **fields: str) -> Any:
    form = {**UPLOAD_FIELDS, **fields, "image": (io.BytesIO(data), name)}
    return post_form(client, "/upload", "/upload", form, content_type="multipart/form-data")


def test_upload_goes_through_the_intake(app: Flask, doctor_client: FlaskClient,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake(context: Any, data: bytes, filename: str, fields: dict[str, str],
             uploaded_by: str) -> Any:
        calls.append((filename, fields, uploaded_by, len(data)))
        return SimpleNamespace(study_instance_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5",
                               patient_id=fields["patient_id"])

    monkeypatch.setattr("bcd_node.intake.intake.accept_upload", fake)
    resp = _upload(doctor_client, png_bytes(smear_image(64)[0]), "smear.png")
    assert resp.status_code == 302 and resp.headers["Location"] == "/studies/1.2.3.4"
    filename, fields, who, _size = calls[0]
    assert (filename, who) == ("smear.png", "doctor")
    assert fields["patient_name"] == "Doe^John" and fields["birth_date"] == "19800203"
    event = audit_rows(app, "upload")[0]
    assert event.outcome == "success" and event.patient_id == "P-77"
    assert event.study_instance_uid == "1.2.3.4"


def test_upload_for_real_queues_an_analysis(app: Flask, doctor_client: FlaskClient) -> None:
    resp = _upload(doctor_client, png_bytes(smear_image(64)[0]), "smear.png")
    assert resp.status_code == 302, resp.get_data(as_text=True)
    with app.extensions["bcd_node"].session_factory() as session:
        study = session.execute(select(Study)).scalar_one()
        assert study.patient.patient_id == "P-77" and study.patient.name == "Doe^John"
        assert session.execute(select(Job.kind)).scalars().all() == [JobKind.ANALYZE]
    page = doctor_client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "Not analysed yet" in page


def test_a_16_bit_greyscale_png_upload_keeps_its_picture(app: Flask,
                                                          doctor_client: FlaskClient) -> None:
    """Not all white: the stored image is the upload's greys scaled from 16 to 8 bits."""
    import cv2
    import pydicom

    grey = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (64, 1))
    ok, png = cv2.imencode(".png", grey)
    assert ok
    resp = _upload(doctor_client, png.tobytes(), "grey16.png")
    assert resp.status_code == 302, resp.get_data(as_text=True)
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory() as session:
        path = ctx.settings.storage.data_dir / session.execute(select(Instance.path)).scalar_one()
    stored = pydicom.dcmread(path).pixel_array
    assert stored.shape == (64, 64, 3)
    for channel in range(3):
        assert np.array_equal(stored[:, :, channel], (grey >> 8).astype(np.uint8))


@pytest.mark.parametrize("data,name,message", [
    (b"GIF89a" + b"\0" * 100, "x.gif", "Only PNG, JPEG or DICOM"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "x.jpg", "content is PNG"),
    (b"", "x.png", "empty"),
])
def test_upload_refuses_bad_files_readably(app: Flask, doctor_client: FlaskClient,
                                           data: bytes, name: str, message: str) -> None:
    resp = _upload(doctor_client, data, name)
    assert resp.status_code == 400 and message in resp.get_data(as_text=True)
    assert audit_rows(app, "upload")[0].outcome == "failure"


def test_upload_reports_intake_errors(doctor_client: FlaskClient,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise PermanentError("smear.png is not a readable PNG or JPEG image")

    monkeypatch.setattr("bcd_node.intake.intake.accept_upload", refuse)
    resp = _upload(doctor_client, b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "smear.png")
    assert resp.status_code == 400 and "not a readable PNG" in resp.get_data(as_text=True)


def test_upload_validates_patient_fields(doctor_client: FlaskClient) -> None:
    resp = _upload(doctor_client, png_bytes(smear_image(64)[0]), "s.png", patient_id="",
                   birth_date="2999-01-01")
    page = resp.get_data(as_text=True)
    assert "future" in page
    resp = _upload(doctor_client, png_bytes(smear_image(64)[0]), "s.png", patient_id="")
    assert resp.status_code == 400
    assert "Required for PNG or JPEG images" in resp.get_data(as_text=True)


def test_upload_of_dicom_keeps_its_own_patient(app: Flask, doctor_client: FlaskClient) -> None:
    from bcd_node.intake.upload import dicomize_upload_bytes
    data = dicomize_upload_bytes(png_bytes(smear_image(64)[0]), "x.png",
                                 {"patient_id": "DCM-1", "patient_name": "Curie^Marie"},
                                 uid_root="2.25")
    resp = _upload(doctor_client, data, "image.dcm", patient_id="", patient_name="")
    assert resp.status_code == 302, resp.get_data(as_text=True)
    with app.extensions["bcd_node"].session_factory() as session:
        study = session.execute(select(Study)).scalar_one()
        assert (study.patient.patient_id, study.patient.name) == ("DCM-1", "Curie^Marie")


def test_upload_size_limit(app: Flask, doctor_client: FlaskClient) -> None:
    app.config["UPLOAD_MAX_BYTES"] = 1000
    resp = _upload(doctor_client, b"\x89PNG\r\n\x1a\n" + b"\0" * 2000, "big.png")
    assert resp.status_code == 400 and "larger than" in resp.get_data(as_text=True)


def test_upload_form_offers_the_default_pixel_size_and_writes_it_as_pixel_spacing(
        app: Flask, doctor_client: FlaskClient) -> None:
    import pydicom

    from dicom.spacing import pixel_size

    node = app.extensions["bcd_node"]
    default = node.settings.model.default_um_per_pixel
    page = doctor_client.get("/upload").get_data(as_text=True)
    assert 'name="um_per_pixel"' in page and f'value="{default:g}"' in page
    resp = _upload(doctor_client, png_bytes(smear_image(64)[0]), "a.png", um_per_pixel="0.3125")
    assert resp.status_code == 302, resp.get_data(as_text=True)
    resp = _upload(doctor_client, png_bytes(smear_image(64, seed=2)[0]), "b.png",
                   patient_id="P-78", um_per_pixel="")
    assert resp.status_code == 302, resp.get_data(as_text=True)
    with node.session_factory() as session:
        paths = session.execute(select(Instance.path).order_by(Instance.id)).scalars().all()
    stated, unknown = (pydicom.dcmread(node.settings.storage.data_dir / p) for p in paths)
    assert [float(v) for v in stated.PixelSpacing] == [0.0003125, 0.0003125]
    assert pixel_size(stated).um_per_pixel == pytest.approx(0.3125)
    assert "PixelSpacing" not in unknown and pixel_size(unknown) is None
    resp = _upload(doctor_client, png_bytes(smear_image(64)[0]), "c.png", um_per_pixel="900")
    assert resp.status_code == 200 and "Number must be between" in resp.get_data(as_text=True)


def test_an_analysed_images_report_is_served_from_its_encapsulated_pdf(
        app: Flask, doctor_client: FlaskClient, predictor: Any) -> None:
    """The pipeline keeps an image's PDF report once, in the Encapsulated PDF it sends to the
    PACS (pdf.dcm), not also as report.pdf: the console serves the document it holds."""
    from bcd_node.analysis.pipeline import Pipeline
    from bcd_node.intake.intake import Intake
    from dicom.dicomize import dicomize
    from dicom.encapsulated import encapsulated_document
    from tests.support.images import rgb_field
    from tests.support.pipeline import run_all

    ctx = app.extensions["bcd_node"]
    ds = dicomize(rgb_field(3), patient_id="P-ENC", patient_name="Doe^Jane", specimen_id="S-1")
    received = io.BytesIO()
    ds.save_as(received, enforce_file_format=True)
    with Intake(ctx) as intake:
        intake.accept(received.getvalue(), calling_ae="SCANNER")
    assert run_all(ctx, Pipeline(ctx, predictor)) == 1
    with ctx.session_factory() as session:
        result = session.execute(select(Result)).scalar_one()
    stored = ctx.settings.storage.data_dir / str(result.pdf_path)
    assert stored.name == "pdf.dcm"
    assert not (stored.parent / "report.pdf").exists()
    report = encapsulated_document(stored)
    assert report.startswith(b"%PDF-") and report.rstrip().endswith(b"%%EOF")
    resp = doctor_client.get(f"/results/{result.id}/report.pdf?version=ai")
    assert resp.status_code == 200 and resp.mimetype == "application/pdf"
    assert resp.data == report
    assert "attachment" in resp.headers["Content-Disposition"]


@pytest.mark.parametrize("damage", ["not DICOM", "another object", "cut short"])
def test_a_damaged_stored_report_gets_a_page_that_says_so(
        app: Flask, doctor_client: FlaskClient, analysed: dict[str, Any],
        caplog: pytest.LogCaptureFixture, damage: str) -> None:
    """The Encapsulated PDF that holds a field's report (pdf.dcm) damaged on disk: the
    download says the report cannot be read, and the log names the result, not the patient
    (it was the generic 'Something went wrong' page)."""
    from dicom.dicomize import dicomize
    from tests.support.images import rgb_field

    ctx = app.extensions["bcd_node"]
    rid = analysed["result_id"]
    image = io.BytesIO()
    dicomize(rgb_field(3), patient_id="P-DMG", patient_name="Damaged^Doris",
             specimen_id="S-DMG").save_as(
        image, enforce_file_format=True)
    content = {"not DICOM": b"%PDF-1.4 this is not a DICOM file" * 10,
               "another object": image.getvalue(),
               "cut short": image.getvalue()[:400]}[damage]
    relpath = f"results/{analysed['instance_id']}/pdf.dcm"
    stored = ctx.settings.storage.data_dir / relpath
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(content)
    with ctx.session_factory.begin() as session:
        session.get(Result, rid).pdf_path = relpath
    with caplog.at_level("ERROR", logger="webadmin.worklist"):
        resp = doctor_client.get(f"/results/{rid}/report.pdf?version=ai")
    assert resp.status_code == 500 and resp.mimetype == "text/html"
    page = resp.get_data(as_text=True)
    assert "Report cannot be read" in page and "damaged" in page
    assert "Traceback" not in page
    logged = [r for r in caplog.records if r.name == "webadmin.worklist"]
    assert len(logged) == 1 and logged[0].getMessage() == (
        f"result {rid}: its AI report cannot be read ({relpath} under the data folder)")
    assert "Damaged" not in caplog.text and "P-DMG" not in caplog.text
    # The other pages of the result still answer.
    assert doctor_client.get(f"/studies/{UID}").status_code == 200
