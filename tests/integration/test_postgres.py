"""PostgreSQL: the same migrations and models against a real server started by the suite."""

from __future__ import annotations

import pytest

from bcd_node.cli import main
from bcd_node.db.engine import make_engine
from bcd_node.db.migrate import current_revision, head_revision, upgrade
from tests.support.schema import (
    assert_outbox_kept_and_widened_through_0012,
    assert_results_keep_their_rows_through_0005,
    assert_schema_matches_models,
    assert_statuses_renamed_through_0006,
    exercise_models,
)

pytestmark = pytest.mark.integration


def test_postgres_migrations_build_the_models(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        assert current_revision(engine) is None
        assert upgrade(engine) == head_revision()
        assert_schema_matches_models(engine)
        exercise_models(engine)
    finally:
        engine.dispose()


def test_postgres_migration_0005_keeps_the_results(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        assert_results_keep_their_rows_through_0005(engine)
        assert_statuses_renamed_through_0006(engine)
        assert_outbox_kept_and_widened_through_0012(engine)
        assert upgrade(engine) == head_revision()  # the later migrations
        assert_schema_matches_models(engine)
    finally:
        engine.dispose()


def test_cli_against_postgres(postgres_url: str, write_config, capsys) -> None:
    cfg = write_config(database_url=postgres_url)
    assert main(["--config", str(cfg), "db", "upgrade"]) == 0
    assert head_revision() in capsys.readouterr().out
    import io
    import sys
    old = sys.stdin
    sys.stdin = io.StringIO("correct horse battery staple\n")
    try:
        assert main(["--config", str(cfg), "users", "add", "dr.who", "--role", "doctor",
                     "--full-name", "John Smith", "--password-stdin"]) == 0
    finally:
        sys.stdin = old
    assert main(["--config", str(cfg), "users", "list", "--json"]) == 0
    assert '"dr.who"' in capsys.readouterr().out
    assert main(["--config", str(cfg), "audit", "verify"]) == 0


def test_roles_started_together_on_a_new_database_migrate_once(postgres_url: str,
                                                               write_config) -> None:
    """`scp`, `worker` and `web` all apply pending migrations at start; started together on a
    new release, one migrates and the others wait for it instead of failing on tables that
    appeared meanwhile."""
    import subprocess
    import sys
    from pathlib import Path

    cfg = write_config(database_url=postgres_url)
    bcd_node = Path(sys.executable).with_name("bcd-node")
    # Python started together, the migration itself released at once to all of them.
    procs = [subprocess.Popen([str(bcd_node), "--config", str(cfg), "db", "upgrade"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(4)]
    outputs = [p.communicate(timeout=180)[0].decode(errors="replace") for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    engine = make_engine(postgres_url)
    try:
        assert current_revision(engine) == head_revision()
        assert_schema_matches_models(engine)
    finally:
        engine.dispose()


def test_two_workers_purging_at_once_split_the_work(postgres_url: str, write_config) -> None:
    """Every worker process runs the hourly retention purge; on PostgreSQL two of them at the
    same moment must neither wait for each other nor fail on rows the other removed: rows
    another purge holds are skipped."""
    import threading
    from datetime import timedelta

    from sqlalchemy import select, update
    from sqlalchemy.orm import Session

    from bcd_node.db.models import Instance, Job, JobState, utcnow
    from bcd_node.intake.intake import Intake
    from bcd_node.jobs.retention import purge
    from bcd_node.runtime import open_node
    from bcd_node.settings import load_settings
    from tests.support.images import vl_micro_bytes

    cfg = write_config("[retention]\nimages_days = 30\n", database_url=postgres_url)
    ctx = open_node(load_settings(cfg))
    try:
        with Intake(ctx) as intake:
            first, second = (intake.accept(vl_micro_bytes(i)) for i in (11, 12))
        with ctx.session_factory.begin() as s:
            s.execute(update(Job).values(state=JobState.DONE))
            s.execute(update(Instance).values(received_at=utcnow() - timedelta(days=400)))
        other = Session(ctx.engine)  # the other worker, in the middle of its purge
        try:
            other.execute(select(Instance).where(Instance.id == first.instance_id)
                          .with_for_update())
            outcome: list = []
            thread = threading.Thread(target=lambda: outcome.append(purge(ctx)), daemon=True)
            thread.start()
            thread.join(20)
            assert not thread.is_alive(), "purge waited for the rows another purge holds"
        finally:
            other.rollback()
            other.close()
        thread.join(20)
        assert outcome and outcome[0].images == 1
        with ctx.session_factory() as s:
            paths = dict(s.execute(select(Instance.id, Instance.path)).all())
        assert paths[first.instance_id] and paths[second.instance_id] == ""
        assert purge(ctx).images == 1  # the skipped one goes at the next run
    finally:
        ctx.engine.dispose()


def test_two_workers_queue_one_summary_for_a_quiet_study(postgres_url: str,
                                                         write_config) -> None:
    """Every worker process looks for quiet studies on the same schedule; one that finds the
    other in the middle of queueing a study's summary leaves that study alone."""
    import threading
    from datetime import timedelta

    from sqlalchemy import func, select, update
    from sqlalchemy.orm import Session

    from bcd_node.analysis.summary import enqueue_study_summaries
    from bcd_node.db.models import Job, JobKind, JobState, Study, utcnow
    from bcd_node.intake.intake import Intake
    from bcd_node.runtime import open_node
    from bcd_node.settings import load_settings
    from tests.support.images import vl_micro_bytes

    ctx = open_node(load_settings(write_config(database_url=postgres_url)))
    try:
        with Intake(ctx) as intake:
            accepted = intake.accept(vl_micro_bytes(21))
        with ctx.session_factory.begin() as s:
            s.execute(update(Job).values(state=JobState.DONE))
            s.execute(update(Study).values(last_received_at=utcnow() - timedelta(days=1)))
            study_id = s.execute(select(Study.id).where(
                Study.study_instance_uid == accepted.study_instance_uid)).scalar_one()
        other = Session(ctx.engine)  # the other worker: found the study, job not committed
        try:
            other.execute(select(Study).where(Study.id == study_id).with_for_update())
            other.add(Job(kind=JobKind.STUDY_SUMMARY, study_fk=study_id, max_attempts=3))
            other.flush()
            queued: list[int] = []
            thread = threading.Thread(
                target=lambda: queued.append(enqueue_study_summaries(ctx)), daemon=True)
            thread.start()
            thread.join(20)
            assert not thread.is_alive(), "waited for the other worker"
            other.commit()
        finally:
            other.close()
        assert queued == [0]
        assert enqueue_study_summaries(ctx) == 0
        with ctx.session_factory() as s:
            assert s.execute(select(func.count()).select_from(Job).where(
                Job.kind == JobKind.STUDY_SUMMARY)).scalar_one() == 1
    finally:
        ctx.engine.dispose()


def test_results_purge_on_postgres(postgres_url: str, write_config) -> None:
    from bcd_node.jobs.retention import purge
    from bcd_node.runtime import open_node
    from bcd_node.settings import load_settings
    from tests.support.results import old_results

    ctx = open_node(load_settings(write_config("[retention]\nresults_days = 30\n",
                                               database_url=postgres_url)))
    try:
        old_results(ctx)
        assert purge(ctx).results == 1
        assert purge(ctx).results == 0
    finally:
        ctx.engine.dispose()


def test_two_intakes_filing_one_new_study_at_once_on_postgres(postgres_url: str,
                                                              write_config) -> None:
    """Two listener processes' intakes (two engines) create the same new patient, study and
    series at once: every image is stored under one of each. Then two images of one new study
    for two patients at once: one is stored, the other refused, and the study holds one
    patient."""
    import threading

    from sqlalchemy import func, select

    from bcd_node.db.models import Instance, Patient, Series, Study
    from bcd_node.intake.intake import IdentityConflictError, Intake
    from bcd_node.runtime import open_node
    from bcd_node.settings import load_settings
    from tests.support.images import part10_bytes, vl_micro

    cfg = write_config(database_url=postgres_url)
    contexts = [open_node(load_settings(cfg)) for _ in range(2)]
    intakes = [Intake(c).start() for c in contexts]
    try:
        def race(images: list[list[bytes]]) -> list[object]:
            outcomes: list[object] = []
            barrier = threading.Barrier(len(images))

            def send(intake: Intake, batch: list[bytes]) -> None:
                barrier.wait(timeout=30)
                for data in batch:
                    try:
                        outcomes.append(intake.accept(data))
                    except IdentityConflictError as exc:
                        outcomes.append(exc)

            threads = [threading.Thread(target=send, args=(intake, batch))
                       for intake, batch in zip(intakes, images)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            return outcomes

        study = "2.25.5550001"
        series = "2.25.5550002"

        def image(seed: int, patient: str, study_uid: str) -> bytes:
            ds = vl_micro(seed, patient_id=patient, study_uid=study_uid)
            ds.SeriesInstanceUID = series if study_uid == study else f"{study_uid}.1"
            return part10_bytes(ds)

        outcomes = race([[image(i, "PAT-A", study) for i in range(4)],
                         [image(i, "PAT-A", study) for i in range(4, 8)]])
        assert not [o for o in outcomes if isinstance(o, Exception)]
        with contexts[0].session_factory() as s:
            assert s.execute(select(func.count()).select_from(Instance)).scalar_one() == 8
            for model in (Patient, Study, Series):
                assert s.execute(select(func.count()).select_from(model)).scalar_one() == 1
        other = "2.25.5550003"
        outcomes = race([[image(10, "PAT-C", other)], [image(11, "PAT-D", other)]])
        assert sorted(type(o).__name__ for o in outcomes) == ["Accepted",
                                                              "IdentityConflictError"]
        with contexts[0].session_factory() as s:
            owners = s.execute(select(Patient.patient_id).join(Study).where(
                Study.study_instance_uid == other)).scalars().all()
            assert len(owners) == 1
            assert s.execute(select(Patient.patient_id)).scalars().all().count(owners[0]) == 1
    finally:
        for intake in intakes:
            intake.stop()
        for c in contexts:
            c.engine.dispose()
