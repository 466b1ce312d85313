"""The console on PostgreSQL: sign-in, worklist filters, review, verification, audit, statistics."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from bcd_node.audit import verify_chain
from bcd_node.db.models import Job, JobKind, Result, Role
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from bcd_node.users import add_user
from tests.web.conftest import ADMIN_PASSWORD, DOCTOR_PASSWORD, login, post_form
from tests.web.seed import add_analysed_study, seed_worklist
from webadmin import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]
UID = "1.2.826.0.1.3680043.10.1.1"


def test_console_on_postgresql(postgres_url: str, write_config) -> None:
    ctx = open_node(load_settings(write_config(database_url=postgres_url)))
    try:
        with ctx.session_factory.begin() as session:
            add_user(session, "admin", ADMIN_PASSWORD, Role.ADMIN)
            add_user(session, "doctor", DOCTOR_PASSWORD, Role.DOCTOR)
            seed_worklist(session, 300)
            _s, _i, result = add_analysed_study(session, ctx.settings.storage.data_dir, uid=UID)
            rid = result.id
        app = create_app(ctx, {"TESTING": True})
        doctor: FlaskClient = app.test_client()
        assert login(doctor, "doctor", DOCTOR_PASSWORD).status_code == 302
        assert "301 in all" in doctor.get("/worklist").get_data(as_text=True)
        page = doctor.get("/worklist?status=needs_review&stage=Malignant-Pre&patient=doe"
                          "&from=2020-01-01&to=2100-01-01").get_data(as_text=True)
        assert "Doe, Jane" in page
        assert "Malignant-Pre" in doctor.get(f"/studies/{UID}").get_data(as_text=True)
        assert "Doe, Jane" in doctor.get("/patients/?q=DOE").get_data(as_text=True)
        resp = post_form(doctor, f"/studies/{UID}", f"/results/{rid}/verify",
                         {f"r{rid}-decision": "correct", f"r{rid}-stage": "Malignant-Pro"})
        assert resp.status_code == 302
        admin = app.test_client()
        assert login(admin, "admin", ADMIN_PASSWORD).status_code == 302
        for page in ("/admin/statistics", "/admin/system", "/admin/audit/?user=doctor",
                     "/admin/audit/export.csv", "/admin/users"):
            assert admin.get(page).status_code == 200, page
        with ctx.session_factory() as session:
            assert session.get(Result, rid).verified_stage == "Malignant-Pro"
            assert session.execute(select(Job.kind)).scalars().all() == [JobKind.VERIFIED_REPORT]
            assert verify_chain(session).ok
    finally:
        ctx.engine.dispose()
