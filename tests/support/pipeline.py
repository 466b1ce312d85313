"""Running a node's queued jobs in the test's own thread, one at a time, as a worker would."""

from __future__ import annotations

from bcd_node.analysis.pipeline import Pipeline
from bcd_node.jobs.queue import claim
from bcd_node.runtime import NodeContext


def run_all(ctx: NodeContext, pipeline: Pipeline) -> int:
    """Claim and run every due job with ``pipeline``; returns how many ran."""
    n = 0
    while True:
        with ctx.session_factory.begin() as s:
            job = claim(s, "test-worker", 60)
        if job is None:
            return n
        pipeline.run(job)
        n += 1
