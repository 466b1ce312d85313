"""Storage commitment reports applied to the outbox (Orthanc's own: tests/integration/
test_storage_commitment.py), and committing rows when the configuration changes."""

from __future__ import annotations

from sqlalchemy import select

from bcd_node.db.models import Delivery, DeliveryState
from bcd_node.delivery.commitment import record_report
from bcd_node.delivery.outbox import Deliverer
from bcd_node.runtime import NodeContext
from dicom.commitment import CommitmentReport


def _committing(ctx: NodeContext, n: int, attempts: int = 1, destination: str = "pacs",
                transaction: str = "2.25.100") -> None:
    with ctx.session_factory.begin() as session:
        for i in range(n):
            session.add(Delivery(destination=destination, kind="sr", sop_class_uid="1.2",
                                 sop_instance_uid=f"2.25.{destination}.{i}",
                                 path=f"results/{i}.dcm", state=DeliveryState.COMMITTING,
                                 attempts=attempts, commit_transaction_uid=transaction))


def _rows(ctx: NodeContext) -> list[Delivery]:
    with ctx.session_factory() as session:
        rows = session.execute(select(Delivery).order_by(Delivery.id)).scalars().all()
        session.expunge_all()
        return list(rows)


def test_a_report_commits_resends_and_buries(ctx: NodeContext) -> None:
    _committing(ctx, 3)
    with ctx.session_factory.begin() as session:
        session.get(Delivery, 3).attempts = ctx.settings.delivery.max_attempts
    report = CommitmentReport("2.25.100", committed=("2.25.pacs.0",),
                              failed={"2.25.pacs.1": 0x0112, "2.25.pacs.2": None})
    with ctx.session_factory.begin() as session:
        done = record_report(session, ctx.settings.delivery, report)
    assert (done.committed, done.resent, done.dead) == (1, 1, 1)
    rows = _rows(ctx)
    assert [r.state for r in rows] == [DeliveryState.DONE, DeliveryState.PENDING,
                                       DeliveryState.DEAD]
    assert rows[0].committed_at is not None and rows[0].delivered_at is not None
    assert rows[1].last_error == ("storage commitment failed: 0x0112 (no such object "
                                  "instance)")
    assert rows[2].last_error == "storage commitment failed: no failure reason given"
    # Another transaction's report (superseded or unknown) changes nothing.
    with ctx.session_factory.begin() as session:
        other = record_report(session, ctx.settings.delivery,
                              CommitmentReport("2.25.999", committed=("2.25.pacs.1",)))
    assert other == type(other)() and _rows(ctx)[1].state is DeliveryState.PENDING


def test_committing_rows_of_a_destination_no_longer_asked_are_delivered(ctx) -> None:
    # The ctx fixture's "pacs" does not ask for storage commitment.
    _committing(ctx, 2)
    _committing(ctx, 1, destination="gone", transaction="2.25.101")
    Deliverer(ctx).run_once()
    rows = _rows(ctx)
    assert [r.state for r in rows] == [DeliveryState.DONE, DeliveryState.DONE,
                                       DeliveryState.DEAD]
    assert rows[0].committed_at is None and rows[0].delivered_at is not None
    assert rows[2].last_error == "destination is no longer configured"
