"""The DICOM listener (SCP) wiring: one Application Entity, its policies and its handlers.

Handlers are passed in by the caller (the node), so this module stays free of the node's
services; the C-ECHO handler lives here because it needs nothing else.
"""

from __future__ import annotations

import logging
import mmap
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, cast

from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

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

    def __post_init__(self) -> None:
        if not self.ae_title or len(self.ae_title) > 16:
            raise ValueError(f"ae_title must have 1-16 characters, got {self.ae_title!r}")
        if self.max_associations < 1:
            raise ValueError(f"max_associations must be >= 1, got {self.max_associations!r}")


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
    ae.add_supported_context(Verification)
    for sop_class, syntaxes in policy.storage_contexts:
        ae.add_supported_context(sop_class, list(syntaxes))
    return ae


def storage_contexts() -> list[tuple[str, list[str]]]:
    """Presentation contexts for every accepted storage SOP class and transfer syntax."""
    from dicom.sop import ACCEPTED_SOP_CLASSES, ACCEPTED_TRANSFER_SYNTAXES

    syntaxes = [str(uid) for uid in ACCEPTED_TRANSFER_SYNTAXES]
    return [(str(sop_class), syntaxes) for sop_class in sorted(ACCEPTED_SOP_CLASSES)]


#: Longest a quiet association's threads wait before looking around again (release, abort,
#: timers). pynetdicom polls every millisecond instead, which costs ~7% of a core per open
#: association; here the threads wake at once when data or a message arrives.
IDLE_WAIT = 0.02

#: Largest read allocated up front (a maximum PDU of 4 MiB and less is read in one piece).
RECV_BUFFER_LIMIT = 4 * 1024 * 1024


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
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


class _QuietSocket(AssociationSocket):
    """An association socket whose ``ready`` waits up to :data:`IDLE_WAIT` for incoming data
    or for a primitive to send, instead of answering at once (pynetdicom's reactor then sleeps
    and asks again, a thousand times a second)."""

    _wake_r: socket.socket
    _wake_w: socket.socket

    @property
    def ready(self) -> bool:
        if AssociationSocket.ready.fget(self):  # type: ignore[attr-defined]
            return True
        if self.socket is None or self._is_connected is False:
            time.sleep(0.001)  # closed: pynetdicom's own pace until its reactor stops
            return False
        try:
            readable, _, _ = select.select([self.socket, self._wake_r], [], [], IDLE_WAIT)
        except (OSError, ValueError):
            readable = []
        if self._wake_r in readable:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:  # drained (EAGAIN) or closed
                pass
        return bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (less only if the peer closes), straight into one buffer.

        pynetdicom reads 4096 bytes per call and appends each piece: about 200 system calls
        and copies for one 512x512 RGB image. Timeouts and errors are raised as there. The
        length comes from the peer's PDU header, so beyond :data:`RECV_BUFFER_LIMIT` bytes
        memory grows only with what actually arrives (pynetdicom's own way).
        """
        if nr_bytes > RECV_BUFFER_LIMIT:
            return cast(bytearray, super().recv(nr_bytes))
        sock = cast(socket.socket, self.socket)
        data = bytearray(nr_bytes)
        nr_read = 0
        with memoryview(data) as view:
            while nr_read < nr_bytes:
                count = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
                if not count:  # closed by the peer: what was read so far
                    break
                nr_read += count
        del data[nr_read:]
        return data

    def close(self) -> None:
        super().close()
        self._wake_r.close()
        self._wake_w.close()


def _quiet_get_msg(dimse: Any) -> Callable[..., Any]:
    """``DIMSEServiceProvider.get_msg`` that, asked not to block, still waits up to
    :data:`IDLE_WAIT` for a message (returned the moment it is complete)."""

    def get_msg(block: bool = False) -> Any:
        try:
            return dimse.msg_queue.get(block=True,
                                       timeout=dimse.dimse_timeout if block else IDLE_WAIT)
        except queue.Empty:
            return None, None

    return get_msg


class QuietRequestHandler(RequestHandler):
    """pynetdicom's request handler, with associations that wait for events instead of
    polling (see :data:`IDLE_WAIT`)."""

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        sock = assoc.dul.socket
        sock.__class__ = _QuietSocket
        sock._wake_r, sock._wake_w = socket.socketpair()
        sock._wake_r.setblocking(False)
        sock._wake_w.setblocking(False)
        assoc.dul.to_provider_queue = _WakingQueue(sock._wake_w)
        assoc.dul._run_loop_delay = 0
        assoc.dimse.get_msg = _quiet_get_msg(assoc.dimse)
        return assoc


class HardenedServer(ThreadedAssociationServer):
    """An association server whose TLS handshake runs in the connection's own thread.

    pynetdicom's server completes the handshake in its accept loop, so one client that
    connects and sends nothing stalls every other peer. Here the accept loop only accepts; the
    handshake runs in the per-connection thread with ``handshake_timeout``.
    """

    handshake_timeout: float = 10.0

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True,
                                                  do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.ssl_context:
            try:
                request.settimeout(self.handshake_timeout)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ssl.SSLError) as exc:
                LOGGER.warning("TLS handshake with %s failed: %s", client_address, exc)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


def tls_context(certificate: str, private_key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+); with ``client_ca`` peers must present a certificate it
    signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, private_key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def start_scp(policy: ScpPolicy, host: str, port: int, handlers: Sequence[Handler] = (),
              ssl_context: ssl.SSLContext | None = None) -> ThreadedAssociationServer:
    """Start listening in background threads; stop with ``server.shutdown()``."""
    ae = build_ae(policy)
    all_handlers = [(evt.EVT_C_ECHO, handle_echo), *handlers]
    server = ae.make_server((host, port), ssl_context=ssl_context, evt_handlers=all_handlers,
                            server_class=HardenedServer, request_handler=QuietRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name=f"dicom-listener-{port}",
                              daemon=True)
    thread.start()
    ae._servers.append(server)  # pynetdicom's server.shutdown() removes itself from this list
    LOGGER.info("DICOM listener %s on %s:%d%s", policy.ae_title, host, port,
                " (TLS)" if ssl_context else "")
    return server


class _NoBindServer(HardenedServer):
    """A :class:`HardenedServer` that serves connections accepted elsewhere (no socket of its
    own)."""

    def server_bind(self) -> None:
        pass

    def server_activate(self) -> None:
        pass


class LoadBoard:
    """Open connections of each listener process, in a small shared file (one int per slot).

    Each process writes only its own slot; every process reads them all to decide whether it
    is among the least busy and should take the next connection.
    """

    def __init__(self, path: str | os.PathLike[str], slot: int, slots: int) -> None:
        if not 0 <= slot < slots:
            raise ValueError(f"slot {slot} outside 0..{slots - 1}")
        self.slot, self.slots = slot, slots
        fd = os.open(path, os.O_RDWR)
        try:
            if os.fstat(fd).st_size < 4 * slots:
                raise ValueError(f"{path} is too small for {slots} slots")
            self._map = mmap.mmap(fd, 4 * slots)
        finally:
            os.close(fd)
        self.set(0)

    @staticmethod
    def create(path: str | os.PathLike[str], slots: int) -> None:
        """Make (or reset) the shared file for ``slots`` processes."""
        with open(path, "wb") as fh:
            fh.write(b"\0" * 4 * slots)

    def set(self, connections: int) -> None:
        """Publish this process's number of open connections."""
        struct.pack_into("<i", self._map, 4 * self.slot, connections)

    def least(self) -> int:
        return min(struct.unpack_from(f"<{self.slots}i", self._map))


class SharedSocketListener:
    """Serves associations accepted from a listening socket shared with other processes.

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
        self.on_end = on_end
        self.board = board
        self.fair_wait = fair_wait
        self.ae = build_ae(policy)
        self.sock = sock
        self.sock.setblocking(False)
        host, port = sock.getsockname()[:2]
        all_handlers = [(evt.EVT_C_ECHO, handle_echo), *handlers]
        self._connections: list[socket.socket] = []  # accepted here; closed ones pruned
        self.server = self.ae.make_server((host, port), ssl_context=ssl_context,
                                          evt_handlers=all_handlers, server_class=_NoBindServer,
                                          request_handler=QuietRequestHandler)
        self.server.socket.close()  # the unbound socket socketserver made; never used
        self.server.socket = sock
        self._thread = threading.Thread(target=self._accept_loop, name=f"dicom-accept-{port}",
                                        daemon=True)
        self._stopped = threading.Event()

    def start(self) -> SharedSocketListener:
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _open_connections(self) -> int:
        self._connections = [c for c in self._connections if c.fileno() != -1]
        return len(self._connections)

    def _my_turn(self, waiting_since: float) -> bool:
        if self.board is None:
            return True
        mine = self._open_connections()
        self.board.set(mine)
        if mine <= self.board.least():
            return True
        return time.monotonic() - waiting_since >= self.fair_wait

    def _accept(self) -> tuple[socket.socket, Any] | None:
        """The next connection for this process; None when the socket stops accepting."""
        waiting_since: float | None = None
        while not self._stopped.is_set():
            try:
                readable, _, _ = select.select([self.sock], [], [], 1.0)
            except (OSError, ValueError):
                return None
            if not readable:
                waiting_since = None
                continue
            if self._stopped.is_set():
                return None  # leave it to the processes that go on
            waiting_since = waiting_since or time.monotonic()
            if not self._my_turn(waiting_since):
                time.sleep(0.001)  # a less busy process takes this one
                continue
            try:
                client, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                waiting_since = None  # another process took it
                continue
            except OSError:
                return None  # EINVAL once the shared socket is shut down
            client.setblocking(True)
            return client, address
        return None

    def _accept_loop(self) -> None:
        ssl_context = self.server.ssl_context
        while True:
            accepted = self._accept()
            if accepted is None:
                if not self._stopped.is_set():
                    LOGGER.info("the shared DICOM socket stopped accepting")
                break
            client, address = accepted  # served even if stop() came meanwhile: never dropped
            if ssl_context:
                client = ssl_context.wrap_socket(client, server_side=True,
                                                 do_handshake_on_connect=False)
            if self.board is not None:
                # Counted until the association (or a failed handshake) closes the socket.
                self._connections.append(client)
                self.board.set(self._open_connections())
            try:
                self.server.process_request(client, address)
            except Exception:  # noqa: BLE001 - one bad connection must not end accepting
                LOGGER.exception("cannot start serving a connection from %s", address)
                self.server.shutdown_request(client)
        if self.on_end is not None:
            self.on_end()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting in this process (within a second), let its running associations
        finish for up to ``timeout`` seconds.

        The shared socket itself stays open: the other processes go on accepting. The process
        that made it stops them all with :func:`stop_accepting`.
        """
        self._stopped.set()
        if self.board is not None:
            self.board.set(1 << 30)  # the others need not wait for this one to take anything
        self._thread.join(timeout=5)
        deadline = time.monotonic() + timeout
        while self.server.active_associations and time.monotonic() < deadline:
            time.sleep(0.1)
        for assoc in self.server.active_associations:
            assoc.abort()
        self.sock.close()


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

