"""The cell gallery's endpoints: a field's cells as JSON, a doctor's "not a blast" and undo."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select

from bcd_node.db.models import AuditEvent, Result
from bcd_node.records.cells import split_cells
from tests.support.seed import add_analysed_study
from tests.support.web import csrf_token

UID = "1.2.826.0.1.3680043.10.1.7"


@pytest.fixture
def field(app: Flask) -> dict[str, Any]:
    """An analysed field whose result lists its cells (from its seeded mask)."""
    ctx = app.extensions["bcd_node"]
    data_dir = ctx.settings.storage.data_dir
    with ctx.session_factory.begin() as session:
        study, inst, result = add_analysed_study(session, data_dir, uid=UID)
        mask = np.asarray(Image.open(data_dir / result.mask_path)) > 0
        listed = split_cells(mask.astype(np.uint8), min_area=20)
        assert len(listed.cells) >= 2
        result.cells = listed.as_json()
        return {"study": study.study_instance_uid, "study_id": study.id, "result": result.id,
                "cells": len(listed.cells)}


def change(client: FlaskClient, field: dict[str, Any], index: int, act: str) -> Any:
    token = csrf_token(client, f"/studies/{field['study']}")
    return client.post(f"/results/{field['result']}/cells/{index}/{act}",
                       headers={"X-CSRFToken": token})


def test_the_review_page_includes_the_gallery(doctor_client: FlaskClient, field) -> None:
    page = doctor_client.get(f"/studies/{field['study']}").get_data(as_text=True)
    assert "data-gallery" in page and "gallery.js" in page
    assert f'data-field-count="{field["result"]}"' in page
    assert f'data-case-count="{field["study_id"]}"' in page


def test_cells_are_listed_and_a_rejection_changes_the_counts(app: Flask,
                                                              doctor_client: FlaskClient,
                                                              field) -> None:
    listed = doctor_client.get(f"/results/{field['result']}/cells").get_json()
    assert len(listed["cells"]) == field["cells"] and listed["editable"] is True
    assert listed["field_count"] == listed["case_count"] == 5  # the AI's, nothing rejected
    assert [c["index"] for c in listed["cells"]] == list(range(1, field["cells"] + 1))
    ai_area = listed["field_area"]
    assert listed["case_area"] == ai_area  # one field: the case's area is its area
    answer = change(doctor_client, field, 2, "reject")
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["field_count"] == body["case_count"] == field["cells"] - 1
    assert [c["index"] for c in body["cells"] if c["rejected"]] == [2]
    # The areas follow the cells as the counts do: less the rejected cell's pixels.
    cell = next(c for c in body["cells"] if c["index"] == 2)
    rows, columns = body["shape"]
    with app.extensions["bcd_node"].session_factory() as s:
        ai_fraction = s.get(Result, field["result"]).blast_area_fraction
    expected = f"{(ai_fraction - cell['area_px'] / (rows * columns)) * 100:.1f} %"
    assert body["field_area"] == body["case_area"] == expected != ai_area
    page = doctor_client.get(f"/studies/{field['study']}").get_data(as_text=True)
    assert f'<span data-field-area="{field["result"]}">{expected}</span>' in page
    assert f"(AI: {ai_area})" in page
    case_page = doctor_client.get(f"/cases/{field['study']}").get_data(as_text=True)
    assert f'data-case-area="{field["study_id"]}">{expected}<' in case_page
    body = change(doctor_client, field, 2, "restore").get_json()
    assert body["field_count"] == 5 and not any(c["rejected"] for c in body["cells"])
    assert body["field_area"] == ai_area
    assert change(doctor_client, field, 999, "reject").status_code == 404
    with app.extensions["bcd_node"].session_factory() as s:
        actions = s.execute(select(AuditEvent.action).where(
            AuditEvent.action.like("cell_%")).order_by(AuditEvent.id)).scalars().all()
    assert actions == ["cell_reject", "cell_restore"]


def test_only_a_doctor_changes_cells_and_never_after_verification(
        app: Flask, admin_client: FlaskClient, doctor_client: FlaskClient, field) -> None:
    token = csrf_token(admin_client, "/admin/users")
    assert admin_client.post(f"/results/{field['result']}/cells/1/reject",
                             headers={"X-CSRFToken": token}).status_code == 403
    # Without the CSRF token, nothing is changed.
    assert doctor_client.post(f"/results/{field['result']}/cells/1/reject").status_code == 400
    with app.extensions["bcd_node"].session_factory.begin() as s:
        s.get(Result, field["result"]).verification = "verified"
    answer = change(doctor_client, field, 1, "reject")
    assert answer.status_code == 409 and "verified" in answer.get_json()["message"]
    assert doctor_client.get(f"/results/{field['result']}/cells").get_json()["editable"] is False
