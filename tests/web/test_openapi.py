"""The API's OpenAPI document: every /api/v1 route and nothing else; results carry their image
and their verifier."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from bcd_node.db.models import Result, User, utcnow
from tests.support.seed import add_analysed_study
from tests.support.web import DOCTOR_PASSWORD
from webadmin.openapi import BASE, document

BASIC = {"Authorization": "Basic " + base64.b64encode(
    f"doctor:{DOCTOR_PASSWORD}".encode()).decode()}
METHODS = {"get", "put", "post", "delete", "patch"}


def _api_routes(app: Flask) -> dict[str, set[str]]:
    """The API's routes in Flask's url_map, as OpenAPI paths under BASE, with their methods."""
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(BASE + "/"):
            continue
        path = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule[len(BASE):])
        routes.setdefault(path, set()).update(
            m.lower() for m in (rule.methods or ()) if m.lower() in METHODS)
    return routes


def test_the_document_covers_every_api_route_and_no_other(app: Flask) -> None:
    doc = document()
    assert doc["openapi"].startswith("3.")
    assert doc["servers"] == [{"url": BASE}]
    described = {path: {m for m in item if m in METHODS} for path, item in doc["paths"].items()}
    assert described == _api_routes(app)
    # Every path parameter is declared, every $ref resolves.
    for path, item in doc["paths"].items():
        for operation in item.values():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{([^}]+)}", path)), path
            assert operation["operationId"] and "200" in operation["responses"]
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(doc)))
    assert refs <= set(doc["components"]["schemas"])


def test_the_document_is_served_to_api_clients_only(app: Flask, client: FlaskClient) -> None:
    assert client.get(f"{BASE}/openapi.json").status_code == 401
    answer = client.get(f"{BASE}/openapi.json", headers=BASIC)
    assert answer.status_code == 200 and answer.get_json() == json.loads(json.dumps(document()))


def test_results_carry_their_image_and_verifier(app: Flask, client: FlaskClient) -> None:
    ctx = app.extensions["bcd_node"]
    with ctx.session_factory.begin() as session:
        study, inst, result = add_analysed_study(session, ctx.settings.storage.data_dir,
                                                 uid="1.2.826.0.1.3680043.10.1.9")
        doctor = session.query(User).filter_by(username="doctor").one()
        result.verification, result.verified_by_fk = "verified", doctor.id
        result.verified_at, result.verified_stage = utcnow(), result.stage
        uid, sop, rid = study.study_instance_uid, inst.sop_instance_uid, result.id
    body: dict[str, Any] = client.get(f"{BASE}/studies/{uid}", headers=BASIC).get_json()
    [one] = body["results"]
    assert one["image"] == {"sop_instance_uid": sop, "field_number": 1}
    assert one["verified_by"] == {"username": "doctor", "full_name": "Dr. Grace Hopper"}
    assert one["corrected_blast_count"] == one["blast_count"] == 5
    assert one["amendment"] is None
    with ctx.session_factory.begin() as session:  # as amend_case records it
        session.get(Result, rid).amends = {"reason": "Wrong stage signed.", "by_fk": 1,
                                           "at": "2026-12-05T09:03:00", "stage": "Benign",
                                           "comment": None, "sr": "1.2.3"}
    [one] = client.get(f"{BASE}/studies/{uid}", headers=BASIC).get_json()["results"]
    assert one["amendment"] == {"reason": "Wrong stage signed.",
                                "replaces_verified_at": "2026-12-05T09:03:00",
                                "replaces_verified_stage": "Benign"}
    single = client.get(f"{BASE}/results/{rid}", headers=BASIC).get_json()
    assert single["image"] == one["image"] and single["study_instance_uid"] == uid
    with ctx.session_factory() as session:
        assert session.get(Result, rid).instance_fk is not None
