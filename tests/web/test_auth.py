"""Accounts and security: login required, roles, CSRF, lockout, sessions, headers."""

from __future__ import annotations

import base64
import html
import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from bcd_node.db.models import AuditEvent, AuthThrottle, User, UserState, WebSession, utcnow
from tests.support.seed import add_case
from tests.support.web import ADMIN_PASSWORD, DOCTOR_PASSWORD, csrf_token, login, post_form

# Every page of the console with sample arguments; only login and registration are public.
PAGES = [
    "/", "/account", "/worklist", "/worklist?status=awaiting_review", "/worklist/state.json",
    "/studies/1.2.3", "/cases/1.2.3", "/cases/1.2.3/state.json", "/instances/1/thumb.png",
    "/instances/1/image.png", "/results/1/overlay.png", "/results/1/mask.png",
    "/results/1/report.pdf", "/results/1/cells", "/patients/", "/patients/1", "/upload",
    "/admin/users",
    "/admin/users/admin", "/admin/system", "/admin/statistics", "/admin/audit/",
    "/admin/audit/export.csv", "/admin/audit/export.json", "/session/state.json",
]
CASE_UID = "1.2.826.0.1.3680043.10.7.1"
ADMIN_PAGES = [p for p in PAGES if p.startswith("/admin")]
POSTS = [
    "/logout", "/account", "/results/1/verify", "/results/1/cells/1/reject",
    "/results/1/cells/1/restore", "/cases/1.2.3/sign", "/cases/1.2.3/amend",
    "/cases/1.2.3/retry-report",
    "/upload", "/admin/users",
    "/admin/users/doctor/approve", "/admin/users/doctor/disable", "/admin/users/doctor/role",
    "/admin/users/doctor/password", "/admin/users/doctor/unlock", "/admin/users/doctor/name",
    "/admin/users/doctor/tokens", "/admin/tokens/1/revoke",
    "/admin/deliveries/1/retry", "/admin/jobs/1/retry", "/admin/audit/verify",
]


def test_every_page_is_listed(app: Flask) -> None:
    """The lists above cover every GET route, so a new page cannot skip the login check."""
    listed = {p.split("?")[0] for p in PAGES}
    public = {"/login", "/register", "/healthz", "/readyz", "/metrics"}  # metrics: no PHI
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.endpoint in ("static",) or \
                rule.rule.startswith("/api/") or rule.rule in public:
            continue
        sample = (rule.rule.replace("<uid>", "1.2.3").replace("<int:instance_id>", "1")
                  .replace("<int:result_id>", "1").replace("<int:patient_pk>", "1")
                  .replace("<username>", "admin"))
        if "<any(overlay, mask):kind>" in sample:
            assert {sample.replace("<any(overlay, mask):kind>", k) for k in ("overlay", "mask")} \
                <= listed
        elif "<any(csv, json):fmt>" in sample:
            assert {sample.replace("<any(csv, json):fmt>", k) for k in ("csv", "json")} <= listed
        else:
            assert sample in listed, f"{rule.rule} missing from PAGES"


@pytest.mark.parametrize("page", PAGES)
def test_anonymous_is_sent_to_login(shared_app: Flask, page: str) -> None:
    resp = shared_app.test_client().get(page)
    if page.endswith("/state.json"):  # the pages' polls: the page reloads on 401
        assert resp.status_code == 401 and resp.json["error"] == "unauthorized"
        return
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/login?next=")


@pytest.mark.parametrize("page", ["/login", "/register", "/healthz", "/readyz"])
def test_public_pages_answer(client: FlaskClient, page: str) -> None:
    # /readyz says 503 until the node's components have started; it never redirects.
    assert client.get(page).status_code in ((200, 503) if page == "/readyz" else (200,))


def test_login_page_shows_node_status(client: FlaskClient) -> None:
    page = client.get("/login").get_data(as_text=True)
    assert "BCD_NODE" in page


@pytest.mark.parametrize("page", ADMIN_PAGES)
def test_doctor_gets_403_on_admin_pages(shared_doctor: FlaskClient, page: str) -> None:
    assert shared_doctor.get(page).status_code == 403


def test_admin_opens_admin_pages(admin_client: FlaskClient) -> None:
    for page in ADMIN_PAGES:
        assert admin_client.get(page).status_code == 200, page


@pytest.mark.parametrize("url", POSTS)
def test_posts_without_csrf_token_are_refused(shared_admin: FlaskClient, url: str) -> None:
    resp = shared_admin.post(url, data={"decision": "accept", "role": "admin", "name": "x"})
    assert resp.status_code == 400
    assert "security token" in resp.get_data(as_text=True)


def test_login_without_csrf_token_is_refused(client: FlaskClient) -> None:
    resp = client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD})
    assert resp.status_code == 400


_FLASH_RE = re.compile(r'<div class="flash error" role="alert">([^<]*)</div>')
_UNTIL_RE = re.compile(r"until (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


def flash_error(resp: Any) -> str:
    """The error message a response shows (unescaped)."""
    match = _FLASH_RE.search(resp.get_data(as_text=True))
    assert match, resp.get_data(as_text=True)[:2000]
    return html.unescape(match.group(1))


def locked_until(app: Flask, name: str) -> datetime | None:
    with app.extensions["bcd_node"].session_factory() as session:
        row = session.execute(select(AuthThrottle).where(
            AuthThrottle.kind == "name", AuthThrottle.key == name)).scalar_one_or_none()
        return None if row is None else row.locked_until


def test_lockout_says_until_when_whatever_the_password(app: Flask, client: FlaskClient) -> None:
    for attempt in range(5):
        resp = login(client, "doctor", "wrong-password-xyz")
        assert resp.status_code == 401
        if attempt < 4:
            assert "locked" not in flash_error(resp)
    # The fifth failure hits the limit, and the page says so at once.
    message = flash_error(resp)
    until = locked_until(app, "doctor")
    assert until is not None
    assert _UNTIL_RE.search(message).group(1) == until.strftime("%Y-%m-%d %H:%M:%S")
    assert "bcd-node users unlock NAME" in message and "users set-password NAME" in message
    # Locked: the right password and a wrong one get the very same answer.
    right, wrong = login(client, "doctor", DOCTOR_PASSWORD), login(client, "doctor", "x" * 12)
    assert right.status_code == wrong.status_code == 401
    assert flash_error(right) == flash_error(wrong) == message
    # A name without an account that reaches the limit is told the same (its own time).
    for _ in range(5):
        resp = login(client, "nobody-here", "wrong-password-xyz")
    assert _UNTIL_RE.sub("", flash_error(resp)) == _UNTIL_RE.sub("", message)
    assert flash_error(login(client, "nobody-here", "x" * 12)) == flash_error(resp)
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory() as session:
        locks = session.execute(select(AuditEvent.object_ref).where(
            AuditEvent.action == "user_locked")).scalars().all()
    assert locks == ["user:doctor"]  # only accounts' locks are distinct events for the admins
    with ctx.session_factory.begin() as session:  # the lock runs out
        session.execute(update(AuthThrottle).where(AuthThrottle.key == "doctor").values(
            locked_until=utcnow() - timedelta(seconds=1)))
    assert login(client, "doctor", DOCTOR_PASSWORD).status_code == 302
    assert locked_until(app, "doctor") is None  # a success forgets the failures


def test_each_lock_in_a_row_lasts_longer(app: Flask, client: FlaskClient) -> None:
    seconds = []
    for _round in range(3):
        for _ in range(5):
            login(client, "doctor", "wrong-password-xyz")
        until = locked_until(app, "doctor")
        seconds.append(round((until - utcnow()).total_seconds() / 60))
        with app.extensions["bcd_node"].session_factory.begin() as session:
            session.execute(update(AuthThrottle).where(AuthThrottle.key == "doctor").values(
                locked_until=utcnow() - timedelta(seconds=1)))
    assert seconds == [1, 2, 4]  # minutes


def test_locked_admin_gets_back_through_the_command_line(app: Flask, client: FlaskClient) -> None:
    from bcd_node.cli import main
    for _ in range(5):
        login(client, "admin", "wrong-password-xyz")
    # The API (basic auth) refuses the right password with the same message, as JSON.
    basic = {"Authorization": "Basic " + base64.b64encode(
        f"admin:{ADMIN_PASSWORD}".encode()).decode()}
    resp = client.get("/api/v1/status", headers=basic)
    assert resp.status_code == 401
    assert resp.get_json()["message"] == flash_error(login(client, "admin", ADMIN_PASSWORD))
    config = app.extensions["bcd_node"].settings.source
    assert main(["--config", str(config), "users", "unlock", "admin"]) == 0
    assert client.get("/api/v1/status", headers=basic).status_code == 200
    assert login(client, "admin", ADMIN_PASSWORD).status_code == 302
    with app.extensions["bcd_node"].session_factory() as session:
        assert "user_unlock" in session.execute(select(AuditEvent.action)).scalars().all()


def test_set_password_lifts_a_lock(app: Flask, client: FlaskClient) -> None:
    from bcd_node.records.users import set_password
    for _ in range(5):
        login(client, "admin", "wrong-password-xyz")
    assert locked_until(app, "admin") is not None
    with app.extensions["bcd_node"].session_factory.begin() as session:
        set_password(session, "admin", "a-new-admin-password")
    assert login(client, "admin", "a-new-admin-password").status_code == 302


def test_per_ip_rate_limit(app: Flask, client: FlaskClient) -> None:
    app.config["LOGIN_RATE_LIMIT"] = 3
    for name in ("a1", "a2", "a3"):  # different (unknown) users: no account lockout involved
        assert login(client, name, "whatever-password").status_code == 401
    resp = login(client, "admin", ADMIN_PASSWORD)
    assert resp.status_code == 429
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "10.0.0.9"
    assert login(other, "admin", ADMIN_PASSWORD).status_code == 302


def test_session_cookie_replayed_after_logout_is_refused(app: Flask) -> None:
    browser = app.test_client()
    assert login(browser, "doctor", DOCTOR_PASSWORD).status_code == 302
    cookie = browser.get_cookie("bcd_session").value
    assert browser.get("/worklist").status_code == 200
    resp = post_form(browser, "/worklist", "/logout")
    assert resp.status_code == 302
    attacker = app.test_client()
    attacker.set_cookie("bcd_session", cookie)
    resp = attacker.get("/worklist")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login")


def test_session_id_is_new_at_every_login(app: Flask) -> None:
    browser = app.test_client()
    browser.get("/login")
    before = browser.get_cookie("bcd_session").value
    login(browser, "doctor", DOCTOR_PASSWORD)
    first = browser.get_cookie("bcd_session").value
    post_form(browser, "/worklist", "/logout")
    login(browser, "doctor", DOCTOR_PASSWORD)
    second = browser.get_cookie("bcd_session").value
    assert len({before, first, second}) == 3
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory() as session:
        sessions = session.execute(select(WebSession).order_by(
            WebSession.created_at)).scalars().all()
    assert len(sessions) == 2
    assert sessions[0].end_reason == "logout" and sessions[1].ended_at is None


def test_idle_session_expires(app: Flask, doctor_client: FlaskClient) -> None:
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        ws = session.execute(select(WebSession)).scalar_one()
        ws.last_seen_at = ws.last_seen_at - timedelta(hours=1)
    resp = doctor_client.get("/worklist")
    assert resp.status_code == 302
    with ctx.session_factory() as session:
        assert session.execute(select(WebSession.end_reason)).scalar_one() == "idle"
        assert "session_expired" in session.execute(select(AuditEvent.action)).scalars().all()


def test_a_form_sent_after_the_session_ended_returns_to_its_page(
        app: Flask, doctor_client: FlaskClient) -> None:
    """Signed out by idleness while a case was open, the doctor clicks Sign: the sign-in page
    says why nothing was done, and signing in leads back to the case page. The form's address
    (POST only) was kept as where to go next, so the doctor landed on the worklist."""
    uid = "1.2.826.0.1.3680043.10.7.1"
    with app.extensions["bcd_node"].session_factory.begin() as session:
        add_case(session, app.extensions["bcd_node"].settings.storage.data_dir, uid=uid)
    token = csrf_token(doctor_client, f"/cases/{uid}")
    _minutes_pass(app, 120)
    resp = doctor_client.post(f"/cases/{uid}/sign", data={"csrf_token": token,
                                                         "decision": "accept"},
                              headers={"Referer": f"http://localhost/cases/{uid}?field=2"})
    assert resp.status_code == 302
    assert resp.headers["Location"] == f"/login?next=/cases/{uid}?field%3D2"
    page = doctor_client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "You were signed out, so that was not done" in page
    resp = doctor_client.post(f"/login?next=/cases/{uid}?field%3D2", data={
        "csrf_token": csrf_token(doctor_client, "/login"), "username": "doctor",
        "password": DOCTOR_PASSWORD})
    assert resp.headers["Location"] == f"/cases/{uid}?field=2"
    # A Referer from elsewhere is not followed.
    token = csrf_token(doctor_client, f"/cases/{uid}")
    with app.extensions["bcd_node"].session_factory.begin() as session:
        for ws in session.execute(select(WebSession)).scalars():
            ws.last_seen_at -= timedelta(minutes=120)
    resp = doctor_client.post(f"/cases/{uid}/sign", data={"csrf_token": token,
                                                         "decision": "accept"},
                              headers={"Referer": "https://evil.example/cases/x"})
    assert resp.headers["Location"] == "/login?next=/"


def _minutes_pass(app: Flask, minutes: float) -> None:
    """The clock moves on: the doctor's session was last seen ``minutes`` earlier than it was."""
    with app.extensions["bcd_node"].session_factory.begin() as session:
        ws = session.execute(select(WebSession)).scalar_one()
        ws.last_seen_at -= timedelta(minutes=minutes)
        ws.created_at -= timedelta(minutes=minutes)


def test_live_refresh_polls_do_not_keep_an_idle_session_alive(app: Flask,
                                                              doctor_client: FlaskClient) -> None:
    """A case page left open polls its state every 10 s; that is not the doctor's activity."""
    idle = app.config["IDLE_TIMEOUT_SECONDS"] / 60
    with app.extensions["bcd_node"].session_factory.begin() as session:
        add_case(session, app.extensions["bcd_node"].settings.storage.data_dir, uid=CASE_UID)
    assert doctor_client.get(f"/cases/{CASE_UID}").status_code == 200
    for poll in (f"/cases/{CASE_UID}/state.json", "/worklist/state.json"):
        _minutes_pass(app, idle * 0.4)
        assert doctor_client.get(poll).status_code == 200  # still in time
    # A page that live.js reloads on its own (the case's status changed) is no activity either.
    doctor_client.set_cookie("bcd_live_reload", "1")
    assert doctor_client.get(f"/cases/{CASE_UID}").status_code == 200
    doctor_client.delete_cookie("bcd_live_reload")  # live.js does, at the doctor's first click
    _minutes_pass(app, idle * 0.4)
    # 1.2 idle periods since the last page view: the next poll finds the session ended and
    # says so in a way a poll can read (no redirect to the sign-in page's HTML).
    resp = doctor_client.get(f"/cases/{CASE_UID}/state.json")
    assert resp.status_code == 401 and resp.json["error"] == "unauthorized"
    with app.extensions["bcd_node"].session_factory() as session:
        assert session.execute(select(WebSession.end_reason)).scalar_one() == "idle"
    assert doctor_client.get(f"/cases/{CASE_UID}").status_code == 302


def test_a_page_view_keeps_the_session_alive(app: Flask, doctor_client: FlaskClient) -> None:
    idle = app.config["IDLE_TIMEOUT_SECONDS"] / 60
    _minutes_pass(app, idle * 0.6)
    assert doctor_client.get("/worklist").status_code == 200  # the doctor's own request
    _minutes_pass(app, idle * 0.6)
    assert doctor_client.get("/worklist/state.json").status_code == 200
    _minutes_pass(app, idle * 0.6)
    assert doctor_client.get("/worklist/state.json").status_code == 401
    with app.extensions["bcd_node"].session_factory() as session:
        assert session.execute(select(WebSession.end_reason)).scalar_one() == "idle"


def _last_seen(app: Flask) -> datetime:
    with app.extensions["bcd_node"].session_factory() as session:
        return session.execute(select(WebSession.last_seen_at)).scalar_one()


def test_the_idle_warning_asks_without_keeping_and_stay_keeps(
        app: Flask, doctor_client: FlaskClient) -> None:
    """The page asks how long its session has left (static/app.js warns 2 minutes before the
    end): asking is not activity; "Stay signed in" (or typing) is, and needs the CSRF token."""
    idle = app.config["IDLE_TIMEOUT_SECONDS"]
    _minutes_pass(app, idle / 60 - 1.5)  # 90 s left
    before = _last_seen(app)
    state = doctor_client.get("/session/state.json")
    assert state.status_code == 200 and state.headers["Cache-Control"] == "no-store"
    assert state.json["ends_by"] == "idle" and 80 <= state.json["seconds_left"] <= 90
    assert _last_seen(app) == before  # asking kept nothing
    # Without the page's token: refused.
    assert doctor_client.post("/session/keepalive").status_code == 400
    token = csrf_token(doctor_client, "/worklist")  # a page view: activity itself
    _minutes_pass(app, idle / 60 - 1.5)
    kept = doctor_client.post("/session/keepalive", headers={"X-CSRFToken": token})
    assert kept.status_code == 200 and kept.json["seconds_left"] >= idle - 2
    assert _last_seen(app) > before
    # Near its lifetime, the session says so: staying does not lengthen that.
    with app.extensions["bcd_node"].session_factory.begin() as session:
        ws = session.execute(select(WebSession)).scalar_one()
        ws.created_at = utcnow() - timedelta(seconds=app.config["SESSION_LIFETIME_SECONDS"] - 60)
    kept = doctor_client.post("/session/keepalive", headers={"X-CSRFToken": token})
    assert kept.json["ends_by"] == "lifetime" and kept.json["seconds_left"] <= 60
    # Signed out: both say so in a way a script can read.
    _minutes_pass(app, idle / 60 + 1)
    for answer in (doctor_client.get("/session/state.json"),
                   doctor_client.post("/session/keepalive", headers={"X-CSRFToken": token})):
        assert answer.status_code == 401 and answer.json["error"] == "unauthorized"


def test_disabling_a_user_ends_their_sessions(app: Flask, doctor_client: FlaskClient,
                                              admin_client: FlaskClient) -> None:
    assert doctor_client.get("/worklist").status_code == 200
    post_form(admin_client, "/admin/users/doctor", "/admin/users/doctor/disable")
    assert doctor_client.get("/worklist").status_code == 302


def test_self_registration_waits_for_approval(app: Flask, client: FlaskClient,
                                              admin_client: FlaskClient) -> None:
    data = {"username": "newdoc", "full_name": "Dr. New", "email": "new@hospital.example",
            "password": "a-long-password-1", "confirm": "a-long-password-1"}
    resp = post_form(client, "/register", "/register", data)
    assert resp.status_code == 302
    resp = login(client, "newdoc", "a-long-password-1")
    assert resp.status_code == 401 and "approval" in resp.get_data(as_text=True)
    assert "newdoc" in admin_client.get("/admin/users").get_data(as_text=True)
    resp = post_form(admin_client, "/admin/users", "/admin/users/newdoc/approve")
    assert resp.status_code == 302
    assert login(client, "newdoc", "a-long-password-1").status_code == 302
    with app.extensions["bcd_node"].session_factory() as session:
        user = session.execute(select(User).where(User.username == "newdoc")).scalar_one()
        assert user.state == UserState.ACTIVE and user.approved_by == "admin"


def test_registration_errors_are_readable(client: FlaskClient) -> None:
    data = {"username": "Bad Name", "full_name": "x", "email": "nope", "password": "short",
            "confirm": "other"}
    page = post_form(client, "/register", "/register", data).get_data(as_text=True)
    assert "lower-case" in page and "e-mail" in page and "differ" in page


def test_open_redirect_after_login_is_ignored(client: FlaskClient) -> None:
    token = csrf_token(client, "/login")
    resp = client.post("/login?next=https://evil.example/", data={
        "username": "doctor", "password": DOCTOR_PASSWORD, "csrf_token": token})
    assert resp.headers["Location"] == "/worklist"


def test_security_headers_and_cookie_flags(app: Flask) -> None:
    browser = app.test_client()
    resp = browser.get("/login")
    csp = resp.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "same-origin"
    assert resp.headers["X-Frame-Options"] == "DENY"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    # The test node listens on loopback; elsewhere the cookie is Secure.
    assert app.config["SESSION_COOKIE_SECURE"] is False


def test_cookie_is_secure_off_loopback(context, write_config) -> None:
    import dataclasses

    from webadmin import create_app
    settings = dataclasses.replace(context.settings,
                                   web=dataclasses.replace(context.settings.web, host="0.0.0.0"))
    ctx = dataclasses.replace(context, settings=settings)
    app = create_app(ctx)
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert "Secure" in app.test_client().get("/login").headers["Set-Cookie"]


def test_no_inline_script_or_style_in_pages(admin_client: FlaskClient) -> None:
    for page in ADMIN_PAGES[:4] + ["/worklist", "/patients/"]:
        html = admin_client.get(page).get_data(as_text=True)
        assert "<script>" not in html and " style=" not in html and "<style" not in html, page


def test_logout_is_audited_and_login_too(app: Flask) -> None:
    browser = app.test_client()
    login(browser, "doctor", DOCTOR_PASSWORD)
    post_form(browser, "/worklist", "/logout")
    with app.extensions["bcd_node"].session_factory() as session:
        rows = session.execute(select(AuditEvent).where(
            AuditEvent.action.in_(["login", "logout"])).order_by(AuditEvent.id)).scalars().all()
    assert [(r.action, r.actor, r.source) for r in rows] == [
        ("login", "doctor", "127.0.0.1"), ("logout", "doctor", "127.0.0.1")]


def test_registration_does_not_reveal_taken_names(app: Flask, client: FlaskClient) -> None:
    def register(name: str) -> tuple[Any, str]:
        data = {"username": name, "full_name": "Dr. Two", "email": "two@hospital.example",
                "password": "a-long-password-2", "confirm": "a-long-password-2"}
        browser = app.test_client()
        resp = post_form(browser, "/register", "/register", data)
        page = browser.get(resp.headers.get("Location", "/login")).get_data(as_text=True)
        return resp, re.sub(r'name="csrf_token"[^>]*>', "", page)

    taken, taken_page = register("doctor")
    fresh, fresh_page = register("brand-new-doc")
    assert (taken.status_code, taken.headers["Location"]) == \
        (fresh.status_code, fresh.headers["Location"]) == (302, "/login")
    assert taken_page == fresh_page and "waiting for an administrator" in taken_page
    # Signing in with the password just chosen does not tell the two apart either.
    assert flash_error(login(client, "doctor", "a-long-password-2")) == \
        flash_error(login(client, "brand-new-doc", "a-long-password-2"))
    with app.extensions["bcd_node"].session_factory() as session:
        doctor = session.execute(select(User).where(User.username == "doctor")).scalar_one()
        assert doctor.state == UserState.ACTIVE and doctor.full_name == "Dr. Grace Hopper"
        refused = session.execute(select(AuditEvent).where(
            AuditEvent.action == "register_refused")).scalar_one()
    assert refused.object_ref == "user:doctor" and refused.outcome == "failure"


def test_registration_password_rules_still_shown(client: FlaskClient) -> None:
    data = {"username": "samepass1234", "full_name": "Dr. Two", "email": "two@hospital.example",
            "password": "samepass1234", "confirm": "samepass1234"}
    page = post_form(client, "/register", "/register", data).get_data(as_text=True)
    assert "must not be the user name" in page


def test_user_changes_own_password_and_other_sessions_end(app: Flask) -> None:
    here, elsewhere = app.test_client(), app.test_client()
    login(here, "doctor", DOCTOR_PASSWORD)
    login(elsewhere, "doctor", DOCTOR_PASSWORD)
    resp = post_form(here, "/account", "/account", {
        "current": "not-it-at-all", "password": "brand-new-password-1",
        "confirm": "brand-new-password-1"})
    assert resp.status_code == 400 and "Not your current password" in resp.get_data(as_text=True)
    resp = post_form(here, "/account", "/account", {
        "current": DOCTOR_PASSWORD, "password": "brand-new-password-1",
        "confirm": "brand-new-password-1"}, follow_redirects=True)
    assert "1 other session(s) were signed out" in resp.get_data(as_text=True)
    assert here.get("/worklist").status_code == 200
    assert elsewhere.get("/worklist").status_code == 302
    assert login(app.test_client(), "doctor", "brand-new-password-1").status_code == 302


def test_admin_password_reset_ends_the_users_sessions(app: Flask, doctor_client: FlaskClient,
                                                      admin_client: FlaskClient) -> None:
    assert doctor_client.get("/worklist").status_code == 200
    post_form(admin_client, "/admin/users/doctor", "/admin/users/doctor/password")
    assert doctor_client.get("/worklist").status_code == 302


def test_server_errors_get_a_plain_page(app: Flask, doctor_client: FlaskClient,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import webadmin.worklist

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(webadmin.worklist, "worklist_page", broken)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    resp = doctor_client.get("/worklist")
    assert resp.status_code == 500 and "Something went wrong" in resp.get_data(as_text=True)
    assert "database went away" not in resp.get_data(as_text=True)


def test_session_ids_are_stored_hashed(app: Flask, doctor_client: FlaskClient) -> None:
    from webadmin.auth import session_key
    cookie = doctor_client.get_cookie("bcd_session").value
    serializer = app.session_interface.get_signing_serializer(app)
    session_id = serializer.loads(cookie)["_user_id"]
    with app.extensions["bcd_node"].session_factory() as session:
        stored = session.execute(select(WebSession.id)).scalar_one()
    assert stored == session_key(session_id) and stored != session_id


def test_registration_is_rate_limited_per_ip(app: Flask, client: FlaskClient) -> None:
    app.config["REGISTER_RATE_LIMIT"] = 2
    for i in range(3):
        data = {"username": f"doc{i}", "full_name": "Dr. X", "email": "x@hospital.example",
                "password": "a-long-password-1", "confirm": "a-long-password-1"}
        resp = post_form(client, "/register", "/register", data)
    assert resp.status_code == 429 and "Too many account requests" in resp.get_data(as_text=True)


def test_readyz_names_why_a_component_is_not_ready(context, client: FlaskClient) -> None:
    from bcd_node.runtime import Component

    context.started.set()
    problem: list[str] = []
    context.components["dicom"] = Component("dicom", True, "listener", lambda: not problem,
                                            lambda: problem[0])
    resp = client.get("/readyz")
    assert resp.status_code == 200
    assert resp.get_json()["reasons"] == {}
    problem.append("listener process 0 cannot accept connections: Too many open files")
    resp = client.get("/readyz")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["checks"]["dicom"] is False
    assert body["reasons"] == {"dicom": problem[0]}
