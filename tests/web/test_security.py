"""Findings of the adversarial tests: audit flooding, methods, /metrics, CSV injection, redirects,
paging, proxies and HSTS, session lifetime, upload memory."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from bcd_node.db.models import AuditEvent, AuthThrottle, WebSession, utcnow
from bcd_node.records.audit import verify_chain
from tests.support.web import DOCTOR_PASSWORD, csrf_token, login


def audit_rows(app: Flask, action: str) -> list[AuditEvent]:
    with app.extensions["bcd_node"].session_factory() as session:
        return list(session.execute(select(AuditEvent).where(AuditEvent.action == action)
                                    .order_by(AuditEvent.id)).scalars())


def end_aggregation_windows(app: Flask) -> None:
    with app.extensions["bcd_node"].session_factory.begin() as session:
        session.execute(update(AuthThrottle).where(AuthThrottle.kind.startswith("audit:"))
                        .values(window_end=utcnow() - timedelta(seconds=1)))


# --------------------------------------------------------------------------- audit flooding


def test_anonymous_failures_do_not_flood_the_audit_log(app: Flask, client: FlaskClient,
                                                       admin_client: FlaskClient) -> None:
    for i in range(300):
        resp = client.get("/api/v1/status", headers={"Authorization": f"Bearer bcd_bad_{i}"})
        assert resp.status_code == 401
    assert len(audit_rows(app, "api_auth_failed")) == 1  # the first, in full
    app.config["LOGIN_RATE_LIMIT"] = 1
    assert login(client, "doctor", "wrong-password-1").status_code == 401
    for _ in range(50):
        assert login(client, "doctor", DOCTOR_PASSWORD).status_code == 429
    assert len(audit_rows(app, "login_rate_limited")) == 1
    # Once the window is over, one row per source and kind counts the rest.
    end_aggregation_windows(app)
    assert admin_client.get("/admin/audit/").status_code == 200
    bearer = audit_rows(app, "api_auth_failed")
    limited = audit_rows(app, "login_rate_limited")
    assert [len(bearer), len(limited)] == [2, 2]
    assert bearer[1].details["count"] == 299 and bearer[1].source == "127.0.0.1"
    assert limited[1].details["count"] == 49 and limited[1].details["names"] == ["doctor"]
    assert bearer[1].outcome == limited[1].outcome == "failure"
    with app.extensions["bcd_node"].session_factory() as session:
        assert verify_chain(session).ok
        assert session.execute(select(func.count()).select_from(AuditEvent)).scalar_one() < 20


def test_distinct_security_events_are_all_kept(app: Flask, client: FlaskClient) -> None:
    """Lockouts of accounts and sign-ins are never folded into a count."""
    for name in ("admin", "doctor"):
        for _ in range(5):
            login(client, name, "wrong-password-1")
    end_aggregation_windows(app)
    for _ in range(3):
        login(client, "nobody", "wrong-password-1")
    assert [e.object_ref for e in audit_rows(app, "user_locked")] == ["user:admin",
                                                                      "user:doctor"]
    failed = audit_rows(app, "login_failed")
    # The first failure in full, the other nine counted when the next window opened.
    assert len(failed) == 3 and failed[1].details["count"] == 9
    assert set(failed[1].details["names"]) == {"admin", "doctor"}
    assert failed[1].details["reasons"] == {"wrong password": 9}
    browser = client.application.test_client()
    browser.environ_base["REMOTE_ADDR"] = "10.0.0.7"
    with app.extensions["bcd_node"].session_factory.begin() as session:
        session.execute(update(AuthThrottle).where(AuthThrottle.kind == "name")
                        .values(locked_until=None))
    for _ in range(2):
        assert login(browser, "doctor", DOCTOR_PASSWORD).status_code == 302
        browser = client.application.test_client()
    assert len(audit_rows(app, "login")) == 2


# --------------------------------------------------------------------------- methods


def sample_path(rule: Any, number: str = "1") -> str:
    """A concrete path for a route: ``number`` for ids, the first choice of ``any(...)``."""
    path = rule.rule
    for arg, converter in rule._converters.items():  # noqa: SLF001 - werkzeug keeps them here
        kind = type(converter).__name__
        if hasattr(converter, "items"):
            value = sorted(converter.items)[0]
        elif kind == "PathConverter":
            value = "app.css"
        elif "Int" in kind:
            value = number
        else:
            value = "1.2.3"
        path = re.sub(r"<(?:[^<>]+:)?" + re.escape(arg) + r">", value, path)
    return path


def route_samples(app: Flask) -> list[tuple[str, frozenset[str]]]:
    """Every route of the app as a sample path and the methods it serves (all rules of it)."""
    methods: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        methods.setdefault(sample_path(rule), set()).update(rule.methods or ())
    return [(path, frozenset(m)) for path, m in sorted(methods.items())]


@pytest.mark.parametrize("method", ["TRACE", "OPTIONS", "PUT", "DELETE", "PATCH"])
def test_only_the_methods_a_route_serves(shared_app: Flask, shared_admin: FlaskClient,
                                         method: str) -> None:
    anonymous = shared_app.test_client()
    samples = route_samples(shared_app)
    assert len(samples) > 30
    for path, methods in samples:
        assert method not in methods, path
        for browser in (anonymous, shared_admin):
            resp = browser.open(path, method=method)
            assert resp.status_code == 405, (method, path, resp.status_code)
            assert set(resp.headers["Allow"].split(", ")) == methods, path


# --------------------------------------------------------------------------- /metrics


def test_metrics_open_by_default_or_behind_a_token(app: Flask, client: FlaskClient) -> None:
    assert client.get("/metrics").status_code == 200  # the documented default
    app.config["METRICS_TOKEN"] = "a-metrics-token-of-some-length"
    resp = client.get("/metrics")
    assert resp.status_code == 401 and "Bearer" in resp.headers["WWW-Authenticate"]
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    resp = client.get("/metrics",
                      headers={"Authorization": "Bearer a-metrics-token-of-some-length"})
    assert resp.status_code == 200 and b"# TYPE" in resp.data


def test_metrics_token_comes_from_the_config(context: Any) -> None:
    from webadmin import create_app
    settings = dataclasses.replace(context.settings, web=dataclasses.replace(
        context.settings.web, metrics_token="0123456789abcdef"))
    app = create_app(dataclasses.replace(context, settings=settings))
    assert app.test_client().get("/metrics").status_code == 401


# --------------------------------------------------------------------------- CSV injection


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_audit_csv_cells_never_start_a_formula(app: Flask, admin_client: FlaskClient,
                                               start: str) -> None:
    from bcd_node.records import audit
    value = f"{start}cmd|' /C calc'!A0"
    with app.extensions["bcd_node"].session_factory.begin() as session:
        audit.record(session, actor=f"{start}SCANNER", actor_kind="dicom", action="store",
                     source=f"{start}1.2.3.4", patient_id=value, object_ref=f"{start}x")
    text = admin_client.get("/admin/audit/export.csv").get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    stored = [r for r in rows if r["action"] == "store"]
    assert len(stored) == 1
    for name, cell in stored[0].items():
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (name, cell)
    assert stored[0]["patient_id"] == "'" + value  # kept, readable, inert
    data = admin_client.get("/admin/audit/export.json").get_json()
    assert [e["patient_id"] for e in data if e["action"] == "store"] == [value]


# --------------------------------------------------------------------------- next=


@pytest.mark.parametrize("target", [
    "https://evil.example/", "//evil.example/", "/\\evil.example", "/%5Cevil.example",
    "/%5cevil.example", "/.//evil.example", "/./evil", "/../evil", "/\t/evil.example",
    "/%2F%2Fevil.example", "/%09/evil.example", "\\\\evil.example", "http:/evil.example",
    "/worklist\\..\\..\\evil", " /worklist", "/worklist?x=\n", "/nonexistent-page",
    "javascript:alert(1)", "/login", "/register", "/static/app.css", "/api/v1/status",
    "/worklist/../admin", "/studies/1.2.3/../../x",
])
def test_next_outside_the_console_is_ignored(client: FlaskClient, target: str) -> None:
    token = csrf_token(client, "/login")
    resp = client.post("/login", query_string={"next": target}, data={
        "username": "doctor", "password": DOCTOR_PASSWORD, "csrf_token": token})
    assert resp.status_code == 302 and resp.headers["Location"] == "/worklist", target


@pytest.mark.parametrize("target", ["/worklist?status=done&page=2", "/studies/1.2.3.4",
                                    "/patients/?q=Doe%5EJane", "/admin/audit/", "/account"])
def test_next_inside_the_console_is_followed(client: FlaskClient, target: str) -> None:
    token = csrf_token(client, "/login")
    resp = client.post("/login", query_string={"next": target}, data={
        "username": "doctor", "password": DOCTOR_PASSWORD, "csrf_token": token})
    assert resp.headers["Location"] == target


# --------------------------------------------------------------------------- paging, ids


def test_huge_page_numbers_and_ids_are_not_errors(shared_app: Flask, shared_admin: FlaskClient,
                                                  shared_doctor: FlaskClient) -> None:
    huge = "99999999999999999999"
    shared_app.config["PROPAGATE_EXCEPTIONS"] = False  # a 500 must show as one, not raise
    try:
        for page in ("/worklist", "/patients/", "/admin/audit/"):
            for value in (huge, "-5", "1e9", "\u00b2", "1" * 500):
                resp = shared_admin.get(f"{page}?page={value}")
                assert resp.status_code == 200, (page, value, resp.status_code)
        with_ids = [rule for rule in shared_app.url_map.iter_rules()
                    if any("Int" in type(c).__name__ for c in rule._converters.values())]
        assert len(with_ids) >= 8
        for rule in with_ids:
            path = sample_path(rule, huge)
            method = "GET" if "GET" in rule.methods else "POST"
            for browser in (shared_admin, shared_doctor):
                resp = browser.open(path, method=method)
                assert resp.status_code in (400, 401, 403, 404), (path, resp.status_code)
    finally:
        shared_app.config["PROPAGATE_EXCEPTIONS"] = None


def test_api_paging_is_bounded(app: Flask, admin_client: FlaskClient) -> None:
    from bcd_node.records.users import issue_token
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        _token, text = issue_token(session, "doctor", "t", ctx.secrets.api_token_salt,
                                   actor="admin")
    bearer = {"Authorization": f"Bearer {text}"}
    huge = "99999999999999999999"
    resp = admin_client.get(f"/api/v1/studies?page={huge}&per_page={huge}", headers=bearer)
    assert resp.status_code == 200 and resp.get_json()["page"] == 1
    assert admin_client.get(f"/api/v1/results/{huge}", headers=bearer).status_code == 404


# --------------------------------------------------------------------------- proxies, HSTS


def _app_with(context: Any, **web: Any) -> Flask:
    from webadmin import create_app
    settings = dataclasses.replace(context.settings,
                                   web=dataclasses.replace(context.settings.web, **web))
    return create_app(dataclasses.replace(context, settings=settings), {"TESTING": True})


def test_behind_a_trusted_proxy_each_client_has_its_own_rate_limit(context: Any) -> None:
    app = _app_with(context, trusted_proxies=1, login_rate_limit=2)
    proxy = app.test_client()  # every request comes from the proxy's address

    def attempt(client_ip: str, password: str) -> int:
        token = csrf_token(proxy, "/login")
        return proxy.post("/login", headers={"X-Forwarded-For": client_ip}, data={
            "username": "doctor", "password": password, "csrf_token": token}).status_code

    assert [attempt("203.0.113.5", "wrong-password-1") for _ in range(3)] == [401, 401, 429]
    assert attempt("203.0.113.9", DOCTOR_PASSWORD) == 302  # another client behind the proxy
    events = audit_rows(app, "login")
    assert events[-1].source == "203.0.113.9"


def test_without_a_trusted_proxy_forwarded_headers_are_ignored(app: Flask,
                                                               client: FlaskClient) -> None:
    app.config["LOGIN_RATE_LIMIT"] = 2
    for i in range(2):
        token = csrf_token(client, "/login")
        client.post("/login", headers={"X-Forwarded-For": f"198.51.100.{i}"}, data={
            "username": "doctor", "password": "wrong-password-1", "csrf_token": token})
    token = csrf_token(client, "/login")
    resp = client.post("/login", headers={"X-Forwarded-For": "198.51.100.77"}, data={
        "username": "doctor", "password": DOCTOR_PASSWORD, "csrf_token": token})
    assert resp.status_code == 429  # a client cannot pick a fresh address for itself


def test_hsts_is_sent_when_cookies_are_secure(context: Any) -> None:
    secure = _app_with(context, secure_cookies="true").test_client().get("/login")
    assert secure.headers["Strict-Transport-Security"] == "max-age=31536000"
    plain = _app_with(context, secure_cookies="false").test_client().get("/login")
    assert "Strict-Transport-Security" not in plain.headers
    behind = _app_with(context, trusted_proxies=1, secure_cookies="false").test_client()
    resp = behind.get("/login", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" in resp.headers


# --------------------------------------------------------------------------- session lifetime


def test_a_session_older_than_its_lifetime_is_refused(app: Flask,
                                                      doctor_client: FlaskClient) -> None:
    assert app.config["SESSION_LIFETIME_SECONDS"] == 12 * 3600  # web.session_lifetime_hours
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:  # active a moment ago, begun 30 days ago
        ws = session.execute(select(WebSession)).scalar_one()
        ws.created_at = utcnow() - timedelta(days=30)
        ws.last_seen_at = utcnow()
    resp = doctor_client.get("/worklist")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login")
    with ctx.session_factory() as session:
        assert session.execute(select(WebSession.end_reason)).scalar_one() == "lifetime"
    expired = audit_rows(app, "session_expired")
    assert expired[-1].details == {"reason": "lifetime"}
    assert login(app.test_client(), "doctor", DOCTOR_PASSWORD).status_code == 302


@pytest.mark.parametrize("proxies", [0, 1])
def test_the_served_console_honours_trusted_proxies(context: Any, proxies: int) -> None:
    """Through waitress as `serve` runs it: forwarded headers count only from trusted proxies."""
    import requests

    from bcd_node.node.serve import _start_web
    settings = dataclasses.replace(context.settings, web=dataclasses.replace(
        context.settings.web, trusted_proxies=proxies, secure_cookies="false"))
    _component, stop = _start_web(dataclasses.replace(context, settings=settings))
    try:
        url = f"http://127.0.0.1:{settings.web.port}/login"
        resp = requests.get(url, headers={"X-Forwarded-Proto": "https"}, timeout=10)
    finally:
        stop()
    assert resp.status_code == 200
    assert ("Strict-Transport-Security" in resp.headers) is (proxies == 1)
