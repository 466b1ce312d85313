"""The ``scp`` role's DICOM listener: its policy and handlers, in this process or in several.

:func:`scp_setup` turns the ``[dicom]`` settings into the listener's policy, its event handlers
(C-STORE to the process's intake, refused and aborted associations to the audit log) and its
TLS context. :func:`start_listener` listens in this process, or, in a listener process, accepts
on the socket its parent made. :func:`start_listener_processes` makes that socket and starts
:func:`listener_process_count` child processes on it, each with its own durable intake, so that
concurrent associations use every core; they split ``max_associations`` and share a count of
open connections (a :class:`dicom.scp.LoadBoard` file), from which the parent, which answers
``/readyz``, reads whether each one accepts.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from bcd_node.node.processes import Child, ChildGroup, child_argv
from bcd_node.node.roles import StartupError, Stopper, stop_on_configuration_error
from bcd_node.runtime import Component, NodeContext
from bcd_node.settings import Settings, SettingsError
from bcd_node.store.layout import DataLayout

if TYPE_CHECKING:  # dicom.scp (pynetdicom) is imported only where a listener starts
    import ssl

    from dicom.scp import Handler, ScpPolicy

#: The listening socket's number, inherited by a listener process.
LISTEN_FD_ENV = "BCD_INTERNAL_LISTEN_FD"
#: A listener process's slot and the number of listener processes, as ``"slot:count"``.
LISTENERS_ENV = "BCD_INTERNAL_LISTENERS"

LOGGER = logging.getLogger(__name__)


def listener_process_count(settings: Settings) -> int:
    """How many processes receive images: ``dicom.listener_processes``, 0 meaning one per CPU
    core (at most 4)."""
    n = settings.dicom.listener_processes
    return n if n > 0 else max(1, min(4, os.cpu_count() or 1))


def scp_setup(context: NodeContext, share: int = 1
              ) -> tuple[ScpPolicy, list[Handler], ssl.SSLContext | None]:
    """The listener's policy, handlers and TLS context; ``share`` processes split
    ``max_associations``."""
    from pynetdicom import evt

    from bcd_node.delivery.commitment import handle_report
    from bcd_node.intake.handlers import (
        handle_aborted,
        handle_accepted,
        handle_rejected,
        handle_store,
    )
    from dicom.scp import ScpPolicy, storage_contexts
    from dicom.tls import server_context

    d = context.settings.dicom
    for i, dest in enumerate(context.settings.destinations):
        if dest.storage_commitment and d.allowed_calling_aes and \
                dest.ae_title not in d.allowed_calling_aes:
            # Its reports come on an association the destination opens (PS3.4 J.3.3): refused,
            # the deliveries waited for them and then needed attention, saying nothing of why.
            LOGGER.warning("destinations[%d] (%s) asks for storage commitment, but "
                           "dicom.allowed_calling_aes does not list its AE title %s: its "
                           "commitment reports will be refused, and its deliveries will wait "
                           "for them until they need attention; list it (or the AE title its "
                           "reports come from)", i, dest.name, dest.ae_title)
    policy = ScpPolicy(ae_title=d.ae_title, allowed_calling_aes=d.allowed_calling_aes,
                       require_called_ae=d.require_called_ae,
                       max_associations=-(-d.max_associations // share),
                       acse_timeout=d.acse_timeout, dimse_timeout=d.dimse_timeout,
                       network_timeout=d.network_timeout, max_pdu=d.max_pdu,
                       preassociation_timeout=d.preassociation_timeout,
                       max_dataset_bytes=d.max_dataset_bytes,
                       storage_contexts=storage_contexts())
    handlers: list[Handler] = [
        (evt.EVT_C_STORE, handle_store, [context.intake, context.session_factory,
                                         context.metrics]),
        (evt.EVT_REJECTED, handle_rejected,
         [context.session_factory, tuple(d.allowed_calling_aes), d.ae_title]),
        (evt.EVT_ABORTED, handle_aborted, [context.session_factory]),
        (evt.EVT_ACCEPTED, handle_accepted, [context.session_factory]),
        # A destination's storage commitment report, on an association it opened.
        (evt.EVT_N_EVENT_REPORT, handle_report, [context.session_factory,
                                                 context.settings.delivery]),
    ]
    ssl_context = None
    if d.tls_certificate and d.tls_private_key:
        try:
            ssl_context = server_context(str(d.tls_certificate), str(d.tls_private_key),
                                         str(d.tls_client_ca) if d.tls_client_ca else None)
        except (OSError, ValueError) as exc:  # a configuration error: exit 2, as for others
            raise SettingsError("dicom.tls_certificate, dicom.tls_private_key",
                                f"{d.tls_certificate}, {d.tls_private_key}",
                                f"cannot load the TLS certificate and key: {exc}") from None
    return policy, handlers, ssl_context


def _scp_detail(settings: Settings, tls: bool) -> str:
    d = settings.dicom
    return (f"listening on {d.host}:{d.port} as {d.ae_title} (C-ECHO, C-STORE"
            f"{', TLS' if tls else ''}{', client certificates' if d.tls_client_ca else ''})")


def start_listener(context: NodeContext) -> tuple[Component, Stopper]:
    """The DICOM listener in this process: on ``dicom.host``/``dicom.port``, or, in a listener
    process, on the socket inherited from its parent."""
    from dicom.scp import SharedSocketListener, start_scp

    d = context.settings.dicom
    inherited = os.environ.pop(LISTEN_FD_ENV, None)
    if inherited is not None:
        # A listener process of ``serve``/``scp``: accept on the socket its parent listens on.
        from dicom.scp import LoadBoard

        slot, _, share = os.environ.pop(LISTENERS_ENV, "0:1").partition(":")
        policy, handlers, ssl_context = scp_setup(context, int(share))
        sock = socket.socket(fileno=int(inherited))
        board = LoadBoard(_board_path(context.settings), int(slot), int(share))
        listener = SharedSocketListener(policy, sock, handlers, ssl_context,
                                        on_end=context.stop_requested.set, board=board).start()
        # The parent process (which answers /readyz) reads this one's health on the board.
        return Component("dicom", True, _scp_detail(context.settings, bool(ssl_context)),
                         listener.healthy, listener.problem), listener.stop
    policy, handlers, ssl_context = scp_setup(context)
    try:
        server = start_scp(policy, d.host, d.port, handlers, ssl_context=ssl_context)
    except OSError as exc:
        raise StartupError(f"cannot listen for DICOM on {d.host}:{d.port} (dicom.host/dicom.port): "
                           f"{exc.strerror or exc}") from None
    return Component("dicom", True, _scp_detail(context.settings, bool(ssl_context)),
                     server.healthy, server.problem), server.shutdown


def _board_path(settings: Settings) -> Path:
    """The listener processes' shared count of open connections."""
    return DataLayout(settings.storage.data_dir).listeners_board


def start_listener_processes(context: NodeContext) -> tuple[Component, Stopper]:
    """Several processes accept on one listening socket (made here, inherited by each), each
    with its own durable intake, so that concurrent associations use every core. A listener
    process that dies is started again."""
    from dicom.scp import listening_socket, stop_accepting

    settings = context.settings
    d = settings.dicom
    count = listener_process_count(settings)
    _, _, ssl_context = scp_setup(context)  # a bad certificate stops start-up here
    try:
        sock = listening_socket(d.host, d.port)
    except OSError as exc:
        raise StartupError(f"cannot listen for DICOM on {d.host}:{d.port} (dicom.host/dicom.port): "
                           f"{exc.strerror or exc}") from None
    from dicom.scp import LoadBoard

    board_path = _board_path(settings)
    board_path.parent.mkdir(parents=True, exist_ok=True)
    LoadBoard.create(board_path, count)
    board = LoadBoard(board_path, None, count)  # read here: each process's accept status
    argv = child_argv(settings, "scp")
    env = {**os.environ, LISTEN_FD_ENV: str(sock.fileno())}

    def start_child(i: int) -> Child:
        return Child(f"listener-{i}", argv, {**env, LISTENERS_ENV: f"{i}:{count}"},
                     (sock.fileno(),))

    group = ChildGroup("DICOM listener", start_child, count,
                       on_configuration_error=stop_on_configuration_error(context))

    def stop() -> None:
        group.stopping.set()
        stop_accepting(sock)  # every listener process stops accepting at once
        group.stop()
        sock.close()

    def problem() -> str | None:
        problems = []
        for i, (child, status) in enumerate(zip(group.children, board.statuses())):
            if not child.running():
                problems.append(f"listener process {i} is not running")
            elif status:
                problems.append(f"listener process {i} (pid {child.process.pid}) cannot accept "
                                f"connections: {os.strerror(status)}")
        return "; ".join(problems) or None

    detail = f"{_scp_detail(settings, bool(ssl_context))} in {count} processes"
    return Component("dicom", True, detail, lambda: problem() is None, problem), stop
