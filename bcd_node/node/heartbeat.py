"""Heartbeats: each process of the node says in the database which roles it runs, every
:data:`INTERVAL_SECONDS`, so that the console of a node whose roles run apart (``bcd-node scp``,
``worker`` and ``web`` on PostgreSQL) knows whether the others are alive.

Without it, a ``bcd-node worker`` killed on its machine left ``/readyz`` answering "ready" and
the System page showing nothing wrong while images were acknowledged and nothing was analysed
or sent. Now the console's readiness has a check per role it does not run itself
(:func:`peers_check`): no process of that role seen within :data:`STALE_SECONDS` makes it not
ready, naming the role and when it was last seen. ``serve`` runs every role itself (its worker
and listener child processes are its own components), so it checks none.

A process that stops marks its row stopped; the row of a process that died is left as it
was, and its heartbeat grows old. Either says when the role was last running; rows are
forgotten a day after their last heartbeat.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from bcd_node import __version__
from bcd_node.db.models import NodeProcess, utcnow
from bcd_node.runtime import NodeContext

LOGGER = logging.getLogger(__name__)

#: Seconds between two heartbeats of a process.
INTERVAL_SECONDS = 10.0
#: A role none of whose processes was seen for this long is taken as not running.
STALE_SECONDS = 45.0
#: Rows of processes not seen for this long are removed.
FORGET_AFTER = timedelta(days=1)
#: The roles the console checks elsewhere, with what is lost without them.
WATCHED = {"worker": "images are received but not analysed, and no results are sent",
           "scp": "no DICOM image can be received"}


def process_id() -> str:
    """This process's row id: ``host:pid``."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}"


def beat(context: NodeContext, roles: tuple[str, ...], *, at: datetime | None = None) -> None:
    """Record that this process runs ``roles`` now (and forget processes gone for a day)."""
    now = at or utcnow()
    with context.session_factory.begin() as session:
        row = session.get(NodeProcess, process_id())
        if row is None:
            row = NodeProcess(id=process_id(), host=socket.gethostname()[:64], pid=os.getpid(),
                              version=__version__, started_at=now)
            session.add(row)
        row.roles, row.last_seen_at, row.stopped_at = ",".join(roles), now, None
        session.execute(delete(NodeProcess).where(NodeProcess.last_seen_at < now - FORGET_AFTER))


def start_heartbeat(context: NodeContext, roles: tuple[str, ...]) -> "Heartbeat":
    """Beat now and every :data:`INTERVAL_SECONDS` in a thread until stopped."""
    heartbeat = Heartbeat(context, roles)
    heartbeat.start()
    return heartbeat


class Heartbeat:
    """The heartbeat thread of one process (:func:`start_heartbeat`)."""

    def __init__(self, context: NodeContext, roles: tuple[str, ...]) -> None:
        self.context = context
        self.roles = roles
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        """Beat once (a database that cannot be written is logged, not fatal), then go on."""
        self._beat()
        self._thread.start()

    def _beat(self) -> None:
        try:
            beat(self.context, self.roles)
        except Exception:  # noqa: BLE001 - readiness says the database is down; try again
            LOGGER.warning("cannot record this process's heartbeat", exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_SECONDS):
            self._beat()

    def stop(self) -> None:
        """Stop beating and mark this process's row stopped: it stopped, it did not die."""
        self._stop.set()
        self._thread.join(timeout=INTERVAL_SECONDS)
        try:
            with self.context.session_factory.begin() as session:
                row = session.get(NodeProcess, process_id())
                if row is not None:
                    row.stopped_at = row.last_seen_at = utcnow()
        except Exception:  # noqa: BLE001 - its heartbeat grows old instead
            LOGGER.warning("cannot record that this process stopped", exc_info=True)


@dataclass(frozen=True)
class RoleSeen:
    """The process of a role seen last: where, when, and whether it stopped."""

    where: str
    at: datetime
    stopped: bool


def processes_of(context: NodeContext, role: str) -> list[RoleSeen]:
    """The processes that run or ran ``role``, the one seen last first."""
    with context.session_factory() as session:
        rows = session.execute(select(NodeProcess).order_by(
            NodeProcess.last_seen_at.desc())).scalars().all()
    return [RoleSeen(f"{row.host} (PID {row.pid})", row.last_seen_at, row.stopped_at is not None)
            for row in rows if role in row.roles.split(",")]


def peers_problem(context: NodeContext, role: str, *, now: datetime | None = None) -> str | None:
    """Why ``role``, which this process does not run, is taken as not running; None when a
    process of it runs (not stopped, seen within :data:`STALE_SECONDS`)."""
    now = now or utcnow()
    seen = processes_of(context, role)
    if any(not p.stopped and (now - p.at).total_seconds() <= STALE_SECONDS for p in seen):
        return None
    name = "bcd-node " + role
    if not seen:
        return f"no {name} process has run on this database: {WATCHED[role]}"
    last = seen[0]
    at = f"{last.at:%Y-%m-%d %H:%M:%S} UTC"
    if last.stopped:
        return f"no {name} process is running (the last one, on {last.where}, stopped at {at}): " \
               + WATCHED[role]
    ago = int((now - last.at).total_seconds())
    return (f"no {name} process has been heard from for {ago} s (the last one, on {last.where}, "
            f"at {at}; it may have died): {WATCHED[role]}")
