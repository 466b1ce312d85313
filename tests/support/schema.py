"""Checks of the database that run on SQLite and on PostgreSQL: the migrated schema is the
models' schema, the models store and read back a job chain with aware UTC times, and (on
SQLite too) no string is longer than its column."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, String, event, select
from sqlalchemy.exc import StatementError

from bcd_node.db.engine import make_session_factory
from bcd_node.db.models import (
    Base,
    Instance,
    Job,
    JobKind,
    JobState,
    Patient,
    Series,
    Study,
    utcnow,
)


def assert_schema_matches_models(engine: Engine) -> None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], f"migrations and models differ: {diff}"


def exercise_models(engine: Engine) -> None:
    """Write a patient → job chain and read it back with aware UTC times."""
    factory = make_session_factory(engine)
    with factory.begin() as session:
        patient = Patient(patient_id="P1", name="Doe^Jane")
        study = Study(patient=patient, study_instance_uid="1.2.3")
        series = Series(study=study, series_instance_uid="1.2.3.4", modality="SM")
        inst = Instance(series=series, sop_instance_uid="1.2.3.4.5", sop_class_uid="1.2",
                        transfer_syntax_uid="1.2.840.10008.1.2.1", path="store/ab/cd.dcm",
                        sha256="0" * 64, size_bytes=10, rows=256, columns=256)
        session.add_all([patient, study, series, inst])
        session.flush()
        session.add(Job(kind=JobKind.ANALYZE, instance_fk=inst.id, study_fk=study.id))
    with factory() as session:
        job = session.execute(select(Job)).scalar_one()
        assert job.state is JobState.QUEUED
        assert job.next_attempt_at.tzinfo is not None
        assert abs((utcnow() - job.created_at).total_seconds()) < 60
    with factory.begin() as session, pytest.raises(StatementError, match="naive"):
        session.add(Job(kind=JobKind.ANALYZE, next_attempt_at=datetime(2026, 1, 1)))
        session.flush()


def assert_results_keep_their_rows_through_0005(engine: Engine) -> None:
    """Migration 0005 adds ``results.demonstration_model``: rows stored before keep their data
    and get NULL (not recorded); rows stored after record the flag."""
    from sqlalchemy import text

    from bcd_node.db.migrate import upgrade

    assert upgrade(engine, "0004") == "0004"
    now = {"now": utcnow()}
    with engine.begin() as conn:
        patient = conn.execute(text(
            "INSERT INTO patients (patient_id, issuer, name, birth_date, sex, created_at) "
            "VALUES ('P1', '', '', '', '', :now) RETURNING id"), now).scalar_one()
        study = conn.execute(text(
            "INSERT INTO studies (patient_fk, study_instance_uid, accession_number, study_date, "
            "study_time, description, referring_physician, status, stage, last_received_at, "
            "created_at) VALUES (:patient, '1.2.3', '', '', '', '', '', 'done', 'Benign', :now, "
            ":now) RETURNING id"), {**now, "patient": patient}).scalar_one()
        result = conn.execute(text(
            "INSERT INTO results (scope, study_fk, model_name, model_version, stage, "
            "probabilities, blast_count, blast_area_fraction, quality, needs_review, "
            "verification, instance_revision, created_at) VALUES ('study', :study, 'm', '1', "
            "'Benign', '{}', 0, 0.0, '{}', false, 'unverified', 0, :now) RETURNING id"),
            {**now, "study": study}).scalar_one()
    assert upgrade(engine, "0005") == "0005"
    # Plain SQL: the models have the columns of later migrations.
    with engine.begin() as conn:
        old = conn.execute(text("SELECT model_name, stage, demonstration_model FROM results "
                                "WHERE id = :id"), {"id": result}).one()
        assert tuple(old) == ("m", "Benign", None)
        conn.execute(text(
            "INSERT INTO results (scope, study_fk, model_name, model_version, probabilities, "
            "blast_count, blast_area_fraction, quality, needs_review, verification, "
            "instance_revision, demonstration_model, created_at) VALUES ('study', :study, 'm', "
            "'2', '{}', 0, 0.0, '{}', false, 'unverified', 0, false, :now)"),
            {**now, "study": study})
        assert conn.execute(text("SELECT demonstration_model FROM results ORDER BY id")
                            ).scalars().all() == [None, False]


def assert_statuses_renamed_through_0006(engine: Engine) -> None:
    """Migration 0006 renames the studies' statuses to what they mean for the doctor: a study
    whose fields were all verified but whose summary was not is awaiting review, not signed."""
    from sqlalchemy import text

    from bcd_node.db.migrate import upgrade

    assert upgrade(engine, "0005") == "0005"
    now = {"now": utcnow()}
    old = ("queued", "done", "needs_review", "verified", "verified", "failed", "analysing")
    with engine.begin() as conn:
        patient = conn.execute(text(
            "INSERT INTO patients (patient_id, issuer, name, birth_date, sex, created_at) "
            "VALUES ('P6', '', '', '', '', :now) RETURNING id"), now).scalar_one()
        ids = []
        for n, status in enumerate(old):
            ids.append(conn.execute(text(
                "INSERT INTO studies (patient_fk, study_instance_uid, accession_number, "
                "study_date, study_time, description, referring_physician, status, "
                "last_received_at, created_at) VALUES (:patient, :uid, '', '', '', '', '', "
                ":status, :now, :now) RETURNING id"),
                {**now, "patient": patient, "uid": f"1.2.6.{n}", "status": status}).scalar_one())
        # The second "verified" study's summary is signed.
        conn.execute(text(
            "INSERT INTO results (scope, study_fk, model_name, model_version, stage, "
            "probabilities, blast_count, blast_area_fraction, quality, needs_review, "
            "verification, instance_revision, created_at) VALUES ('study', :study, 'm', '1', "
            "'Benign', '{}', 0, 0.0, '{}', false, 'verified', 0, :now)"),
            {**now, "study": ids[4]})
    assert upgrade(engine, "0006") == "0006"
    with engine.connect() as conn:
        statuses = [conn.execute(text("SELECT status FROM studies WHERE id = :id"),
                                 {"id": i}).scalar_one() for i in ids]
    assert statuses == ["analysing", "awaiting_review", "awaiting_review", "awaiting_review",
                        "signed", "failed", "analysing"]


def assert_outbox_kept_and_widened_through_0012(engine: Engine) -> None:
    """Migration 0012 widens ``deliveries.kind`` to 32 characters and keeps the outbox's rows:
    after it a signed summary's "verified_summary_pdf" (20) fits, which PostgreSQL refused."""
    from sqlalchemy import text

    from bcd_node.db.migrate import upgrade

    assert upgrade(engine, "0011") == "0011"
    row = {"now": utcnow(), "kind": "verified_pdf", "uid": "1.2.12.1"}
    insert = text(
        "INSERT INTO deliveries (destination, kind, sop_class_uid, sop_instance_uid, path, "
        "state, attempts, next_attempt_at, created_at) VALUES ('pacs', :kind, '1.2', :uid, "
        "'results/1/sr.dcm', 'pending', 0, :now, :now)")
    with engine.begin() as conn:
        conn.execute(insert, row)
    assert upgrade(engine, "0012") == "0012"
    with engine.begin() as conn:
        conn.execute(insert, {**row, "kind": "verified_summary_pdf", "uid": "1.2.12.2"})
        kept = conn.execute(text("SELECT sop_instance_uid, kind, state FROM deliveries "
                                 "ORDER BY id")).all()
    assert [tuple(r) for r in kept] == [("1.2.12.1", "verified_pdf", "pending"),
                                        ("1.2.12.2", "verified_summary_pdf", "pending")]


class ValueTooLongError(AssertionError):
    """A string longer than its column's ``VARCHAR(n)``, which PostgreSQL would refuse."""


def _check_string_lengths(mapper: Any, _connection: Any, target: Any) -> None:
    for prop in mapper.column_attrs:
        for column in prop.columns:
            length = getattr(column.type, "length", None)
            if not isinstance(column.type, String) or not length:
                continue
            value = getattr(target, prop.key, None)
            text = value.value if isinstance(value, enum.Enum) else value
            if isinstance(text, str) and len(text) > length:
                raise ValueTooLongError(
                    f"{column.table.name}.{column.name}: {len(text)} characters "
                    f"({text[:40]!r}) for VARCHAR({length}); PostgreSQL refuses it")


def enforce_string_lengths() -> None:
    """Make every ORM insert and update in this process check its strings' lengths.

    SQLite stores a string longer than its column's ``VARCHAR(n)`` as it is, PostgreSQL
    refuses it: most tests run on SQLite, and a kind of 20 characters in a 16-character column
    once passed them all and failed every signed case on PostgreSQL. With this, such a value
    fails a test on SQLite as it would fail on PostgreSQL. (Core inserts and updates are not
    checked: the node writes its rows through the ORM.)"""
    if event.contains(Base, "before_insert", _check_string_lengths):
        return
    event.listen(Base, "before_insert", _check_string_lengths, propagate=True)
    event.listen(Base, "before_update", _check_string_lengths, propagate=True)
