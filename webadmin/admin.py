"""Administration: users and API tokens, system status, statistics."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from typing import Any, Callable

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import func, select

from bcd_node.db.models import (
    ApiToken,
    AuthThrottle,
    Delivery,
    Job,
    Result,
    ResultScope,
    Study,
    User,
    UserState,
    VerificationState,
    utcnow,
)
from bcd_node.inference.loader import resolve_manifest
from bcd_node.records import throttle
from bcd_node.records.users import (
    UserError,
    add_user,
    approve_user,
    disable_user,
    issue_token,
    reset_password,
    revoke_token,
    set_full_name,
    set_role,
    unlock_user,
)
from webadmin.auth import admin_required, end_sessions
from webadmin.charts import bar_chart
from webadmin.db import actor, client_ip, db, node
from webadmin.forms import (
    STAGES,
    ActionForm,
    FullNameForm,
    RoleForm,
    TokenForm,
    UserCreateForm,
)

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
@admin_required
def _only_admins() -> None:
    """Every page here is for admins."""
    return None


def _me() -> str:
    from flask_login import current_user
    return current_user.username


@bp.get("/users")
def users() -> Any:
    """Users: pending approvals first, then everyone."""
    return _users_page(UserCreateForm())


def _users_page(form: UserCreateForm) -> str:
    session = db()
    everyone = session.execute(select(User).order_by(User.username)).scalars().all()
    locks = dict(session.execute(select(AuthThrottle.key, AuthThrottle.locked_until).where(
        AuthThrottle.kind == throttle.NAME, AuthThrottle.locked_until > utcnow(),
        AuthThrottle.key.in_([u.username for u in everyone]))).all()) if everyone else {}
    return render_template("admin/users.html", users=everyone, locks=locks,
                           pending=[u for u in everyone if u.state == UserState.PENDING],
                           create_form=form, action=ActionForm())


@bp.post("/users")
def create_user() -> Any:
    """Create an account."""
    form = UserCreateForm()
    session = db()
    if form.validate_on_submit():
        try:
            add_user(session, form.username.data, form.password.data, form.role.data,
                     full_name=form.full_name.data or "", email=form.email.data or "",
                     actor=_me(), actor_kind="user", source=client_ip())
        except UserError as exc:
            session.rollback()
            flash(str(exc), "error")
        else:
            session.commit()
            flash(f"User {form.username.data} created.", "success")
            return redirect(url_for("admin.user", username=form.username.data))
    return _users_page(form), 400


def _user_or_404(username: str) -> User:
    user = db().execute(select(User).where(User.username == username)).scalar_one_or_none()
    if user is None:
        abort(404)
    return user


def _user_page(u: User, *, new_password: str | None = None,
               new_token: str | None = None) -> str:
    session = db()
    tokens = session.execute(select(ApiToken).where(ApiToken.user_fk == u.id)
                             .order_by(ApiToken.created_at.desc())).scalars().all()
    lock = session.execute(select(AuthThrottle).where(
        AuthThrottle.kind == throttle.NAME, AuthThrottle.key == u.username)).scalar_one_or_none()
    return render_template("admin/user.html", user=u, tokens=tokens, action=ActionForm(),
                           role_form=RoleForm(role=u.role.value), token_form=TokenForm(),
                           name_form=FullNameForm(full_name=u.full_name),
                           new_password=new_password, new_token=new_token,
                           failures=lock.failures if lock else 0,
                           locked_until=lock.locked_until if lock and lock.locked_until
                           and lock.locked_until > utcnow() else None)


@bp.get("/users/<username>")
def user(username: str) -> Any:
    """One user: state, role, sign-in lock, password reset and API tokens."""
    return _user_page(_user_or_404(username))


def _user_action(username: str, do: Any, done: str | Callable[[], str],
                 form: Any = None) -> Any:
    """Check ``form`` (an :class:`ActionForm` by default), do ``do(session)`` to the user,
    flash ``done`` (or what it returns, once done) or the refusal, and go back to the user."""
    form = form or ActionForm()
    if not form.validate_on_submit():
        abort(400)
    session = db()
    _user_or_404(username)
    try:
        do(session)
    except UserError as exc:
        session.rollback()
        flash(str(exc), "error")
    else:
        session.commit()
        flash(done if isinstance(done, str) else done(), "success")
    return redirect(request.form.get("back") == "list" and url_for("admin.users")
                    or url_for("admin.user", username=username))


@bp.post("/users/<username>/approve")
def approve(username: str) -> Any:
    """Approve a pending account (or re-enable a disabled one)."""
    return _user_action(username, lambda s: approve_user(s, username, actor=_me(),
                                                         source=client_ip()),
                        f"{username} can now sign in.")


@bp.post("/users/<username>/disable")
def disable(username: str) -> Any:
    """Disable an account; its sessions and tokens stop working."""
    return _user_action(username, lambda s: disable_user(s, username, actor=_me(),
                                                         actor_kind="user", source=client_ip()),
                        f"{username} is disabled.")


@bp.post("/users/<username>/role")
def role(username: str) -> Any:
    """Change a user's role."""
    form = RoleForm()
    return _user_action(username, lambda s: set_role(s, username, form.role.data, actor=_me(),
                                                     source=client_ip()),
                        lambda: f"{username} is now {form.role.data}.", form)


@bp.post("/users/<username>/name")
def full_name(username: str) -> Any:
    """Change a user's full name."""
    form = FullNameForm()
    return _user_action(username, lambda s: set_full_name(s, username, form.full_name.data or "",
                                                          actor=_me(), source=client_ip()),
                        f"{username}'s full name is saved.", form)


@bp.post("/users/<username>/password")
def password(username: str) -> Any:
    """Reset a password to a random one, shown once."""
    form = ActionForm()
    if not form.validate_on_submit():
        abort(400)
    session = db()
    u = _user_or_404(username)
    new_password = reset_password(session, username, actor=_me(), source=client_ip())
    end_sessions(session, u.id, "password_reset")
    session.commit()
    return _user_page(u, new_password=new_password)


@bp.post("/users/<username>/unlock")
def unlock(username: str) -> Any:
    """Lift a sign-in lock (after failed attempts); the password stays."""
    return _user_action(username, lambda s: unlock_user(s, username, actor=_me(),
                                                        actor_kind="user", source=client_ip()),
                        f"{username} can sign in again.")


@bp.post("/users/<username>/tokens")
def token_issue(username: str) -> Any:
    """Issue an API token, shown once."""
    form = TokenForm()
    session = db()
    u = _user_or_404(username)
    new_token = None
    if form.validate_on_submit():
        try:
            _token, new_token = issue_token(session, username, form.name.data,
                                            node().secrets.api_token_salt, actor=_me(),
                                            source=client_ip())
        except UserError as exc:
            session.rollback()
            flash(str(exc), "error")
        else:
            session.commit()
    return _user_page(u, new_token=new_token)


@bp.post("/tokens/<int:token_id>/revoke")
def token_revoke(token_id: int) -> Any:
    """Revoke an API token."""
    form = ActionForm()
    if not form.validate_on_submit():
        abort(400)
    session = db()
    try:
        token = revoke_token(session, token_id, actor=_me(), source=client_ip())
    except UserError:
        abort(404)
    username = token.user.username
    session.commit()
    flash("Token revoked.", "success")
    return redirect(url_for("admin.user", username=username))


# --------------------------------------------------------------------------- system


def _model_info() -> dict[str, Any]:
    component = node().components.get("model")
    info: dict[str, Any] = {"available": bool(component and component.available),
                            "detail": component.describe() if component else "not reported"}
    manifest = resolve_manifest(node().settings.model.weights)
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return info
    info.update(name=data.get("name"), version=data.get("version"), classes=data.get("classes"),
                metrics=data.get("metrics"), demonstration=data.get("demonstration"),
                manifest=str(manifest))
    card = data.get("model_card") or data.get("card")
    candidates = [manifest.parent / card] if isinstance(card, str) else []
    candidates += [manifest.parent / n for n in ("MODEL_CARD.md", "model_card.md", "README.md")]
    for path in candidates:
        if path.is_file() and path.resolve().is_relative_to(manifest.parent.resolve()):
            info["card"] = path.read_text(encoding="utf-8", errors="replace")[:20000]
            break
    return info


@bp.get("/system")
def system() -> Any:
    """System status: readiness, components, queue, deliveries, destinations, model, disk."""
    from bcd_node.delivery.status import node_status
    from bcd_node.node.health import readiness

    settings = node().settings
    # The figures of `bcd-node status`, from the same function.
    status = node_status(db(), settings)
    problems = [c for c in readiness(node()) if not c.ok]
    return render_template("admin/system.html", components=node().components,
                           jobs=status.jobs, overview=status.deliveries, disk=status.disk,
                           failed_jobs=status.recent_failures,
                           problems=problems,
                           configured={d.name: d for d in (*settings.destinations,
                                                           *settings.lis)},
                           model=_model_info(), action=ActionForm(), settings=settings)


@bp.post("/deliveries/<int:delivery_id>/retry")
def retry_delivery(delivery_id: int) -> Any:
    """Queue a delivery that needs attention again (the rules of ``bcd-node deliveries
    retry``)."""
    from bcd_node.delivery.outbox import DeliveryRetryError, retry_deliveries

    form = ActionForm()
    if not form.validate_on_submit():
        abort(400)
    session = db()
    if session.get(Delivery, delivery_id) is None:
        abort(404)
    name, kind = actor()
    try:
        retry_deliveries(session, [delivery_id], actor=name, actor_kind=kind,
                         source=client_ip())
    except DeliveryRetryError as exc:
        session.rollback()
        flash(str(exc), "error")
        return redirect(_back_or(url_for("admin.system")))
    session.commit()
    flash(f"Delivery {delivery_id} will be sent again.", "success")
    return redirect(_back_or(url_for("admin.system")))


def _back_or(default: str) -> str:
    """The form's ``back`` (a page of this console, e.g. the study the retry came from), else
    ``default``."""
    back = request.form.get("back", "")
    if back.startswith("/") and not back.startswith("//") and "\\" not in back:
        return back
    return default


@bp.post("/jobs/<int:job_id>/retry")
def retry_job(job_id: int) -> Any:
    """Queue a job that failed for good again (the rules of ``bcd-node jobs retry``)."""
    from bcd_node.jobs.retry import JobRetryError, retry_failed_jobs

    form = ActionForm()
    if not form.validate_on_submit():
        abort(400)
    session = db()
    if session.get(Job, job_id) is None:
        abort(404)
    name, kind = actor()
    try:
        retry_failed_jobs(session, [job_id], actor=name, actor_kind=kind, source=client_ip())
    except JobRetryError as exc:
        session.rollback()
        flash(str(exc), "error")
        return redirect(url_for("admin.system"))
    session.commit()
    flash(f"Job {job_id} will run again.", "success")
    return redirect(url_for("admin.system"))


# --------------------------------------------------------------------------- statistics


def statistics_data(days: int = 30) -> dict[str, Any]:
    """Figures for the statistics page."""
    session = db()
    from webadmin.helpers import day_start, local_day
    today = local_day(utcnow())
    since = today - timedelta(days=days - 1)
    created = session.execute(select(Study.created_at).where(
        Study.created_at >= day_start(since))).scalars().all()
    per_day = Counter(local_day(c) for c in created)
    day_points = [((since + timedelta(days=i)).strftime("%m-%d"),
                   float(per_day.get(since + timedelta(days=i), 0))) for i in range(days)]
    stage_rows = dict(session.execute(select(Result.stage, func.count()).where(
        Result.scope == ResultScope.INSTANCE).group_by(Result.stage)).all())
    stage_points = [(s, float(stage_rows.get(s, 0))) for s in STAGES]
    stage_points.append(("Insufficient", float(stage_rows.get(None, 0))))
    total_results = sum(stage_rows.values())
    needs_review = session.execute(select(func.count()).select_from(Result).where(
        Result.needs_review.is_(True))).scalar_one()
    # A field verified with its case had its cells reviewed, not its stage: not a verdict.
    verified = session.execute(select(Result.stage, Result.verified_stage).where(
        Result.verification != VerificationState.UNVERIFIED,
        Result.verified_with.is_(None))).all()
    agree = sum(1 for ai, doc in verified if ai == doc)
    matrix = {ai: {doc: 0 for doc in STAGES} for ai in list(STAGES) + [None]}
    for ai, doc in verified:
        if doc in STAGES:
            matrix.setdefault(ai, {d: 0 for d in STAGES})[doc] += 1
    return {
        "per_day": bar_chart(day_points, title=f"Studies per day (last {days} days)"),
        "stages": bar_chart(stage_points, title="AI stage distribution (images)"),
        "total_results": total_results,
        "needs_review": needs_review,
        "review_share": (needs_review / total_results) if total_results else None,
        "verified": len(verified),
        "agreement": (agree / len(verified)) if verified else None,
        "matrix": matrix,
    }


@bp.get("/statistics")
def statistics() -> Any:
    """Studies per day, stage distribution, review share, AI vs doctor agreement."""
    return render_template("admin/statistics.html", stats=statistics_data(), stages=STAGES)
