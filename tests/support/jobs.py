"""Running the node's queued jobs in the test's own thread."""

from __future__ import annotations

from typing import Any


def drain(workers: Any, owner: str = "test-worker") -> int:
    """Run queued jobs with ``workers`` (a :class:`bcd_node.jobs.workers.Workers`) until none is
    due; return how many ran."""
    count = 0
    while workers.step(owner):
        count += 1
    return count
