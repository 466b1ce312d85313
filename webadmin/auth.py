"""Sign-in, sign-out and self-registration; Flask-Login with a server-side session record.

The browser's (signed) cookie holds only the id of a :class:`~bcd_node.db.models.WebSession`
row, new at every login. Logout and idle expiry end that row, so a copy of the cookie replayed
afterwards is refused.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from functools import wraps
from typing import Any, Callable
from urllib.parse import urlsplit

from flask import (Blueprint, abort, current_app, flash, redirect, render_template, request,
                   session, url_for)
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from sqlalchemy import func, select

from bcd_node.db.models import AuditEvent, Role, User, UserState, WebSession, utcnow
from bcd_node.users import (UserError, authenticate, register_doctor, set_password,
                            verify_password)
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
    """The user of a live session; ends sessions idle for too long or of disabled users."""
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
    if now - ws.last_seen_at > idle:
        _end(ws, "idle")
        audit_event_for(user.username, "session_expired", object_ref=f"session:{ws.id[:8]}")
        session_db.commit()
        return None
    if (now - ws.last_seen_at).total_seconds() > 15:  # keep writes rare
        ws.last_seen_at = now
        session_db.commit()
    return ConsoleUser(user, session_id)


def audit_event_for(username: str, action: str, **kwargs: Any) -> None:
    """An audit event for a named user (before or after Flask-Login knows them)."""
    from bcd_node import audit
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
        return login_manager.unauthorized()
    return None


def _safe_next(target: str | None) -> str | None:
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    return target


def _recent(action: str, ip: str, seconds: int) -> int:
    since = utcnow() - timedelta(seconds=seconds)
    return db().execute(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == action, AuditEvent.source == ip,
        AuditEvent.at >= since)).scalar_one()


def rate_limited(ip: str) -> bool:
    """Whether ``ip`` has failed to sign in too often within the window."""
    cfg = current_app.config
    return _recent("login_failed", ip, cfg["LOGIN_RATE_WINDOW_SECONDS"]) >= cfg["LOGIN_RATE_LIMIT"]


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Sign in."""
    if current_user.is_authenticated:
        return redirect(url_for("worklist.index"))
    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        ip = client_ip()
        session_db = db()
        if rate_limited(ip):
            audit_event_for(form.username.data[:64], "login_rate_limited", outcome="failure",
                            details={"ip": ip})
            session_db.commit()
            flash("Too many failed sign-ins from this computer. Wait a few minutes and try again.",
                  "error")
            return render_template("auth/login.html", form=form, context=node()), 429
        outcome = authenticate(session_db, form.username.data.strip().lower(),
                               form.password.data, source=ip)
        if outcome.user is None:
            session_db.commit()
            if outcome.reason == "pending approval":
                flash("Your account is waiting for an administrator's approval.", "error")
            elif outcome.reason == "disabled":
                flash("This account is disabled. Ask an administrator.", "error")
            else:
                flash("Wrong user name or password, or the account is locked for a while.",
                      "error")
            status = 401
        else:
            user = outcome.user
            session.clear()  # a fresh cookie: nothing from before the login carries over
            session_id = secrets.token_urlsafe(32)
            ws = WebSession(id=session_key(session_id), user_fk=user.id, ip=ip[:64],
                            user_agent=(request.user_agent.string or "")[:255])
            session_db.add(ws)
            audit_event_for(user.username, "login", object_ref=f"session:{ws.id[:8]}")
            session_db.commit()
            session.permanent = True
            login_user(ConsoleUser(user, session_id), remember=False)
            default = "admin.users" if user.role == Role.ADMIN else "worklist.index"
            return redirect(_safe_next(request.args.get("next")) or url_for(default))
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


@bp.route("/register", methods=["GET", "POST"])
def register() -> Any:
    """A doctor asks for an account; an admin approves it."""
    form = RegisterForm()
    if form.validate_on_submit():
        session_db = db()
        if _recent("user_add", client_ip(), 3600) >= current_app.config["REGISTER_RATE_LIMIT"]:
            flash("Too many account requests from this computer. Try again later.", "error")
            return render_template("auth/register.html", form=form), 429
        try:
            register_doctor(session_db, form.username.data.strip().lower(), form.password.data,
                            full_name=form.full_name.data.strip(), email=form.email.data.strip(),
                            source=client_ip())
        except UserError as exc:
            session_db.rollback()
            field = form.password if str(exc).startswith("password") else form.username
            field.errors = [*field.errors, str(exc)]
        else:
            session_db.commit()
            flash("Thank you. Your account is waiting for an administrator's approval.", "info")
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
