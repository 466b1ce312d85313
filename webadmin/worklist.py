"""Doctors' worklist, the review page, verification, images and PDF reports."""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

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
    send_file,
    url_for,
)
from flask_login import current_user
from sqlalchemy import func, select
from werkzeug.exceptions import HTTPException

from bcd_node.analysis.findings import SCALE_DETECTOR, SCALE_IMPLAUSIBLE, scale_text
from bcd_node.db.models import (
    Instance,
    Patient,
    Result,
    Role,
    Series,
    Study,
    User,
)
from bcd_node.delivery.outbox import case_deliveries
from bcd_node.errors import ValidationError
from bcd_node.inference.spec import REASON_BLASTS_IN_BENIGN
from bcd_node.node.memory_budget import Busy
from bcd_node.records.cases import STATUS_LABELS, Case, load_case
from bcd_node.records.cells import corrected_areas, corrected_blast_count
from bcd_node.records.names import patient_matches
from bcd_node.records.studies import report_job_failed
from bcd_node.records.verification import (
    VerificationRefused,
    amend_case,
    retry_signed_report,
    sign_case,
    verify_result,
)
from bcd_node.report.pdf import read_stored
from bcd_node.report.pictures import laid_over
from bcd_node.store.layout import DataLayout
from webadmin.db import actor, audit_event, client_ip, db, node
from webadmin.forms import (
    STAGES,
    STATUSES,
    ActionForm,
    AmendCaseForm,
    SignCaseForm,
    VerifyForm,
)
from webadmin.helpers import Page, clamp_page, day_start, fmt_dt, page_number, parse_day
from webadmin.model_use import (
    configured_manifest,
    demonstration_note,
    manifest_is_demonstration,
    results_banner,
)

LOGGER = logging.getLogger(__name__)
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
        query = query.where(Study.last_received_at < day_start(day_to + timedelta(days=1)))
    term = (args.get("patient") or "").strip()
    if term:
        query = query.where(patient_matches(term))
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
                           uids=_uids(page),
                           statuses=STATUSES,
                           threshold=node().settings.model.review_threshold,
                           demo_note=demonstration_note(manifest)
                           if manifest_is_demonstration(manifest) else None)


@bp.app_template_global()
def attention(study: Study, threshold: float) -> list[str]:
    """Why the worklist marks a case: its low confidence, and what else needs the doctor's
    attention (``Study.attention``)."""
    why = list(study.attention or [])
    if study.confidence is not None and study.confidence < threshold \
            and "low confidence" not in why:
        why.insert(0, "low confidence")
    return why


def _uids(page: Page) -> str:
    return ",".join(study.study_instance_uid for study, _ in page.items)


@bp.get("/worklist/state.json")
def state_json() -> Any:
    """The worklist page's rows as the live refresh reads them: status, stage, confidence
    (UIDs only, no names; not audited: the page view that polls it is)."""
    args = request.args.to_dict()
    page = worklist_page(args, page_number(), current_app.config["PAGE_SIZE"])
    threshold = node().settings.model.review_threshold
    response = jsonify({"uids": _uids(page), "rows": [
        {"uid": study.study_instance_uid, "status": str(study.status),
         "status_label": STATUS_LABELS[study.status], "stage": study.stage,
         "confidence": study.confidence, "attention": attention(study, threshold)}
        for study, _ in page.items]})
    response.headers["Cache-Control"] = "no-store"
    return response


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
        out.append(("Scale unknown: the image's pixel size is not plausible for a blood smear "
                    "(Pixel Spacing is in mm) and was passed over"
                    if result.scale_source == SCALE_IMPLAUSIBLE else
                    "Scale unknown: the image states only its camera sensor's pixel pitch "
                    "(Imager Pixel Spacing), not the pixel size on the smear (Pixel Spacing)"
                    if result.scale_source == SCALE_DETECTOR else
                    "Scale unknown: the image states no pixel size")
                   + (f"; it was taken as {scale}" if scale else "")
                   + ". Cells at another magnification are misjudged.")
    if result.stage is not None and REASON_BLASTS_IN_BENIGN in reasons:
        out.append(f"Blast cells found, stage Benign: {result.blast_count or 0} blast cell(s) "
                   "were segmented in an image staged Benign. The stage averages the image's "
                   "tiles, so a few blasts in a large image can be outweighed: look at the "
                   "marked cells.")
    if result.needs_review and result.stage is not None and not reasons and not (
            result.confidence is not None and result.confidence < threshold):
        out.append("Flagged for review by the pipeline.")
    return out


@bp.get("/studies/<uid>")
def study(uid: str) -> Any:
    """Review a study: each image with overlay, mask, probabilities and findings."""
    return _study_page(_study_or_404(uid))


def _study_page(st: Study, *, status: int = 200,
                verify_forms: dict[int, VerifyForm] | None = None) -> Any:
    """The study page; ``verify_forms``: a result's form as the doctor posted it (refused)."""
    session = db()
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
    forms = {r.id: VerifyForm(prefix=f"r{r.id}") for r in results} | (verify_forms or {})
    field_counts = {r.id: corrected_blast_count(session, r) for r in results
                    if r.instance_fk is not None}
    field_areas = corrected_areas(session, [r for r in results if r.instance_fk is not None])
    deliveries = case_deliveries(session, node().settings, st.id)
    demonstration, demo_note = results_banner(list(results), configured_manifest())
    return render_template("worklist/study.html", study=st, patient=st.patient,
                           instances=instances, by_instance=by_instance,
                           study_results=by_instance.get(None, []), forms=forms,
                           warnings_for=warnings_for, names=names, stages=STAGES,
                           can_verify=current_user.role == Role.DOCTOR,
                           demonstration=demonstration, demo_note=demo_note,
                           field_counts=field_counts, field_areas=field_areas,
                           case_count=_case(st).blast_count,
                           deliveries=deliveries, action=ActionForm(),
                           is_admin=current_user.role == Role.ADMIN), status


@bp.app_template_global()
def report_error(result: Result) -> str | None:
    """Why the verified report of ``result`` could not be made (its job failed), or None."""
    return report_job_failed(db(), result)


def _case(st: Study) -> Case:
    settings = node().settings
    return load_case(db(), st, quiet_seconds=settings.workers.study_quiet_seconds,
                     review_threshold=settings.model.review_threshold)


def case_state(case: Case) -> dict[str, Any]:
    """What the case page polls for (no patient data): status, fields, what is due."""
    summary = case.summary
    return {
        "status": str(case.status), "status_label": STATUS_LABELS[case.status],
        "stage": case.study.stage, "confidence": case.findings.confidence,
        "signed": case.signed, "can_sign": case.can_sign,
        "report_ready": bool(summary and summary.verified_pdf_path),
        "report_error": case.report_error,
        "summary_due": fmt_dt(case.summary_due) if case.summary_due else None,
        "analysing_fields": case.analysing_fields,
        "fields": [{"number": f.number, "stage": f.stage, "flags": f.flags}
                   for f in case.fields],
        # Changes whenever something the page shows changes: the page offers a reload.
        "version": "|".join([str(case.status), str(summary.id if summary else ""),
                             str(summary.sr_sop_instance_uid if summary else ""),
                             str(bool(summary and summary.verified_pdf_path)),
                             str(len(case.fields)),
                             ",".join(f"{f.number}:{f.stage}:{len(f.flags)}"
                                      for f in case.fields)]),
    }


def _valid(form: Any) -> bool:
    """Whether a posted form is valid; its errors are flashed when not."""
    if form.validate_on_submit():
        return True
    for errors in form.errors.values():
        for error in errors:
            flash(error, "error")
    return False


@bp.get("/cases/<uid>")
def case(uid: str) -> Any:
    """The case: its conclusion, every field as a thumbnail, one field large, Sign case."""
    return _case_page(_study_or_404(uid))


def _case_page(st: Study, *, status: int = 200, sign_form: SignCaseForm | None = None,
               amend_form: AmendCaseForm | None = None,
               verify_forms: dict[int, VerifyForm] | None = None) -> Any:
    """The case page; with a posted form that was refused (signing, amending, or a field's
    ``verify_forms`` by result), that form as the doctor filled it in, its errors next to its
    fields."""
    session = db()
    current = _case(st)
    # A signing form posts the field it was shown with; a page view names it in its URL.
    number = request.values.get("field", "")
    shown = next((f for f in current.fields if str(f.number) == number), None)
    if shown is None and current.fields:
        shown = (current.attention or current.fields)[0]
    results = session.execute(select(Result).where(
        Result.study_fk == st.id, Result.instance_fk == shown.instance.id)
        .order_by(Result.id)).scalars().all() if shown is not None else []
    verifiers = {r.verified_by_fk for r in [*results, *([current.summary] if current.summary
                                                        else [])] if r.verified_by_fk}
    names = dict(session.execute(select(User.id, User.full_name).where(
        User.id.in_(verifiers))).all()) if verifiers else {}
    usernames = dict(session.execute(select(User.id, User.username).where(
        User.id.in_(verifiers))).all()) if verifiers else {}
    names = {k: v or usernames.get(k, "?") for k, v in names.items()}
    # One event per view of the case; its pictures are part of this view.
    audit_event("view_case", patient_id=st.patient.patient_id,
                study_instance_uid=st.study_instance_uid, object_ref=f"study:{st.id}",
                details={"field": shown.number} if shown is not None else None)
    session.commit()
    forms = {r.id: VerifyForm(prefix=f"r{r.id}") for r in results} | (verify_forms or {})
    field_counts = {r.id: corrected_blast_count(session, r) for r in results}
    field_areas = corrected_areas(session, results)
    demonstration, demo_note = results_banner(
        [*results, *([current.summary] if current.summary else [])], configured_manifest())
    return render_template("worklist/case.html", case=current, study=st, patient=st.patient,
                           shown=shown, results=results, forms=forms,
                           sign_form=sign_form or SignCaseForm(),
                           amend_form=amend_form or AmendCaseForm(prefix="amend"),
                           retry_form=ActionForm(),
                           warnings_for=warnings_for, names=names, stages=STAGES,
                           can_verify=current_user.role == Role.DOCTOR,
                           demonstration=demonstration, demo_note=demo_note,
                           state=case_state(current), field_counts=field_counts,
                           field_areas=field_areas,
                           quiet_minutes=node().settings.workers.study_quiet_seconds / 60,
                           deliveries=case_deliveries(db(), node().settings, st.id),
                           action=ActionForm(), is_admin=current_user.role == Role.ADMIN), status


@bp.post("/cases/<uid>/amend")
def amend(uid: str) -> Any:
    """Amend the signed case: sign it again, with the reason (``amend_case``'s rules)."""
    form = AmendCaseForm(prefix="amend")

    def act(session: Any, st: Study, name: str, kind: str) -> str:
        amend_case(session, st, form.decision.data, stage=form.stage.data or None,
                   comment=form.comment.data, reason=form.reason.data,
                   user_id=current_user.user_id, actor=name, actor_kind=kind,
                   source=client_ip())
        return ("Amendment signed. The amended report is being made and sent to the PACS; it "
                "replaces the earlier signed report there"
                + (" and at the laboratory system." if node().settings.lis else "."))

    return _signing(uid, form, act, amend_form=form)


def _signing(uid: str, form: Any, act: Callable[[Any, Study, str, str], str],
             **as_posted: Any) -> Any:
    """A doctor's signature of the case (signing it, amending it): the form checked, then
    ``act`` in the request's transaction, its message flashed and back to the case; or, when
    the form or ``act`` refuses it, the case page again (400) with the form as the doctor
    filled it in (``as_posted``: ``sign_form=`` or ``amend_form=``), so nothing typed is lost."""
    if current_user.role != Role.DOCTOR:
        abort(403)
    session = db()
    st = _study_or_404(uid)
    if not form.validate_on_submit():
        flash("The case was not signed: see the form." if "sign_form" in as_posted
              else "The amendment was not signed: see the form.", "error")
        return _case_page(st, status=400, **as_posted)
    name, kind = actor()
    try:
        message = act(session, st, name, kind)
    except (VerificationRefused, ValidationError) as exc:
        session.rollback()
        flash(str(exc), "error")
        return _case_page(st, status=400, **as_posted)
    session.commit()
    flash(message, "success")
    return redirect(url_for("worklist.case", uid=uid))


@bp.get("/cases/<uid>/state.json")
def case_state_json(uid: str) -> Any:
    """The case's status for the page's live refresh (no patient data; not audited: the page
    view that polls it is)."""
    response = jsonify(case_state(_case(_study_or_404(uid))))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/cases/<uid>/sign")
def sign(uid: str) -> Any:
    """Sign the case: accept or correct the AI's case stage (``sign_case``'s rules)."""
    form = SignCaseForm()

    def act(session: Any, st: Study, name: str, kind: str) -> str:
        done = sign_case(session, st, form.decision.data, stage=form.stage.data or None,
                         comment=form.comment.data, user_id=current_user.user_id,
                         actor=name, actor_kind=kind, source=client_ip())
        if done.report_queued:
            return "Case signed. The signed report is being made and sent to the PACS."
        return "Case signed. No signed report is made: no field could be diagnosed."

    return _signing(uid, form, act, sign_form=form)


@bp.post("/cases/<uid>/retry-report")
def retry_report(uid: str) -> Any:
    """Make a signed case's report again after its job failed for good."""
    session = db()
    st = _study_or_404(uid)
    if not ActionForm().validate_on_submit():
        abort(400)
    name, kind = actor()
    if retry_signed_report(session, st, actor=name, actor_kind=kind, source=client_ip()):
        session.commit()
        flash("The signed report is being made again.", "success")
    else:
        flash("There is no failed signed report to make again.", "error")
    return redirect(url_for("worklist.case", uid=uid))


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
    from_case = request.form.get("back") == "case"
    if from_case:  # from the case page: back to the same field
        field_number = request.form.get("field", "")
        back = redirect(url_for("worklist.case", uid=st.study_instance_uid,
                                field=field_number if field_number.isdigit() else None)
                        + "#field")
    else:
        back = redirect(url_for("worklist.study", uid=st.study_instance_uid)
                        + f"#result-{result.id}")

    def refused() -> Any:
        # The page the form was on again (400), the form as the doctor filled it in: a
        # comment typed is not lost to a refusal.
        if from_case:
            return _case_page(st, status=400, verify_forms={result.id: form})
        return _study_page(st, status=400, verify_forms={result.id: form})

    if not _valid(form):
        return refused()
    name, kind = actor()
    try:
        done = verify_result(session, result, form.decision.data, stage=form.stage.data or None,
                             comment=form.comment.data, user_id=current_user.user_id,
                             actor=name, actor_kind=kind, source=client_ip())
    except (VerificationRefused, ValidationError) as exc:
        session.rollback()
        flash(str(exc), "error")
        return refused()
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


def _busy() -> Any:
    response = make_response("The node is busy decoding other images; try again in a minute.",
                             503)
    response.headers["Retry-After"] = "30"
    return response


def _downloading() -> bool:
    """Whether the request asks for a download (``?download=1``): audited on its own, while a
    picture shown on a page is part of that page's one audited view."""
    return request.args.get("download") == "1"


@bp.get("/instances/<int:instance_id>/image.png")
def image(instance_id: int) -> Any:
    """The received image as PNG (``?download=1``: as a file, audited)."""
    session = db()
    inst = session.get(Instance, instance_id)
    if inst is None:
        abort(404)
    st = inst.series.study
    try:
        png = _preview_png(inst)
    except Busy:
        return _busy()
    except Exception:  # noqa: BLE001 - an undecodable or too large file must not fail the page
        abort(404)
    if _downloading():
        _audit_view("download_image", st, f"instance:{inst.id}")
        return _image_response(png, "image/png", as_attachment=True,
                               download_name=f"bcd-image-{inst.id}.png")
    return _image_response(png, "image/png")


#: The longest side of a field's thumbnail on the case page, in pixels.
THUMB_SIDE = 320
#: Thumbnails kept in this process (about 100 KB each), so that opening a case again does not
#: decode its fields' full previews again. Keyed by the image's content hash: a replaced image
#: gets a new one; a purged image's is never served (its file is checked first).
THUMB_CACHE_SIZE = 256
_thumbs: OrderedDict[tuple[int, str], bytes] = OrderedDict()
_thumbs_lock = threading.Lock()


def _thumbnail(inst: Instance) -> bytes:
    from PIL import Image as PILImage

    key = (inst.id, inst.sha256)
    with _thumbs_lock:
        if key in _thumbs:
            _thumbs.move_to_end(key)
            return _thumbs[key]
    with PILImage.open(io.BytesIO(_preview_png(inst))) as picture:
        picture.thumbnail((THUMB_SIDE, THUMB_SIDE))
        out = io.BytesIO()
        picture.convert("RGB").save(out, format="PNG")
    data = out.getvalue()
    with _thumbs_lock:
        _thumbs[key] = data
        while len(_thumbs) > THUMB_CACHE_SIZE:
            _thumbs.popitem(last=False)
    return data


@bp.get("/instances/<int:instance_id>/thumb.png")
def thumb(instance_id: int) -> Any:
    """A small PNG of the received image, for the case page's grid."""
    inst = db().get(Instance, instance_id)
    if inst is None or not inst.path:
        abort(404)
    try:
        if not data_file(inst.path).is_file():  # 404s when the image is no longer kept
            abort(404)
        png = _thumbnail(inst)
    except Busy:
        return _busy()
    except HTTPException:
        raise
    except Exception:  # noqa: BLE001 - as image()
        abort(404)
    return _image_response(png, "image/png")


@bp.get("/results/<int:result_id>/<any(overlay, mask):kind>.png")
def result_image(result_id: int, kind: str) -> Any:
    """The blast overlay or mask of a result as PNG (``?download=1``: as a file, audited)."""
    result = db().get(Result, result_id)
    if result is None:
        abort(404)
    path = data_file(result.overlay_path if kind == "overlay" else result.mask_path)
    if _downloading():
        data: Path | bytes = path
        if kind == "overlay":
            try:
                data = _overlay_picture(result, path)
            except Busy:
                return _busy()
        _audit_view("download_image", db().get(Study, result.study_fk),
                    f"result:{result.id}:{kind}")
        return _image_response(data, "image/png", as_attachment=True,
                               download_name=f"bcd-{kind}-{result.id}.png")
    return _image_response(path, "image/png")


def _overlay_picture(result: Result, path: Path) -> Path | bytes:
    """The overlay a doctor downloads: the field with the blasts tinted and outlined, as the
    report shows it. The stored overlay is a layer the viewer lays over the field
    (:func:`~bcd_node.analysis.findings.overlay_layer`), so it is laid over the field's
    preview here; an earlier version's overlay, the picture itself (no alpha), is as it is.

    Raises
    ------
    Busy
        The field's preview has to be made, and the decoding budget is taken.
    """
    import numpy as np
    from PIL import Image as PILImage

    with PILImage.open(path) as stored:
        if stored.mode != "RGBA":
            return path
        layer = stored.copy()
    inst = db().get(Instance, result.instance_fk) if result.instance_fk else None
    if inst is None:
        abort(404)
    try:
        field = PILImage.open(io.BytesIO(_preview_png(inst))).convert("RGB")
    except (Busy, HTTPException):
        raise
    except Exception:  # noqa: BLE001 - as image(): an undecodable field has no picture
        abort(404)
    if layer.size != field.size:  # a preview is at most PREVIEW_MAX_SIDE pixels a side
        layer = layer.resize(field.size, PILImage.Resampling.BOX)
    out = io.BytesIO()
    PILImage.fromarray(laid_over(np.asarray(field), np.asarray(layer))).save(out, format="PNG")
    return out.getvalue()


@bp.get("/results/<int:result_id>/report.pdf")
def pdf(result_id: int) -> Any:
    """Download a result's PDF report: ``?version=ai`` the AI's, ``?version=verified`` the
    signed one (404 until it is made), else the signed one when it exists."""
    result = db().get(Result, result_id)
    if result is None:
        abort(404)
    st = db().get(Study, result.study_fk)
    version = request.args.get("version")
    if version == "verified" and not result.verified_pdf_path:
        abort(404)  # never the AI's report under the signed report's name
    verified = version != "ai" and bool(result.verified_pdf_path)
    relpath = result.verified_pdf_path if verified else result.pdf_path
    path = data_file(relpath)
    # An image's report is kept once, in the Encapsulated PDF sent to the PACS (pdf.dcm);
    # results of earlier versions, and other reports, have their own report.pdf.
    try:
        report = read_stored(path)
    except Exception:  # noqa: BLE001 - whatever the damage, the file cannot be served
        LOGGER.exception("result %d: its %s report cannot be read (%s under the data folder)",
                         result.id, "signed" if verified else "AI", relpath)
        return render_template(
            "errors/error.html", code=500, title="Report cannot be read",
            message="The file that holds this report is damaged, so it cannot be shown. The "
                    "result itself is unchanged. This has been logged: tell your "
                    "administrator, who can restore the file from a backup."), 500
    _audit_view("download_pdf", st, f"result:{result.id}:{'verified' if verified else 'ai'}")
    name = f"bcd-report-{result.id}{'-verified' if verified else ''}.pdf"
    return _image_response(report, "application/pdf", as_attachment=True, download_name=name)
