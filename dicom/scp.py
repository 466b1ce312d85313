"""The DICOM listener (SCP) wiring: one Application Entity, its policies and its handlers.

Handlers are passed in by the caller (the node), so this module stays free of the node's
services; the C-ECHO handler lives here because it needs nothing else.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

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


def build_ae(policy: ScpPolicy) -> AE:
    """An :class:`pynetdicom.AE` configured by ``policy`` (Verification plus storage contexts)."""
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
                            server_class=HardenedServer)
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


class SharedSocketListener:
    """Serves associations accepted from a listening socket shared with other processes.

    Every process that shares the socket blocks in ``accept()``; the kernel hands each new
    connection to one of them, in turn. Stop accepting in every process at once by shutting
    the shared socket down (:func:`stop_accepting`); :meth:`stop` then ends this process's own
    accept thread and releases its copy of the socket.
    """

    def __init__(self, policy: ScpPolicy, sock: socket.socket, handlers: Sequence[Handler] = (),
                 ssl_context: ssl.SSLContext | None = None,
                 on_end: Callable[[], None] | None = None) -> None:
        self.on_end = on_end
        self.ae = build_ae(policy)
        self.sock = sock
        self.sock.setblocking(True)
        host, port = sock.getsockname()[:2]
        self.server = self.ae.make_server((host, port), ssl_context=ssl_context,
                                          evt_handlers=[(evt.EVT_C_ECHO, handle_echo), *handlers],
                                          server_class=_NoBindServer)
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

    def _accept_loop(self) -> None:
        ssl_context = self.server.ssl_context
        while not self._stopped.is_set():
            try:
                client, address = self.sock.accept()
            except OSError:
                # EINVAL once the shared socket is shut down; anything else ends this process's
                # accepting too (its parent sees the listener die and says so).
                if not self._stopped.is_set():
                    LOGGER.info("the shared DICOM socket stopped accepting")
                break
            if self._stopped.is_set():
                client.close()
                break
            if ssl_context:
                client = ssl_context.wrap_socket(client, server_side=True,
                                                 do_handshake_on_connect=False)
            try:
                self.server.process_request(client, address)
            except Exception:  # noqa: BLE001 - one bad connection must not end accepting
                LOGGER.exception("cannot start serving a connection from %s", address)
                self.server.shutdown_request(client)
        if self.on_end is not None:
            self.on_end()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let running associations finish for up to ``timeout`` seconds."""
        self._stopped.set()
        stop_accepting(self.sock)
        self._thread.join(timeout=5)
        deadline = threading.Event()
        waited = 0.0
        while self.server.active_associations and waited < timeout:
            deadline.wait(0.1)
            waited += 0.1
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
    """A bound, listening, blocking TCP socket that child processes can inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock

