"""The node's status: the queue, the latest failed jobs, the deliveries and the disk.

One function, :func:`node_status`, gathers it for the console's System page, the API's
``/status`` and ``bcd-node status``, so the three show the same figures. It reads the tables of
every stage of the flow, which is why it lives with the last one. What only the running process
knows (its components, its readiness) comes from :mod:`bcd_node.node.health`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bcd_node.db.models import Job, JobKind, JobState, NodeProcess
from bcd_node.delivery.outbox import DeliveryOverview, delivery_overview
from bcd_node.jobs.queue import JobCounts, counts
from bcd_node.settings import Settings
from bcd_node.store.storage import DiskStatus, disk_status


@dataclass(frozen=True)
class FailedJob:
    """A job that failed for good, with its reason."""

    id: int
    kind: JobKind
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        """For ``bcd-node status --json``."""
        return {"job": self.id, "kind": self.kind.value, "error": self.error}


@dataclass(frozen=True)
class ProcessSeen:
    """A process of the node as its heartbeat left it (:mod:`bcd_node.node.heartbeat`)."""

    host: str
    pid: int
    roles: str
    last_seen_at: datetime
    stopped_at: datetime | None

    def describe(self, now: datetime) -> str:
        """``worker on host (PID 42): running, heard from 3 s ago`` and the like."""
        where = f"{self.roles} on {self.host} (PID {self.pid})"
        if self.stopped_at is not None:
            return f"{where}: stopped at {self.stopped_at:%Y-%m-%d %H:%M:%S} UTC"
        ago = max(0, int((now - self.last_seen_at).total_seconds()))
        return f"{where}: heard from {ago} s ago"

    def as_dict(self) -> dict[str, Any]:
        """For ``bcd-node status --json``."""
        return {"host": self.host, "pid": self.pid, "roles": self.roles.split(","),
                "last_seen_at": self.last_seen_at.isoformat(),
                "stopped_at": self.stopped_at.isoformat() if self.stopped_at else None}


@dataclass(frozen=True)
class NodeStatus:
    """What the node's database and data folder say about its work."""

    jobs: JobCounts
    #: The latest jobs that failed for good, newest first.
    recent_failures: list[FailedJob]
    deliveries: DeliveryOverview
    disk: DiskStatus
    #: The node's processes by their heartbeats, the one heard from last first.
    processes: list[ProcessSeen] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON of ``bcd-node status --json``."""
        overview = self.deliveries
        return {
            "jobs": {state.value: n for state, n in self.jobs.by_state.items()},
            "deliveries": {d.name: d.counts for d in overview.destinations if d.counts},
            "destinations": {d.name: {"ok": d.echo_ok,
                                      "at": d.echo_at.isoformat() if d.echo_at else None,
                                      "error": d.echo_error}
                             for d in overview.destinations
                             if d.echo_at is not None or d.echo_ok is not None},
            "waiting_total": overview.waiting_total,
            "waiting": [w.as_dict() for w in overview.waiting],
            "recent_failures": [f.as_dict() for f in self.recent_failures],
            "disk": self.disk.as_dict(),
            "processes": [p.as_dict() for p in self.processes],
        }


def node_status(session: Session, settings: Settings, *, waiting: int = 100,
                failures: int = 10) -> NodeStatus:
    """The node's status: jobs per kind and state, the ``failures`` latest failed jobs, the
    deliveries (with the ``waiting`` first that are not done) and the data folder's disk."""
    failed = session.execute(select(Job.id, Job.kind, Job.last_error)
                             .where(Job.state == JobState.FAILED)
                             .order_by(Job.id.desc()).limit(failures))
    return NodeStatus(
        jobs=counts(session),
        recent_failures=[FailedJob(job_id, JobKind(kind), error) for job_id, kind, error in failed],
        deliveries=delivery_overview(session, settings, limit=waiting),
        disk=disk_status(settings.storage.data_dir, settings.storage.min_free_disk),
        processes=[ProcessSeen(p.host, p.pid, p.roles, p.last_seen_at, p.stopped_at)
                   for p in session.execute(select(NodeProcess).order_by(
                       NodeProcess.last_seen_at.desc())).scalars()])
