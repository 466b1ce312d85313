"""Upload of PNG, JPEG or DICOM images with the patient's details.

Each upload reserves the memory its decoding will take (estimated from the file's header) from
one budget, ``web.upload_memory``, before anything is decoded; an upload that does not fit
waits up to ``UPLOAD_WAIT_SECONDS`` for others to finish, then is answered 503 "busy, try
again" with nothing stored.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, flash, make_response, redirect, render_template, url_for
from flask_login import current_user

from bcd_node.errors import BcdError, PermanentError
from bcd_node.intake import intake
from bcd_node.intake.upload import stated_patient_id, upload_memory
from bcd_node.node.memory_budget import Busy, MemoryBudget, TooLarge
from webadmin.db import audit_event, db, node
from webadmin.forms import UploadForm

bp = Blueprint("upload", __name__)

ALLOWED_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".dcm": "dicom",
                    ".dicom": "dicom", "": "dicom"}


def sniff(data: bytes) -> str | None:
    """The kind of file by its first bytes: ``png``, ``jpeg``, ``dicom`` or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "dicom"
    return None



def upload_budget() -> MemoryBudget:
    """The memory that uploads (and image previews) being decoded share in this process."""
    return current_app.extensions["bcd_upload_budget"]


def person_name(text: str) -> str:
    """``Family, Given`` as typed by people → DICOM ``Family^Given``."""
    text = " ".join(text.split())
    if "^" in text or "," not in text:
        return text
    family, _, given = text.partition(",")
    return f"{family.strip()}^{given.strip()}"


def _received_message(accepted: Any) -> str:
    """What the doctor is told about an accepted upload."""
    if getattr(accepted, "duplicate", False):
        return ("This image was already received (same SOP Instance UID and content); it is not "
                "analysed again.")
    if getattr(accepted, "replaced", False):
        message = ("This image replaces an earlier version with the same SOP Instance UID. It "
                   "is analysed again; its new results are sent to PACS and supersede the "
                   "earlier ones.")
        if getattr(accepted, "verifications_withdrawn", 0):
            message += " The earlier verification was withdrawn: verify the new result."
        return message
    return "The image was received and queued for analysis."


@bp.route("/upload", methods=["GET", "POST"])
def index() -> Any:
    """Upload an image for analysis."""
    form = UploadForm()
    if not form.is_submitted():
        form.um_per_pixel.data = node().settings.model.default_um_per_pixel
    if form.validate_on_submit():
        storage = form.image.data
        filename = (storage.filename or "upload").rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
        data = storage.read(current_app.config["UPLOAD_MAX_BYTES"] + 1)
        suffix = ("." + filename.rsplit(".", 1)[1].lower()) if "." in filename else ""
        kind = sniff(data)
        error = None
        status = 400
        if len(data) > current_app.config["UPLOAD_MAX_BYTES"]:
            error = (f"The file is larger than "
                     f"{current_app.config['UPLOAD_MAX_BYTES'] // (1024 * 1024)} MB.")
        elif not data:
            error = "The file is empty."
        elif kind is None or suffix not in ALLOWED_SUFFIXES:
            error = "Only PNG, JPEG or DICOM (Part 10) files can be uploaded."
        elif ALLOWED_SUFFIXES[suffix] != kind and suffix:
            error = f"The file's content is {kind.upper()} but its name ends in {suffix}."
        elif kind != "dicom" and not (form.patient_name.data or "").strip():
            form.patient_name.errors = ["Required for PNG or JPEG images."]
            error = "Enter the patient's name and ID."
        elif kind != "dicom" and not (form.patient_id.data or "").strip():
            form.patient_id.errors = ["Required for PNG or JPEG images."]
            error = "Enter the patient's name and ID."
        if error is None:
            fields = {
                "patient_name": person_name(form.patient_name.data or ""),
                "patient_id": (form.patient_id.data or "").strip(),
                "birth_date": form.birth_date.data.strftime("%Y%m%d") if form.birth_date.data
                else "",
                # DICOM Age String (PatientAge), e.g. "045Y"; the intake does not use it yet.
                "age": "" if form.age.data is None else f"{form.age.data:03d}Y",
                "sex": form.sex.data or "",
                "accession_number": (form.accession_number.data or "").strip(),
                "study_description": (form.description.data or "").strip(),
                "specimen_id": (form.specimen_id.data or "").strip(),
                "stain": (form.stain.data or "").strip(),
                "um_per_pixel": "" if form.um_per_pixel.data is None
                else f"{form.um_per_pixel.data:g}",
            }
            try:
                with upload_budget().reserve(upload_memory(data),
                                             current_app.config["UPLOAD_WAIT_SECONDS"]):
                    accepted = intake.accept_upload(node(), data, filename, fields,
                                                    current_user.username)
            except Busy:
                status = 503
                error = ("The node is busy with other uploads right now. Try again in a "
                         "minute; nothing was stored.")
            except TooLarge:
                error = ("This image is too large for the node to process: it needs more "
                         "memory than uploads may take at once (web.upload_memory).")
            except PermanentError as exc:
                error = str(exc)
            except BcdError as exc:
                error = f"The node could not store the image right now ({exc}). Try again later."
            else:
                # The patient the stored image is filed under: a DICOM file keeps its own, and
                # the form's fields are not used for it.
                audit_event("upload", patient_id=accepted.patient_id,
                            study_instance_uid=accepted.study_instance_uid,
                            object_ref=f"sop:{accepted.sop_instance_uid}",
                            details={"filename": filename[:128], "kind": kind,
                                     "bytes": len(data)})
                db().commit()
                flash(_received_message(accepted), "success")
                return redirect(url_for("worklist.study", uid=accepted.study_instance_uid))
        audit_event("upload", outcome="failure",
                    patient_id=stated_patient_id(data) if kind == "dicom"
                    else (form.patient_id.data or "").strip()[:64],
                    details={"filename": filename[:128], "error": error[:255]})
        db().commit()
        form.image.errors = list(form.image.errors) + [error]
        response = make_response(render_template("upload.html", form=form), status)
        if status == 503:
            response.headers["Retry-After"] = "30"
        return response
    return render_template("upload.html", form=form)
