"""The console on PostgreSQL: sign-in, worklist filters, review, verification, audit, statistics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from bcd_node.db.models import Job, JobKind, Result, Role
from bcd_node.records.audit import verify_chain
from bcd_node.records.users import add_user
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings
from tests.support.seed import add_analysed_study, seed_worklist
from tests.support.web import ADMIN_PASSWORD, DOCTOR_PASSWORD, login, post_form
from webadmin import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]
UID = "1.2.826.0.1.3680043.10.1.1"


@pytest.fixture
def context(postgres_url: str, write_config) -> Iterator[NodeContext]:
    """A node on the test's PostgreSQL database with an admin and a doctor."""
    ctx = open_node(load_settings(write_config(database_url=postgres_url)))
    with ctx.session_factory.begin() as session:
        add_user(session, "admin", ADMIN_PASSWORD, Role.ADMIN)
        add_user(session, "doctor", DOCTOR_PASSWORD, Role.DOCTOR, full_name="Grace Hopper")
    yield ctx
    ctx.engine.dispose()


def test_console_on_postgresql(context: NodeContext) -> None:
    ctx = context
    with ctx.session_factory.begin() as session:
        seed_worklist(session, 300)
        _s, _i, result = add_analysed_study(session, ctx.settings.storage.data_dir, uid=UID)
        rid = result.id
    app = create_app(ctx, {"TESTING": True})
    doctor: FlaskClient = app.test_client()
    assert login(doctor, "doctor", DOCTOR_PASSWORD).status_code == 302
    assert "301 in all" in doctor.get("/worklist").get_data(as_text=True)
    page = doctor.get("/worklist?status=awaiting_review&stage=Malignant-Pre&patient=doe"
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


def test_lockout_and_aggregated_failures_on_postgresql(context: NodeContext) -> None:
    """The throttle rows under concurrent failures: one row per key, counts add up."""
    import threading

    from sqlalchemy import update

    from bcd_node.db.models import AuditEvent, AuthThrottle, utcnow

    ctx = context
    app = create_app(ctx, {"TESTING": True})
    admin = app.test_client()
    assert login(admin, "admin", ADMIN_PASSWORD).status_code == 302
    statuses: list[int] = []

    def bad_tokens(n: int) -> None:
        client = app.test_client()
        for i in range(n):
            statuses.append(client.get("/api/v1/status", headers={
                "Authorization": f"Bearer bcd_bad_{i}"}).status_code)

    threads = [threading.Thread(target=bad_tokens, args=(10,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert statuses == [401] * 40
    browser = app.test_client()
    for _ in range(5):
        resp = login(browser, "doctor", "wrong-password-1")
    assert "locked for this user name until" in resp.get_data(as_text=True)
    with ctx.session_factory.begin() as session:
        session.execute(update(AuthThrottle).where(AuthThrottle.kind.startswith("audit:"))
                        .values(window_end=utcnow()))
    assert admin.get("/admin/audit/").status_code == 200
    with ctx.session_factory() as session:
        rows = session.execute(select(AuditEvent).where(
            AuditEvent.action == "api_auth_failed").order_by(AuditEvent.id)).scalars().all()
        assert len(rows) == 2 and rows[1].details["count"] == 39
        assert verify_chain(session).ok
