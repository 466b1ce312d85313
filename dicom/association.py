"""The associations the listener serves: pynetdicom's acceptor, made to wait for events instead
of polling, to read within the limits we advertise, and to close every file it holds.

pynetdicom builds each association from an :class:`~pynetdicom.transport.AssociationSocket`, a
:class:`~pynetdicom.dul.DULServiceProvider` and a :class:`~pynetdicom.dimse.DIMSEServiceProvider`;
:class:`QuietRequestHandler` swaps in the subclasses below (pynetdicom has no hook for them).
The listener itself (accepting, the pre-association phase) is :mod:`dicom.scp`.
"""

from __future__ import annotations

import errno
import io
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket, RequestHandler

if TYPE_CHECKING:
    from dicom.scp import ScpPolicy

LOGGER = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Largest A-ASSOCIATE-RQ (and any other PDU but P-DATA-TF) we read: 128 presentation contexts
#: with several transfer syntaxes each and a user identity stay well below it.
MAX_ASSOCIATE_RQ = 256 * 1024

#: Largest DIMSE command set (a few hundred bytes in practice).
MAX_COMMAND_SET = 1024 * 1024

#: Longest a quiet association's threads wait before looking around again (release, abort,
#: timers). pynetdicom polls every millisecond instead, which costs ~7% of a core per open
#: association; here the threads wake at once when data or a message arrives.
IDLE_WAIT = 0.02

#: Largest read allocated up front (a maximum PDU of 4 MiB and less is read in one piece).
RECV_BUFFER_LIMIT = 4 * 1024 * 1024

_PDU_NAMES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ",
              0x04: "P-DATA-TF", 0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}


def _abort_pdu(reason: int) -> bytes:
    """An A-ABORT PDU from the service provider (source 2) with ``reason`` (PS3.8 9.3.8)."""
    return struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 2, reason)


ABORT_UNEXPECTED_PDU = _abort_pdu(0x02)
ABORT_INVALID_PARAMETER = _abort_pdu(0x06)


class _WakingQueue(queue.Queue[Any]):
    """A queue that wakes the reader of a socket pair whenever something is put on it."""

    def __init__(self, waker: socket.socket) -> None:
        super().__init__()
        self._waker = waker

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        try:
            self._waker.send(b"\0")
        except OSError:  # full (already awake) or closed (association over)
            pass


def close_socket(sock: socket.socket | None, shutdown: bool = False) -> None:
    """Close ``sock`` whatever state it is in (shut down first when asked)."""
    if sock is None:
        return
    if shutdown:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # not connected any more
            pass
    try:
        sock.close()
    except OSError:
        pass


class _QuietSocket(AssociationSocket):
    """An association socket whose ``ready`` waits up to :data:`IDLE_WAIT` for incoming data
    or for a primitive to send, instead of answering at once (pynetdicom's reactor then sleeps
    and asks again, a thousand times a second). It waits with ``poll`` (any file number), first
    serves the bytes the listener read before the association started, and closes every file it
    holds in :meth:`release`."""

    _wake_r: socket.socket
    _wake_w: socket.socket
    _raw: socket.socket | None = None
    _fd: int = -1
    _poller: Any = None
    _prefix: bytearray | None = None
    _gone_reported: bool = False

    def setup(self, prefix: bytes) -> None:
        """Prepare the waiting (wake-up pair, poll set) and the bytes read ahead."""
        sock = cast(socket.socket, self.socket)
        self._raw = sock
        self._fd = sock.fileno()
        self._prefix = bytearray(prefix) if prefix else None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLIN | select.POLLPRI)
        self._poller.register(self._wake_r.fileno(), select.POLLIN)

    @property
    def ready(self) -> bool:
        sock = self.socket
        if sock is None or self._is_connected is False:
            time.sleep(0.001)  # closed: pynetdicom's own pace until its reactor stops
            return False
        if self._prefix:
            return True
        if sock.fileno() != self._fd:
            # Closed under us (an abort shuts the socket down): the transport is gone.
            if not self._gone_reported:
                self._gone_reported = True
                self.event_queue.put("Evt17")
            time.sleep(0.001)
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes that poll cannot see
        readable = False
        for fd, _mask in self._poller.poll(IDLE_WAIT * 1000):
            if fd == self._fd:
                readable = True  # data, or an error/hang-up that the next recv reports
            else:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except OSError:  # drained (EAGAIN) or closed
                    pass
        return readable

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (less only if the peer closes), straight into one buffer.

        pynetdicom reads 4096 bytes per call and appends each piece: about 200 system calls
        and copies for one 512x512 RGB image. Timeouts and errors are raised as there. Callers
        bound ``nr_bytes`` (:class:`_BoundedDUL`); beyond :data:`RECV_BUFFER_LIMIT` bytes memory
        grows only with what actually arrives.
        """
        if nr_bytes > RECV_BUFFER_LIMIT:
            data = bytearray()
            while len(data) < nr_bytes:
                wanted = min(RECV_BUFFER_LIMIT, nr_bytes - len(data))
                piece = self.recv(wanted)
                data += piece
                if len(piece) < wanted:  # closed by the peer
                    break
            return data
        data = bytearray(nr_bytes)
        with memoryview(data) as view:
            nr_read = self.recv_into(view)
        del data[nr_read:]
        return data

    def recv_into(self, view: memoryview) -> int:
        """Fill ``view`` (less only if the peer closes); the number of bytes read."""
        nr_read = 0
        if self._prefix:
            nr_read = min(len(self._prefix), len(view))
            view[:nr_read] = self._prefix[:nr_read]
            del self._prefix[:nr_read]
        sock = self.socket
        if sock is None:
            raise OSError(errno.EBADF, "the association's connection is closed")
        while nr_read < len(view):
            count = sock.recv_into(view[nr_read:], len(view) - nr_read)
            if not count:  # closed by the peer: what was read so far
                break
            nr_read += count
        return nr_read

    def _shutdown_socket(self) -> None:
        # pynetdicom skips close() when shutdown() fails (a peer that reset the connection):
        # the file would stay open until garbage collection.
        close_socket(self.socket, shutdown=True)

    def release(self) -> None:
        """Close the connection and the wake-up pair (the association is over)."""
        close_socket(self._raw, shutdown=True)
        close_socket(getattr(self, "_wake_r", None))
        close_socket(getattr(self, "_wake_w", None))


class _BoundedDUL(DULServiceProvider):
    """pynetdicom's upper layer, reading each PDU within the limits we advertised: a PDU
    longer than that aborts the association before any of its body is read."""

    pdu_limit: int = MAX_ASSOCIATE_RQ
    violation: str | None = None

    def refuse(self, reason: str) -> None:
        """Abort the association for a protocol violation (logged, and kept as
        ``assoc.abort_reason`` for the EVT_ABORTED handlers)."""
        if self.violation is not None:
            return
        assoc = self.assoc
        LOGGER.error("association from %s (%s:%s) aborted: %s",
                     str(assoc.requestor.ae_title or "?").strip(), assoc.requestor.address,
                     assoc.requestor.port, reason)
        self.violation = reason
        # QuietRequestHandler swaps in this DUL and _Association together.
        cast(_Association, assoc).abort_reason = reason
        self.event_queue.put("Evt19")  # invalid PDU: A-ABORT to the peer, A-P-ABORT to us

    def _is_transport_event(self) -> bool:
        if self.violation is not None and self.state_machine.current_state == "Sta13":
            # Nothing more is read from a peer that broke the limits: close at once (the
            # rest of a 4 GiB PDU would otherwise be read as garbage until the ARTIM timer).
            cast(AssociationSocket, self.socket).close()
            return True
        return bool(super()._is_transport_event())

    def _read_pdu_data(self) -> None:
        sock = cast(_QuietSocket, self.socket)
        try:
            header = sock.recv(6)
        except (OSError, TimeoutError) as exc:
            LOGGER.debug("connection lost before a PDU header: %s", exc)
            self.event_queue.put("Evt17")
            return
        if len(header) < 6:
            self.event_queue.put("Evt17")  # closed by the peer
            return
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in _PDU_NAMES:
            self.refuse(f"unknown PDU type 0x{pdu_type:02X}")
            return
        limit = self.pdu_limit if pdu_type == 0x04 else MAX_ASSOCIATE_RQ
        if length > limit:
            self.refuse(f"a {_PDU_NAMES[pdu_type]} PDU declares {length} bytes, more than the "
                        f"{limit} we accept")
            return
        data = bytearray(6 + length)
        data[:6] = header
        try:
            with memoryview(data) as view:
                nr_read = sock.recv_into(view[6:])
        except (OSError, TimeoutError) as exc:
            LOGGER.debug("connection lost within a PDU: %s", exc)
            self.event_queue.put("Evt17")
            return
        if nr_read < length:
            LOGGER.debug("connection closed after %d of %d bytes of a PDU", nr_read, length)
            self.event_queue.put("Evt17")
            return
        try:
            pdu, event = self._decode_pdu(data)
        except Exception as exc:  # noqa: BLE001 - pynetdicom raises many kinds
            self.refuse(f"a {_PDU_NAMES[pdu_type]} PDU that cannot be decoded: "
                        f"{type(exc).__name__}")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)


class _BoundedBuffer(io.BytesIO):
    """A buffer that keeps at most ``limit`` bytes: what comes beyond is only counted, and what
    was kept is dropped, so memory stays bounded while the rest of the message arrives."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.received = 0

    @property
    def overflowed(self) -> bool:
        return self.received > self.limit

    def write(self, data: Any) -> int:
        size = len(data)
        was_over = self.overflowed
        self.received += size
        if not self.overflowed:
            return super().write(data)
        if not was_over:
            self.seek(0)
            self.truncate()
        return size


class _CommandTooLong(Exception):
    pass


class _CommandBuffer(_BoundedBuffer):
    def write(self, data: Any) -> int:
        size = super().write(data)
        if self.overflowed:
            raise _CommandTooLong
        return size


class _BoundedDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider with bounded message buffers, whose ``get_msg`` waits up to
    :data:`IDLE_WAIT` for a message when asked not to block (returned the moment it is
    complete)."""

    dataset_limit: int = 256 * 1024 * 1024

    def get_msg(self, block: bool = False) -> Any:
        try:
            return self.msg_queue.get(block=True,
                                      timeout=self.dimse_timeout if block else IDLE_WAIT)
        except queue.Empty:
            return None, None

    def receive_primitive(self, primitive: Any) -> None:
        dul = cast(_BoundedDUL, self.dul)
        if dul.violation is not None:
            return  # the association is being aborted: nothing more is kept
        if self.message is None:
            self.message = DIMSEMessage()
            self.message.encoded_command_set = _CommandBuffer(MAX_COMMAND_SET)
            self.message.data_set = _BoundedBuffer(self.dataset_limit)
        try:
            super().receive_primitive(primitive)
        except _CommandTooLong:
            self.message = None
            dul.refuse(f"a DIMSE command set longer than {MAX_COMMAND_SET} bytes")


def dataset_overflow(request: Any) -> tuple[int, int] | None:
    """For a request whose data set was longer than the listener keeps
    (:attr:`ScpPolicy.max_dataset_bytes`): the bytes received and the limit. None otherwise.

    The handler must refuse such a request: its data set was discarded as it arrived.
    """
    data = getattr(request, "DataSet", None)
    if isinstance(data, _BoundedBuffer) and data.overflowed:
        return data.received, data.limit
    return None


class _Association(Association):
    """A pynetdicom association that, when it ends, closes every file it used and tells the
    listener (``on_end``)."""

    on_end: Callable[[], None] | None = None
    #: Why the listener aborted it (a protocol violation), for the EVT_ABORTED handlers.
    abort_reason: str | None = None

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.release_resources()

    def release_resources(self) -> None:
        dul = self.dul
        if dul.is_alive() and dul is not threading.current_thread():
            dul.kill_dul()
            dul.join(timeout=5)
        sock = dul.socket
        if isinstance(sock, _QuietSocket):
            sock.release()
        if self.on_end is not None:
            on_end, self.on_end = self.on_end, None
            on_end()


def _become(obj: object, cls: type[_T]) -> _T:
    """``obj``, now an instance of ``cls``: a subclass of its class that adds methods and
    class-level defaults only (pynetdicom has no hook to build its parts from subclasses)."""
    obj.__class__ = cls
    if not isinstance(obj, cls):  # cannot happen: the assignment above raises instead
        raise TypeError(f"cannot make a {type(obj).__name__} a {cls.__name__}")
    return obj


class QuietRequestHandler(RequestHandler):
    """pynetdicom's request handler, with associations that wait for events instead of
    polling (see :data:`IDLE_WAIT`), read within the policy's limits, start from the
    A-ASSOCIATE-RQ the listener has read already, and close their files when they end."""

    def _create_association(self) -> _Association:
        assoc = _become(super()._create_association(), _Association)
        server = self.server
        assoc.on_end = getattr(server, "on_association_end", None)
        sock = _become(assoc.dul.socket, _QuietSocket)
        sock.setup(getattr(server, "preread", {}).pop(self.request.fileno(), b""))
        policy: ScpPolicy | None = getattr(server, "policy", None)
        dul = _become(assoc.dul, _BoundedDUL)
        dimse = _become(assoc.dimse, _BoundedDIMSE)
        if policy is not None:
            dul.pdu_limit = policy.pdu_receive_limit
            dimse.dataset_limit = policy.max_dataset_bytes
        dul.to_provider_queue = _WakingQueue(sock._wake_w)
        dul._run_loop_delay = 0
        return assoc

    def handle(self) -> None:
        assoc = self._create_association()
        try:
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
        except BaseException:
            assoc.on_end = None  # the caller counts it as never started
            assoc.release_resources()
            raise
