"""The outbox without a peer: the retry schedule (sending to real peers is in
tests/integration/test_delivery.py)."""

from __future__ import annotations

from bcd_node.delivery.outbox import backoff_seconds


def test_backoff_doubles_to_the_cap() -> None:
    assert [backoff_seconds(n, 30, 600) for n in range(0, 7)] == [0, 30, 60, 120, 240, 480, 600]
