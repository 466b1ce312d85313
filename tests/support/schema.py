"""Checks of the database that run on SQLite and on PostgreSQL: the migrated schema is the
models' schema, and the models store and read back a job chain with aware UTC times."""

from __future__ import annotations

from datetime import datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, select
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
