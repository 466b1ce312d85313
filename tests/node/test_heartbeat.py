"""Heartbeats: the console of a node whose roles run apart is not ready while no worker or
listener process is alive, and says since when (a `bcd-node worker` killed with kill -9 left
/readyz "ready" while nothing was analysed)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pytest

from bcd_node.db.models import NodeProcess, utcnow
from bcd_node.node.health import readiness
from bcd_node.node.heartbeat import STALE_SECONDS, beat, peers_problem, process_id, start_heartbeat
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings


@pytest.fixture
def context(write_config: Callable[..., Path]) -> Any:
    ctx = open_node(load_settings(write_config()), migrate=True)
    yield ctx
    ctx.engine.dispose()


def _other(context: Any, roles: str, *, seen_ago: float, stopped: bool = False,
           pid: int = 4242) -> None:
    at = utcnow() - timedelta(seconds=seen_ago)
    with context.session_factory.begin() as session:
        session.add(NodeProcess(id=f"worker-host:{pid}", roles=roles, host="worker-host",
                                pid=pid, version="0", started_at=at, last_seen_at=at,
                                stopped_at=at if stopped else None))


def test_a_role_is_running_while_a_process_of_it_beats(context: Any) -> None:
    assert "has run on this database" in peers_problem(context, "worker")
    _other(context, "worker", seen_ago=5)
    assert peers_problem(context, "worker") is None
    assert "bcd-node scp" in peers_problem(context, "scp")  # another role is not this one


def test_a_killed_process_is_told_from_a_stopped_one(context: Any) -> None:
    _other(context, "worker", seen_ago=STALE_SECONDS + 30)  # kill -9: its heartbeat grew old
    problem = peers_problem(context, "worker")
    assert problem and "has been heard from for" in problem and "worker-host (PID 4242)" in problem
    assert "may have died" in problem and "not analysed" in problem
    _other(context, "worker", seen_ago=2, stopped=True, pid=4343)  # SIGTERM: it said so
    problem = peers_problem(context, "worker")
    assert problem and "stopped at" in problem and "PID 4343" in problem
    _other(context, "scp,worker", seen_ago=1, pid=4444)  # one alive is enough
    assert peers_problem(context, "worker") is None


def test_this_process_beats_and_marks_its_stop(context: Any) -> None:
    heartbeat = start_heartbeat(context, ("worker",))
    with context.session_factory() as session:
        row = session.get(NodeProcess, process_id())
        assert row.roles == "worker" and row.stopped_at is None
    assert peers_problem(context, "worker") is None
    heartbeat.stop()
    with context.session_factory() as session:
        assert session.get(NodeProcess, process_id()).stopped_at is not None
    assert "stopped at" in peers_problem(context, "worker")
    beat(context, ("worker",))  # started again: running
    assert peers_problem(context, "worker") is None


def test_only_a_console_that_runs_apart_checks_the_other_roles(context: Any) -> None:
    context.started.set()
    context.roles = ("web",)
    checks = {c.name: c for c in readiness(context)}
    assert not checks["worker (elsewhere)"].ok and not checks["scp (elsewhere)"].ok
    _other(context, "scp", seen_ago=1, pid=1)
    _other(context, "worker", seen_ago=1, pid=2)
    assert all(c.ok for c in readiness(context))
    context.roles = ("web", "scp")  # scp here: only the workers are checked elsewhere
    assert [c.name for c in readiness(context) if "elsewhere" in c.name] == \
        ["worker (elsewhere)"]
    context.roles = ("web", "worker", "scp")  # serve: its own children
    assert not [c for c in readiness(context) if "elsewhere" in c.name]
    context.roles = ("worker",)  # no console: it reports nothing about the others
    assert not [c for c in readiness(context) if "elsewhere" in c.name]
