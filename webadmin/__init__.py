"""The web console (Flask app factory).

Pages are server-rendered; the app is served by waitress inside ``bcd-node serve`` or
``bcd-node web``.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, render_template
from sqlalchemy import text

from bcd_node.runtime import NodeContext

LOGGER = logging.getLogger(__name__)


def create_app(context: NodeContext, test_config: dict[str, Any] | None = None) -> Flask:
    """Build the console for one node.

    Parameters
    ----------
    context
        The node's settings, database session factory, secrets and component status.
    test_config
        Flask config overrides for tests.
    """
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=context.secrets.session_key,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=64 * 1024 * 1024,
    )
    if test_config:
        app.config.update(test_config)
    app.extensions["bcd_node"] = context

    @app.after_request
    def security_headers(response: Any) -> Any:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; frame-ancestors 'none'; "
                                    "object-src 'none'; base-uri 'none'")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    @app.get("/healthz")
    def healthz() -> Any:
        """Alive."""
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz() -> Any:
        """Ready: the database answers and every started component is up."""
        checks: dict[str, bool] = {}
        try:
            with context.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception:  # noqa: BLE001 - any failure means not ready
            LOGGER.exception("readiness: database check failed")
            checks["database"] = False
        for name, component in context.components.items():
            if component.available:
                checks[name] = component.healthy()
        ok = all(checks.values())
        return jsonify(status="ready" if ok else "not ready", checks=checks), (200 if ok else 503)

    @app.get("/")
    def index() -> Any:
        """Landing page: what this node runs."""
        return render_template("index.html", context=context)

    return app
