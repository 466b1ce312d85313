"""A damaged database is found (PRAGMA quick_check at start and after a failure) and reported:
/readyz answers 503 with the reason, commands say so without a traceback."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from bcd_node.cli import main
from bcd_node.db.models import Job, JobKind
from bcd_node.node.health import readiness
from bcd_node.runtime import DatabaseUnusableError, open_node
from bcd_node.settings import load_settings
from bcd_node.store.layout import DataLayout
from tests.support.damage import damage_header, damage_table
from webadmin import create_app


@pytest.fixture
def settings(write_config):
    settings = load_settings(write_config())
    ctx = open_node(settings)
    with ctx.session_factory.begin() as session:
        session.add_all([Job(kind=JobKind.STUDY_SUMMARY) for _ in range(20)])
    ctx.engine.dispose()
    return settings


def _database(settings):
    return DataLayout(settings.storage.data_dir).database


def _readyz(ctx):
    ctx.started.set()
    resp = create_app(ctx, {"TESTING": True}).test_client().get("/readyz")
    return resp.status_code, resp.get_json()


def test_a_healthy_database_is_ready(settings) -> None:
    ctx = open_node(settings, check_integrity=True)
    assert _readyz(ctx) == (200, {"status": "ready", "reasons": {}, "checks": {
        "started": True, "database": True, "disk": True, "files": True}})
    ctx.engine.dispose()


def test_damage_found_at_start_makes_readyz_503_with_the_reason(settings, caplog) -> None:
    damage_table(_database(settings), "jobs")
    ctx = open_node(settings, check_integrity=True)  # starts: the console can say why
    status, body = _readyz(ctx)
    assert status == 503 and body["checks"]["database"] is False
    assert body["reasons"]["database"].startswith("the database is damaged (PRAGMA quick_check")
    assert any("is damaged" in r.getMessage() and r.levelname == "ERROR"
               for r in caplog.records)
    # Another process of the node (the console's) reads the note.
    other = open_node(settings)
    assert "damaged" in (other.database_health.problem() or "")
    ctx.engine.dispose()
    other.engine.dispose()


def test_damage_met_while_running_is_checked_and_reported(settings) -> None:
    ctx = open_node(settings, check_integrity=True)
    assert _readyz(ctx)[0] == 200
    ctx.engine.dispose()
    damage_table(_database(settings), "jobs")
    with pytest.raises(Exception) as info, ctx.session_factory() as session:
        session.execute(select(Job)).all()
    assert "malformed" in str(info.value)
    deadline = time.monotonic() + 30  # the check runs in the background
    while ctx.database_health.problem() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    status, body = _readyz(ctx)
    assert status == 503 and "quick_check" in body["reasons"]["database"]
    assert DataLayout(settings.storage.data_dir).database_health.exists()
    assert [c.name for c in readiness(ctx) if not c.ok] == ["database"]
    ctx.engine.dispose()


def test_audit_verify_reports_a_damaged_database_without_a_traceback(
        settings, capsys) -> None:
    config = str(settings.source)
    assert main(["--config", config, "audit", "verify"]) == 0
    capsys.readouterr()
    damage_table(_database(settings), "audit_events")
    assert main(["--config", config, "audit", "verify"]) == 1
    out, err = capsys.readouterr()
    assert "database DAMAGED (PRAGMA quick_check)" in out and "Traceback" not in out + err


def test_a_file_that_is_no_database_stops_commands_with_a_message(settings, capsys) -> None:
    damage_header(_database(settings))
    with pytest.raises(DatabaseUnusableError, match="not a database"):
        open_node(settings, check_integrity=True)
    assert main(["--config", str(settings.source), "audit", "verify"]) == 1
    out, err = capsys.readouterr()
    assert "not a database" in err and "Traceback" not in out + err
    assert main(["--config", str(settings.source), "status"]) == 1
    assert "Traceback" not in "".join(capsys.readouterr())
