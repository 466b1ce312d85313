"""Admin pages: users and tokens, system and delivery retry, statistics, audit log, API."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from datetime import datetime, timezone

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from bcd_node.db.models import (
    ApiToken,
    AuditEvent,
    Delivery,
    DeliveryState,
    DestinationHealth,
    Job,
    JobKind,
    JobState,
    Role,
    User,
    UserState,
)
from bcd_node.records.audit import verify_chain
from tests.support.seed import add_analysed_study
from tests.support.web import DOCTOR_PASSWORD, login, post_form

UID = "1.2.826.0.1.3680043.10.1.1"


def actions(app: Flask) -> list[str]:
    with app.extensions["bcd_node"].session_factory() as session:
        return list(session.execute(select(AuditEvent.action).order_by(AuditEvent.id)).scalars())


def get_user(app: Flask, name: str) -> User:
    with app.extensions["bcd_node"].session_factory() as session:
        return session.execute(select(User).where(User.username == name)).scalar_one()


def test_create_user_change_role_reset_password_disable(app: Flask,
                                                        admin_client: FlaskClient) -> None:
    resp = post_form(admin_client, "/admin/users", "/admin/users", {
        "username": "nurse", "full_name": "N. Urse", "email": "", "role": "doctor",
        "password": "initial-password-1"})
    assert resp.status_code == 302
    resp = post_form(admin_client, "/admin/users/nurse", "/admin/users/nurse/role",
                     {"role": "admin"})
    assert get_user(app, "nurse").role == Role.ADMIN
    resp = post_form(admin_client, "/admin/users/nurse", "/admin/users/nurse/password")
    new_password = re.search(r'<code class="copy">([^<]+)</code>',
                             resp.get_data(as_text=True)).group(1)
    other = app.test_client()
    assert login(other, "nurse", new_password).status_code == 302
    post_form(admin_client, "/admin/users/nurse", "/admin/users/nurse/disable")
    assert get_user(app, "nurse").state == UserState.DISABLED
    assert other.get("/admin/users").status_code == 302  # the session ended with the account
    assert [a for a in actions(app) if a.startswith("user_")] == [
        "user_add", "user_add", "user_add", "user_role", "user_set_password", "user_disable"]


def test_create_user_errors_are_shown(admin_client: FlaskClient) -> None:
    resp = post_form(admin_client, "/admin/users", "/admin/users", {
        "username": "doctor", "role": "doctor", "full_name": "Dr Two",
        "password": "another-password-1"})
    assert resp.status_code == 400 and "already exists" in resp.get_data(as_text=True)
    resp = post_form(admin_client, "/admin/users", "/admin/users", {
        "username": "drgrey", "role": "doctor", "password": "another-password-1"})
    assert resp.status_code == 400 and "a doctor needs a full name" in \
        resp.get_data(as_text=True)
    resp = post_form(admin_client, "/admin/users", "/admin/users", {
        "username": "x y", "role": "doctor", "password": "short"})
    assert resp.status_code == 400 and "between 12 and 256" in resp.get_data(as_text=True)


def test_an_admin_names_a_user(app: Flask, admin_client: FlaskClient) -> None:
    resp = post_form(admin_client, "/admin/users/doctor", "/admin/users/doctor/name",
                     {"full_name": "Dr. Grace B. Hopper"}, follow_redirects=True)
    assert "full name is saved" in resp.get_data(as_text=True)
    assert get_user(app, "doctor").full_name == "Dr. Grace B. Hopper"
    resp = post_form(admin_client, "/admin/users/doctor", "/admin/users/doctor/name",
                     {"full_name": ""}, follow_redirects=True)
    assert "a doctor needs a full name" in resp.get_data(as_text=True)
    assert get_user(app, "doctor").full_name == "Dr. Grace B. Hopper"


def test_last_admin_cannot_be_demoted(app: Flask, admin_client: FlaskClient) -> None:
    resp = post_form(admin_client, "/admin/users/admin", "/admin/users/admin/role",
                     {"role": "doctor"}, follow_redirects=True)
    assert "last active admin" in resp.get_data(as_text=True)
    assert get_user(app, "admin").role == Role.ADMIN


def issue(admin_client: FlaskClient, user: str = "doctor", name: str = "script") -> str:
    resp = post_form(admin_client, f"/admin/users/{user}", f"/admin/users/{user}/tokens",
                     {"name": name})
    return re.search(r'id="new-token">([^<]+)<', resp.get_data(as_text=True)).group(1)


def test_tokens_are_hashed_used_and_revoked(app: Flask, admin_client: FlaskClient,
                                            client: FlaskClient) -> None:
    text = issue(admin_client)
    assert text.startswith("bcd_")
    with app.extensions["bcd_node"].session_factory() as session:
        token = session.execute(select(ApiToken)).scalar_one()
        assert text not in (token.token_hash, token.prefix) and len(token.token_hash) == 64
        token_id = token.id
    headers = {"Authorization": f"Bearer {text}"}
    assert client.get("/api/v1/status", headers=headers).status_code == 200
    post_form(admin_client, "/admin/users/doctor", f"/admin/tokens/{token_id}/revoke")
    assert client.get("/api/v1/status", headers=headers).status_code == 401
    assert {"token_issue", "token_revoke", "api_auth_failed"} <= set(actions(app))
    page = admin_client.get("/admin/users/doctor").get_data(as_text=True)
    assert "revoked" in page and text not in page


def test_api_with_token_and_basic_auth(app: Flask, admin_client: FlaskClient,
                                       client: FlaskClient) -> None:
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        _study, _inst, result = add_analysed_study(session, ctx.settings.storage.data_dir,
                                                   uid=UID)
        rid = result.id
    assert client.get("/api/v1/studies").status_code == 401
    assert "WWW-Authenticate" in client.get("/api/v1/studies").headers
    bearer = {"Authorization": f"Bearer {issue(admin_client)}"}
    body = client.get("/api/v1/studies?status=needs_review", headers=bearer).get_json()
    assert body["total"] == 1 and body["studies"][0]["study_instance_uid"] == UID
    body = client.get(f"/api/v1/studies/{UID}", headers=bearer).get_json()
    assert body["results"][0]["stage"] == "Malignant-Pre"
    assert client.get(f"/api/v1/results/{rid}", headers=bearer).get_json()["blast_count"] == 5
    resp = client.get(f"/api/v1/results/{rid}/pdf", headers=bearer)
    assert resp.status_code == 200 and resp.data.startswith(b"%PDF")
    assert client.get("/api/v1/results/999", headers=bearer).status_code == 404
    basic = {"Authorization": "Basic " + base64.b64encode(
        f"doctor:{DOCTOR_PASSWORD}".encode()).decode()}
    assert client.get("/api/v1/status", headers=basic).get_json()["ae_title"] == "BCD_NODE"
    wrong = {"Authorization": "Basic " + base64.b64encode(b"doctor:nope").decode()}
    assert client.get("/api/v1/status", headers=wrong).status_code == 401
    with ctx.session_factory() as session:
        events = session.execute(select(AuditEvent).where(AuditEvent.actor_kind == "api")
                                 ).scalars().all()
    kinds = [e.action for e in events]
    assert {"api_list_studies", "view_study", "view_result", "download_pdf",
            "login_failed"} <= set(kinds)
    assert all(e.actor in ("doctor", "?") for e in events)


def test_api_post_needs_no_csrf_but_auth(client: FlaskClient) -> None:
    assert client.post("/api/v1/status").status_code in (401, 405)


def test_api_status_gives_each_destination(app: Flask, client: FlaskClient) -> None:
    from tests.node.test_metrics_destinations import seed_destinations

    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        seed_destinations(session)
    basic = {"Authorization": "Basic " + base64.b64encode(
        f"doctor:{DOCTOR_PASSWORD}".encode()).decode()}
    body = client.get("/api/v1/status", headers=basic).get_json()
    pacs, archive = body["destinations"]["pacs"], body["destinations"]["archive"]
    assert (pacs["ok"], pacs["waiting"]) == (False, 3)
    assert pacs["deliveries"]["pending"] == 2 and pacs["deliveries"]["dead"] == 1
    assert pacs["echo"]["ok"] is False and pacs["echo"]["error"] == "connection refused"
    assert (archive["ok"], archive["waiting"], archive["echo"]["ok"]) == (True, 0, True)
    assert archive["deliveries"]["done"] == 1 and archive["echo"]["error"] is None
    # The node-wide figures stay as they were.
    assert body["deliveries"]["pending"] == 2 and body["deliveries"]["done"] == 3


def test_system_page_and_delivery_retry(app: Flask, admin_client: FlaskClient) -> None:
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        _study, _inst, result = add_analysed_study(session, ctx.settings.storage.data_dir,
                                                   uid=UID)
        session.add(Job(kind=JobKind.ANALYZE))
        session.add(Delivery(result_fk=result.id, destination="pacs", kind="sr",
                             sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33", sop_instance_uid="1.2",
                             path="x.dcm", state=DeliveryState.DEAD, attempts=8,
                             last_error="association rejected"))
        session.add(DestinationHealth(name="pacs", last_echo_ok=False, last_error="refused"))
        delivery_id = 1
    page = admin_client.get("/admin/system").get_data(as_text=True)
    assert "association rejected" in page and "deliveries dead-lettered" in page
    assert "Retry now" in page and "free of" in page
    resp = post_form(admin_client, "/admin/system", f"/admin/deliveries/{delivery_id}/retry")
    assert resp.status_code == 302
    with ctx.session_factory() as session:
        delivery = session.get(Delivery, delivery_id)
        assert (delivery.state, delivery.attempts) == (DeliveryState.PENDING, 0)
        event = session.execute(select(AuditEvent).where(
            AuditEvent.action == "delivery_retry")).scalar_one()
        assert event.patient_id == "P0001" and event.details["from"] == "dead"


def test_system_page_lists_failed_jobs_and_retries_one(app: Flask,
                                                       admin_client: FlaskClient) -> None:
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        session.add(Job(kind=JobKind.STUDY_SUMMARY, state=JobState.FAILED, attempts=5,
                        last_error="model server unreachable"))
        session.add(Job(kind=JobKind.STUDY_SUMMARY, state=JobState.DONE))
    page = admin_client.get("/admin/system").get_data(as_text=True)
    failed = page.split('id="failed-jobs"')[1].split("</table>")[0]
    assert "model server unreachable" in failed and "Retry" in failed
    resp = post_form(admin_client, "/admin/system", "/admin/jobs/2/retry")  # not failed
    assert resp.status_code == 302
    with ctx.session_factory() as session:
        assert session.get(Job, 2).state is JobState.DONE
    resp = post_form(admin_client, "/admin/system", "/admin/jobs/1/retry")
    assert resp.status_code == 302
    with ctx.session_factory() as session:
        job = session.get(Job, 1)
        assert (job.state, job.attempts) == (JobState.QUEUED, 0)
        event = session.execute(select(AuditEvent).where(
            AuditEvent.action == "job_retry")).scalar_one()
        assert event.object_ref == "job:1" and event.actor_kind == "user"
    assert "No failed jobs." in admin_client.get("/admin/system").get_data(as_text=True)


def test_statistics_page_draws_svg(app: Flask, admin_client: FlaskClient) -> None:
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        for i, stage in enumerate(("Benign", "Malignant-Pre", "Malignant-Pre")):
            _s, _i, result = add_analysed_study(session, ctx.settings.storage.data_dir,
                                                uid=f"{UID}.{i}", patient_id=f"P{i}",
                                                stage=stage, confidence=0.9)
            if i:
                result.verification = "verified"
                result.verified_stage = "Malignant-Pro" if i == 2 else stage
    page = admin_client.get("/admin/statistics").get_data(as_text=True)
    assert page.count("<svg") >= 2 and "<rect" in page
    assert "50.0 %" in page  # one of two verified results agrees


def test_audit_log_filters_exports_and_verifies(app: Flask, admin_client: FlaskClient,
                                                doctor_client: FlaskClient) -> None:
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        add_analysed_study(session, ctx.settings.storage.data_dir, uid=UID)
    doctor_client.get(f"/studies/{UID}")
    page = admin_client.get("/admin/audit/?user=doctor&action=view_study").get_data(as_text=True)
    assert "1 in all" in page and UID in page
    page = admin_client.get("/admin/audit/?patient=P0001").get_data(as_text=True)
    assert "1 in all" in page
    assert "0 in all" in admin_client.get("/admin/audit/?from=2001-01-01&to=2001-01-01"
                                          ).get_data(as_text=True)
    resp = admin_client.get("/admin/audit/export.csv?user=doctor")
    rows = list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))
    assert {"login", "view_study"} <= {r["action"] for r in rows}
    assert all(r["actor"] == "doctor" for r in rows) and rows[0]["hash"]
    data = json.loads(admin_client.get("/admin/audit/export.json").get_data(as_text=True))
    assert data[0]["id"] == 1 and "prev_hash" in data[0]
    resp = post_form(admin_client, "/admin/audit/", "/admin/audit/verify", follow_redirects=True)
    assert "chain is intact" in resp.get_data(as_text=True)
    assert {"audit_export", "audit_verify"} <= set(actions(app))


def test_tampered_audit_row_fails_verification(app: Flask, admin_client: FlaskClient,
                                               doctor_client: FlaskClient) -> None:
    doctor_client.get("/worklist")
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        target = session.execute(select(AuditEvent.id).where(
            AuditEvent.action == "view_worklist")).scalar_one()
        session.execute(update(AuditEvent).where(AuditEvent.id == target)
                        .values(actor="someone-else"))
    with ctx.session_factory() as session:
        report = verify_chain(session)
    assert not report.ok and report.first_bad_id == target
    resp = post_form(admin_client, "/admin/audit/", "/admin/audit/verify", follow_redirects=True)
    assert f"BROKEN at event {target}" in resp.get_data(as_text=True)


def test_deleted_audit_row_fails_verification(app: Flask, doctor_client: FlaskClient) -> None:
    doctor_client.get("/worklist")
    doctor_client.get("/patients/")
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        session.execute(AuditEvent.__table__.delete().where(
            AuditEvent.action == "view_worklist"))
    with ctx.session_factory() as session:
        assert not verify_chain(session).ok


def test_every_audited_action_names_who_where_and_what(app: Flask, admin_client: FlaskClient,
                                                       doctor_client: FlaskClient) -> None:
    """Login, views, verification, user and token admin: each row has actor, IP and object."""
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        add_analysed_study(session, ctx.settings.storage.data_dir, uid=UID)
    doctor_client.get(f"/studies/{UID}")
    doctor_client.get("/results/1/overlay.png?download=1")
    doctor_client.get("/results/1/report.pdf?version=ai")
    post_form(doctor_client, f"/studies/{UID}", "/results/1/verify", {"r1-decision": "accept"})
    issue(admin_client)
    with ctx.session_factory() as session:
        events = session.execute(select(AuditEvent).where(
            AuditEvent.actor != "cli")).scalars().all()
    by_action = {e.action: e for e in events}
    for action in ("login", "view_study", "download_image", "download_pdf", "verify_accept",
                   "token_issue"):
        event = by_action[action]
        assert event.actor in ("doctor", "admin") and event.source == "127.0.0.1", action
        assert event.at is not None and (event.object_ref or event.details), action
    for action in ("view_study", "download_image", "download_pdf", "verify_accept"):
        assert by_action[action].patient_id == "P0001"
        assert by_action[action].study_instance_uid == UID


def test_system_page_shows_model_manifest_and_card(app: Flask, admin_client: FlaskClient,
                                                   tmp_path) -> None:
    import dataclasses

    from bcd_node.runtime import Component
    ctx = app.extensions["bcd_node"]
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({
        "name": "bcd-vgg16-unet", "version": "2.1.0", "classes": ["Benign", "Malignant-Early"],
        "metrics": {"accuracy": 0.93}, "demonstration": True}))
    (folder / "MODEL_CARD.md").write_text("# Model card\nTrained on synthetic smears.")
    app.extensions["bcd_node"] = dataclasses.replace(ctx, settings=dataclasses.replace(
        ctx.settings, model=dataclasses.replace(ctx.settings.model, weights=folder)))
    app.extensions["bcd_node"].components["model"] = Component("model", True,
                                                               "bcd-vgg16-unet 2.1.0")
    page = admin_client.get("/admin/system").get_data(as_text=True)
    assert "2.1.0" in page and "Trained on synthetic smears" in page
    assert "not for clinical use" in page and "accuracy" in page


def test_api_basic_auth_obeys_the_per_ip_limit(app: Flask, client: FlaskClient) -> None:
    app.config["LOGIN_RATE_LIMIT"] = 2

    def basic(password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(
            f"doctor:{password}".encode()).decode()}

    for _ in range(2):
        assert client.get("/api/v1/status", headers=basic("wrong")).status_code == 401
    # As on the sign-in page: refused unchecked, 429 with when to come back.
    resp = client.get("/api/v1/status", headers=basic(DOCTOR_PASSWORD))
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) > 0
    assert "Too many failed sign-ins" in resp.get_json()["message"]


def test_admin_sees_a_lock_and_lifts_it(app: Flask, admin_client: FlaskClient,
                                       client: FlaskClient) -> None:
    for _ in range(5):
        login(client, "doctor", "wrong-password-1")
    page = admin_client.get("/admin/users/doctor").get_data(as_text=True)
    assert "sign-in locked until" in page and "Unlock sign-in" in page
    listed = admin_client.get("/admin/users").get_data(as_text=True)
    assert re.search(r"<td>\d{4}-\d\d-\d\d \d\d:\d\d \([^)]*UTC[^)]*\)</td>", listed)
    resp = post_form(admin_client, "/admin/users/doctor", "/admin/users/doctor/unlock",
                     follow_redirects=True)
    assert "doctor can sign in again" in resp.get_data(as_text=True)
    assert "sign-in locked until" not in resp.get_data(as_text=True)
    assert login(client, "doctor", DOCTOR_PASSWORD).status_code == 302
    assert "user_unlock" in actions(app)


def test_audit_day_filters_are_days_in_the_consoles_zone(
        app: Flask, admin_client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event at 12:30 UTC on 1 June 2020 is at 00:30 on 2 June in Auckland (UTC+12): an
    auditor there who filters by 2 June finds it, and not by 1 June."""
    import dataclasses

    ctx = app.extensions["bcd_node"]
    web = dataclasses.replace(ctx.settings.web, timezone="Pacific/Auckland")
    monkeypatch.setattr(ctx, "settings", dataclasses.replace(ctx.settings, web=web))
    with ctx.session_factory.begin() as session:
        session.execute(update(AuditEvent).values(
            at=datetime(2020, 6, 1, 12, 30, tzinfo=timezone.utc)))
        total = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()

    def found(day: str) -> str:
        return admin_client.get(f"/admin/audit/?from={day}&to={day}").get_data(as_text=True)

    assert total and f"{total} in all" in found("2020-06-02")
    assert "0 in all" in found("2020-06-01")
