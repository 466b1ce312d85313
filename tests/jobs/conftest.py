"""Fixtures of the job queue and worker tests: a node with short leases and quick retries."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings


@pytest.fixture
def ctx(write_config) -> Iterator[NodeContext]:
    """A node on a temporary SQLite whose workers lease a job for 0.6 s and retry at once."""
    context = open_node(load_settings(write_config(
        "[workers]\nlease_seconds = 0.6\nmax_attempts = 3\nretry_delay = 0.01\n"
        "poll_interval = 0.05\n")))
    yield context
    context.engine.dispose()
