"""The web console (Flask app factory).

Pages are server-rendered; the app is served by waitress inside ``bcd-node serve`` or
``bcd-node web``. One blueprint per area: ``auth`` (sign-in, registration), ``worklist``
(worklist, review, verification, images, PDFs), ``gallery`` (a field's cells),
``patients``, ``upload``, ``admin`` (users, tokens, system, statistics), ``audit`` (the audit
log) and ``api`` (JSON under ``/api/v1``).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from datetime import timedelta
from typing import Any

from flask import (
    Flask,
    Response,
    current_app,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy.exc import DBAPIError
from werkzeug.datastructures import ImmutableDict
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

from bcd_node.node.memory_budget import MemoryBudget
from bcd_node.runtime import NodeContext

LOGGER = logging.getLogger(__name__)
csrf = CSRFProtect()

#: The one inline style the console allows: the rule OpenSeadragon (static/vendor) adds for
#: touch screens, by the hash of its exact text. No inline script is allowed.
OPENSEADRAGON_STYLE_HASH = "'sha256-9xTiqzfwFaL2SGb1rmr8gysEwVVjIvqWAgmZgqFqpEE='"
CSP = ("default-src 'self'; script-src 'self'; "
       f"style-src 'self' {OPENSEADRAGON_STYLE_HASH}; img-src 'self' data:; "
       "font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "object-src 'none'; base-uri 'none'")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class ConsoleFlask(Flask):
    """Flask whose routes answer only the methods they declare: no automatic OPTIONS (there is
    no cross-origin use), so anything else, TRACE included, is 405. Set as a default so that
    the static route, made when the app is, follows it too."""

    default_config = ImmutableDict({**Flask.default_config, "PROVIDE_AUTOMATIC_OPTIONS": False})


class BoundedIntConverter(IntegerConverter):
    """``<int:...>`` that matches only ids the database can hold (1 to 2**31 - 1)."""

    def __init__(self, map: Any, *args: Any, **kwargs: Any) -> None:  # noqa: A002 - werkzeug
        kwargs.setdefault("max", 2**31 - 1)
        super().__init__(map, *args, **kwargs)


def metrics_denied() -> Response | None:
    """None when the request may read ``/metrics``, else the 401 answer.

    Open without ``web.metrics_token`` (the counters hold no patient data, and Prometheus
    scrapers usually sit on a management network); with one, the scraper sends it as a
    bearer token.
    """
    expected = current_app.config["METRICS_TOKEN"]
    if not expected:
        return None
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                          expected.encode()):
        return None
    response = jsonify(error="unauthorized", message="Send 'Authorization: Bearer <token>' "
                       "with the token of web.metrics_token.")
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="bcd-node metrics"'
    return response


def create_app(context: NodeContext, test_config: dict[str, Any] | None = None) -> Flask:
    """Build the console for one node.

    Parameters
    ----------
    context
        The node's settings, database session factory, secrets and component status.
    test_config
        Flask config overrides for tests.
    """
    app = ConsoleFlask(__name__)
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
        # The cookie's own expiry; the server-side session row enforces the same lifetime.
        PERMANENT_SESSION_LIFETIME=timedelta(hours=web.session_lifetime_hours),
        SESSION_LIFETIME_SECONDS=web.session_lifetime_hours * 3600,
        REMEMBER_COOKIE_HTTPONLY=True,
        IDLE_TIMEOUT_SECONDS=web.idle_timeout_minutes * 60,
        LOGIN_RATE_LIMIT=web.login_rate_limit,  # failed sign-ins per IP ...
        LOGIN_RATE_WINDOW_SECONDS=web.login_rate_window_seconds,  # ... within this window
        REGISTER_RATE_LIMIT=5,          # account requests per IP and hour
        UPLOAD_MAX_BYTES=50 * 1024 * 1024,
        UPLOAD_WAIT_SECONDS=10.0,  # an upload waits this long for memory, then "busy"
        METRICS_TOKEN=web.metrics_token,
        MAX_CONTENT_LENGTH=64 * 1024 * 1024,
        WTF_CSRF_TIME_LIMIT=None,  # the token is bound to the session, which expires itself
        PAGE_SIZE=50,
    )
    if test_config:
        app.config.update(test_config)
    app.extensions["bcd_node"] = context
    app.extensions["bcd_upload_budget"] = MemoryBudget(web.upload_memory)
    # Ids in URLs fit the database's integer: a longer number is "not found", not an error.
    app.url_map.converters["int"] = BoundedIntConverter
    if web.trusted_proxies:
        # Behind reverse proxies the client's address and scheme come from the X-Forwarded-For
        # and -Proto headers that the last ``trusted_proxies`` hops appended; anything a client
        # put there itself is ignored.
        n = web.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]

    from webadmin import admin, api, audit_log, auth, gallery, patients, upload, worklist
    from webadmin.db import close_db
    from webadmin.helpers import register_template_helpers

    @app.before_request
    def only_served_methods() -> None:
        # Routing failed (405 for a method the route does not serve, 404): say so before the
        # sign-in check would turn it into a redirect.
        if request.routing_exception is not None:
            raise request.routing_exception

    csrf.init_app(app)
    auth.login_manager.init_app(app)
    app.teardown_appcontext(close_db)
    app.before_request(auth.require_login)
    for blueprint in (auth.bp, worklist.bp, gallery.bp, patients.bp, upload.bp, admin.bp,
                      audit_log.bp):
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
        if request.is_secure or app.config["SESSION_COOKIE_SECURE"]:
            # Secure cookies mean the console is reached over TLS only: browsers keep to it.
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
        return error_page(400, "Form expired", "The form could not be sent: its security "
                          "token is missing or no longer valid, as after signing out or signing "
                          "in again since the page was opened. Nothing was done. Go back, reload "
                          "the page and send it again.")

    @app.errorhandler(403)
    def forbidden(_exc: Any) -> Any:
        return error_page(403, "Not allowed", "Your account may not open this page.")

    @app.errorhandler(404)
    def not_found(_exc: Any) -> Any:
        return error_page(404, "Not found", "There is nothing at this address.")

    @app.errorhandler(405)
    def method_not_allowed(exc: Any) -> Any:
        response = make_response(error_page(405, "Method not allowed",
                                            "This address does not answer that kind of request."))
        allowed = getattr(exc, "valid_methods", None)
        if allowed:
            response.headers["Allow"] = ", ".join(sorted(allowed))
        return response

    @app.errorhandler(500)
    def server_error(_exc: Any) -> Any:
        return error_page(500, "Something went wrong", "The node could not complete this "
                          "request. It has been logged; try again, or tell your administrator.")

    @app.errorhandler(DBAPIError)
    def database_error(exc: DBAPIError) -> Any:
        from bcd_node.db.integrity import is_damage, is_full

        if is_full(exc):
            LOGGER.error("%s %s: the database cannot be written: %s", request.method,
                         request.path, exc.orig)
            return error_page(503, "Disk full", "The node's disk is full, so this cannot be "
                              "saved (sign-ins included) until space is freed. Tell your "
                              "administrator.")
        if is_damage(exc):
            LOGGER.error("%s %s: the database is damaged: %s", request.method, request.path,
                         exc.orig)
            return error_page(503, "Database damaged", "The node's database cannot be read. "
                              "Tell your administrator (it needs to be restored from a "
                              "backup).")
        LOGGER.error("%s %s failed", request.method, request.path, exc_info=exc)
        return server_error(exc)

    @app.context_processor
    def node_alerts() -> dict[str, Any]:
        """Why the node is not working normally, for the banner on every page."""
        from bcd_node.store.storage import disk_status

        alerts = []
        storage = context.settings.storage
        try:
            disk = disk_status(storage.data_dir, storage.min_free_disk)
            if not disk.ok:
                alerts.append(f"Disk almost full: {disk.reason}.")
        except OSError:
            pass
        problem = (context.database_health.problem()
                   if context.database_health is not None else None)
        if problem:
            alerts.append(f"The database is {problem}: restore it from a backup.")
        # Received images missing from the data folder; a role this console's node runs
        # elsewhere that is not running (bcd-node worker, scp).
        from bcd_node.node.health import files_check, peers_checks
        alerts += [check.reason[0].upper() + check.reason[1:] + "."
                   for check in [files_check(context), *peers_checks(context)] if not check.ok]
        return {"node_alerts": alerts}

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
        """Ready: started, database readable and intact, disk above the mark, components up
        (503 with a reason for each failing check)."""
        from bcd_node.node.health import readiness

        checks = readiness(context)
        ok = all(c.ok for c in checks)
        return jsonify(status="ready" if ok else "not ready",
                       checks={c.name: c.ok for c in checks},
                       reasons={c.name: c.reason for c in checks if not c.ok}), \
            (200 if ok else 503)

    @app.get("/metrics")
    def metrics() -> Any:
        """Prometheus metrics (no patient data): counters of this process, queue from the DB."""
        from bcd_node.node.metrics import Metrics

        denied = metrics_denied()
        if denied is not None:
            return denied
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
