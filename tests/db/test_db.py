"""Database: migrations build exactly the models' schema; SQLite is durable (WAL, FULL)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select

from bcd_node.db.engine import make_engine, make_session_factory
from bcd_node.db.migrate import current_revision, head_revision, upgrade
from bcd_node.db.models import Patient
from tests.support.schema import (
    assert_outbox_kept_and_widened_through_0012,
    assert_results_keep_their_rows_through_0005,
    assert_schema_matches_models,
    assert_statuses_renamed_through_0006,
    exercise_models,
)


def test_sqlite_migrations_build_the_models(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db' / 'bcd.db'}")
    assert current_revision(engine) is None
    assert upgrade(engine) == head_revision()
    assert upgrade(engine) == head_revision()  # idempotent
    assert_schema_matches_models(engine)
    exercise_models(engine)


def test_sqlite_migration_0005_keeps_the_results(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'bcd.db'}")
    try:
        assert_results_keep_their_rows_through_0005(engine)
    finally:
        engine.dispose()


def test_sqlite_migration_0006_renames_the_statuses(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'bcd.db'}")
    try:
        assert_statuses_renamed_through_0006(engine)
    finally:
        engine.dispose()


def test_sqlite_migration_0012_keeps_the_outbox(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'bcd.db'}")
    try:
        assert_outbox_kept_and_widened_through_0012(engine)
    finally:
        engine.dispose()


def test_sqlite_is_wal_with_full_sync(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'bcd.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_aware_times_survive_sqlite(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'bcd.db'}")
    upgrade(engine)
    factory = make_session_factory(engine)
    when = datetime(2026, 11, 24, 3, 4, 5, 123456, tzinfo=timezone.utc)
    with factory.begin() as session:
        session.add(Patient(patient_id="X", created_at=when))
    with factory() as session:
        assert session.execute(select(Patient.created_at)).scalar_one() == when


def test_a_database_error_does_not_carry_the_statements_parameters(tmp_path: Path) -> None:
    """A statement's parameters are patients' data; SQLAlchemy puts them in an error's
    message, which tracebacks, logs and jobs' recorded errors show. The node's engines leave
    them out."""
    import pytest
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    engine = make_engine(f"sqlite:///{tmp_path / 'bcd.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(text("INSERT INTO p VALUES (1, 'Doe^Jane')"))
    with pytest.raises(IntegrityError) as caught, engine.begin() as conn:
        conn.execute(text("INSERT INTO p VALUES (:id, :name)"), {"id": 1, "name": "Roe^Richard"})
    engine.dispose()
    assert "Roe^Richard" not in str(caught.value)
    assert "INSERT INTO p" in str(caught.value)  # the statement itself stays
