"""The outbox without a peer: the retry schedule, the dead letter and its audited retry
(sending to real peers is in tests/integration/test_delivery.py)."""

from __future__ import annotations

from sqlalchemy import select, update

from bcd_node.db.models import Delivery, DeliveryState, utcnow
from bcd_node.delivery.outbox import Deliverer, backoff_seconds, retry_deliveries
from tests.support.images import write_vl_micro
from tests.support.net import free_port
from tests.support.outbox import node_for, queue_files, states


def test_backoff_doubles_to_the_cap() -> None:
    assert [backoff_seconds(n, 30, 600) for n in range(0, 7)] == [0, 30, 60, 120, 240, 480, 600]


def test_backoff_stays_bounded_through_a_long_outage() -> None:
    assert backoff_seconds(5000, 30, 600) == 600  # 2.0 ** 4999 would overflow


def test_a_pacs_that_is_down_is_waited_for_not_given_up(write_config, tmp_path) -> None:
    """Nobody listens at the destination's port: each attempt fails at once, and none is an
    object's failure, so the rows wait for the PACS past max_attempts (an outage of an hour
    left them needing attention, and nobody clicked "Retry" at night)."""
    ctx = node_for(write_config, free_port(), max_attempts=2)
    queue_files(ctx, write_vl_micro(tmp_path / "out", 1))
    deliverer = Deliverer(ctx)
    for attempt in range(1, 5):
        with ctx.session_factory.begin() as session:  # due now, as after its backoff
            session.execute(update(Delivery).values(next_attempt_at=utcnow()))
        assert deliverer.run_once().retried == 1
        with ctx.session_factory() as session:
            row = session.execute(select(Delivery)).scalar_one()
        assert (row.state, row.attempts) == (DeliveryState.PENDING, attempt)
        assert "Connection refused" in row.last_error


def test_dead_letter_and_audited_retry(write_config, tmp_path) -> None:
    """A delivery that needs attention is queued again by retry_deliveries, audited."""
    ctx = node_for(write_config, free_port(), max_attempts=2)
    queue_files(ctx, write_vl_micro(tmp_path / "out", 1))
    with ctx.session_factory.begin() as session:  # as a PACS refusing the object left it
        session.execute(update(Delivery).values(state=DeliveryState.DEAD, attempts=2,
                                                last_error="status 0xA700"))
    with ctx.session_factory.begin() as session:
        assert retry_deliveries(session, actor="admin", actor_kind="cli") == [1]
    assert states(ctx) == [DeliveryState.PENDING]
