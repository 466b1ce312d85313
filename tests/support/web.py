"""Driving the console with Flask's test client: the seeded users' passwords, CSRF tokens,
signing in and posting forms."""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient

ADMIN_PASSWORD = "admin-password-123"
DOCTOR_PASSWORD = "doctor-password-123"

_CSRF_RE = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"|'
                      r'name="csrf_token" value="([^"]+)"')


def csrf_token(client: FlaskClient, url: str) -> str:
    """The CSRF token of the first form on ``url``."""
    page = client.get(url).get_data(as_text=True)
    match = _CSRF_RE.search(page)
    assert match, f"no CSRF token on {url}"
    return match.group(1) or match.group(2)


def login(client: FlaskClient, username: str, password: str) -> Any:
    """Sign in through the form; return the response (not followed)."""
    token = csrf_token(client, "/login")
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": token})


def post_form(client: FlaskClient, page: str, url: str, data: dict[str, Any] | None = None,
              **kwargs: Any) -> Any:
    """Post to ``url`` with the CSRF token taken from ``page``."""
    return client.post(url, data={**(data or {}), "csrf_token": csrf_token(client, page)},
                       **kwargs)
