"""The console upload of a DICOM file whose SOP Instance UID is already stored: another patient
is refused with a readable message; the same image is not analysed again; a changed image of the
same patient replaces the earlier version and withdraws its verification; a doctor cannot verify
the earlier version's result while the changed one waits for its analysis."""

from __future__ import annotations

import copy
import io
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from pydicom.filebase import DicomBytesIO
from sqlalchemy import select

from bcd_node.db.models import AuditEvent, Instance, Job, Patient, Result, Role, Study, User, utcnow
from tests.support.images import vl_micro
from tests.support.web import post_form

FIELDS = {"patient_name": "", "patient_id": "", "sex": ""}


def dicom_bytes(seed: int, patient_id: str, like: Any = None) -> tuple[bytes, Any]:
    """A DICOM image (under the UIDs of ``like`` when given) and its data set."""
    ds = vl_micro(seed, patient_id=patient_id)
    if like is not None:
        for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            setattr(ds, keyword, copy.deepcopy(like.get(keyword)))
        ds.file_meta.MediaStorageSOPInstanceUID = like.SOPInstanceUID
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), ds


def upload(client: FlaskClient, data: bytes) -> Any:
    form = {**FIELDS, "image": (io.BytesIO(data), "image.dcm")}
    return post_form(client, "/upload", "/upload", form, content_type="multipart/form-data")


def actions(app: Flask) -> list[tuple[str, str]]:
    with app.extensions["bcd_node"].session_factory() as s:
        return [(e.action, e.outcome) for e in s.execute(
            select(AuditEvent).order_by(AuditEvent.id)).scalars()]


def verify_result(app: Flask) -> int:
    """The stored image got a result, which the doctor verified."""
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as s:
        inst = s.execute(select(Instance)).scalar_one()
        doctor = s.execute(select(User).where(User.role == Role.DOCTOR)).scalar_one()
        study_id = s.execute(select(Study.id)).scalar_one()
        result = Result(instance_fk=inst.id, study_fk=study_id, model_name="m",
                        model_version="0.0.1", stage="Benign", probabilities={"Benign": 1.0},
                        verification="verified", verified_by_fk=doctor.id,
                        verified_at=utcnow(), verified_stage="Benign")
        s.add(result)
        s.flush()
        return result.id


def test_upload_under_another_patients_uid_is_refused_readably(
        app: Flask, doctor_client: FlaskClient) -> None:
    first, ds = dicom_bytes(1, "DCM-A")
    assert upload(doctor_client, first).status_code == 302
    result_id = verify_result(app)
    other, _ = dicom_bytes(2, "DCM-B", like=ds)
    resp = upload(doctor_client, other)
    page = resp.get_data(as_text=True)
    assert resp.status_code == 400
    assert "is already stored for another patient" in page and "nothing was changed" in page
    assert "new SOP Instance UID" in page  # what to do instead
    assert "DCM-A" not in page  # the other patient is not named
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory() as s:
        assert s.execute(select(Patient.patient_id)).scalars().all() == ["DCM-A"]
        assert s.get(Result, result_id).verification == "verified"
        assert len(s.execute(select(Job)).scalars().all()) == 1
    assert ("security_alert", "failure") in actions(app)
    assert actions(app)[-1] == ("upload", "failure")


def test_upload_of_the_same_image_again_is_not_analysed_again(
        app: Flask, doctor_client: FlaskClient) -> None:
    data, _ = dicom_bytes(3, "DCM-A")
    assert upload(doctor_client, data).status_code == 302
    resp = upload(doctor_client, data)
    assert resp.status_code == 302
    page = doctor_client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "already received" in page and "not analysed again" in page
    with app.extensions["bcd_node"].session_factory() as s:
        assert len(s.execute(select(Job)).scalars().all()) == 1


def test_upload_of_a_changed_image_replaces_it_and_blocks_the_stale_verification(
        app: Flask, doctor_client: FlaskClient) -> None:
    first, ds = dicom_bytes(4, "DCM-A")
    assert upload(doctor_client, first).status_code == 302
    result_id = verify_result(app)
    changed, _ = dicom_bytes(5, "DCM-A", like=ds)
    resp = upload(doctor_client, changed)
    assert resp.status_code == 302
    study_page = resp.headers["Location"]
    page = doctor_client.get(study_page).get_data(as_text=True)
    assert "replaces an earlier version" in page and "verification was withdrawn" in page
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory() as s:
        assert s.get(Result, result_id).verification == "unverified"
        assert s.execute(select(Instance.revision)).scalar_one() == 1
    assert ("verification_withdrawn", "success") in actions(app)
    # The result still shows the earlier version's findings until the new analysis: it
    # cannot be verified meanwhile.
    resp = post_form(doctor_client, study_page, f"/results/{result_id}/verify",
                     {f"r{result_id}-decision": "accept", f"r{result_id}-stage": "Benign"})
    assert resp.status_code == 400  # the study page again, with the reason
    assert "replaced by a changed version" in resp.get_data(as_text=True)
    with ctx.session_factory() as s:
        assert s.get(Result, result_id).verification == "unverified"


def test_verification_works_again_once_the_changed_image_is_analysed(
        app: Flask, doctor_client: FlaskClient) -> None:
    seed = 6
    first, ds = dicom_bytes(seed, "DCM-A")
    assert upload(doctor_client, first).status_code == 302
    result_id = verify_result(app)
    changed, _ = dicom_bytes(seed + 1, "DCM-A", like=ds)
    study_page = upload(doctor_client, changed).headers["Location"]
    with app.extensions["bcd_node"].session_factory.begin() as s:
        s.get(Result, result_id).instance_revision = 1  # as the new analysis leaves it
    resp = post_form(doctor_client, study_page, f"/results/{result_id}/verify",
                     {f"r{result_id}-decision": "accept", f"r{result_id}-stage": "Benign"})
    assert resp.status_code == 302
    with app.extensions["bcd_node"].session_factory() as s:
        assert s.get(Result, result_id).verification == "verified"


def upload_events(app: Flask) -> list[tuple[str, str]]:
    with app.extensions["bcd_node"].session_factory() as s:
        return [(e.outcome, e.patient_id) for e in s.execute(
            select(AuditEvent).where(AuditEvent.action == "upload")
            .order_by(AuditEvent.id)).scalars()]


def test_a_dicom_upload_is_audited_under_its_own_patient(app: Flask,
                                                         doctor_client: FlaskClient) -> None:
    """The form's patient fields are not used for a DICOM file: the audit names the patient the
    stored image belongs to, whatever the form said (new, again, changed, refused)."""
    typed = {"patient_name": "Typed, Someone", "patient_id": "FORM-1"}
    first, ds = dicom_bytes(8, "DCM-A")
    changed, _ = dicom_bytes(9, "DCM-A", like=ds)
    other, _ = dicom_bytes(10, "DCM-B", like=ds)
    for data, status in ((first, 302), (first, 302), (changed, 302), (other, 400)):
        form = {**FIELDS, **typed, "image": (io.BytesIO(data), "image.dcm")}
        resp = post_form(doctor_client, "/upload", "/upload", form,
                         content_type="multipart/form-data")
        assert resp.status_code == status
    with app.extensions["bcd_node"].session_factory() as s:
        assert s.execute(select(Patient.patient_id)).scalars().all() == ["DCM-A"]
    # The refused file names its own patient too (nothing was stored for it).
    assert upload_events(app) == [("success", "DCM-A"), ("success", "DCM-A"),
                                  ("success", "DCM-A"), ("failure", "DCM-B")]
