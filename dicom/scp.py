"""The DICOM listener (SCP) wiring: one Application Entity, its policies and its handlers.

Handlers are passed in by the caller (the node), so this module stays free of the node's
services; the C-ECHO handler lives here because it needs nothing else.

The listener is hardened against peers that never associate and against memory exhaustion:

* One thread per listener accepts connections and reads each one's A-ASSOCIATE-RQ (and TLS
  handshake) without blocking, under a short deadline of its own
  (:attr:`ScpPolicy.preassociation_timeout`). Only a complete, decodable A-ASSOCIATE-RQ starts a
  pynetdicom association, so idle or slow connections never count against
  :attr:`ScpPolicy.max_associations` and never get past the calling AE title check.
* Waiting uses ``selectors``/``poll`` only: ``select()`` fails for file numbers above 1023.
* Every socket is closed explicitly on every path; a listener that cannot accept (no file
  numbers left) says so (:meth:`SharedSocketListener.problem`, and the :class:`LoadBoard`).
* A PDU longer than we advertised, and a data set longer than
  :attr:`ScpPolicy.max_dataset_bytes`, are never buffered: the first aborts the association,
  the second is discarded as it arrives and refused by the handler
  (:func:`dicom.association.dataset_overflow`); see :mod:`dicom.association`.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import selectors
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, cast

from pynetdicom import AE, _config, evt
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.transport import ThreadedAssociationServer

from dicom.association import (
    ABORT_INVALID_PARAMETER,
    ABORT_UNEXPECTED_PDU,
    MAX_ASSOCIATE_RQ,
    MAX_COMMAND_SET,
    QuietRequestHandler,
    close_socket,
)
from dicom.errors import DicomValidationError
from dicom.sop import STORAGE_COMMITMENT_PUSH, VERIFICATION

LOGGER = logging.getLogger(__name__)

Handler = tuple[Any, Callable[..., Any]] | tuple[Any, Callable[..., Any], list[Any]]


@dataclass(frozen=True)
class ScpPolicy:
    """Association policy of the listener.

    Parameters
    ----------
    ae_title
        Our AE title (the called AE title peers must use when ``require_called_ae``).
    allowed_calling_aes
        Calling AE titles that may associate; empty allows any.
    max_pdu
        The maximum PDU length we advertise, and enforce on what we receive (0: no limit of its
        own; PDUs are then bounded by ``max_dataset_bytes``).
    preassociation_timeout
        Seconds a new connection has to complete its TLS handshake and A-ASSOCIATE-RQ.
    max_dataset_bytes
        Largest data set received in one message; the rest of a longer one is discarded.
    max_pending
        Connections that may wait for their A-ASSOCIATE-RQ at once; beyond it the oldest one is
        closed.
    """

    ae_title: str
    allowed_calling_aes: Sequence[str] = ()
    require_called_ae: bool = True
    max_associations: int = 10
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    max_pdu: int = 262144
    storage_contexts: Sequence[tuple[str, Sequence[str]]] = field(default_factory=tuple)
    preassociation_timeout: float = 5.0
    max_dataset_bytes: int = 256 * 1024 * 1024
    max_pending: int = 256

    def __post_init__(self) -> None:
        if not self.ae_title or len(self.ae_title) > 16:
            raise DicomValidationError(f"ae_title must have 1-16 characters, got {self.ae_title!r}")
        if self.max_associations < 1:
            raise DicomValidationError("max_associations must be >= 1, got "
                                       f"{self.max_associations!r}")
        if not self.preassociation_timeout > 0:
            raise DicomValidationError(f"preassociation_timeout must be > 0, got "
                                       f"{self.preassociation_timeout!r}")
        if self.max_dataset_bytes < 1:
            raise DicomValidationError("max_dataset_bytes must be >= 1, got "
                                       f"{self.max_dataset_bytes!r}")
        if self.max_pending < 1:
            raise DicomValidationError(f"max_pending must be >= 1, got {self.max_pending!r}")

    @property
    def pdu_receive_limit(self) -> int:
        """Longest P-DATA-TF PDU accepted: what we advertise, or (unlimited) one data set."""
        return self.max_pdu or self.max_dataset_bytes + MAX_COMMAND_SET


def handle_echo(event: Any) -> int:
    """C-ECHO: always Success while the listener runs."""
    return 0x0000


def _skip_unlogged_handlers() -> None:
    """Do not bind pynetdicom's logging handlers for every PDU and DIMSE message when the
    ``pynetdicom`` logger would drop what they write (INFO and DEBUG): they still format each
    message, a few per cent of the listener's time per received image."""
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        _config.LOG_HANDLER_LEVEL = "none"


def build_ae(policy: ScpPolicy) -> AE:
    """An :class:`pynetdicom.AE` configured by ``policy`` (Verification plus storage contexts)."""
    _skip_unlogged_handlers()
    ae = AE(ae_title=policy.ae_title)
    ae.maximum_associations = policy.max_associations
    ae.acse_timeout = policy.acse_timeout
    ae.dimse_timeout = policy.dimse_timeout
    ae.network_timeout = policy.network_timeout
    ae.maximum_pdu_size = policy.max_pdu
    ae.require_called_aet = policy.require_called_ae
    ae.require_calling_aet = list(policy.allowed_calling_aes)
    ae.add_supported_context(VERIFICATION)
    # A destination's storage commitment report (N-EVENT-REPORT) on an association it opens:
    # it proposes to act as the SCP of Storage Commitment, which we accept.
    ae.add_supported_context(STORAGE_COMMITMENT_PUSH, scu_role=True, scp_role=True)
    for sop_class, syntaxes in policy.storage_contexts:
        ae.add_supported_context(sop_class, list(syntaxes))
    return ae


def storage_contexts() -> list[tuple[str, list[str]]]:
    """Presentation contexts for every accepted storage SOP class and transfer syntax."""
    from dicom.sop import ACCEPTED_SOP_CLASSES, ACCEPTED_TRANSFER_SYNTAXES

    syntaxes = [str(uid) for uid in ACCEPTED_TRANSFER_SYNTAXES]
    return [(str(sop_class), syntaxes) for sop_class in sorted(ACCEPTED_SOP_CLASSES)]


class _NoBindServer(ThreadedAssociationServer):
    """pynetdicom's association server, holding the handlers and contexts of associations whose
    connections the listener accepted (no socket of its own, no serving loop)."""

    #: Set by :class:`SharedSocketListener`; read by the associations it starts
    #: (:class:`dicom.association.QuietRequestHandler`).
    policy: ScpPolicy
    #: The A-ASSOCIATE-RQ bytes the listener read, by the connection's file number.
    preread: dict[int, bytes]
    on_association_end: Callable[[], None]

    def server_bind(self) -> None:
        pass

    def server_activate(self) -> None:
        pass


class LoadBoard:
    """Open connections and accept status of each listener process, in a small shared file
    (two ints per slot).

    Each process writes only its own slot; every process reads them all to decide whether it
    is among the least busy and should take the next connection. The parent reads the statuses
    (``slot=None``): 0, or the ``errno`` of a listener that cannot accept.
    """

    def __init__(self, path: str | os.PathLike[str], slot: int | None, slots: int) -> None:
        if slot is not None and not 0 <= slot < slots:
            raise DicomValidationError(f"slot {slot} outside 0..{slots - 1}")
        self.slot, self.slots = slot, slots
        fd = os.open(path, os.O_RDWR)
        try:
            if os.fstat(fd).st_size < 8 * slots:
                raise DicomValidationError(f"{path} is too small for {slots} slots")
            self._map = mmap.mmap(fd, 8 * slots)
        finally:
            os.close(fd)
        if slot is not None:
            self.set(0)
            self.set_status(0)

    @staticmethod
    def create(path: str | os.PathLike[str], slots: int) -> None:
        """Make (or reset) the shared file for ``slots`` processes."""
        with open(path, "wb") as fh:
            fh.write(b"\0" * 8 * slots)

    def set(self, connections: int) -> None:
        """Publish this process's number of open connections."""
        struct.pack_into("<i", self._map, 4 * cast(int, self.slot), connections)

    def least(self) -> int:
        counts: tuple[int, ...] = struct.unpack_from(f"<{self.slots}i", self._map)
        return min(counts)

    def set_status(self, code: int) -> None:
        """Publish this process's accept status (0, or an ``errno``)."""
        struct.pack_into("<i", self._map, 4 * (self.slots + cast(int, self.slot)), code)

    def statuses(self) -> list[int]:
        """The accept status of every slot."""
        return list(struct.unpack_from(f"<{self.slots}i", self._map, 4 * self.slots))


#: accept() errors that mean "no resources now" (the listener stays, and says so).
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept() errors of a connection that went away before it was accepted.
_GONE_ERRORS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ETIMEDOUT,
                          errno.ECONNRESET})
_WAKE = object()
#: Seconds a stopping listener still gives the connections it accepted to send their
#: A-ASSOCIATE-RQ (within :meth:`SharedSocketListener.stop`'s wait for its loop).
_CLOSING_GRACE = 2.0


class _Pending:
    """A connection that has not sent its whole A-ASSOCIATE-RQ yet."""

    __slots__ = ("sock", "address", "deadline", "data", "length", "handshaking", "writing")

    def __init__(self, sock: socket.socket, address: Any, deadline: float, tls: bool) -> None:
        self.sock = sock
        self.address = address
        self.deadline = deadline
        self.data = bytearray()
        self.length = -1
        self.handshaking = tls
        self.writing = False


class _DropLog:
    """Connections that end before they associate, logged at most once a minute: a port scan
    makes thousands. Protocol violations and deadlines are warnings, plain closes (a port
    check) information."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self.last = -interval
        self.count = 0
        self.serious = False
        self.latest = ""

    def note(self, address: Any, why: str, serious: bool) -> None:
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        LOGGER.debug("connection from %s ended before associating: %s", peer, why)
        self.count += 1
        self.serious = self.serious or serious
        self.latest = f"{peer}: {why}"
        self.flush(time.monotonic())

    def flush(self, now: float, force: bool = False) -> None:
        if not self.count or (now - self.last < self.interval and not force):
            return
        level = logging.WARNING if self.serious else logging.INFO
        if self.count == 1:
            LOGGER.log(level, "a connection ended before associating (from %s)", self.latest)
        else:
            LOGGER.log(level, "%d connections ended before associating in the last %.0f s "
                              "(latest from %s)", self.count, min(now - self.last, 1e9),
                       self.latest)
        self.last, self.count, self.serious = now, 0, False


def _describe_associations(associations: list[Any]) -> str:
    """Running acceptor associations, for the log when a listener stops: the calling AE, the
    peer's address and the association's state (no patient data)."""
    parts = []
    for assoc in associations:
        try:
            requestor = assoc.requestor
            state = ("established" if assoc.is_established else "released" if assoc.is_released
                     else "aborted" if assoc.is_aborted else "negotiating")
            dul = getattr(getattr(assoc.dul, "state_machine", None), "current_state", "?")
            parts.append(f"{requestor.ae_title or '?'} from {requestor.address}:"
                         f"{requestor.port} ({state}, {dul})")
        except Exception:  # noqa: BLE001 - only for the log
            parts.append(repr(assoc))
    return f"{len(parts)} association(s): " + "; ".join(parts)


class SharedSocketListener:
    """Serves associations on a listening socket, possibly shared with other processes.

    One thread accepts connections and reads each one's TLS handshake and A-ASSOCIATE-RQ
    without blocking (``selectors``), within :attr:`ScpPolicy.preassociation_timeout`; only then
    does a pynetdicom association (two threads) start, so connections that never associate
    take no association slot.

    Every process that shares the (non-blocking) socket waits for it to be readable; with a
    :class:`LoadBoard` only a process with the fewest open connections takes the next one, so
    concurrent associations spread over the processes (the kernel alone may give one process
    several while another idles). A process that waited ``fair_wait`` seconds for a less busy
    one to take a connection takes it itself. The process that owns the socket stops every
    listener at once by shutting it down (:func:`stop_accepting`); :meth:`stop` ends this
    process's accepting only and lets its associations finish.
    """

    def __init__(self, policy: ScpPolicy, sock: socket.socket, handlers: Sequence[Handler] = (),
                 ssl_context: ssl.SSLContext | None = None,
                 on_end: Callable[[], None] | None = None, board: LoadBoard | None = None,
                 fair_wait: float = 0.05) -> None:
        self.policy = policy
        self.on_end = on_end
        self.board = board
        self.fair_wait = fair_wait
        self.ssl_context = ssl_context
        self.ae = build_ae(policy)
        self.sock = sock
        self.sock.setblocking(False)
        host, port = sock.getsockname()[:2]
        self.address: tuple[str, int] = (host, port)
        all_handlers = [(evt.EVT_C_ECHO, handle_echo), *handlers]
        server = self.ae.make_server((host, port), ssl_context=ssl_context,
                                     evt_handlers=all_handlers, server_class=_NoBindServer,
                                     request_handler=QuietRequestHandler)
        if not isinstance(server, _NoBindServer):  # make_server builds the class it is given
            raise TypeError(f"pynetdicom made a {type(server).__name__}, not a _NoBindServer")
        self.server = server
        close_socket(server.socket)  # the unbound socket socketserver made; never used
        server.socket = sock
        server.policy = policy
        server.preread = {}
        server.on_association_end = self._association_ended
        self._pending: dict[int, _Pending] = {}  # by file number, oldest first
        self._associations = 0
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._problem_errno: int | None = None
        self._drops = _DropLog()
        self._stopped = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=f"dicom-listener-{port}",
                                        daemon=True)

    # ------------------------------------------------------------------ lifecycle and health

    def start(self) -> SharedSocketListener:
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

    def problem(self) -> str | None:
        """Why this listener cannot take connections now; None while it can."""
        if not self._thread.is_alive():
            return "the DICOM listener does not accept connections (stopped)"
        return self._problem

    def healthy(self) -> bool:
        return self.problem() is None

    @property
    def open_connections(self) -> int:
        """Connections waiting for their A-ASSOCIATE-RQ plus running associations."""
        with self._lock:
            return len(self._pending) + self._associations

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting in this process (at once), serve the connections it had accepted (their
        A-ASSOCIATE-RQ within a short grace), let its running associations finish for up to
        ``timeout`` seconds, then abort the rest.

        The shared socket itself stays open: the other processes go on accepting. The process
        that made it stops them all with :func:`stop_accepting`.
        """
        self._stopped.set()
        if self.board is not None:
            self.board.set(1 << 30)  # the others need not wait for this one to take anything
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass
        self._thread.join(timeout=5)
        deadline = time.monotonic() + timeout
        if self.server.active_associations:
            LOGGER.info("waiting up to %.0f s for %s", timeout,
                        _describe_associations(self.server.active_associations))
        while self.server.active_associations and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.server.active_associations:
            LOGGER.warning("aborting what did not finish within %.0f s: %s", timeout,
                           _describe_associations(self.server.active_associations))
        for assoc in self.server.active_associations:
            assoc.abort()
        self.sock.close()
        close_socket(self._wake_r)
        close_socket(self._wake_w)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop a listener that owns its socket: refuse new connections, then :meth:`stop`."""
        self._stopped.set()  # before the socket's shutdown wakes the loop: no "stopped" notice
        stop_accepting(self.sock)
        self.stop(timeout)

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        try:
            selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
            self._loop(selector)
        except Exception:  # noqa: BLE001 - logged; the process's health check sees it
            LOGGER.exception("the DICOM listener failed")
        finally:
            for pending in list(self._pending.values()):
                self._forget(pending, selector)
                close_socket(pending.sock)
            selector.close()
            self._drops.flush(time.monotonic(), force=True)
            if self.on_end is not None:
                self.on_end()

    def _loop(self, selector: selectors.BaseSelector) -> None:
        listening = False
        listen_after = 0.0  # the listening socket is left out until then (turn, back-off)
        waiting_since: float | None = None  # a connection waits for a less busy process
        closing = False  # stopped, or the shared socket shut down: serve what was accepted
        while True:
            now = time.monotonic()
            if not closing and self._stopped.is_set():
                closing = True
            if closing:
                if listening:
                    selector.unregister(self.sock)
                    listening = False
                if not self._pending:
                    # Connections still queued are left to the processes that go on.
                    return
                # Those accepted here are served: their A-ASSOCIATE-RQ is on its way (a peer
                # sends it at once), within a short grace, then the stop waits for them.
                for pending in self._pending.values():
                    pending.deadline = min(pending.deadline, now + _CLOSING_GRACE)
            elif not listening and now >= listen_after:
                selector.register(self.sock, selectors.EVENT_READ, None)
                listening = True
            timeout = 1.0
            if self._pending:
                timeout = min(timeout, next(iter(self._pending.values())).deadline - now)
            if not listening and not closing:
                timeout = min(timeout, listen_after - now)
            events = selector.select(max(timeout, 0.0))
            acceptable = False
            for key, mask in events:
                if key.data is None:
                    acceptable = True
                elif key.data is _WAKE:
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                else:
                    pending = cast(_Pending, key.data)
                    try:
                        self._advance(pending, selector)
                    except Exception:  # noqa: BLE001 - one bad connection must not end accepting
                        LOGGER.exception("error on a connection from %s", pending.address)
                        self._drop(pending, selector, "internal error", True)
            now = time.monotonic()
            if listening and not acceptable:
                waiting_since = None
            if acceptable and self._stopped.is_set():
                acceptable = False  # stopped while waiting: nothing more is accepted here
            if acceptable:
                waiting_since = waiting_since or now
                outcome = self._accept_some(selector, waiting_since)
                if outcome == "ended":
                    if not self._stopped.is_set():
                        LOGGER.info("the shared DICOM socket stopped accepting")
                    closing = True
                    continue
                if outcome != "accepted":
                    # Not our turn (another process may take it) or no resources: look again
                    # a little later rather than spin on the readable socket.
                    selector.unregister(self.sock)
                    listening = False
                    listen_after = now + (0.001 if outcome == "wait" else 0.5)
                else:
                    waiting_since = None
            if self._problem is not None and not acceptable:
                self._probe_resources()
            self._expire(selector, now)
            self._drops.flush(now)

    def _my_turn(self, waiting_since: float) -> bool:
        if self.board is None:
            return True
        mine = self.open_connections
        if self._problem is None:
            self.board.set(mine)
        if mine <= self.board.least():
            return True
        return time.monotonic() - waiting_since >= self.fair_wait

    def _accept_some(self, selector: selectors.BaseSelector, waiting_since: float) -> str:
        """Accept what is queued (a bounded batch): "accepted", "wait" (another process's
        turn), "busy" (no resources) or "ended" (the socket was shut down)."""
        accepted = False
        for _ in range(64):
            if not self._my_turn(waiting_since):
                return "accepted" if accepted else "wait"
            try:
                client, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return "accepted"  # none left (another process took it)
            except OSError as exc:
                if exc.errno in _GONE_ERRORS:
                    continue
                if exc.errno in _RESOURCE_ERRORS:
                    if self._pending:
                        # Make room: the oldest waiting connection goes first.
                        oldest = next(iter(self._pending.values()))
                        self._drop(oldest, selector, "closed to free resources", True)
                        continue
                    self._cannot_accept(exc)
                    return "busy"
                return "ended"  # EINVAL once the shared socket is shut down
            accepted = True
            try:
                self._accepted(client, address, selector)
            except Exception:  # noqa: BLE001 - one bad connection must not end accepting
                LOGGER.exception("cannot take the connection from %s", address)
                close_socket(client)
        return "accepted"

    def _cannot_accept(self, exc: OSError) -> None:
        reason = f"cannot accept connections: {exc.strerror or exc} (errno {exc.errno})"
        if self._problem is None:
            LOGGER.error("the DICOM listener %s; new associations go to other listener "
                         "processes or wait", reason)
        self._problem = reason
        self._problem_errno = exc.errno
        if self.board is not None:
            self.board.set_status(exc.errno or -1)
            self.board.set(1 << 30)  # the others need not wait for this one

    def _can_accept_again(self) -> None:
        if self._problem is not None:
            LOGGER.warning("the DICOM listener accepts connections again")
            self._problem = None
            if self.board is not None:
                self.board.set_status(0)
                self.board.set(self.open_connections)

    def _probe_resources(self) -> None:
        """Whether a file number is free again, when the lack of one made accept() fail."""
        if self._problem_errno not in (errno.EMFILE, errno.ENFILE):
            return
        try:
            os.close(os.dup(self._wake_r.fileno()))
        except OSError:
            return
        self._can_accept_again()

    def _accepted(self, client: socket.socket, address: Any,
                  selector: selectors.BaseSelector) -> None:
        self._can_accept_again()
        try:
            client.setblocking(False)
            if self.ssl_context is not None:
                client = self.ssl_context.wrap_socket(client, server_side=True,
                                                      do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            close_socket(client)
            self._drops.note(address, f"cannot set up the connection: {exc}", True)
            return
        if len(self._pending) >= self.policy.max_pending:
            oldest = next(iter(self._pending.values()))
            self._drop(oldest, selector, f"more than {self.policy.max_pending} connections "
                                         f"waited to associate", True)
        pending = _Pending(client, address, time.monotonic() + self.policy.preassociation_timeout,
                           self.ssl_context is not None)
        try:
            selector.register(client, selectors.EVENT_READ, pending)
        except (OSError, ValueError) as exc:
            close_socket(client)
            self._drops.note(address, f"cannot wait for the connection: {exc}", True)
            return
        with self._lock:
            self._pending[client.fileno()] = pending
        self._publish()

    def _advance(self, pending: _Pending, selector: selectors.BaseSelector) -> None:
        """Read what the connection has sent; start its association once its A-ASSOCIATE-RQ
        is complete."""
        sock = pending.sock
        try:
            if pending.handshaking:
                cast(ssl.SSLSocket, sock).do_handshake()
                pending.handshaking = False
            while True:
                if pending.length < 0:
                    chunk = sock.recv(6 - len(pending.data))
                else:
                    chunk = sock.recv(min(65536, 6 + pending.length - len(pending.data)))
                if not chunk:
                    self._drop(pending, selector, "closed", False)
                    return
                pending.data += chunk
                if pending.length < 0 and len(pending.data) == 6:
                    pdu_type, _, length = struct.unpack(">BBI", pending.data)
                    if pdu_type != 0x01:
                        self._drop(pending, selector,
                                   f"sent a PDU of type 0x{pdu_type:02X} instead of an "
                                   f"A-ASSOCIATE-RQ", True, ABORT_UNEXPECTED_PDU)
                        return
                    if length > MAX_ASSOCIATE_RQ:
                        self._drop(pending, selector,
                                   f"an A-ASSOCIATE-RQ declares {length} bytes, more than the "
                                   f"{MAX_ASSOCIATE_RQ} we accept", True,
                                   ABORT_INVALID_PARAMETER)
                        return
                    pending.length = length
                if pending.length >= 0 and len(pending.data) == 6 + pending.length:
                    self._associate(pending, selector)
                    return
        except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            self._want(pending, selector, write=False)
        except ssl.SSLWantWriteError:
            self._want(pending, selector, write=True)
        except ssl.SSLError as exc:
            self._drop(pending, selector, f"TLS failed: {exc.reason or exc}", True)
        except OSError as exc:
            self._drop(pending, selector, f"connection error: {exc.strerror or exc}", False)

    def _want(self, pending: _Pending, selector: selectors.BaseSelector, write: bool) -> None:
        if pending.writing != write:
            pending.writing = write
            selector.modify(pending.sock,
                            selectors.EVENT_WRITE if write else selectors.EVENT_READ, pending)

    def _associate(self, pending: _Pending, selector: selectors.BaseSelector) -> None:
        data = bytes(pending.data)
        try:
            A_ASSOCIATE_RQ().decode(data)
        except Exception as exc:  # noqa: BLE001 - pynetdicom raises many kinds
            self._drop(pending, selector, f"an A-ASSOCIATE-RQ that cannot be decoded "
                                          f"({type(exc).__name__})", True,
                       ABORT_INVALID_PARAMETER)
            return
        sock = pending.sock
        fd = sock.fileno()
        with self._lock:
            self._forget(pending, selector)
            self._associations += 1
        preread = self.server.preread
        try:
            sock.setblocking(True)
            preread[fd] = data
            self.server.finish_request(sock, pending.address)
        except Exception:  # noqa: BLE001 - one bad connection must not end accepting
            LOGGER.exception("cannot start an association with %s", pending.address)
            preread.pop(fd, None)
            close_socket(sock, shutdown=True)
            with self._lock:
                self._associations -= 1
        self._publish()

    def _forget(self, pending: _Pending, selector: selectors.BaseSelector) -> None:
        if self._pending.get(pending.sock.fileno()) is pending:
            del self._pending[pending.sock.fileno()]
        try:
            selector.unregister(pending.sock)
        except (KeyError, ValueError):
            pass

    def _drop(self, pending: _Pending, selector: selectors.BaseSelector, why: str,
              serious: bool, abort: bytes | None = None) -> None:
        """Close a connection that did not associate (with an A-ABORT when ``abort``)."""
        with self._lock:
            self._forget(pending, selector)
        if abort is not None and not pending.handshaking:
            try:
                pending.sock.send(abort)
            except OSError:  # its buffer is full, or it is gone: closed all the same
                pass
        close_socket(pending.sock)
        self._drops.note(pending.address, why, serious)
        self._publish()

    def _expire(self, selector: selectors.BaseSelector, now: float) -> None:
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.deadline > now:
                return
            self._drop(oldest, selector, f"no A-ASSOCIATE-RQ within "
                                         f"{self.policy.preassociation_timeout:g} s", True)

    def _association_ended(self) -> None:
        with self._lock:
            self._associations -= 1
        self._publish()

    def _publish(self) -> None:
        if self.board is not None and self._problem is None and not self._stopped.is_set():
            self.board.set(self.open_connections)


def start_scp(policy: ScpPolicy, host: str, port: int, handlers: Sequence[Handler] = (),
              ssl_context: ssl.SSLContext | None = None) -> SharedSocketListener:
    """Listen on ``host:port`` in a background thread; stop with ``listener.shutdown()``.

    Raises
    ------
    OSError
        If the address cannot be listened on (e.g. the port is in use).
    """
    sock = listening_socket(host, port)
    try:
        listener = SharedSocketListener(policy, sock, handlers, ssl_context).start()
    except BaseException:
        sock.close()
        raise
    LOGGER.info("DICOM listener %s on %s:%d%s", policy.ae_title, host, listener.address[1],
                " (TLS)" if ssl_context else "")
    return listener


def stop_accepting(sock: socket.socket) -> None:
    """Make a (possibly shared) listening socket refuse new connections and wake its
    ``accept()`` callers."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def listening_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A bound, listening, non-blocking TCP socket that child processes can inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock
