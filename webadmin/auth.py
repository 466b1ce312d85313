"""Sign-in, sign-out and self-registration; Flask-Login with a server-side session record.

The browser's (signed) cookie holds only the id of a :class:`~bcd_node.db.models.WebSession`
row, new at every login. Logout and idle expiry end that row, so a copy of the cookie replayed
afterwards is refused.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import wraps
from typing import Any, Callable
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from sqlalchemy import func, select
from werkzeug.exceptions import HTTPException

from bcd_node.db.models import AuditEvent, Role, User, UserState, WebSession, utcnow
from bcd_node.records import audit, throttle
from bcd_node.records.users import (
    NameTaken,
    UserError,
    authenticate,
    register_doctor,
    set_password,
    verify_password,
)
from webadmin.db import audit_event, client_ip, db, node
from webadmin.forms import LoginForm, PasswordChangeForm, RegisterForm

bp = Blueprint("auth", __name__)
login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Please sign in to continue."
login_manager.login_message_category = "info"
# The server-side session row does the protecting; Flask-Login's own would only mark sessions
# non-fresh.
login_manager.session_protection = None

#: Endpoints reachable without signing in.
PUBLIC_ENDPOINTS = frozenset({"auth.login", "auth.register", "healthz", "readyz", "metrics",
                              "static"})

#: The live pages' polls (``static/live.js``) and the idle warning's question (``static/app.js``):
#: they are not the user's activity, so they keep no session from its idle end; signed out, they
#: are answered 401, which the page turns into the sign-in page.
BACKGROUND_ENDPOINTS = frozenset({"worklist.state_json", "worklist.case_state_json",
                                  "auth.session_state"})

#: Set by ``live.js`` just before it reloads a page on its own (a case's status changed, cases
#: arrived) and removed at the user's first click or key press there (or after 60 s): that
#: page's requests are not the user's activity either.
LIVE_RELOAD_COOKIE = "bcd_live_reload"


def background_request() -> bool:
    """Whether the request is the console's own refresh rather than the user's activity."""
    return request.endpoint in BACKGROUND_ENDPOINTS or \
        request.cookies.get(LIVE_RELOAD_COOKIE) == "1"


class ConsoleUser(UserMixin):
    """The signed-in user of one browser session."""

    def __init__(self, user: User, session_id: str) -> None:
        self.id = session_id  # Flask-Login stores this in the cookie
        self.session_key = session_key(session_id)
        self.user_id = user.id
        self.username = user.username
        self.full_name = user.full_name
        self.role = user.role

    @property
    def is_admin(self) -> bool:
        """Whether the user administers the node."""
        return self.role == Role.ADMIN


def session_key(session_id: str) -> str:
    """The stored form of a session id (its SHA-256): a copy of the table opens no session."""
    return hashlib.sha256(session_id.encode("ascii", "replace")).hexdigest()


def _end(ws: WebSession, reason: str) -> None:
    ws.ended_at = utcnow()
    ws.end_reason = reason


def end_sessions(session_db: Any, user_id: int, reason: str, *, keep: str | None = None) -> int:
    """End every live console session of a user (but ``keep``); return how many ended."""
    live = session_db.execute(select(WebSession).where(
        WebSession.user_fk == user_id, WebSession.ended_at.is_(None))).scalars().all()
    ended = 0
    for ws in live:
        if ws.id != keep:
            _end(ws, reason)
            ended += 1
    return ended


@login_manager.user_loader
def load_user(session_id: str) -> ConsoleUser | None:
    """The user of a live session; ends sessions idle for too long, older than their lifetime
    or of disabled users."""
    session_db = db()
    ws = session_db.get(WebSession, session_key(session_id))
    if ws is None or ws.ended_at is not None:
        return None
    user = session_db.get(User, ws.user_fk)
    now = utcnow()
    idle = timedelta(seconds=current_app.config["IDLE_TIMEOUT_SECONDS"])
    if user is None or user.state != UserState.ACTIVE:
        _end(ws, "disabled")
        session_db.commit()
        return None
    lifetime = timedelta(seconds=current_app.config["SESSION_LIFETIME_SECONDS"])
    for reason, expired in (("lifetime", now - ws.created_at > lifetime),
                            ("idle", now - ws.last_seen_at > idle)):
        if expired:
            # However active, a session ends after its lifetime: a stolen cookie is not
            # good forever.
            _end(ws, reason)
            audit_event_for(user.username, "session_expired", object_ref=f"session:{ws.id[:8]}",
                            details={"reason": reason})
            session_db.commit()
            return None
    # The live refresh's polls and reloads are checked above like any request, but only the
    # user's own requests count as activity: a page left open must still end when idle. (At
    # most one write per 15 s.)
    if not background_request() and (now - ws.last_seen_at).total_seconds() > 15:
        ws.last_seen_at = now
        session_db.commit()
    return ConsoleUser(user, session_id)


def audit_event_for(username: str, action: str, **kwargs: Any) -> None:
    """An audit event for a named user (before or after Flask-Login knows them)."""
    from bcd_node.records import audit
    audit.record(db(), actor=username, actor_kind="user", action=action, source=client_ip(),
                 **kwargs)


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Only admins; others get 403."""
    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not current_user.is_authenticated:
            return login_manager.unauthorized()
        if not current_user.is_admin:
            abort(403)
        return view(*args, **kwargs)
    return wrapped


def require_login() -> Any:
    """Before every request: anything but the public pages and the API needs a signed-in user."""
    endpoint = request.endpoint or ""
    if endpoint in PUBLIC_ENDPOINTS or endpoint.startswith("api.") or \
            request.path.startswith("/api/"):
        return None
    if not current_user.is_authenticated:
        if request.endpoint in BACKGROUND_ENDPOINTS or request.endpoint == "auth.keepalive":
            # A poll cannot follow a redirect to the sign-in page; the page reloads on 401.
            return jsonify(error="unauthorized", message="Signed out; sign in again."), 401
        if request.method != "GET":
            # A form sent after the session ended (idle, signed out elsewhere): back to the
            # page it was sent from once signed in, not to its address, which takes POST only.
            flash("You were signed out, so that was not done: sign in, then do it again.",
                  "error")
            return redirect(url_for("auth.login", next=_referrer_page() or "/"))
        return login_manager.unauthorized()
    return None


def _referrer_page() -> str | None:
    """The console page the request was sent from (its Referer, on this host), when it is one
    to return to (:func:`safe_next`)."""
    referrer = urlsplit(request.referrer or "")
    if not referrer.path or referrer.netloc != request.host:
        return None
    return safe_next(referrer.path + (f"?{referrer.query}" if referrer.query else ""))


_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._~-]*(?:/[A-Za-z0-9._~-]+)*/?$")


def safe_next(target: str | None) -> str | None:
    """``target`` when it is a page of this console to return to after signing in, else None.

    An allow-list rather than a block-list: the path must be plain (letters, digits and
    ``/._~-``; no backslash, percent escape, ``//``, dot segment or control character, which
    browsers and proxies read in different ways) and must name a GET route of the console; the
    query string must not hold spaces or control characters.
    """
    if not target or len(target) > 2048:
        return None
    path, sep, query = target.partition("?")
    if not _SAFE_PATH.match(path) or "//" in path:
        return None
    if any(seg in (".", "..") for seg in path.split("/")):
        return None
    if sep and (any(ord(c) < 33 or ord(c) == 127 for c in query) or "\\" in query):
        return None
    adapter = current_app.url_map.bind("localhost")
    try:
        endpoint, _args = adapter.match(path, method="GET")
    except HTTPException:  # no such page, or a redirect (the adapter would add a host)
        return None
    if endpoint in ("static", "auth.login", "auth.register") or endpoint.startswith("api."):
        return None
    return target


@dataclass(frozen=True)
class SignIn:
    """The outcome of :func:`sign_in`: the user, or the HTTP status and message of a refusal."""

    user: User | None
    status: int = 200
    message: str = ""
    retry_after: int | None = None


def _when(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def lock_message(until: datetime) -> str:
    """What a locked name is told: the same whether an account has the name or not."""
    return (f"Sign-in is locked for this user name until {_when(until)} after repeated failed "
            "attempts; until then every password is refused. An administrator can lift the "
            "lock at once on the node with 'bcd-node users unlock NAME' (or 'bcd-node users "
            "set-password NAME').")


def sign_in(username: str, password: str, *, actor_kind: str) -> SignIn:
    """Check credentials with the per-source rate limit and the per-name lockout (both the
    console's form and the API's basic auth); audits and commits."""
    cfg = current_app.config
    ip = client_ip()
    session_db = db()
    window = cfg["LOGIN_RATE_WINDOW_SECONDS"]
    name = username.strip().lower()[:64]
    blocked = throttle.source_blocked_until(session_db, ip, cfg["LOGIN_RATE_LIMIT"])
    if blocked is not None:
        audit.record_failure(session_db, action="login_rate_limited", source=ip,
                             actor=name or "?", actor_kind=actor_kind, window_seconds=window,
                             reason="too many failures from this source")
        session_db.commit()
        return SignIn(None, 429, "Too many failed sign-ins from this computer. Try again after "
                                 f"{_when(blocked)}.",
                      max(1, int((blocked - utcnow()).total_seconds()) + 1))
    outcome = authenticate(session_db, name, password, source=ip, actor_kind=actor_kind,
                           window_seconds=window)
    if outcome.user is not None:
        session_db.commit()
        return SignIn(outcome.user)
    throttle.count_source_failure(session_db, ip, window)
    session_db.commit()
    if outcome.locked_until is not None:
        return SignIn(None, 401, lock_message(outcome.locked_until))
    if outcome.reason == "disabled":  # only said to someone who knows the password
        return SignIn(None, 401, "This account is disabled. Ask an administrator.")
    # A pending account gets the same answer as a wrong password: registering a name and then
    # signing in with it must not tell whether the name already had an account.
    return SignIn(None, 401, "Wrong user name or password, or the account is still waiting for "
                             "an administrator's approval.")


def _recent(actions: tuple[str, ...], ip: str, seconds: int) -> int:
    since = utcnow() - timedelta(seconds=seconds)
    return db().execute(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action.in_(actions), AuditEvent.source == ip,
        AuditEvent.at >= since)).scalar_one()


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Sign in."""
    if current_user.is_authenticated:
        return redirect(url_for("worklist.index"))
    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        result = sign_in(form.username.data, form.password.data, actor_kind="user")
        if result.user is None:
            flash(result.message, "error")
            response = make_response(render_template("auth/login.html", form=form,
                                                     context=node()), result.status)
            if result.retry_after:
                response.headers["Retry-After"] = str(result.retry_after)
            return response
        user = result.user
        session_db = db()
        session.clear()  # a fresh cookie: nothing from before the login carries over
        session_id = secrets.token_urlsafe(32)
        ws = WebSession(id=session_key(session_id), user_fk=user.id, ip=client_ip()[:64],
                        user_agent=(request.user_agent.string or "")[:255])
        session_db.add(ws)
        audit_event_for(user.username, "login", object_ref=f"session:{ws.id[:8]}")
        session_db.commit()
        session.permanent = True
        login_user(ConsoleUser(user, session_id), remember=False)
        default = "admin.users" if user.role == Role.ADMIN else "worklist.index"
        return redirect(safe_next(request.args.get("next")) or url_for(default))
    elif request.method == "POST":
        status = 400
    return render_template("auth/login.html", form=form, context=node()), status


@bp.post("/logout")
def logout() -> Any:
    """Sign out: end the server-side session so the cookie is worthless."""
    ws = db().get(WebSession, current_user.session_key)
    if ws is not None and ws.ended_at is None:
        _end(ws, "logout")
    audit_event("logout", object_ref=f"session:{current_user.session_key[:8]}")
    db().commit()
    logout_user()
    session.clear()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


def _session_left(ws: WebSession) -> dict[str, Any]:
    """How long ``ws`` has left, and what ends it first: ``idle`` (the user's activity keeps
    it) or ``lifetime`` (nothing does)."""
    now = utcnow()
    idle = (ws.last_seen_at + timedelta(seconds=current_app.config["IDLE_TIMEOUT_SECONDS"])
            - now).total_seconds()
    lifetime = (ws.created_at + timedelta(
        seconds=current_app.config["SESSION_LIFETIME_SECONDS"]) - now).total_seconds()
    return {"seconds_left": max(0, int(min(idle, lifetime))),
            "ends_by": "lifetime" if lifetime < idle else "idle",
            "idle_timeout_seconds": current_app.config["IDLE_TIMEOUT_SECONDS"]}


@bp.get("/session/state.json")
def session_state() -> Any:
    """How long the signed-in session has left (``static/app.js`` asks before it warns). Not
    the user's activity (BACKGROUND_ENDPOINTS): asking keeps no session open."""
    ws = db().get(WebSession, current_user.session_key)
    if ws is None:  # ended between the user loader and here: as signed out
        return jsonify(error="unauthorized", message="Signed out; sign in again."), 401
    response = jsonify(_session_left(ws))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/session/keepalive")
def keepalive() -> Any:
    """The user is there ("Stay signed in", or typing into a form): the session's idle time
    starts again. Its lifetime does not."""
    ws = db().get(WebSession, current_user.session_key)
    if ws is None:
        return jsonify(error="unauthorized", message="Signed out; sign in again."), 401
    ws.last_seen_at = utcnow()
    db().commit()
    response = jsonify(_session_left(ws))
    response.headers["Cache-Control"] = "no-store"
    return response


REGISTERED = "Thank you. Your account is waiting for an administrator's approval."


@bp.route("/register", methods=["GET", "POST"])
def register() -> Any:
    """A doctor asks for an account; an admin approves it."""
    form = RegisterForm()
    if form.validate_on_submit():
        session_db = db()
        ip = client_ip()
        if _recent(("user_add", "register_refused"), ip, 3600) >= \
                current_app.config["REGISTER_RATE_LIMIT"]:
            flash("Too many account requests from this computer. Try again later.", "error")
            return render_template("auth/register.html", form=form), 429
        name = form.username.data.strip().lower()
        try:
            register_doctor(session_db, name, form.password.data,
                            full_name=form.full_name.data.strip(), email=form.email.data.strip(),
                            source=ip)
        except NameTaken:
            # Answered like a registration, so that the page reveals no user names; the admins
            # see the attempt in the audit log.
            session_db.rollback()
            audit.record(session_db, actor=name, actor_kind="user", source=ip,
                         action="register_refused", outcome="failure", object_ref=f"user:{name}",
                         details={"reason": "name taken"})
            session_db.commit()
            flash(REGISTERED, "info")
            return redirect(url_for("auth.login"))
        except UserError as exc:
            session_db.rollback()
            field = form.password if str(exc).startswith("password") else form.username
            field.errors = [*field.errors, str(exc)]
        else:
            session_db.commit()
            flash(REGISTERED, "info")
            return redirect(url_for("auth.login"))
    return render_template("auth/register.html", form=form)


@bp.route("/account", methods=["GET", "POST"])
def account() -> Any:
    """Your account: details, and a new password (your other sessions end)."""
    session_db = db()
    user = session_db.get(User, current_user.user_id)
    form = PasswordChangeForm()
    status = 200
    if form.validate_on_submit():
        if not verify_password(user.password_hash, form.current.data):
            form.current.errors = ["Not your current password."]
            audit_event("password_change", outcome="failure", object_ref=f"user:{user.username}",
                        details={"reason": "wrong current password"})
            session_db.commit()
            status = 400
        else:
            try:
                set_password(session_db, user.username, form.password.data,
                             actor=user.username, actor_kind="user", source=client_ip())
            except UserError as exc:
                session_db.rollback()
                form.password.errors = [str(exc)]
                status = 400
            else:
                ended = end_sessions(session_db, user.id, "password_change",
                                     keep=current_user.session_key)
                session_db.commit()
                flash("Your password is changed." + (
                    f" {ended} other session(s) were signed out." if ended else ""), "success")
                return redirect(url_for("auth.account"))
    elif request.method == "POST":
        status = 400
    return render_template("auth/account.html", user=user, form=form), status
