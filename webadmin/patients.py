"""Patients: search, and one patient's history across studies."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, render_template, request
from sqlalchemy import func, select

from bcd_node.db.models import Patient, Result, Study
from bcd_node.records.names import patient_matches
from webadmin.db import audit_event, db
from webadmin.helpers import Page, clamp_page, page_number

bp = Blueprint("patients", __name__, url_prefix="/patients")


@bp.get("/")
def search() -> Any:
    """Search patients by ID or name."""
    term = request.args.get("q", "").strip()
    session = db()
    query = select(Patient)
    if term:
        query = query.where(patient_matches(term))
    per_page = current_app.config["PAGE_SIZE"]
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    page_no = clamp_page(page_number(), per_page, total)
    patients = session.execute(query.order_by(Patient.name, Patient.id).limit(per_page)
                               .offset((page_no - 1) * per_page)).scalars().all()
    counts = dict(session.execute(select(Study.patient_fk, func.count()).where(
        Study.patient_fk.in_([p.id for p in patients])).group_by(Study.patient_fk)).all()) \
        if patients else {}
    audit_event("search_patients", details={"q": term, "found": total})
    session.commit()
    return render_template("patients/search.html", page=Page(list(patients), page_no, per_page,
                                                             total),
                           q=term, counts=counts)


@bp.get("/<int:patient_pk>")
def history(patient_pk: int) -> Any:
    """A patient's studies and results over time."""
    session = db()
    patient = session.get(Patient, patient_pk)
    if patient is None:
        abort(404)
    studies = session.execute(select(Study).where(Study.patient_fk == patient.id)
                              .order_by(Study.last_received_at.desc())).scalars().all()
    results = session.execute(select(Result).where(
        Result.study_fk.in_([s.id for s in studies])).order_by(Result.created_at)).scalars().all() \
        if studies else []
    by_study: dict[int, list[Result]] = {}
    for result in results:
        by_study.setdefault(result.study_fk, []).append(result)
    audit_event("view_patient", patient_id=patient.patient_id, object_ref=f"patient:{patient.id}")
    session.commit()
    return render_template("patients/history.html", patient=patient, studies=studies,
                           by_study=by_study)
