"""Retention purges finished, old data only, and keeps the audit chain verifiable."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from bcd_node.db.models import AuditEvent, Instance, Job, JobState, utcnow
from bcd_node.intake.intake import Intake
from bcd_node.jobs.retention import PurgeSummary, purge
from bcd_node.records import audit
from bcd_node.records.audit import verify_chain
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from tests.support.images import vl_micro_bytes
from tests.support.results import old_results


def test_old_finished_images_are_purged_recent_and_busy_kept(write_config) -> None:
    ctx = open_node(load_settings(write_config("[retention]\nimages_days = 30\n")))
    with Intake(ctx) as intake:
        old, busy, new = (intake.accept(vl_micro_bytes(i)) for i in (1, 2, 3))
    long_ago = utcnow() - timedelta(days=400)
    with ctx.session_factory.begin() as s:
        s.execute(update(Job).values(state=JobState.DONE))
        s.execute(update(Job).where(Job.instance_fk == busy.instance_id)
                  .values(state=JobState.QUEUED))
        s.execute(update(Instance).where(Instance.id.in_([old.instance_id, busy.instance_id]))
                  .values(received_at=long_ago))
        old_path = s.get(Instance, old.instance_id).path
    assert purge(ctx).images == 1
    with ctx.session_factory() as s:
        paths = {i.id: i.path for i in s.execute(select(Instance)).scalars()}
    assert paths[old.instance_id] == ""
    assert not (ctx.settings.storage.data_dir / old_path).exists()
    assert paths[busy.instance_id] and paths[new.instance_id]
    assert purge(ctx).images == 0


def test_audit_purge_keeps_the_chain_verifiable(write_config, monkeypatch) -> None:
    ctx = open_node(load_settings(write_config("[retention]\naudit_days = 365\n")))
    long_ago = utcnow() - timedelta(days=400)
    with monkeypatch.context() as m:
        m.setattr("bcd_node.records.audit.utcnow", lambda: long_ago)
        with ctx.session_factory.begin() as s:
            for i in range(3):
                audit.record(s, actor="x", actor_kind="user", action=f"old{i}")
    with ctx.session_factory.begin() as s:
        audit.record(s, actor="x", actor_kind="user", action="recent")
    assert purge(ctx).audit_events == 3
    with ctx.session_factory() as s:
        actions = list(s.execute(select(AuditEvent.action).order_by(AuditEvent.id)).scalars())
        assert actions == ["recent", "audit_purged"]
        assert verify_chain(s).ok
    with ctx.session_factory.begin() as s:  # tampering is still caught after a purge
        s.execute(update(AuditEvent).where(AuditEvent.action == "recent").values(actor="y"))
    with ctx.session_factory() as s:
        assert not verify_chain(s).ok


def test_zero_keeps_everything(write_config) -> None:
    ctx = open_node(load_settings(write_config()))
    with Intake(ctx) as intake:
        intake.accept(vl_micro_bytes(9))
    with ctx.session_factory.begin() as s:
        s.execute(update(Instance).values(received_at=utcnow() - timedelta(days=5000)))
    assert purge(ctx) == PurgeSummary(0, 0, 0)


def test_old_results_are_purged_those_awaiting_delivery_kept(write_config) -> None:
    from bcd_node.db.models import Delivery, Result

    ctx = open_node(load_settings(write_config("[retention]\nresults_days = 30\n")))
    done_id, waiting_id = old_results(ctx)
    with ctx.session_factory() as s:
        folders = {r.id: ctx.settings.storage.data_dir / "results" / str(r.instance_fk) / "1.0"
                   for r in s.execute(select(Result)).scalars()}
    assert purge(ctx).results == 1
    with ctx.session_factory() as s:
        assert set(s.execute(select(Result.id)).scalars()) == {waiting_id}
        assert set(s.execute(select(Delivery.result_fk)).scalars()) == {waiting_id}
    assert not folders[done_id].exists()
    assert (folders[waiting_id] / "report.pdf").exists()
    assert purge(ctx).results == 0
