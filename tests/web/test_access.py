"""Who may do what: every route of the console and the API, for every kind of client, in one
parametrised test (as flaskr's "every protected page redirects to login").

The cases are generated from the app's own ``url_map``: a route added without a line in
:data:`ACCESS` fails the test, so none can escape it.
"""

from __future__ import annotations

import base64
import re
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from bcd_node.settings import settings_from_mapping
from tests.support.web import ADMIN_PASSWORD, DOCTOR_PASSWORD, csrf_token, login

#: Who may use each endpoint: ``public`` (anyone), ``user`` (any signed-in user), ``doctor``,
#: ``admin`` (signed in with that role), ``api`` (an API token or basic credentials; the
#: browser's session cookie is not enough).
ACCESS = {
    "static": "public", "healthz": "public", "readyz": "public", "metrics": "public",
    "auth.login": "public", "auth.register": "public",
    "index": "user", "auth.logout": "user", "auth.account": "user",
    "auth.session_state": "user", "auth.keepalive": "user",
    "worklist.index": "user", "worklist.study": "user", "worklist.image": "user",
    "worklist.result_image": "user", "worklist.pdf": "user", "patients.search": "user",
    "patients.history": "user", "upload.index": "user",
    "worklist.case": "user", "worklist.case_state_json": "user", "worklist.state_json": "user",
    "worklist.thumb": "user",
    "worklist.verify": "doctor", "worklist.sign": "doctor", "worklist.amend": "doctor",
    "worklist.retry_report": "user",
    "gallery.cells": "user", "gallery.change": "doctor",
    "admin.users": "admin", "admin.create_user": "admin", "admin.user": "admin",
    "admin.approve": "admin", "admin.disable": "admin", "admin.role": "admin",
    "admin.password": "admin", "admin.unlock": "admin", "admin.token_issue": "admin",
    "admin.full_name": "admin",
    "admin.token_revoke": "admin",
    "admin.system": "admin", "admin.retry_delivery": "admin",
    "admin.retry_job": "admin", "admin.statistics": "admin",
    "audit.index": "admin", "audit.export": "admin", "audit.verify": "admin",
    "api.status": "api", "api.studies": "api", "api.study": "api", "api.result": "api",
    "api.result_pdf": "api", "api.openapi": "api",
}

#: The clients: three browsers (session cookie) and three API callers (a header, no cookie).
ROLES = ("anonymous", "doctor", "admin", "doctor-token", "admin-token", "doctor-basic")


def _route_app() -> Flask:
    # Only the routes are needed to list the cases: an app without a database or secrets.
    from webadmin import create_app
    context = SimpleNamespace(settings=settings_from_mapping({}, environ={}),
                              secrets=SimpleNamespace(session_key="collect-only",
                                                      api_token_salt="collect-only"))
    return create_app(context)  # type: ignore[arg-type]


def _sample(rule: Any) -> str:
    """A path for ``rule`` that names nothing that exists: nothing is changed by the posts."""
    path = rule.rule
    for arg, converter in rule._converters.items():  # noqa: SLF001 - werkzeug keeps them here
        kind = type(converter).__name__
        value = (sorted(converter.items)[0] if hasattr(converter, "items") else
                 "app.css" if kind == "PathConverter" else
                 "999999" if "Int" in kind else
                 "nobody" if arg == "username" else "1.2.999")
        path = re.sub(r"<(?:[^<>]+:)?" + re.escape(arg) + r">", value, path)
    return path


CASES = sorted({(rule.endpoint, method, _sample(rule))
                for rule in _route_app().url_map.iter_rules()
                for method in (rule.methods or set()) - {"HEAD"}})


@pytest.fixture(scope="module")
def api_headers(shared_app: Flask) -> dict[str, dict[str, str]]:
    """Tokens issued once for the doctor and the admin of the shared app."""
    from bcd_node.records.users import issue_token
    ctx = shared_app.extensions["bcd_node"]
    headers = {}
    with ctx.session_factory.begin() as session:
        for name in ("doctor", "admin"):
            _token, text = issue_token(session, name, "access-test",
                                       ctx.secrets.api_token_salt, actor="test")
            headers[f"{name}-token"] = {"Authorization": f"Bearer {text}"}
    basic = base64.b64encode(f"doctor:{DOCTOR_PASSWORD}".encode()).decode()
    headers["doctor-basic"] = {"Authorization": f"Basic {basic}"}
    return headers


@pytest.fixture
def browser(shared_app: Flask, request: pytest.FixtureRequest) -> Iterator[FlaskClient]:
    client = shared_app.test_client()
    role = request.node.callspec.params["role"]
    password = {"doctor": DOCTOR_PASSWORD, "admin": ADMIN_PASSWORD}.get(role)
    if password is not None:  # a fresh sign-in: a tested logout must not end another's
        assert login(client, role, password).status_code == 302
    yield client


def expected(access: str, role: str) -> str:
    """``served``, ``login`` (sent to sign in / 401) or ``forbidden`` (403)."""
    if access == "public":
        return "served"
    if access == "api":
        return "served" if role.endswith(("-token", "-basic")) else "login"
    if role not in ("doctor", "admin"):  # anonymous, or an API caller on a console page
        return "login"
    return "served" if access in ("user", role) else "forbidden"


def outcome(resp: Any) -> str:
    location = resp.headers.get("Location", "")
    if resp.status_code == 401 or (resp.status_code == 302 and
                                   location.startswith("/login?next=")):
        return "login"
    if resp.status_code == 403:
        return "forbidden"
    return "served"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("endpoint", "method", "path"), CASES,
                         ids=[f"{m} {p}" for _e, m, p in CASES])
def test_access(shared_app: Flask, browser: FlaskClient, api_headers: dict[str, dict[str, str]],
                endpoint: str, method: str, path: str, role: str) -> None:
    assert endpoint in ACCESS, f"new route {endpoint}: say who may use it in ACCESS"
    headers = api_headers.get(role, {})
    data = {}
    if method == "POST":  # a valid CSRF token, so that only the access rules decide
        page = "/account" if role in ("doctor", "admin") else "/login"
        data = {"csrf_token": csrf_token(browser, page)}
    resp = browser.open(path, method=method, headers=headers, data=data)
    assert resp.status_code < 500 or (endpoint == "readyz" and resp.status_code == 503), \
        resp.status_code
    assert outcome(resp) == expected(ACCESS[endpoint], role), \
        (resp.status_code, resp.headers.get("Location"))


def test_access_lists_no_route_that_is_gone() -> None:
    assert set(ACCESS) == {endpoint for endpoint, _m, _p in CASES}
