"""The web console (Flask app factory).

Pages are server-rendered; the app is served by waitress inside ``bcd-node serve`` or
``bcd-node web``. One blueprint per area: ``auth`` (sign-in, registration), ``worklist``
(worklist, review, verification, images, PDFs), ``patients``, ``upload``, ``admin`` (users,
tokens, system, statistics), ``audit`` (the audit log) and ``api`` (JSON under ``/api/v1``).
"""

from __future__ import annotations

import ipaddress
import logging
from datetime import timedelta
from typing import Any

from flask import Flask, Response, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy import text

from bcd_node.runtime import NodeContext

LOGGER = logging.getLogger(__name__)
csrf = CSRFProtect()

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "object-src 'none'; base-uri 'none'")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


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
    web = context.settings.web
    app.config.update(
        SECRET_KEY=context.secrets.session_key,
        SESSION_COOKIE_NAME="bcd_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # Off only where the console listens on loopback (plain HTTP on the node itself);
        # anywhere else it is reached through TLS, and the cookie must never travel in clear.
        SESSION_COOKIE_SECURE=(not _is_loopback(web.host) if web.secure_cookies == "auto"
                               else web.secure_cookies == "true"),
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        REMEMBER_COOKIE_HTTPONLY=True,
        IDLE_TIMEOUT_SECONDS=web.idle_timeout_minutes * 60,
        LOGIN_RATE_LIMIT=web.login_rate_limit,  # failed sign-ins per IP ...
        LOGIN_RATE_WINDOW_SECONDS=web.login_rate_window_seconds,  # ... within this window
        REGISTER_RATE_LIMIT=5,          # account requests per IP and hour
        UPLOAD_MAX_BYTES=50 * 1024 * 1024,
        MAX_CONTENT_LENGTH=64 * 1024 * 1024,
        WTF_CSRF_TIME_LIMIT=None,  # the token is bound to the session, which expires itself
        PAGE_SIZE=50,
    )
    if test_config:
        app.config.update(test_config)
    app.extensions["bcd_node"] = context

    from webadmin import admin, api, audit_log, auth, patients, upload, worklist
    from webadmin.db import close_db
    from webadmin.helpers import register_template_helpers

    csrf.init_app(app)
    auth.login_manager.init_app(app)
    app.teardown_appcontext(close_db)
    app.before_request(auth.require_login)
    for blueprint in (auth.bp, worklist.bp, patients.bp, upload.bp, admin.bp, audit_log.bp):
        app.register_blueprint(blueprint)
    csrf.exempt(api.bp)  # bearer/basic auth, no cookies: nothing for CSRF to protect
    app.register_blueprint(api.bp, url_prefix="/api/v1")
    register_template_helpers(app)

    @app.after_request
    def security_headers(response: Any) -> Any:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        response.headers.setdefault("Permissions-Policy",
                                    "camera=(), microphone=(), geolocation=()")
        if request.is_secure:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        if request.endpoint != "static":
            # Patient data must not linger in shared workstations' caches.
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    def error_page(code: int, title: str, message: str) -> Any:
        if request.path.startswith("/api/"):
            return jsonify(error=title, message=message), code
        return render_template("errors/error.html", code=code, title=title,
                               message=message), code

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError) -> Any:
        return error_page(400, "Form expired", "The form was missing its security token or it "
                          "had expired. Go back, reload the page and try again.")

    @app.errorhandler(403)
    def forbidden(_exc: Any) -> Any:
        return error_page(403, "Not allowed", "Your account may not open this page.")

    @app.errorhandler(404)
    def not_found(_exc: Any) -> Any:
        return error_page(404, "Not found", "There is nothing at this address.")

    @app.errorhandler(500)
    def server_error(_exc: Any) -> Any:
        return error_page(500, "Something went wrong", "The node could not complete this "
                          "request. It has been logged; try again, or tell your administrator.")

    @app.errorhandler(413)
    def too_large(_exc: Any) -> Any:
        limit = app.config["UPLOAD_MAX_BYTES"] // (1024 * 1024)
        return error_page(413, "File too large", f"Files up to {limit} MB can be uploaded.")

    @app.get("/healthz")
    def healthz() -> Any:
        """Alive."""
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz() -> Any:
        """Ready: the database answers and every started component is up."""
        checks: dict[str, bool] = {"started": context.started.is_set()}
        try:
            with context.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception:  # noqa: BLE001 - any failure means not ready
            LOGGER.exception("readiness: database check failed")
            checks["database"] = False
        reasons: dict[str, str] = {}
        for name, component in context.components.items():
            if component.available:
                problem = component.problem()
                checks[name] = problem is None
                if problem is not None:
                    reasons[name] = problem
        ok = all(checks.values())
        return jsonify(status="ready" if ok else "not ready", checks=checks,
                       reasons=reasons), (200 if ok else 503)

    @app.get("/metrics")
    def metrics() -> Any:
        """Prometheus metrics (no patient data): counters of this process, queue from the DB."""
        from bcd_node.metrics import Metrics

        if context.metrics is None:
            context.metrics = Metrics(context)
        return Response(context.metrics.exposition(),
                        mimetype="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/")
    def index() -> Any:
        """Home: the worklist for doctors, users for admins."""
        if current_user.is_admin:
            return redirect(url_for("admin.users"))
        return redirect(url_for("worklist.index"))

    return app
