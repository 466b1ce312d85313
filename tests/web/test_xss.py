"""Hostile patient and study values that arrive over DICOM are shown as text everywhere: every
console page, the JSON API, the PDF report and the audit export (CSV and JSON).

The image goes in through the node's own SCP (DCMTK storescu on loopback), is analysed by the
real pipeline (with a stand-in for the model: no weights needed), and every GET route of the
console is then opened by a doctor and an admin.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape
from pynetdicom import evt
from sqlalchemy import select

from bcd_node.analysis.pipeline import Pipeline
from bcd_node.db.models import Instance, Patient, Result, Study
from bcd_node.intake.handlers import handle_rejected, handle_store
from bcd_node.intake.intake import Intake
from bcd_node.jobs.workers import Workers
from bcd_node.runtime import NodeContext
from dicom.dicomize import dicomize
from dicom.scp import ScpPolicy, start_scp, storage_contexts
from tests.support.images import rgb_field
from tests.support.tools import require_tool

pytestmark = pytest.mark.integration

# One payload per field (within each value representation's length and character rules).
PATIENT_FAMILY = '<script>alert("pn")</script>'
PATIENT_GIVEN = "<img src x onerror alert(1)>"
PAYLOADS = {
    "PatientName": f"{PATIENT_FAMILY}^{PATIENT_GIVEN}",
    "PatientID": "=cmd|' /C calc'!A0<svg onload=alert('id')>",  # also a spreadsheet formula
    "AccessionNumber": '"><i>acc</i>',  # SH: 16 characters
    "StudyDescription": "</td><script>alert('sd')</script>",
    "ReferringPhysicianName": "<iframe>rp</iframe>^Dr",
    "SeriesDescription": '<b onclick="x()">se</b>',
    "ContainerIdentifier": "<font color=red>slide</font>",
    "Stain": "<a href='javascript:alert(1)'>st</a>",
}
CALLING_AE = "<i>AE</i>"  # the peer's AE title is as much the sender's choice
#: What the console shows, as text: each payload (a person name by its components).
SHOWN = [PATIENT_FAMILY, PATIENT_GIVEN, PAYLOADS["PatientID"], PAYLOADS["AccessionNumber"],
         PAYLOADS["StudyDescription"]]


@dataclass
class Quality:
    ok: bool = True
    flags: tuple = ()

    def as_dict(self) -> dict:
        return {"status": "ok", "flags": []}


@dataclass
class Prediction:
    stage: str
    probabilities: dict
    blast_count: int
    blast_area_fraction: float
    mask: np.ndarray
    quality: Any = field(default_factory=Quality)
    needs_review: bool = False


class StandInAnalyzer:
    """The model's place in the pipeline: a fixed finding, so no weights are needed."""

    model_info = {"name": "stand-in", "version": "1.0.0"}

    def predict(self, images: list[np.ndarray], um_per_pixel=None) -> list[Prediction]:
        out = []
        for image in images:
            mask = np.zeros(image.shape[:2], np.uint8)
            mask[10:30, 10:30] = 1
            out.append(Prediction("Malignant-Pre", {"Benign": 0.1, "Malignant-Early": 0.1,
                                                    "Malignant-Pre": 0.7, "Malignant-Pro": 0.1},
                                  1, float(mask.mean()), mask))
        return out


def hostile_image(path: Path) -> Path:
    ds = dicomize(rgb_field(7), patient_id=PAYLOADS["PatientID"],
                  patient_name=PAYLOADS["PatientName"],
                  accession_number=PAYLOADS["AccessionNumber"],
                  study_description=PAYLOADS["StudyDescription"],
                  specimen_id=PAYLOADS["ContainerIdentifier"], stain=PAYLOADS["Stain"])
    ds.ReferringPhysicianName = PAYLOADS["ReferringPhysicianName"]
    ds.SeriesDescription = PAYLOADS["SeriesDescription"]
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def received(context: NodeContext, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The hostile image sent by storescu to the node's SCP, then analysed by the pipeline."""
    d = context.settings.dicom
    context.intake = Intake(context).start()
    policy = ScpPolicy(ae_title=d.ae_title, allowed_calling_aes=d.allowed_calling_aes,
                       storage_contexts=storage_contexts())
    server = start_scp(policy, "127.0.0.1", d.port, [
        (evt.EVT_C_STORE, handle_store, [context.intake, context.session_factory]),
        (evt.EVT_REJECTED, handle_rejected,
         [context.session_factory, tuple(d.allowed_calling_aes), d.ae_title])])
    try:
        sent = subprocess.run(
            [require_tool("storescu"), "-aet", CALLING_AE, "-aec", d.ae_title, "127.0.0.1",
             str(d.port), str(hostile_image(tmp_path / "hostile.dcm"))],
            capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=60)
    finally:
        server.shutdown()
        context.intake.stop()
    assert sent.returncode == 0, sent.stderr
    workers = Workers(context, Pipeline(context, StandInAnalyzer()).run, count=0)
    assert workers.step("xss-test")
    with context.session_factory() as session:
        result = session.execute(select(Result)).scalar_one()
        assert result.pdf_path, "the analysis made no report"
        yield {"uid": session.execute(select(Study.study_instance_uid)).scalar_one(),
               "instance_id": session.execute(select(Instance.id)).scalar_one(),
               "result_id": result.id,
               "patient_pk": session.execute(select(Patient.id)).scalar_one()}


def _path(rule: Any, ids: dict[str, Any]) -> str:
    values = {"uid": ids["uid"], "instance_id": ids["instance_id"],
              "result_id": ids["result_id"], "patient_pk": ids["patient_pk"],
              "username": "doctor"}
    path = rule.rule
    for arg, converter in rule._converters.items():  # noqa: SLF001 - werkzeug keeps them here
        value = sorted(converter.items)[0] if hasattr(converter, "items") else str(values[arg])
        path = re.sub(r"<(?:[^<>]+:)?" + re.escape(arg) + r">", value, path)
    return path


def test_hostile_values_are_text_everywhere(app: Flask, doctor_client: FlaskClient,
                                            admin_client: FlaskClient,
                                            received: dict[str, Any]) -> None:
    pages = [_path(rule, received) for rule in app.url_map.iter_rules()
             if "GET" in (rule.methods or ()) and rule.endpoint not in ("static", "readyz")
             and not rule.rule.startswith("/api/")]
    # The payloads typed into the search boxes and filters come back too.
    term = PAYLOADS["StudyDescription"]
    pages += [f"/worklist?patient={term}", f"/patients/?q={term}",
              f"/admin/audit/?user={term}&patient={term}&action={term}"]
    shown: set[str] = set()
    for browser in (doctor_client, admin_client):
        for page in pages:
            resp = browser.get(page)
            assert resp.status_code < 500, page
            if resp.mimetype != "text/html":
                continue
            body = resp.get_data(as_text=True)
            for payload in [*PAYLOADS.values(), PATIENT_FAMILY, PATIENT_GIVEN, CALLING_AE]:
                assert payload not in body, (page, payload)
            shown |= {p for p in SHOWN if str(escape(p)) in body}
    assert shown == set(SHOWN)  # every value was on some page, escaped

    # The JSON API keeps the values exactly, served as JSON that browsers do not sniff.
    from bcd_node.records.users import issue_token
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        _token, text = issue_token(session, "doctor", "xss", ctx.secrets.api_token_salt,
                                   actor="test")
    resp = doctor_client.get(f"/api/v1/studies/{received['uid']}",
                             headers={"Authorization": f"Bearer {text}"})
    assert resp.mimetype == "application/json"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    body = resp.get_json()
    assert (body["patient_name"], body["patient_id"], body["accession_number"]) == (
        PAYLOADS["PatientName"], PAYLOADS["PatientID"], PAYLOADS["AccessionNumber"])


def test_hostile_values_are_text_in_the_pdf(doctor_client: FlaskClient,
                                            received: dict[str, Any]) -> None:
    resp = doctor_client.get(f"/results/{received['result_id']}/report.pdf")
    assert resp.status_code == 200 and resp.data.startswith(b"%PDF")
    assert resp.headers["Content-Disposition"].startswith("attachment")
    for action in (b"/JavaScript", b"/URI", b"/Launch", b"/OpenAction", b"/Annots"):
        assert action not in resp.data, action  # no markup turned into links or scripts
    text = subprocess.run([require_tool("pdftotext"), "-", "-"], input=resp.data,
                          capture_output=True, timeout=60, check=True).stdout.decode()
    flat = re.sub(r"\s+", "", text)
    # (The report prints the family name in capitals.)
    for payload in (PATIENT_FAMILY.upper(), PATIENT_GIVEN, PAYLOADS["PatientID"],
                    PAYLOADS["AccessionNumber"], PAYLOADS["ContainerIdentifier"]):
        assert re.sub(r"\s+", "", payload) in flat, payload  # printed as typed, not obeyed


def test_hostile_values_in_the_audit_export(doctor_client: FlaskClient,
                                            admin_client: FlaskClient,
                                            received: dict[str, Any]) -> None:
    for page in (f"/studies/{received['uid']}", f"/patients/{received['patient_pk']}",
                 f"/results/{received['result_id']}/report.pdf"):
        assert doctor_client.get(page).status_code == 200
    resp = admin_client.get("/admin/audit/export.csv")
    assert resp.mimetype == "text/csv"
    assert resp.headers["Content-Disposition"].startswith("attachment")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    rows = list(csv.DictReader(io.StringIO(resp.get_data(as_text=True), newline="")))
    for row in rows:
        for name, cell in row.items():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (name, cell)
    # The Patient ID as DICOM sent it (audited with each view of the patient's data), made
    # inert for spreadsheets by a leading quote.
    viewed = [r for r in rows if r["action"] in ("view_study", "download_pdf", "view_patient")]
    assert len(viewed) >= 3, [r["action"] for r in rows]
    assert {r["patient_id"] for r in viewed} == {"'" + PAYLOADS["PatientID"]}
    resp = admin_client.get("/admin/audit/export.json")
    assert resp.mimetype == "application/json"
    events = json.loads(resp.get_data(as_text=True))
    assert {e["patient_id"] for e in events if e["action"] in ("view_study", "download_pdf",
                                                               "view_patient")} == \
        {PAYLOADS["PatientID"]}
