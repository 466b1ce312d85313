"""JSON API under ``/api/v1``: bearer tokens an admin issues, or basic auth for scripts."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, g, jsonify, request
from flask_httpauth import HTTPBasicAuth, HTTPTokenAuth, MultiAuth
from sqlalchemy import select

from bcd_node.db.models import (
    DeliveryState,
    Instance,
    Result,
    Study,
    User,
    VerificationState,
)
from bcd_node.records.cells import corrected_blast_count
from bcd_node.records.studies import field_numbers
from bcd_node.records.users import find_token
from bcd_node.records.verification import VERIFIED_WITH_CASE
from webadmin.db import audit_event, client_ip, db, node
from webadmin.helpers import page_number

bp = Blueprint("api", __name__)
basic = HTTPBasicAuth(realm="bcd-node")
token = HTTPTokenAuth(scheme="Bearer", realm="bcd-node")
auth = MultiAuth(token, basic)


@token.verify_token
def _verify_token(text: str) -> User | None:
    found = find_token(db(), node().secrets.api_token_salt, text or "")
    if found is None:
        from bcd_node.records import audit
        audit.record_failure(db(), action="api_auth_failed", source=client_ip(), actor="?",
                             actor_kind="api",
                             window_seconds=current_app.config["LOGIN_RATE_WINDOW_SECONDS"],
                             reason="bad or revoked token",
                             details={"scheme": "bearer", "prefix": (text or "")[:12]})
        db().commit()
        return None
    db().commit()
    g.api_user = found.user
    return found.user


@basic.verify_password
def _verify_password(username: str, password: str) -> User | None:
    # The same checks as the console's sign-in form: per-source rate limit, per-name lockout.
    from webadmin.auth import sign_in
    result = sign_in(username or "", password or "", actor_kind="api")
    if result.user is None:
        g.api_refusal = result
        return None
    g.api_user = result.user
    return result.user


def _unauthorized(status: int) -> Any:
    refusal = g.get("api_refusal")
    if refusal is not None:
        response = jsonify(error="too many failures" if refusal.status == 429
                           else "unauthorized", message=refusal.message)
        response.status_code = refusal.status
        if refusal.retry_after:
            response.headers["Retry-After"] = str(refusal.retry_after)
        return response
    response = jsonify(error="unauthorized",
                       message="Send 'Authorization: Bearer <token>' or basic credentials.")
    response.status_code = status
    return response


token.error_handler(_unauthorized)
basic.error_handler(_unauthorized)


@bp.before_request
@auth.login_required
def _authenticated() -> None:
    """Every API call needs a token or basic credentials."""
    return None


def _study_json(st: Study) -> dict[str, Any]:
    return {"study_instance_uid": st.study_instance_uid, "patient_id": st.patient.patient_id,
            "patient_name": st.patient.name, "study_date": st.study_date,
            "accession_number": st.accession_number, "status": st.status, "stage": st.stage,
            "confidence": st.confidence, "last_received_at": st.last_received_at.isoformat()}


def _result_json(r: Result, *, numbers: dict[int, int] | None = None) -> dict[str, Any]:
    """A result as the API gives it; ``numbers`` are the study's field numbers
    (:func:`bcd_node.records.studies.field_numbers`), looked up when not given."""
    session = db()
    image = None
    if r.instance_fk is not None:
        inst = session.get(Instance, r.instance_fk)
        if numbers is None:
            numbers = field_numbers(session, r.study_fk)
        image = {"sop_instance_uid": inst.sop_instance_uid if inst else None,
                 "field_number": numbers.get(r.instance_fk)}
    verifier = session.get(User, r.verified_by_fk) if r.verified_by_fk else None
    return {"id": r.id, "scope": r.scope, "model": {"name": r.model_name,
                                                   "version": r.model_version},
            "image": image,
            "stage": r.stage, "confidence": r.confidence, "probabilities": r.probabilities,
            "blast_count": r.blast_count, "blast_area_fraction": r.blast_area_fraction,
            "corrected_blast_count": (corrected_blast_count(session, r)
                                      if r.instance_fk is not None else None),
            "quality": r.quality, "needs_review": r.needs_review,
            "review_reasons": list(r.review_reasons or ()), "um_per_pixel": r.um_per_pixel,
            "scale_source": r.scale_source,
            "verification": r.verification, "verified_stage": r.verified_stage,
            "verified_with_case": r.verified_with == VERIFIED_WITH_CASE,
            "corrected": r.verification != VerificationState.UNVERIFIED
            and r.verified_stage is not None and r.verified_stage != r.stage,
            "verified_comment": r.verified_comment,
            "verified_at": r.verified_at.isoformat() if r.verified_at else None,
            "verified_by": ({"username": verifier.username,
                             "full_name": verifier.full_name or None}
                            if verifier is not None else None),
            "amendment": ({"reason": r.amends.get("reason"),
                           "replaces_verified_at": r.amends.get("at"),
                           "replaces_verified_stage": r.amends.get("stage")}
                          if r.amends else None),
            "pdf": bool(r.pdf_path), "verified_pdf": bool(r.verified_pdf_path)}


@bp.get("/status")
def status() -> Any:
    """Node status: components, queue depth, deliveries by state, and each destination's
    deliveries and last C-ECHO (the figures of ``bcd-node status``)."""
    from bcd_node.delivery.status import node_status

    status = node_status(db(), node().settings, waiting=0, failures=0)
    counts = status.deliveries.counts
    return jsonify(ae_title=node().settings.dicom.ae_title,
                   components={n: {"available": c.available, "detail": c.describe()}
                               for n, c in node().components.items()},
                   queue_depth=status.jobs.active,
                   deliveries={s.value: counts.get(s.value, 0) for s in DeliveryState},
                   destinations={d.name: {"ok": d.ok, "waiting": d.waiting,
                                          "deliveries": {s.value: d.counts.get(s.value, 0)
                                                         for s in DeliveryState},
                                          "echo": {"ok": d.echo_ok,
                                                   "at": (d.echo_at.isoformat()
                                                          if d.echo_at else None),
                                                   "error": d.echo_error}}
                                 for d in status.deliveries.destinations})


@bp.get("/studies")
def studies() -> Any:
    """Studies, newest first, with the worklist's filters (status, stage, from, to, patient)."""
    from webadmin.worklist import worklist_page
    try:
        per_page = min(500, max(1, int(request.args.get("per_page", "100"))))
    except ValueError:
        per_page = 100
    page = worklist_page(request.args.to_dict(), page_number(), per_page)
    audit_event("api_list_studies", details={k: v for k, v in request.args.items() if v})
    db().commit()
    return jsonify(page=page.page, pages=page.pages, total=page.total,
                   studies=[_study_json(st) for st, _patient in page.items])


@bp.get("/studies/<uid>")
def study(uid: str) -> Any:
    """One study with its results."""
    session = db()
    st = session.execute(select(Study).where(Study.study_instance_uid == uid)).scalar_one_or_none()
    if st is None:
        abort(404)
    results = session.execute(select(Result).where(Result.study_fk == st.id)
                              .order_by(Result.id)).scalars().all()
    audit_event("view_study", patient_id=st.patient.patient_id,
                study_instance_uid=st.study_instance_uid, object_ref=f"study:{st.id}")
    session.commit()
    numbers = field_numbers(session, st.id)
    body = _study_json(st)
    body["results"] = [_result_json(r, numbers=numbers) for r in results]
    return jsonify(body)


@bp.get("/results/<int:result_id>")
def result(result_id: int) -> Any:
    """One result."""
    session = db()
    r = session.get(Result, result_id)
    if r is None:
        abort(404)
    st = session.get(Study, r.study_fk)
    audit_event("view_result", patient_id=st.patient.patient_id,
                study_instance_uid=st.study_instance_uid, object_ref=f"result:{r.id}")
    session.commit()
    return jsonify(study_instance_uid=st.study_instance_uid, **_result_json(r))


@bp.get("/openapi.json")
def openapi() -> Any:
    """This API described as an OpenAPI 3 document."""
    from webadmin.openapi import document

    return jsonify(document())


@bp.get("/results/<int:result_id>/pdf")
def result_pdf(result_id: int) -> Any:
    """A result's PDF (verified when it exists; ``?version=ai`` for the AI's own)."""
    from webadmin.worklist import pdf
    return pdf(result_id)


@bp.errorhandler(404)
def _not_found(_exc: Any) -> Any:
    return jsonify(error="not found"), 404


