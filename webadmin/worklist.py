"""Doctors' worklist, the review page, verification, images and PDF reports."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask_login import current_user
from sqlalchemy import func, or_, select

from bcd_node.analysis.findings import scale_text
from bcd_node.db.models import (
    Instance,
    Patient,
    Result,
    Role,
    Series,
    Study,
    User,
)
from bcd_node.errors import ValidationError
from bcd_node.node.memory_budget import Busy
from bcd_node.records.verification import VerificationRefused, verify_result
from bcd_node.store.layout import DataLayout
from webadmin.db import actor, audit_event, client_ip, db, node
from webadmin.forms import STAGES, STATUSES, VerifyForm
from webadmin.helpers import Page, clamp_page, day_start, page_number, parse_day
from webadmin.model_use import (
    configured_manifest,
    demonstration_note,
    manifest_is_demonstration,
    results_banner,
)

bp = Blueprint("worklist", __name__)


def data_file(relpath: str | None) -> Path:
    """A file under the data folder named by a stored relative path; 404 if absent or outside."""
    if not relpath:
        abort(404)
    try:
        path = DataLayout(node().settings.storage.data_dir).resolve(relpath)
    except ValueError:
        abort(404)
    if not path.is_file():
        abort(404)
    return path


def worklist_query(args: dict[str, str]) -> Any:
    """The worklist's select with the filters in ``args`` (status, stage, from, to, patient)."""
    query = select(Study, Patient).join(Patient, Study.patient_fk == Patient.id)
    if args.get("status") in STATUSES:
        query = query.where(Study.status == args["status"])
    if args.get("stage") in STAGES:
        query = query.where(Study.stage == args["stage"])
    if args.get("stage") == "none":
        query = query.where(Study.stage.is_(None))
    day_from, day_to = parse_day(args.get("from")), parse_day(args.get("to"))
    if day_from:
        query = query.where(Study.last_received_at >= day_start(day_from))
    if day_to:
        query = query.where(Study.last_received_at < day_start(day_to) + timedelta(days=1))
    term = (args.get("patient") or "").strip()
    if term:
        like = f"%{term.replace('%', '').replace('_', '')}%"
        query = query.where(or_(Patient.patient_id == term, Patient.name.ilike(like)))
    return query


def worklist_page(args: dict[str, str], page: int, per_page: int) -> Page:
    """One page of the worklist, newest first."""
    session = db()
    query = worklist_query(args)
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    page = clamp_page(page, per_page, total)
    rows = session.execute(query.order_by(Study.last_received_at.desc(), Study.id.desc())
                           .limit(per_page).offset((page - 1) * per_page)).all()
    return Page(list(rows), page, per_page, total)


@bp.get("/worklist")
def index() -> Any:
    """The worklist: studies with status, stage and confidence, filtered and paginated."""
    args = request.args.to_dict()
    page = worklist_page(args, page_number(), current_app.config["PAGE_SIZE"])
    audit_event("view_worklist", details={k: v for k, v in args.items() if v})
    db().commit()
    manifest = configured_manifest()
    return render_template("worklist/index.html", page=page, args=args, stages=STAGES,
                           statuses=STATUSES,
                           threshold=node().settings.model.review_threshold,
                           demo_note=demonstration_note(manifest)
                           if manifest_is_demonstration(manifest) else None)


def _study_or_404(uid: str) -> Study:
    study = db().execute(select(Study).where(Study.study_instance_uid == uid)).scalar_one_or_none()
    if study is None:
        abort(404)
    return study


def warnings_for(result: Result) -> list[str]:
    """The warnings a doctor must see for a result."""
    out = []
    quality = result.quality or {}
    if quality.get("status") == "failed":
        out.append(f"Analysis failed: {quality.get('reason') or 'see the job'}. The PACS was "
                   "sent a report saying the image could not be analysed.")
    elif result.stage is None or quality.get("status") == "insufficient":
        out.append("Quality insufficient: the image could not be classified reliably.")
    threshold = node().settings.model.review_threshold
    if result.confidence is not None and result.confidence < threshold:
        out.append(f"Low confidence ({result.confidence * 100:.0f} % < "
                   f"{threshold * 100:.0f} %): review carefully.")
    if quality.get("flags") and quality.get("status") != "insufficient":
        out.append("Quality flags: " + ", ".join(str(f).replace("_", " ")
                                                 for f in quality["flags"]) + ".")
    reasons = [r for r in result.review_reasons or () if r != "low confidence"]
    if result.stage is not None and "unlike the training data" in reasons:
        out.append("Unlike the training data: this image differs from what the model learnt "
                   "from (another scanner, stain, magnification or focus?); its finding is less "
                   "reliable than the confidence suggests.")
    if result.stage is not None and "scale unknown" in reasons:
        scale = scale_text(result.um_per_pixel, None)
        out.append("Scale unknown: the image states no pixel size"
                   + (f"; it was taken as {scale}" if scale else "")
                   + ". Cells at another magnification are misjudged.")
    if result.needs_review and result.stage is not None and not reasons and not (
            result.confidence is not None and result.confidence < threshold):
        out.append("Flagged for review by the pipeline.")
    return out


@bp.get("/studies/<uid>")
def study(uid: str) -> Any:
    """Review a study: each image with overlay, mask, probabilities and findings."""
    session = db()
    st = _study_or_404(uid)
    instances = session.execute(
        select(Instance).join(Series).where(Series.study_fk == st.id)
        .order_by(Series.series_number, Instance.id)).scalars().all()
    results = session.execute(select(Result).where(Result.study_fk == st.id)
                              .order_by(Result.id)).scalars().all()
    by_instance: dict[int | None, list[Result]] = {}
    for result in results:
        by_instance.setdefault(result.instance_fk, []).append(result)
    verifiers = {r.verified_by_fk for r in results if r.verified_by_fk}
    names = dict(session.execute(select(User.id, User.username).where(
        User.id.in_(verifiers))).all()) if verifiers else {}
    audit_event("view_study", patient_id=st.patient.patient_id,
                study_instance_uid=st.study_instance_uid, object_ref=f"study:{st.id}")
    session.commit()
    forms = {r.id: VerifyForm(prefix=f"r{r.id}") for r in results}
    demonstration, demo_note = results_banner(list(results), configured_manifest())
    return render_template("worklist/study.html", study=st, patient=st.patient,
                           instances=instances, by_instance=by_instance,
                           study_results=by_instance.get(None, []), forms=forms,
                           warnings_for=warnings_for, names=names, stages=STAGES,
                           can_verify=current_user.role == Role.DOCTOR,
                           demonstration=demonstration, demo_note=demo_note)


@bp.post("/results/<int:result_id>/verify")
def verify(result_id: int) -> Any:
    """Accept or correct the AI's stage; queue the VERIFIED SR and updated PDF (the rules are
    ``bcd_node.records.verification``'s)."""
    if current_user.role != Role.DOCTOR:
        abort(403)
    session = db()
    result = session.get(Result, result_id)
    if result is None:
        abort(404)
    st = session.get(Study, result.study_fk)
    form = VerifyForm(prefix=f"r{result.id}")
    back = redirect(url_for("worklist.study", uid=st.study_instance_uid) + f"#result-{result.id}")
    if not form.validate_on_submit():
        for errors in form.errors.values():
            for error in errors:
                flash(error, "error")
        return back
    name, kind = actor()
    try:
        done = verify_result(session, result, form.decision.data, stage=form.stage.data or None,
                             comment=form.comment.data, user_id=current_user.user_id,
                             actor=name, actor_kind=kind, source=client_ip())
    except (VerificationRefused, ValidationError) as exc:
        session.rollback()
        flash(str(exc), "error")
        return back
    session.commit()
    if done.report_queued:
        flash("Verification recorded. The verified report is being produced and sent to PACS.",
              "success")
    else:
        flash("Verification recorded. No verified report is produced: the AI made no report "
              "for this image.", "success")
    return back


def _preview_png(instance: Instance) -> bytes:
    """A PNG of a stored image for the browser (kept under the data folder's previews)."""
    from bcd_node.analysis.previews import preview_png
    from bcd_node.intake.upload import UPLOAD_MEMORY_FACTOR
    from bcd_node.store.storage import Store
    from webadmin.upload import upload_budget

    settings = node().settings
    # Decoding the whole stored image shares the uploads' memory budget (Busy when taken).
    need = UPLOAD_MEMORY_FACTOR * (instance.rows or 1) * (instance.columns or 1) * 3
    wait = current_app.config["UPLOAD_WAIT_SECONDS"]
    data = preview_png(Store(settings.storage.data_dir, settings.storage.min_free_disk),
                       instance.id, instance.path, instance.sha256,
                       decoding=lambda: upload_budget().reserve(need, wait))
    if data is None:
        abort(404)  # the image is no longer kept (retention) or its file is gone
    return data


def _image_response(path: Path | bytes, mimetype: str, *, as_attachment: bool = False,
                    download_name: str | None = None) -> Any:
    data = path if isinstance(path, bytes) else path.read_bytes()
    response = send_file(io.BytesIO(data), mimetype=mimetype, as_attachment=as_attachment,
                         download_name=download_name, max_age=0)
    response.headers["Cache-Control"] = "no-store"
    return response


def _audit_view(action: str, st: Study, ref: str) -> None:
    audit_event(action, patient_id=st.patient.patient_id,
                study_instance_uid=st.study_instance_uid, object_ref=ref)
    db().commit()


@bp.get("/instances/<int:instance_id>/image.png")
def image(instance_id: int) -> Any:
    """The received image as PNG."""
    session = db()
    inst = session.get(Instance, instance_id)
    if inst is None:
        abort(404)
    st = inst.series.study
    try:
        png = _preview_png(inst)
    except Busy:
        response = make_response("The node is busy decoding other images; try again in a "
                                 "minute.", 503)
        response.headers["Retry-After"] = "30"
        return response
    except Exception:  # noqa: BLE001 - an undecodable or too large file must not fail the page
        abort(404)
    _audit_view("view_image", st, f"instance:{inst.id}")
    return _image_response(png, "image/png")


@bp.get("/results/<int:result_id>/<any(overlay, mask):kind>.png")
def result_image(result_id: int, kind: str) -> Any:
    """The blast overlay or mask of a result as PNG."""
    result = db().get(Result, result_id)
    if result is None:
        abort(404)
    path = data_file(result.overlay_path if kind == "overlay" else result.mask_path)
    _audit_view("view_image", db().get(Study, result.study_fk), f"result:{result.id}:{kind}")
    return _image_response(path, "image/png")


@bp.get("/results/<int:result_id>/report.pdf")
def pdf(result_id: int) -> Any:
    """Download a result's PDF report (the verified one when it exists, or ?version=ai)."""
    result = db().get(Result, result_id)
    if result is None:
        abort(404)
    st = db().get(Study, result.study_fk)
    verified = request.args.get("version") != "ai" and result.verified_pdf_path
    path = data_file(result.verified_pdf_path if verified else result.pdf_path)
    _audit_view("view_pdf", st, f"result:{result.id}:{'verified' if verified else 'ai'}")
    name = f"bcd-report-{result.id}{'-verified' if verified else ''}.pdf"
    return _image_response(path, "application/pdf", as_attachment=True, download_name=name)
