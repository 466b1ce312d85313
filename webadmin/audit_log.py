"""The audit log for admins: filter, paginate, export, verify the hash chain."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any, Iterator

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import func, select

from bcd_node.db.models import AuditEvent
from bcd_node.records.audit import flush_failures, verify_chain
from webadmin.auth import admin_required
from webadmin.db import audit_event, db
from webadmin.forms import ActionForm
from webadmin.helpers import Page, clamp_page, day_start, page_number, parse_day

bp = Blueprint("audit", __name__, url_prefix="/admin/audit")
EXPORT_FIELDS = ("id", "at", "actor", "actor_kind", "source", "action", "outcome", "patient_id",
                 "study_instance_uid", "object_ref", "details", "prev_hash", "hash")


@bp.before_request
@admin_required
def _only_admins() -> None:
    """Every page here is for admins; they see aggregated failures whose window is over."""
    session = db()
    if flush_failures(session):
        session.commit()
    return None


#: Spreadsheets run a cell that starts with one of these as a formula (OWASP, CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that no spreadsheet runs: text starting like a formula gets a leading ``'``.

    Numbers stay numbers; the JSON export keeps every value as it is.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def filtered(args: dict[str, str]) -> Any:
    """The audit select with the filters in ``args`` (user, action, patient, from, to)."""
    query = select(AuditEvent)
    if args.get("user"):
        query = query.where(AuditEvent.actor == args["user"].strip())
    if args.get("action"):
        query = query.where(AuditEvent.action == args["action"].strip())
    if args.get("patient"):
        query = query.where(AuditEvent.patient_id == args["patient"].strip())
    if args.get("outcome"):
        query = query.where(AuditEvent.outcome == args["outcome"].strip())
    day_from, day_to = parse_day(args.get("from")), parse_day(args.get("to"))
    if day_from:
        query = query.where(AuditEvent.at >= day_start(day_from))
    if day_to:
        query = query.where(AuditEvent.at < day_start(day_to + timedelta(days=1)))
    return query


@bp.get("/")
def index() -> Any:
    """The audit log, newest first."""
    session = db()
    args = request.args.to_dict()
    query = filtered(args)
    per_page = current_app.config["PAGE_SIZE"]
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    page_no = clamp_page(page_number(), per_page, total)
    events = session.execute(query.order_by(AuditEvent.id.desc()).limit(per_page)
                             .offset((page_no - 1) * per_page)).scalars().all()
    actions = session.execute(select(AuditEvent.action).distinct().order_by(
        AuditEvent.action)).scalars().all()
    return render_template("audit/index.html", page=Page(list(events), page_no, per_page, total),
                           args=args, actions=actions, action_form=ActionForm(), report=None)


def _rows(args: dict[str, str]) -> Iterator[dict[str, Any]]:
    session = db()
    last_id = 0
    base = filtered(args)
    while True:
        batch = session.execute(base.where(AuditEvent.id > last_id).order_by(AuditEvent.id)
                                .limit(1000)).scalars().all()
        if not batch:
            return
        for event in batch:
            yield {name: (getattr(event, name).isoformat() if name == "at"
                          else getattr(event, name)) for name in EXPORT_FIELDS}
            last_id = event.id


@bp.get("/export.<any(csv, json):fmt>")
def export(fmt: str) -> Any:
    """Export the filtered log as CSV or JSON (the export itself is audited)."""
    args = request.args.to_dict()
    audit_event("audit_export", details={"format": fmt, **{k: v for k, v in args.items() if v}})
    db().commit()
    rows = list(_rows(args))
    if fmt == "json":
        body = json.dumps(rows, indent=1, default=str)
        mimetype = "application/json"
    else:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
        writer.writeheader()
        for row in rows:
            cells = {**row, "details": json.dumps(row["details"], sort_keys=True)}
            writer.writerow({k: spreadsheet_safe(v) for k, v in cells.items()})
        body = out.getvalue()
        mimetype = "text/csv"
    return Response(body, mimetype=mimetype, headers={
        "Content-Disposition": f"attachment; filename=bcd-audit.{fmt}"})


@bp.post("/verify")
def verify() -> Any:
    """Recompute the hash chain and say whether it is intact."""
    form = ActionForm()
    if not form.validate_on_submit():
        flash("The form expired; try again.", "error")
        return redirect(url_for("audit.index"))
    session = db()
    report = verify_chain(session)
    audit_event("audit_verify", outcome="success" if report.ok else "failure",
                details={"checked": report.checked, "first_bad_id": report.first_bad_id})
    session.commit()
    if report.ok:
        flash(f"The audit chain is intact ({report.checked} events checked).", "success")
    else:
        flash(f"The audit chain is BROKEN at event {report.first_bad_id}: {report.reason}. "
              f"Events before it ({report.checked}) are intact.", "error")
    return redirect(url_for("audit.index"))
