"""Delivery of results to the configured destinations (the outbox).

Retry state lives in the ``deliveries`` table; the scheduler only calls :meth:`Deliverer.run_once`.
Rows are claimed by setting them ``sending`` with a lease in ``next_attempt_at`` (``FOR UPDATE
SKIP LOCKED`` on PostgreSQL), so two processes never send the same row at the same time and a
process that dies mid-send leaves rows that become due again. A failed send backs off
exponentially (``initial_backoff`` doubling to ``max_backoff``); after ``max_attempts`` the row
is ``dead`` ("needs attention") until an operator retries it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence

from sqlalchemy import and_, or_, select, true, update
from sqlalchemy.orm import Session

from bcd_node import audit
from bcd_node.db.models import Delivery, DeliveryState, DestinationHealth, utcnow
from bcd_node.runtime import NodeContext
from bcd_node.settings import Destination
from dicom.scu import Peer, PeerUnavailableError, echo, send_files

LOGGER = logging.getLogger(__name__)
SEND_LEASE_SECONDS = 600
BATCH = 50


def backoff_seconds(attempts: int, initial: float, maximum: float) -> float:
    """Delay before the next try after ``attempts`` failed ones: initial × 2^(n-1), capped."""
    if attempts < 1:
        return 0.0
    return min(initial * (2 ** (attempts - 1)), maximum)


@dataclass(frozen=True)
class RunSummary:
    """What one delivery pass did."""

    sent: int = 0
    retried: int = 0
    dead: int = 0


class Deliverer:
    """Sends due outbox rows of one node."""

    def __init__(self, context: NodeContext) -> None:
        self.context = context
        self.settings = context.settings

    def peer(self, dest: Destination) -> Peer:
        """The SCU parameters for ``dest``."""
        d = self.settings.delivery
        return Peer(ae_title=dest.ae_title, host=dest.host, port=dest.port,
                    calling_ae=self.settings.dicom.ae_title, connect_timeout=d.connect_timeout,
                    acse_timeout=d.acse_timeout, dimse_timeout=d.dimse_timeout,
                    network_timeout=d.network_timeout)

    def _claim(self, destination: str) -> list[Delivery]:
        now = utcnow()
        due = and_(Delivery.destination == destination, Delivery.next_attempt_at <= now,
                   or_(Delivery.state == DeliveryState.PENDING,
                       Delivery.state == DeliveryState.SENDING))
        with self.context.session_factory.begin() as session:
            ids = session.execute(select(Delivery.id).where(due).order_by(Delivery.id)
                                  .limit(BATCH).with_for_update(skip_locked=True)).scalars().all()
            if not ids:
                return []
            session.execute(update(Delivery).where(Delivery.id.in_(ids)).values(
                state=DeliveryState.SENDING,
                next_attempt_at=now + timedelta(seconds=SEND_LEASE_SECONDS),
                attempts=Delivery.attempts + 1))
            rows = session.execute(select(Delivery).where(Delivery.id.in_(ids))
                                   .order_by(Delivery.id)).scalars().all()
            session.expunge_all()
            return list(rows)

    def run_once(self) -> RunSummary:
        """Send what is due to every destination; never raises for a peer's failure."""
        summary = RunSummary()
        configured = {d.name: d for d in self.settings.destinations}
        self._bury_unconfigured(set(configured))
        for name, dest in configured.items():
            while True:
                rows = self._claim(name)
                if not rows:
                    break
                part = self._send(dest, rows)
                summary = RunSummary(summary.sent + part.sent, summary.retried + part.retried,
                                     summary.dead + part.dead)
                if part.sent < len(rows):
                    break  # the peer is struggling: leave the rest for the next pass
        return summary

    def _send(self, dest: Destination, rows: Sequence[Delivery]) -> RunSummary:
        store = self.context.settings.storage.data_dir
        try:
            outcomes = send_files(self.peer(dest), [store / row.path for row in rows])
        except PeerUnavailableError as exc:
            return self._record_failures(rows, str(exc))
        except (OSError, ValueError) as exc:
            LOGGER.exception("cannot send to %s", dest.name)
            return self._record_failures(rows, f"{type(exc).__name__}: {exc}")
        sent = retried = dead = 0
        now = utcnow()
        d = self.settings.delivery
        with self.context.session_factory.begin() as session:
            for row, outcome in zip(rows, outcomes):
                if outcome.ok:
                    values = dict(state=DeliveryState.DONE, delivered_at=now, last_error=None,
                                  next_attempt_at=now)
                    sent += 1
                elif outcome.permanent_failure or row.attempts >= d.max_attempts:
                    values = dict(state=DeliveryState.DEAD, last_error=outcome.error,
                                  next_attempt_at=now)
                    dead += 1
                    LOGGER.error("delivery %d of %s to %s needs attention: %s", row.id,
                                 row.sop_instance_uid, dest.name, outcome.error)
                else:
                    delay = backoff_seconds(row.attempts, d.initial_backoff, d.max_backoff)
                    values = dict(state=DeliveryState.PENDING, last_error=outcome.error,
                                  next_attempt_at=now + timedelta(seconds=delay))
                    retried += 1
                session.execute(update(Delivery).where(Delivery.id == row.id).values(**values))
        LOGGER.info("delivered %d object(s) to %s (%d to retry, %d need attention)", sent,
                    dest.name, retried, dead)
        return RunSummary(sent, retried, dead)

    def _record_failures(self, rows: Sequence[Delivery], error: str) -> RunSummary:
        d = self.settings.delivery
        now = utcnow()
        retried = dead = 0
        with self.context.session_factory.begin() as session:
            for row in rows:
                if row.attempts >= d.max_attempts:
                    values = dict(state=DeliveryState.DEAD, last_error=error, next_attempt_at=now)
                    dead += 1
                else:
                    delay = backoff_seconds(row.attempts, d.initial_backoff, d.max_backoff)
                    values = dict(state=DeliveryState.PENDING, last_error=error,
                                  next_attempt_at=now + timedelta(seconds=delay))
                    retried += 1
                session.execute(update(Delivery).where(Delivery.id == row.id).values(**values))
        LOGGER.warning("delivery of %d object(s) failed: %s", len(rows), error)
        return RunSummary(0, retried, dead)

    def _bury_unconfigured(self, names: set[str]) -> None:
        with self.context.session_factory.begin() as session:
            session.execute(update(Delivery).where(
                Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING]),
                Delivery.destination.not_in(names) if names else true()).values(
                    state=DeliveryState.DEAD,
                    last_error="destination is no longer configured"))

    def echo_all(self) -> dict[str, bool]:
        """C-ECHO every destination and record its health."""
        health: dict[str, bool] = {}
        for dest in self.settings.destinations:
            error = None
            try:
                ok = echo(self.peer(dest)) == 0
                if not ok:
                    error = "C-ECHO answered with a failure status"
            except (PeerUnavailableError, OSError) as exc:
                ok, error = False, str(exc)
            health[dest.name] = ok
            with self.context.session_factory.begin() as session:
                row = session.get(DestinationHealth, dest.name) or DestinationHealth(name=dest.name)
                row.last_echo_at, row.last_echo_ok, row.last_error = utcnow(), ok, error
                session.add(row)
            if not ok:
                LOGGER.warning("destination %s does not answer C-ECHO: %s", dest.name, error)
        return health


def retry_dead(session: Session, *, actor: str, actor_kind: str, source: str = "",
               ids: Sequence[int] | None = None) -> int:
    """Put dead (needs attention) deliveries back in the queue (audited); returns how many."""
    query = update(Delivery).where(Delivery.state == DeliveryState.DEAD)
    if ids:
        query = query.where(Delivery.id.in_(list(ids)))
    done = session.execute(query.values(state=DeliveryState.PENDING, attempts=0,
                                        next_attempt_at=utcnow(), last_error=None))
    count = done.rowcount
    audit.record(session, actor=actor, actor_kind=actor_kind, source=source,
                 action="delivery_retry", details={"count": count, "ids": list(ids or [])})
    return count
