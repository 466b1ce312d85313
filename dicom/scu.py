"""Sending to a peer: C-ECHO and C-STORE as a service class user, with every timeout set, over
TLS where the peer requires it (:class:`~dicom.tls.ClientTls`).

Every association's socket sends without Nagle's delay (``TCP_NODELAY``): pynetdicom writes a
C-STORE as two P-DATA PDUs, the command and then the data set, before it reads the response.
With Nagle's algorithm the second write waits for the peer's acknowledgement of the first,
which the peer delays (40 ms on Linux): every object cost one such wait. DCMTK's tools have the
same option (its ``TCP_NODELAY`` environment variable).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS
from pynetdicom.transport import AddressInformation, AssociationSocket

from dicom import sop
from dicom.errors import DicomValidationError
from dicom.tls import ClientTls, client_context, handshake_failure

LOGGER = logging.getLogger(__name__)


class PeerUnavailableError(ConnectionError):
    """The peer could not be reached or refused the association (worth retrying).

    A :class:`ConnectionError`, not a :class:`~dicom.errors.DicomError`: nothing is wrong with
    the input, and a later attempt may succeed, unless ``permanent`` says otherwise.
    """

    #: The peer said that a retry will not change its answer (an A-ASSOCIATE-RJ with result
    #: "rejected-permanent", e.g. our called AE title is not its own).
    permanent: bool = False
    #: The peer is down or busy: no TCP connection, no answer in time, or an A-ASSOCIATE-RJ
    #: "rejected-transient" (at its limit of associations). Waiting is the cure, unlike a TLS
    #: failure or presentation contexts it accepts none of, which need a person.
    down: bool = False


class PeerDownError(PeerUnavailableError):
    """The peer could not be reached, or did not answer in time (:attr:`down`)."""

    down = True


class AssociationRejectedError(PeerUnavailableError):
    """The peer answered the association request with an A-ASSOCIATE-RJ."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.down = not permanent  # rejected-transient: busy


@dataclass(frozen=True)
class Peer:
    """A remote Application Entity.

    Parameters
    ----------
    ae_title, host, port
        Where to send.
    calling_ae
        Our AE title on the association.
    tls
        When set, every association with the peer uses TLS as it says.
    """

    ae_title: str
    host: str
    port: int
    calling_ae: str = "BCD_NODE"
    connect_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    tls: ClientTls | None = None

    def __post_init__(self) -> None:
        if not self.ae_title or len(self.ae_title) > 16:
            raise DicomValidationError(f"ae_title must have 1-16 characters, got {self.ae_title!r}")
        if not 1 <= self.port <= 65535:
            raise DicomValidationError(f"port must be 1-65535, got {self.port!r}")


@dataclass(frozen=True)
class StoreOutcome:
    """What the peer answered for one object."""

    path: str
    sop_instance_uid: str
    status: int | None          # None: no response (association lost), or not sent
    error: str = ""
    #: False when the file could not be read (missing, not DICOM): it was not sent.
    readable: bool = True
    #: False when the object was not sent because a stop was asked for first (not a failure).
    attempted: bool = True

    @property
    def ok(self) -> bool:
        """Success or a warning (0xB000, 0xB006, 0xB007: stored with coercion)."""
        return self.status is not None and (self.status == 0 or (self.status >> 12) == 0xB)

    @property
    def permanent_failure(self) -> bool:
        """A refusal that a retry will not change (e.g. 0xA9xx data set mismatch, 0x0122), or
        a file that cannot be read."""
        if not self.readable:
            return True
        if self.status is None or self.ok:
            return False
        return (self.status >> 8) in (0xA9, 0xC0) or self.status in (0x0122, 0x0124, 0x0211)


class _RecordingTcp(socket.socket):
    """A plain TCP socket that keeps the error of its ``connect`` (pynetdicom only logs it)."""

    __slots__ = ("failures",)
    failures: list[OSError]

    def connect(self, address: Any) -> None:
        try:
            super().connect(address)
        except OSError as exc:
            self.failures.append(exc)
            raise


class _RecordingAssociationSocket(AssociationSocket):
    """An association's socket whose connection error :func:`_associate` can name."""

    failures: list[OSError]

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        plain = super()._create_socket(address)
        timeout = plain.gettimeout()
        sock = _RecordingTcp(plain.family, plain.type, plain.proto, fileno=plain.detach())
        if not hasattr(self, "failures"):
            self.failures = []
        sock.failures = self.failures
        sock.settimeout(timeout)
        return sock


class _RecordingAE(AE):
    """An AE whose requested associations keep the error of their TCP connection."""

    def _create_socket(self, assoc: Association, address: AddressInformation,
                       tls_args: tuple[ssl.SSLContext, str] | None) -> AssociationSocket:
        sock = _RecordingAssociationSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock


def _ae(peer: Peer) -> AE:
    ae = _RecordingAE(ae_title=peer.calling_ae)
    ae.connection_timeout = peer.connect_timeout
    ae.acse_timeout = peer.acse_timeout
    ae.dimse_timeout = peer.dimse_timeout
    ae.network_timeout = peer.network_timeout
    return ae


def _associate(ae: AE, peer: Peer, **kwargs: Any) -> Association:
    """An established association with ``peer`` (over TLS when it requires it); ``kwargs`` go
    to :meth:`pynetdicom.AE.associate` (``ext_neg``, ``evt_handlers``).

    Raises
    ------
    PeerUnavailableError
        When none could be established; the message names the cause: the TCP connection's
        error ("Connection refused", no answer in time), why TLS failed, an A-ASSOCIATE-RJ's
        result, source and reason (an :class:`AssociationRejectedError`, ``permanent`` for
        "rejected-permanent"), the presentation contexts the peer accepted none of, or an
        A-ABORT's source and reason.
    """
    aborts: list[Any] = []

    def on_pdu(event: Any) -> None:  # an A-ABORT that answers our request: its source, reason
        if isinstance(event.pdu, A_ABORT_RQ):
            aborts.append(event.pdu)

    handlers = [(evt.EVT_PDU_RECV, on_pdu), *kwargs.pop("evt_handlers", [])]
    started = time.monotonic()
    if peer.tls is None:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title,
                             evt_handlers=handlers, **kwargs)
        failure = None
    else:
        try:
            context = client_context(peer.tls)
        except OSError as exc:  # ssl.SSLError too: a file went missing or bad since the start
            raise PeerUnavailableError(f"cannot load the TLS files for {peer.ae_title}: "
                                       f"{exc}") from None
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title,
                             tls_args=(context, peer.tls.server_name or peer.host),
                             evt_handlers=handlers, **kwargs)
        failure = handshake_failure(context)
    assoc.unbind(evt.EVT_PDU_RECV, on_pdu)
    if not assoc.is_established:
        where = f"{peer.ae_title}@{peer.host}:{peer.port}{' (TLS)' if peer.tls else ''}"
        if failure:
            raise PeerUnavailableError(f"cannot associate with {where}: {failure}")
        sock = assoc.dul.socket
        errors = sock.failures if isinstance(sock, _RecordingAssociationSocket) else []
        if errors:
            raise PeerDownError(f"cannot connect to {where}: "
                                f"{_connect_error(errors[0], peer.connect_timeout)}")
        answer = assoc.acceptor.primitive
        if assoc.is_rejected and answer is not None:
            raise AssociationRejectedError(f"{where} rejected the association: "
                                           f"{_rejection(answer)}",
                                           permanent=answer.result == 0x01)
        if answer is not None and answer.result == 0x00 and not assoc.accepted_contexts:
            raise PeerUnavailableError(f"{where} accepted the association but none of its "
                                       f"presentation contexts: "
                                       f"{_refused_contexts(assoc.rejected_contexts)}")
        if aborts:
            pdu = aborts[0]
            raise PeerUnavailableError(f"{where} aborted the association request (A-ABORT, "
                                       f"source: {pdu.source_str}, reason: {pdu.reason_str})")
        if answer is None and time.monotonic() - started >= peer.acse_timeout:
            raise PeerDownError(f"cannot associate with {where}: no answer to the "
                                f"association request within {peer.acse_timeout:g} s "
                                "(acse_timeout)")
        if assoc.is_aborted:
            raise PeerUnavailableError(f"cannot associate with {where}: the association "
                                       "request was aborted (the peer closed the connection "
                                       "or answered with something else than DICOM)")
        raise PeerUnavailableError(f"cannot associate with {where}")
    no_delay(assoc)
    keep_responses_for_the_sender(assoc)
    return assoc


def _connect_error(exc: OSError, timeout: float) -> str:
    """A failed TCP connection in words: the OS error's text ("Connection refused")."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s (connect_timeout)"
    return exc.strerror or str(exc) or type(exc).__name__


#: A-ASSOCIATE-RJ results (PS3.8 9.3.4) in the standard's words.
_RJ_RESULTS = {0x01: "rejected-permanent", 0x02: "rejected-transient"}


def _rejection(answer: Any) -> str:
    """An A-ASSOCIATE-RJ's result, source and reason in words."""
    result = _RJ_RESULTS.get(answer.result, f"result 0x{answer.result:02X}")
    return f"{result}, source: {answer.source_str.lower()}, reason: {answer.reason_str}"


def _refused_contexts(contexts: Sequence[Any]) -> str:
    """The presentation contexts a peer did not accept, with its answer to each:
    ``Segmentation Storage in Explicit VR Little Endian (abstract syntax not supported)``."""
    parts = []
    for cx in contexts:
        syntaxes = ", ".join(UID(t).name for t in cx.transfer_syntax)
        parts.append(f"{UID(cx.abstract_syntax).name} in {syntaxes} "
                     f"({cx.status.lower()})")
    return "; ".join(parts) or "none was answered"


def keep_responses_for_the_sender(assoc: Association) -> None:
    """Hand a response that the association's reactor thread took back to the thread that
    waits for it.

    pynetdicom pauses its reactor thread while ``send_c_store`` (and the other ``send_*``)
    wait for their response, but trusts a flag that the reactor set before its last pause:
    when the reactor thread is late to run after one exchange (a busy CPU, the interpreter
    lock held elsewhere), the next request goes out while that flag is stale, the reactor
    then wakes and takes the next response off the queue, logs "Received unexpected C-STORE
    service message" and drops it, and the sender waits for the whole ``dimse_timeout``
    (60 s by default) for a response that came at once. Seen in a delivery to a PACS while
    the worker's builders kept both cores busy. A response is never a request the reactor
    could serve: while a sender waits (the reactor is told to pause), it goes back on the
    queue, where the sender finds it. Any other time pynetdicom handles it as before.
    """
    serve = assoc._serve_request  # noqa: SLF001 - pynetdicom's own dispatch, wrapped

    def serve_or_give_back(msg: Any, context_id: int) -> None:
        sender_waits = not assoc._reactor_checkpoint.is_set()  # noqa: SLF001 - an exchange
        if not msg.is_valid_request and msg.is_valid_response and sender_waits:
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_give_back  # type: ignore[method-assign]  # noqa: SLF001


def no_delay(assoc: Association) -> None:
    """Send the association's PDUs at once (``TCP_NODELAY``, see the module's docstring)."""
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # the peer went away meanwhile: the next write reports it
            LOGGER.debug("cannot set TCP_NODELAY: %s", exc)


def echo(peer: Peer) -> int:
    """C-ECHO the peer; return the status (0 is success).

    Raises
    ------
    PeerUnavailableError
        When no association could be established.
    """
    ae = _ae(peer)
    ae.add_requested_context(sop.VERIFICATION)
    assoc = _associate(ae, peer)
    try:
        status = assoc.send_c_echo()
        if not status or "Status" not in status:
            raise PeerUnavailableError("no C-ECHO response")
        return int(status.Status)
    finally:
        assoc.release()


def status_text(code: int) -> str:
    """A DIMSE status of a C-STORE response as text: ``0xA700 (Refused: Out of Resources)``."""
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code) or GENERAL_STATUS.get(code)
    return f"status 0x{code:04X}" + (f" ({meaning[1]})" if meaning and meaning[1] else "")


def send_files(peer: Peer, paths: Sequence[str | Path],
               stop: threading.Event | None = None) -> list[StoreOutcome]:
    """C-STORE each file on one association, in their own transfer syntax.

    Returns one outcome per path, in order. A file that cannot be read (missing, not DICOM)
    is not sent and gets an outcome with ``readable`` False; the others are sent, until
    ``stop`` is set: the object in flight then gets its answer, and each one after it an
    outcome with ``attempted`` False (it was not sent).

    Raises
    ------
    PeerUnavailableError
        When no association could be established (nothing was sent).
    """
    outcomes: dict[int, StoreOutcome] = {}
    datasets = []
    for index, path in enumerate(paths):
        try:
            ds = pydicom.dcmread(path)
            str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID)
        except (OSError, InvalidDicomError, AttributeError, ValueError) as exc:
            reason = ("file is missing" if isinstance(exc, FileNotFoundError)
                      else f"cannot read the file: {type(exc).__name__}: {exc}")
            outcomes[index] = StoreOutcome(str(path), "", None, reason, readable=False)
            continue
        datasets.append((index, str(path), ds))
    if not datasets:
        return [outcomes[i] for i in range(len(paths))]
    ae = _ae(peer)
    contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
                       for _, _, ds in datasets})
    if len(contexts) > 128:
        raise DicomValidationError("too many presentation contexts for one association: "
                                   f"{len(contexts)}")
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    assoc = _associate(ae, peer)
    try:
        for index, path, ds in datasets:
            uid = str(ds.SOPInstanceUID)
            if stop is not None and stop.is_set():
                outcomes[index] = StoreOutcome(path, uid, None, "not sent: stopping",
                                               attempted=False)
                continue
            if not assoc.is_established:
                outcomes[index] = StoreOutcome(path, uid, None, "association lost")
                continue
            try:
                status = assoc.send_c_store(ds)
            except (ValueError, RuntimeError) as exc:
                outcomes[index] = StoreOutcome(path, uid, None, str(exc))
                continue
            if not status or "Status" not in status:
                outcomes[index] = StoreOutcome(path, uid, None, "no response (timeout or abort)")
            else:
                code = int(status.Status)
                outcomes[index] = StoreOutcome(path, uid, code,
                                               "" if code == 0 else status_text(code))
    finally:
        if assoc.is_established:
            assoc.release()
    return [outcomes[i] for i in range(len(paths))]
