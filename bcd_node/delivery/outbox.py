"""Delivery of results to the configured destinations (the outbox).

Retry state lives in the ``deliveries`` table; the scheduler only calls
:meth:`Deliverer.run_destination`, in a job of each destination's own, so that a slow or absent
peer holds up no other destination (:meth:`Deliverer.run_once` does every destination at once,
each in a thread).
Rows are claimed by setting them ``sending`` with a lease in ``next_attempt_at`` (``FOR UPDATE
SKIP LOCKED`` on PostgreSQL), so two processes never send the same row at the same time. The
lease (``delivery.lease_seconds``) is renewed while the association runs
(:class:`~bcd_node.jobs.leases.LeaseKeeper`), so it can be short: rows of a process that dies
mid-send are due again within one lease. Every update after the claim is fenced by the row's
``attempts`` as claimed (each claim increments it): a process whose lease passed to another one
cannot overwrite that one's outcome.

A failed send backs off exponentially (``initial_backoff`` doubling to ``max_backoff``); after
``max_attempts``, or at once for a refusal a retry cannot change (a permanent DIMSE status, an
association rejected "rejected-permanent", a result file that is missing or unreadable), the row
is ``dead`` ("needs attention") until an
operator retries it (:func:`retry_deliveries`, used by the CLI and the console alike). Each
failed attempt is logged with its reason (the DIMSE status or the network error).

A laboratory information system (``[[lis]]``) gets the HL7 ORU^R01 messages the analysis
queued for it (their ER7 text in the row's file) over MLLP (:mod:`~bcd_node.delivery.mllp`),
one at a time and in the order they were queued for a case: a message waits while an earlier
one of the same case is not delivered. Its ACK must answer it (MSA-2 = MSH-10); ``AE``, a
dropped connection or no ACK in time back off like a DICOM failure, ``AR`` is dead at once.

A destination with ``tls_ca`` is reached over DICOM TLS (:func:`client_tls`); its files are
loaded when the :class:`Deliverer` is made (at start), so a bad file stops the start with the
key named. A failed handshake (an unknown CA, a peer that does not speak TLS) is a failed
attempt like any other, its reason in ``last_error``.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Sequence

from pydicom.uid import generate_uid
from sqlalchemy import and_, case, exists, func, or_, select, true, update
from sqlalchemy.orm import Session, aliased

from bcd_node.db.engine import rowcount
from bcd_node.db.models import Delivery, DeliveryState, DestinationHealth, Result, Study, utcnow
from bcd_node.delivery.commitment import record_report
from bcd_node.delivery.dicomweb import StowTarget, stow_files, stow_reachable
from bcd_node.delivery.mllp import AckError, MllpClient, MllpError, parse_ack
from bcd_node.delivery.outcome import SendOutcome
from bcd_node.errors import BcdError
from bcd_node.jobs.leases import LeaseKeeper
from bcd_node.records import audit
from bcd_node.runtime import NodeContext
from bcd_node.settings import Destination, LisDestination, Settings, SettingsError
from bcd_node.store.layout import DataLayout
from dicom.commitment import request_commitment
from dicom.scu import Peer, PeerUnavailableError, StoreOutcome, echo, send_files
from dicom.tls import ClientTls, client_context

LOGGER = logging.getLogger(__name__)
BATCH = 50
#: The states of a delivery that is not finished.
WAITING_STATES = (DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.COMMITTING,
                  DeliveryState.DEAD)


def backoff_seconds(attempts: int, initial: float, maximum: float) -> float:
    """Delay before the next try after ``attempts`` failed ones: initial × 2^(n-1), capped."""
    if attempts < 1:
        return 0.0
    # The exponent is bounded: a delivery waiting through a week-long outage has a thousand
    # attempts, and 2.0 ** 1024 overflows.
    return min(initial * 2.0 ** min(attempts - 1, 64), maximum)


@dataclass(frozen=True)
class RunSummary:
    """What one delivery pass did."""

    sent: int = 0
    retried: int = 0
    dead: int = 0
    #: Rows whose lease passed to another process meanwhile (their outcome is that one's).
    lost: int = 0


def _fenced(row: Delivery) -> tuple[Any, ...]:
    """The row as this process claimed it (a later claim has incremented ``attempts``)."""
    return (Delivery.id == row.id, Delivery.state == DeliveryState.SENDING,
            Delivery.attempts == row.attempts)


def client_tls(dest: Destination | LisDestination) -> ClientTls | None:
    """How to reach ``dest`` over TLS; None for a plain destination."""
    if dest.tls_ca is None:
        return None
    return ClientTls(ca_file=str(dest.tls_ca),
                     certificate=str(dest.tls_certificate) if dest.tls_certificate else None,
                     private_key=str(dest.tls_private_key) if dest.tls_private_key else None,
                     server_name=dest.tls_server_name, check_hostname=dest.tls_check_hostname)


def check_tls_files(settings: Settings) -> None:
    """Load every destination's TLS files once.

    Raises
    ------
    SettingsError
        Naming the key of the file that cannot be loaded (unreadable, not PEM, a key that does
        not match its certificate).
    """
    tables: list[tuple[str, Destination | LisDestination]] = [
        (f"destinations[{i}]", d) for i, d in enumerate(settings.destinations)]
    tables += [(f"lis[{i}]", d) for i, d in enumerate(settings.lis)]
    for key, dest in tables:
        tls = client_tls(dest)
        if tls is None:
            continue
        try:
            client_context(ClientTls(tls.ca_file))
        except OSError as exc:  # ssl.SSLError is an OSError
            raise SettingsError(f"{key}.tls_ca", tls.ca_file,
                                f"cannot load the CA certificate: {exc}") from None
        try:
            client_context(tls)
        except OSError as exc:
            raise SettingsError(f"{key}.tls_certificate, {key}.tls_private_key",
                                f"{tls.certificate}, {tls.private_key}",
                                f"cannot load the client certificate and key: {exc}") from None


class Deliverer:
    """Sends due outbox rows of one node.

    Raises
    ------
    SettingsError
        When a destination's TLS files cannot be loaded (:func:`check_tls_files`).
    """

    def __init__(self, context: NodeContext) -> None:
        self.context = context
        self.settings = context.settings
        self.layout = DataLayout(context.settings.storage.data_dir)
        self._stopping = threading.Event()
        check_tls_files(self.settings)

    def peer(self, dest: Destination) -> Peer:
        """The SCU parameters for ``dest``."""
        d = self.settings.delivery
        return Peer(ae_title=dest.ae_title, host=dest.host, port=dest.port,
                    calling_ae=self.settings.dicom.ae_title, connect_timeout=d.connect_timeout,
                    acse_timeout=d.acse_timeout, dimse_timeout=d.dimse_timeout,
                    network_timeout=d.network_timeout, tls=client_tls(dest))

    def stow_target(self, dest: Destination) -> StowTarget:
        """The STOW-RS parameters for a DICOMweb destination."""
        return StowTarget(url=dest.url, auth=dest.auth, username=dest.username,
                          password=dest.password, token=dest.token,
                          timeout=self.settings.delivery.network_timeout,
                          tls_ca=str(dest.tls_ca) if dest.tls_ca else None,
                          tls_certificate=str(dest.tls_certificate) if dest.tls_certificate
                          else None,
                          tls_private_key=str(dest.tls_private_key) if dest.tls_private_key
                          else None)

    def _claim(self, destination: str, in_order: bool = False) -> list[Delivery]:
        """Claim due rows of ``destination``; ``in_order``: not those that wait for an earlier
        row of the same result (a case's HL7 messages go one after the other)."""
        now = utcnow()
        due = and_(Delivery.destination == destination, Delivery.next_attempt_at <= now,
                   or_(Delivery.state == DeliveryState.PENDING,
                       Delivery.state == DeliveryState.SENDING))
        if in_order:
            earlier = aliased(Delivery)
            due = and_(due, ~exists().where(
                earlier.destination == Delivery.destination,
                earlier.result_fk == Delivery.result_fk, earlier.id < Delivery.id,
                earlier.state.in_(WAITING_STATES)))
        with self.context.session_factory.begin() as session:
            ids = session.execute(select(Delivery.id).where(due).order_by(Delivery.id)
                                  .limit(BATCH).with_for_update(skip_locked=True)).scalars().all()
            if not ids:
                return []
            session.execute(update(Delivery).where(Delivery.id.in_(ids)).values(
                state=DeliveryState.SENDING,
                next_attempt_at=now + timedelta(seconds=self.settings.delivery.lease_seconds),
                attempts=Delivery.attempts + 1))
            rows = session.execute(select(Delivery).where(Delivery.id.in_(ids))
                                   .order_by(Delivery.id)).scalars().all()
            session.expunge_all()
            return list(rows)

    def _renew(self, rows: Sequence[Delivery]) -> bool:
        """Extend the lease of ``rows`` that are still ours; False when none is."""
        until = utcnow() + timedelta(seconds=self.settings.delivery.lease_seconds)
        kept = 0
        with self.context.session_factory.begin() as session:
            for row in rows:
                kept += rowcount(session.execute(update(Delivery).where(*_fenced(row)).values(
                    next_attempt_at=until)))
        return kept > 0

    def configured(self) -> dict[str, Destination | LisDestination]:
        """Every destination (PACS and LIS) by name, in the order of the settings."""
        configured: dict[str, Destination | LisDestination] = {
            d.name: d for d in self.settings.destinations}
        configured.update((d.name, d) for d in self.settings.lis)
        return configured

    def stop(self) -> None:
        """Ask every delivery in progress to end: no further batch is claimed and no further
        object sent (the one in flight gets its answer); what a batch did not send is due
        again at once, for the next start (or another process) to send."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """:meth:`stop` was called."""
        return self._stopping.is_set()

    def run_once(self) -> RunSummary:
        """Send what is due to every destination, each destination in a thread of its own (one
        that is slow or down holds up no other); never raises for a peer's failure."""
        configured = self.configured()
        self.bury_unconfigured()
        if not configured:
            return RunSummary()
        summary = RunSummary()
        with ThreadPoolExecutor(len(configured), thread_name_prefix="deliver") as pool:
            for part in pool.map(self.run_destination, configured):
                summary = self._merge(summary, part)
        return summary

    def run_destination(self, name: str) -> RunSummary:
        """Send what is due to destination ``name``, batch after batch, until nothing is due,
        the destination fails, or :meth:`stop` is called."""
        dest = self.configured().get(name)
        if dest is None:
            return RunSummary()
        summary = RunSummary()
        if isinstance(dest, Destination) and dest.type == "dimse" and not self.stopping:
            self._recommit(dest)
        lis = isinstance(dest, LisDestination)
        while not self.stopping:
            rows = self._claim(name, in_order=lis)
            if not rows:
                break
            part = (self._send_hl7(dest, rows) if isinstance(dest, LisDestination)
                    else self._send(dest, rows))
            summary = self._merge(summary, part)
            if part.retried or part.lost:
                break  # the peer is struggling (or another process is at work): next pass
        return summary

    def _release(self, rows: Sequence[Delivery]) -> None:
        """Give back claimed rows that were not tried (not counted as an attempt): due now."""
        if not rows:
            return
        with self.context.session_factory.begin() as session:
            for row in rows:
                session.execute(update(Delivery).where(*_fenced(row)).values(
                    state=DeliveryState.PENDING, attempts=row.attempts - 1,
                    next_attempt_at=utcnow()))

    def _send_hl7(self, lis: LisDestination, rows: Sequence[Delivery]) -> RunSummary:
        """Send each row's HL7 message on one MLLP connection and match its ACK."""
        d = self.settings.delivery
        tls = client_tls(lis)
        keeper = LeaseKeeper(lambda: self._renew(rows), d.lease_seconds,
                             f"{len(rows)} HL7 message(s) to {lis.name}")
        outcomes: dict[int, SendOutcome] = {}
        client = MllpClient(lis.host, lis.port, connect_timeout=d.connect_timeout,
                            ack_timeout=d.network_timeout,
                            tls=client_context(tls) if tls is not None else None,
                            server_name=tls.server_name if tls is not None else "")
        with keeper:
            for row in rows:
                if self.stopping:
                    break  # the rest is sent after the restart
                try:
                    # Bytes: a text read would turn the segments' CRs into LFs.
                    text = self.layout.resolve(row.path).read_bytes().decode("utf-8")
                except (OSError, ValueError) as exc:
                    outcomes[row.id] = SendOutcome(False, f"message file {row.path} cannot be "
                                                   f"read: {exc}", permanent_failure=True)
                    continue
                try:
                    if client.sock is None:
                        client.connect()
                    answer = client.send(text)
                except MllpError as exc:
                    outcomes[row.id] = SendOutcome(False, str(exc))
                    break  # the connection is gone: the rest waits for the next pass
                try:
                    ack = parse_ack(answer, row.sop_instance_uid)
                except AckError as exc:
                    client.close()  # out of step with the LIS: start afresh
                    outcomes[row.id] = SendOutcome(False, str(exc))
                    break
                if ack.accepted:
                    outcomes[row.id] = SendOutcome(True)
                else:
                    reason = f"the LIS answered {ack.code}" + (f": {ack.text}" if ack.text
                                                              else "")
                    outcomes[row.id] = SendOutcome(False, reason,
                                                   permanent_failure=ack.rejected)
            client.close()
        sent = [r for r in rows if r.id in outcomes]
        summary = self._record(lis, sent, [outcomes[r.id] for r in sent])
        # After a lost connection, or a stop: not tried, so not counted as an attempt.
        self._release([r for r in rows if r.id not in outcomes])
        return summary

    def _send(self, dest: Destination, rows: Sequence[Delivery]) -> RunSummary:
        lease = self.settings.delivery.lease_seconds
        keeper = LeaseKeeper(lambda: self._renew(rows), lease,
                             f"{len(rows)} deliver{'y' if len(rows) == 1 else 'ies'} to "
                             f"{dest.name}")
        outcomes: dict[int, StoreOutcome | SendOutcome] = {}
        sendable: list[tuple[Delivery, Path]] = []
        for row in rows:
            # One object that cannot be sent fails alone, with its reason; the others go.
            try:
                path = self.layout.resolve(row.path)
            except ValueError:
                outcomes[row.id] = StoreOutcome(row.path, row.sop_instance_uid, None,
                                                "stored path leaves the data folder",
                                                readable=False)
                continue
            if not path.is_file():
                outcomes[row.id] = StoreOutcome(row.path, row.sop_instance_uid, None,
                                                f"result file {row.path} is missing",
                                                readable=False)
                continue
            sendable.append((row, path))
        try:
            with keeper:
                paths = [path for _, path in sendable]
                sent: Sequence[StoreOutcome | SendOutcome] = (
                    stow_files(self.stow_target(dest), paths) if dest.type == "dicomweb"
                    else send_files(self.peer(dest), paths, stop=self._stopping))
        except PeerUnavailableError as exc:
            return self._merge(self._record(dest, [r for r in rows if r.id in outcomes],
                                            list(outcomes.values())),
                               self._record_failures(dest, [r for r, _ in sendable], str(exc),
                                                     permanent=exc.permanent,
                                                     unreachable=exc.down))
        except (OSError, ValueError) as exc:
            LOGGER.exception("cannot send to %s", dest.name)
            return self._merge(self._record(dest, [r for r in rows if r.id in outcomes],
                                            list(outcomes.values())),
                               self._record_failures(dest, [r for r, _ in sendable],
                                                     f"{type(exc).__name__}: {exc}"))
        outcomes.update((row.id, outcome) for (row, _), outcome in zip(sendable, sent)
                        if not (isinstance(outcome, StoreOutcome) and not outcome.attempted))
        tried = [row for row in rows if row.id in outcomes]
        transaction = generate_uid(prefix=None) if dest.storage_commitment else None
        summary = self._record(dest, tried, [outcomes[row.id] for row in tried],
                               transaction=transaction)
        if summary.sent and self._echo_failing(dest.name):
            # It stores again: its health, failing since it was down, is checked now rather
            # than shown as failing until the next delivery.echo_interval.
            self.echo_one(dest)
        self._release([row for row in rows if row.id not in outcomes])  # a stop came first
        if transaction is not None and not self.stopping:
            self._request_commitment(dest, transaction)  # else asked after commitment_timeout
        return summary

    def _request_commitment(self, dest: Destination, transaction: str) -> None:
        """Ask ``dest`` to commit the rows waiting under ``transaction``; record its report
        when it comes on the same association."""
        d = self.settings.delivery
        with self.context.session_factory() as session:
            refs = [(str(c), str(u)) for c, u in session.execute(
                select(Delivery.sop_class_uid, Delivery.sop_instance_uid).where(
                    Delivery.commit_transaction_uid == transaction,
                    Delivery.state == DeliveryState.COMMITTING))]
        if not refs:
            return
        try:
            report = request_commitment(self.peer(dest), transaction, refs, d.commitment_wait)
        except (PeerUnavailableError, OSError, ValueError) as exc:
            # Asked again once the backoff passes (as after a timeout), each time an attempt.
            LOGGER.warning("storage commitment request %s to %s failed: %s", transaction,
                           dest.name, exc)
            with self.context.session_factory.begin() as session:
                session.execute(update(Delivery).where(
                    Delivery.commit_transaction_uid == transaction,
                    Delivery.state == DeliveryState.COMMITTING).values(
                        last_error=f"storage commitment request failed: {exc}",
                        next_attempt_at=utcnow() + timedelta(seconds=d.initial_backoff)))
            return
        if report is not None:
            with self.context.session_factory.begin() as session:
                record_report(session, d, report)

    def _recommit(self, dest: Destination) -> None:
        """Ask again for what ``dest`` has not reported within ``delivery.commitment_timeout``
        (a new transaction, one more attempt); after ``max_attempts``, it needs attention. A
        destination no longer asked for commitment has what it stored delivered."""
        d = self.settings.delivery
        now = utcnow()
        transaction = generate_uid(prefix=None)
        waiting = and_(Delivery.destination == dest.name,
                       Delivery.state == DeliveryState.COMMITTING)
        if not dest.storage_commitment:
            # Commitment is no longer asked of this destination: what it stored is delivered.
            with self.context.session_factory.begin() as session:
                session.execute(update(Delivery).where(waiting).values(
                    state=DeliveryState.DONE, delivered_at=now, next_attempt_at=now,
                    last_error=None))
            return
        with self.context.session_factory.begin() as session:
            rows = session.execute(select(Delivery).where(
                waiting, Delivery.next_attempt_at <= now).order_by(Delivery.id).limit(BATCH)
                .with_for_update(skip_locked=True)).scalars().all()
            for row in rows:
                if row.attempts >= d.max_attempts:
                    row.state, row.next_attempt_at = DeliveryState.DEAD, now
                    row.last_error = (row.last_error or "no storage commitment report") + \
                        f" (after {row.attempts} attempts)"
                    LOGGER.error("delivery %d (%s %s) to %s needs attention: %s", row.id,
                                 row.kind, row.sop_instance_uid, dest.name, row.last_error)
                    continue
                row.attempts += 1
                row.commit_transaction_uid = transaction
                row.next_attempt_at = now + timedelta(seconds=d.commitment_timeout)
                if not row.last_error:
                    row.last_error = "no storage commitment report in time; asked again"
        if rows:
            self._request_commitment(dest, transaction)

    @staticmethod
    def _merge(a: RunSummary, b: RunSummary) -> RunSummary:
        return RunSummary(a.sent + b.sent, a.retried + b.retried, a.dead + b.dead,
                          a.lost + b.lost)

    def _record(self, dest: Destination | LisDestination, rows: Sequence[Delivery],
                outcomes: Sequence[StoreOutcome | SendOutcome],
                transaction: str | None = None) -> RunSummary:
        """Record each row's outcome; with ``transaction`` (storage commitment), a stored row
        waits ``committing`` under it instead of being done."""
        if not rows:
            return RunSummary()
        sent = retried = dead = lost = 0
        now = utcnow()
        d = self.settings.delivery
        with self.context.session_factory.begin() as session:
            for row, outcome in zip(rows, outcomes):
                if outcome.ok and transaction is not None:
                    values = dict(state=DeliveryState.COMMITTING, last_error=None,
                                  commit_transaction_uid=transaction,
                                  next_attempt_at=now + timedelta(seconds=d.commitment_timeout))
                elif outcome.ok:
                    values = dict(state=DeliveryState.DONE, delivered_at=now, last_error=None,
                                  next_attempt_at=now)
                elif outcome.permanent_failure or row.attempts >= d.max_attempts:
                    values = dict(state=DeliveryState.DEAD, last_error=outcome.error,
                                  next_attempt_at=now)
                else:
                    delay = backoff_seconds(row.attempts, d.initial_backoff, d.max_backoff)
                    values = dict(state=DeliveryState.PENDING, last_error=outcome.error,
                                  next_attempt_at=now + timedelta(seconds=delay))
                if not rowcount(session.execute(update(Delivery).where(*_fenced(row))
                                                .values(**values))):
                    lost += 1
                    continue
                if outcome.ok:
                    sent += 1
                elif values["state"] is DeliveryState.DEAD:
                    dead += 1
                    LOGGER.error("delivery %d (%s %s) to %s needs attention after attempt %d: "
                                 "%s", row.id, row.kind, row.sop_instance_uid, dest.name,
                                 row.attempts, outcome.error)
                else:
                    retried += 1
                    LOGGER.warning("delivery %d (%s %s) to %s failed (attempt %d of %d): %s; "
                                   "next attempt in %.0f s", row.id, row.kind,
                                   row.sop_instance_uid, dest.name, row.attempts, d.max_attempts,
                                   outcome.error, backoff_seconds(row.attempts, d.initial_backoff,
                                                                  d.max_backoff))
        if lost:
            LOGGER.warning("%d deliver%s to %s had passed to another process; their outcome "
                           "is not recorded here", lost, "y" if lost == 1 else "ies", dest.name)
        LOGGER.info("delivered %d object(s) to %s (%d to retry, %d need attention)", sent,
                    dest.name, retried, dead)
        return RunSummary(sent, retried, dead, lost)

    def _record_failures(self, dest: Destination, rows: Sequence[Delivery],
                         error: str, permanent: bool = False,
                         unreachable: bool = False) -> RunSummary:
        """The whole batch failed (no association): one reason for every row; ``permanent``
        (the peer rejected the association for good): every row needs attention at once;
        ``unreachable`` (the PACS is down, or busy: ``PeerUnavailableError.down``): no object
        was tried, so none runs out of attempts: they wait for it, tried again every
        ``delivery.max_backoff`` at most, and go out once it answers, with nobody to click
        "Retry" (an outage of an hour left them all needing attention)."""
        d = self.settings.delivery
        now = utcnow()
        retried: list[Delivery] = []
        dead: list[Delivery] = []
        lost = 0
        with self.context.session_factory.begin() as session:
            for row in rows:
                if permanent or (row.attempts >= d.max_attempts and not unreachable):
                    values = dict(state=DeliveryState.DEAD, last_error=error, next_attempt_at=now)
                else:
                    delay = backoff_seconds(row.attempts, d.initial_backoff, d.max_backoff)
                    values = dict(state=DeliveryState.PENDING, last_error=error,
                                  next_attempt_at=now + timedelta(seconds=delay))
                if rowcount(session.execute(update(Delivery).where(*_fenced(row))
                                            .values(**values))):
                    (dead if values["state"] is DeliveryState.DEAD else retried).append(row)
                else:
                    lost += 1
        if retried:
            low = min(r.attempts for r in retried)
            high = max(r.attempts for r in retried)
            attempts = str(low) if low == high else f"{low}-{high}"
            LOGGER.warning("delivery of %d object(s) to %s failed (attempt %s%s): %s; next "
                           "attempt in %.0f s", len(retried), dest.name, attempts,
                           "; they wait until it can be reached" if unreachable
                           else f" of {d.max_attempts}", error,
                           backoff_seconds(low, d.initial_backoff, d.max_backoff))
        if dead:
            LOGGER.error("%d deliver%s to %s need%s attention %s: %s (ids %s)",
                         len(dead), "y" if len(dead) == 1 else "ies", dest.name,
                         "s" if len(dead) == 1 else "",
                         "at once (a retry would be refused alike)" if permanent
                         else f"after {d.max_attempts} attempts", error,
                         ", ".join(str(r.id) for r in dead[:20]) + (" …" if len(dead) > 20
                                                                    else ""))
        return RunSummary(0, len(retried), len(dead), lost)

    def bury_unconfigured(self) -> None:
        """Rows waiting for a destination that is no longer configured need attention."""
        names = set(self.configured())
        with self.context.session_factory.begin() as session:
            session.execute(update(Delivery).where(
                Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING,
                                    DeliveryState.COMMITTING]),
                Delivery.destination.not_in(names) if names else true()).values(
                    state=DeliveryState.DEAD,
                    last_error="destination is no longer configured"))

    def echo_all(self) -> dict[str, bool]:
        """C-ECHO every destination (a DICOMweb one: a QIDO-RS query) and record its health."""
        return {dest.name: self.echo_one(dest) for dest in self.settings.destinations}

    def echo_one(self, dest: Destination) -> bool:
        """C-ECHO ``dest`` (a DICOMweb one: a QIDO-RS query) and record its health."""
        error = None
        try:
            if dest.type == "dicomweb":
                ok = stow_reachable(self.stow_target(dest))
            else:
                ok = echo(self.peer(dest)) == 0
            if not ok:
                error = "C-ECHO answered with a failure status"
        except (PeerUnavailableError, OSError) as exc:
            ok, error = False, str(exc)
        with self.context.session_factory.begin() as session:
            row = session.get(DestinationHealth, dest.name) or DestinationHealth(name=dest.name)
            row.last_echo_at, row.last_echo_ok, row.last_error = utcnow(), ok, error
            session.add(row)
        if not ok:
            LOGGER.warning("destination %s does not answer C-ECHO: %s", dest.name, error)
        return ok

    def _echo_failing(self, name: str) -> bool:
        """Whether the last C-ECHO of destination ``name`` failed."""
        with self.context.session_factory() as session:
            row = session.get(DestinationHealth, name)
            return row is not None and row.last_echo_ok is False


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class WaitingDelivery:
    """A delivery that is not done: queued, retrying, being sent, or needing attention."""

    id: int
    destination: str
    kind: str
    sop_instance_uid: str
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    #: An earlier delivery of the same result to the same LIS that this one waits for (a case's
    #: HL7 messages go one after the other), and whether that one needs attention.
    waits_for: int | None = None
    waits_for_dead: bool = False

    @property
    def waiting_text(self) -> str | None:
        """Why it is not sent though due, in words; None when it is not held back."""
        if self.waits_for is None:
            return None
        return (f"waits for delivery {self.waits_for}, the earlier message of the same case to "
                "this system" + (", which needs attention" if self.waits_for_dead else ""))

    @property
    def needs_attention(self) -> bool:
        """Retries are exhausted or the object was refused for good."""
        return self.state is DeliveryState.DEAD

    @property
    def retrying(self) -> bool:
        """At least one attempt has failed and another one will come."""
        return self.state is not DeliveryState.DEAD and (self.attempts > 0
                                                         and bool(self.last_error))

    def describe(self) -> str:
        """One line for ``bcd-node status``."""
        head = f"delivery {self.id} ({self.kind} {self.sop_instance_uid}) to {self.destination}"
        if self.needs_attention:
            text = f"needs attention after {self.attempts} attempt(s)"
        elif self.state is DeliveryState.SENDING:
            text = f"{self.state.value}, attempt {self.attempts}"
        elif self.waits_for is not None:
            text = f"{self.state.value}, {self.waiting_text}"
        else:
            when = (self.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S UTC")
                    if self.next_attempt_at else "now")
            text = (f"{self.state.value}, {self.attempts} attempt(s) so far, next attempt "
                    f"{when}")
        error = f"; last error: {self.last_error}" if self.last_error else ""
        return f"{head}: {text}{error}"

    def as_dict(self) -> dict[str, Any]:
        """For ``bcd-node status --json`` and the API."""
        return {"id": self.id, "destination": self.destination, "kind": self.kind,
                "sop_instance_uid": self.sop_instance_uid, "state": self.state.value,
                "needs_attention": self.needs_attention, "retrying": self.retrying,
                "attempts": self.attempts,
                "next_attempt_at": (self.next_attempt_at.isoformat()
                                    if self.next_attempt_at and not self.needs_attention
                                    else None),
                "last_error": self.last_error, "waits_for": self.waits_for}


@dataclass(frozen=True)
class DestinationStatus:
    """One destination: its deliveries by state and its last C-ECHO."""

    name: str
    counts: dict[str, int]
    echo_ok: bool | None = None
    echo_at: datetime | None = None
    echo_error: str | None = None

    @property
    def waiting(self) -> int:
        """Deliveries not done (queued, retrying, sending, needing attention)."""
        return sum(self.counts.get(s.value, 0) for s in WAITING_STATES)

    @property
    def ok(self) -> bool:
        """Nothing is waiting and the last C-ECHO (if any) succeeded."""
        return self.waiting == 0 and self.echo_ok is not False


@dataclass(frozen=True)
class DeliveryOverview:
    """Deliveries of the node as the console and ``bcd-node status`` show them."""

    destinations: list[DestinationStatus]
    counts: dict[str, int]
    #: The waiting deliveries, those needing attention first, then by next attempt.
    waiting: list[WaitingDelivery] = field(default_factory=list)

    @property
    def waiting_total(self) -> int:
        """How many deliveries are not done (may exceed ``len(waiting)``)."""
        return sum(self.counts.get(s.value, 0) for s in WAITING_STATES)

    @property
    def needs_attention(self) -> int:
        """How many deliveries need an operator."""
        return self.counts.get(DeliveryState.DEAD.value, 0)


def delivery_overview(session: Session, settings: Settings, limit: int = 100
                      ) -> DeliveryOverview:
    """Counts per destination and state, C-ECHO health, and the ``limit`` first waiting
    deliveries with their attempts, next attempt time and last error."""
    per_dest: dict[str, dict[str, int]] = {}
    for dest, state, n in session.execute(select(Delivery.destination, Delivery.state,
                                                 func.count())
                                          .group_by(Delivery.destination, Delivery.state)):
        per_dest.setdefault(dest, {})[DeliveryState(state).value] = n
    health = {h.name: h for h in session.execute(select(DestinationHealth)).scalars()}
    names = [d.name for d in settings.destinations] + [d.name for d in settings.lis]
    names += sorted(set(per_dest) - set(names))  # rows for destinations no longer configured
    destinations = []
    for name in names:
        h = health.get(name)
        destinations.append(DestinationStatus(
            name=name, counts=per_dest.get(name, {}), echo_ok=h.last_echo_ok if h else None,
            echo_at=h.last_echo_at if h else None, echo_error=h.last_error if h else None))
    counts: dict[str, int] = {}
    for per_state in per_dest.values():
        for value, n in per_state.items():
            counts[value] = counts.get(value, 0) + n
    first_dead = case((Delivery.state == DeliveryState.DEAD, 0), else_=1)
    rows = session.execute(select(Delivery).where(Delivery.state.in_(WAITING_STATES))
                           .order_by(first_dead, Delivery.next_attempt_at, Delivery.id)
                           .limit(limit)).scalars().all()
    held = _held_back(session, [r for r in rows if r.destination in
                                {lis.name for lis in settings.lis}
                                and r.state is DeliveryState.PENDING and r.result_fk])
    waiting = [WaitingDelivery(id=r.id, destination=r.destination, kind=r.kind,
                               sop_instance_uid=r.sop_instance_uid, state=r.state,
                               attempts=r.attempts, next_attempt_at=r.next_attempt_at,
                               last_error=r.last_error, **held.get(r.id, {})) for r in rows]
    return DeliveryOverview(destinations=destinations, counts=counts, waiting=waiting)


def _held_back(session: Session, rows: Sequence[Delivery]) -> dict[int, dict[str, Any]]:
    """For each of ``rows`` (pending, to a LIS) that an earlier delivery of the same result to
    the same destination holds back (:meth:`Deliverer._claim`, ``in_order``): the first such
    delivery and whether it needs attention."""
    held: dict[int, dict[str, Any]] = {}
    for row in rows:
        earlier = session.execute(select(Delivery.id, Delivery.state).where(
            Delivery.destination == row.destination, Delivery.result_fk == row.result_fk,
            Delivery.id < row.id, Delivery.state.in_(WAITING_STATES))
            .order_by(Delivery.id).limit(1)).first()
        if earlier is not None:
            held[row.id] = {"waits_for": earlier.id,
                            "waits_for_dead": earlier.state is DeliveryState.DEAD}
    return held


@dataclass(frozen=True)
class CaseDestination:
    """What one destination has of one case (study): acknowledged (stored, or ACKed by the
    LIS), committed (storage commitment), pending (queued, being sent, or waiting for its
    commitment) and dead-lettered (needing attention, listed with their reasons)."""

    name: str
    #: "PACS (DICOM)", "PACS (DICOMweb)" or "LIS (HL7)"; "not configured" for a removed one.
    protocol: str
    commitment: bool
    acknowledged: int
    committed: int
    pending: int
    dead: list[WaitingDelivery] = field(default_factory=list)


def case_deliveries(session: Session, settings: Settings, study_id: int
                    ) -> list[CaseDestination]:
    """Each destination's deliveries of study ``study_id``'s results, configured destinations
    first (in the order of the settings), then any other that rows name."""
    rows = session.execute(select(Delivery).where(Delivery.result_fk.in_(
        select(Result.id).where(Result.study_fk == study_id))).order_by(Delivery.id)
    ).scalars().all()
    protocols: dict[str, tuple[str, bool]] = {
        d.name: ("PACS (DICOMweb)" if d.type == "dicomweb" else "PACS (DICOM)",
                 d.storage_commitment) for d in settings.destinations}
    protocols.update((d.name, ("LIS (HL7)", False)) for d in settings.lis)
    names = list(protocols) + sorted({r.destination for r in rows} - set(protocols))
    out = []
    for name in names:
        mine = [r for r in rows if r.destination == name]
        protocol, commitment = protocols.get(name, ("not configured", False))
        out.append(CaseDestination(
            name=name, protocol=protocol, commitment=commitment,
            acknowledged=sum(r.state in (DeliveryState.DONE, DeliveryState.COMMITTING)
                             for r in mine),
            committed=sum(r.committed_at is not None for r in mine),
            pending=sum(r.state in (DeliveryState.PENDING, DeliveryState.SENDING,
                                    DeliveryState.COMMITTING) for r in mine),
            dead=[WaitingDelivery(id=r.id, destination=r.destination, kind=r.kind,
                                  sop_instance_uid=r.sop_instance_uid, state=r.state,
                                  attempts=r.attempts, next_attempt_at=r.next_attempt_at,
                                  last_error=r.last_error)
                  for r in mine if r.state is DeliveryState.DEAD]))
    return out


# --------------------------------------------------------------------------- retry


class DeliveryRetryError(BcdError):
    """A retry that names a delivery that does not exist or does not need attention."""


def retry_deliveries(session: Session, ids: Sequence[int] | None = None, *, actor: str,
                     actor_kind: str, source: str = "") -> list[int]:
    """Queue deliveries that need attention (dead) again, one audit event each; the caller
    commits. Returns the ids queued again.

    Parameters
    ----------
    ids
        The deliveries to retry; None (or empty) retries every one that needs attention.

    Raises
    ------
    DeliveryRetryError
        When an id is unknown or its delivery does not need attention (it is done, or still
        being retried by the node); nothing is changed then.
    """
    query = select(Delivery).where(Delivery.state == DeliveryState.DEAD)
    if ids:
        wanted = sorted(set(ids))
        found = {d.id: d for d in session.execute(select(Delivery).where(
            Delivery.id.in_(wanted))).scalars()}
        unknown = [i for i in wanted if i not in found]
        busy = [i for i in wanted if i in found and found[i].state is not DeliveryState.DEAD]
        problems = []
        if unknown:
            problems.append(f"no delivery {', '.join(map(str, unknown))}")
        if busy:
            problems.append("; ".join(f"delivery {i} does not need attention (it is "
                                      f"{found[i].state.value})" for i in busy))
        if problems:
            raise DeliveryRetryError("; ".join(problems) + ": nothing was queued again")
        query = query.where(Delivery.id.in_(wanted))
    rows = session.execute(query.order_by(Delivery.id).with_for_update()).scalars().all()
    now = utcnow()
    for row in rows:
        patient_id = study_uid = ""
        result = session.get(Result, row.result_fk) if row.result_fk else None
        study = session.get(Study, result.study_fk) if result is not None else None
        if study is not None:
            patient_id, study_uid = study.patient.patient_id, study.study_instance_uid
        audit.record(session, actor=actor, actor_kind=actor_kind, source=source,
                     action="delivery_retry", patient_id=patient_id,
                     study_instance_uid=study_uid, object_ref=f"delivery:{row.id}",
                     details={"destination": row.destination, "kind": row.kind, "from": "dead",
                              "attempts": row.attempts,
                              "last_error": (row.last_error or "")[:200]})
        row.state, row.attempts, row.next_attempt_at = DeliveryState.PENDING, 0, now
        row.last_error = None
    if rows:
        LOGGER.info("%s queued %d deliver%s again: %s", actor, len(rows),
                    "y" if len(rows) == 1 else "ies",
                    ", ".join(str(r.id) for r in rows[:20]) + (" …" if len(rows) > 20 else ""))
    return [r.id for r in rows]
