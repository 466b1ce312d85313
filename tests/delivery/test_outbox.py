"""The outbox without a peer: the retry schedule, the dead letter and its audited retry
(sending to real peers is in tests/integration/test_delivery.py)."""

from __future__ import annotations

from bcd_node.db.models import DeliveryState
from bcd_node.delivery.outbox import Deliverer, backoff_seconds, retry_deliveries
from tests.support.images import write_vl_micro
from tests.support.net import free_port
from tests.support.outbox import node_for, queue_files, states
from tests.support.waiting import wait_for


def test_backoff_doubles_to_the_cap() -> None:
    assert [backoff_seconds(n, 30, 600) for n in range(0, 7)] == [0, 30, 60, 120, 240, 480, 600]


def test_dead_letter_and_audited_retry(write_config, tmp_path) -> None:
    """Nobody listens at the destination's port: each attempt fails at once."""
    ctx = node_for(write_config, free_port(), max_attempts=2)
    queue_files(ctx, write_vl_micro(tmp_path / "out", 1))
    deliverer = Deliverer(ctx)
    deliverer.run_once()
    assert states(ctx) == [DeliveryState.PENDING]  # one attempt failed; the next one is due
    wait_for(lambda: deliverer.run_once().sent == 0 and states(ctx) == [DeliveryState.DEAD],
             10, "the second failed attempt, then the dead letter")
    with ctx.session_factory.begin() as session:
        assert retry_deliveries(session, actor="admin", actor_kind="cli") == [1]
    assert states(ctx) == [DeliveryState.PENDING]
