"""``bcd-node serve``: run the listener, workers, scheduler and console in one process.

Parts that are not built yet are reported as "not available" at start-up and on the console's
landing page, so an operator sees exactly what this version runs.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from typing import Any, Callable

from bcd_node.errors import BcdError
from bcd_node.runtime import Component, NodeContext, open_node
from bcd_node.settings import Settings
from bcd_node.users import ensure_initial_admin

LOGGER = logging.getLogger(__name__)


class StartupError(BcdError):
    """A component could not start (e.g. its port is in use)."""


def bootstrap_admin(context: NodeContext, out: Any = None) -> None:
    """Create the first admin when there are no users; print a generated password once."""
    out = out or sys.stdout
    with context.session_factory.begin() as session:
        created = ensure_initial_admin(session, os.environ.get("BCD_ADMIN_PASSWORD") or None)
    if created is None:
        return
    if created.password is None:
        print("Created user 'admin' with the password from BCD_ADMIN_PASSWORD.", file=out)
    else:
        print("\n" + "=" * 72, file=out)
        print("  First start: created user 'admin' with this one-time password:", file=out)
        print(f"      {created.password}", file=out)
        print("  It is shown only now. Change it with:", file=out)
        print("      bcd-node users set-password admin --password-stdin", file=out)
        print("=" * 72 + "\n", file=out, flush=True)


def _start_intake(context: NodeContext) -> tuple[Component, Callable[[], None]]:
    from bcd_node.intake import Intake

    context.intake = Intake(context).start()
    return Component("intake", True, "durable intake (group commit)"), context.intake.stop


def _start_scp(context: NodeContext) -> tuple[Component, Callable[[], None]]:
    from pynetdicom import evt

    from bcd_node.scp_handlers import handle_rejected, handle_store
    from dicom.scp import ScpPolicy, start_scp, storage_contexts

    d = context.settings.dicom
    policy = ScpPolicy(ae_title=d.ae_title, allowed_calling_aes=d.allowed_calling_aes,
                       require_called_ae=d.require_called_ae, max_associations=d.max_associations,
                       acse_timeout=d.acse_timeout, dimse_timeout=d.dimse_timeout,
                       network_timeout=d.network_timeout, max_pdu=d.max_pdu,
                       storage_contexts=storage_contexts())
    handlers = [
        (evt.EVT_C_STORE, handle_store, [context.intake, context.session_factory]),
        (evt.EVT_REJECTED, handle_rejected,
         [context.session_factory, tuple(d.allowed_calling_aes), d.ae_title]),
    ]
    try:
        server = start_scp(policy, d.host, d.port, handlers)
    except OSError as exc:
        raise StartupError(f"cannot listen for DICOM on {d.host}:{d.port} (dicom.host/dicom.port): "
                           f"{exc.strerror or exc}") from None

    def alive() -> bool:
        return server.socket is not None and server.socket.fileno() >= 0

    detail = f"listening on {d.host}:{d.port} as {d.ae_title} (C-ECHO, C-STORE)"
    return Component("dicom", True, detail, alive), server.shutdown


def _start_web(context: NodeContext) -> tuple[Component, Callable[[], None]]:
    from waitress.server import create_server

    from webadmin import create_app

    w = context.settings.web
    app = create_app(context)
    try:
        server = create_server(app, host=w.host, port=w.port, threads=8, ident="bcd-node",
                               clear_untrusted_proxy_headers=True)
    except OSError as exc:
        raise StartupError(f"cannot listen for the web console on {w.host}:{w.port} "
                           f"(web.host/web.port): {exc.strerror or exc}") from None
    thread = threading.Thread(target=server.run, name="web", daemon=True)
    thread.start()
    return Component("web", True, f"console on http://{w.host}:{w.port}/", thread.is_alive), \
        server.close


def _model_component(settings: Settings) -> Component:
    if settings.model.weights is not None:
        return Component("model", True, f"weights {settings.model.weights}")
    from bcd_node.settings import PROJECT_ROOT
    bundled = sorted((PROJECT_ROOT / "weights").glob("*.json"))
    if bundled:
        return Component("model", True, f"bundled weights {bundled[0].name}")
    return Component("model", False, "no bundled weights yet (model issue)")


def serve(settings: Settings, stop: threading.Event | None = None) -> int:
    """Run every role until SIGTERM/SIGINT (or ``stop`` is set); return the exit code."""
    stop = stop or threading.Event()
    context = open_node(settings, migrate=True)
    bootstrap_admin(context)
    stoppers: list[Callable[[], None]] = []
    try:
        for starter in (_start_intake, _start_scp, _start_web):
            component, stopper = starter(context)
            context.components[component.name] = component
            stoppers.append(stopper)
        context.components["model"] = _model_component(settings)
        context.components["workers"] = Component(
            "workers", False, "analysis pipeline not built yet (node issue)")
        context.components["delivery"] = Component(
            "delivery", False, "delivery to PACS not built yet (node issue)")
        for component in context.components.values():
            LOGGER.info("%s: %s", component.name, component.describe())

        if threading.current_thread() is threading.main_thread():
            def on_signal(signum: int, _frame: Any) -> None:
                LOGGER.info("received %s, shutting down", signal.Signals(signum).name)
                stop.set()
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        _notify_ready()
        stop.wait()
    finally:
        for stopper in reversed(stoppers):
            try:
                stopper()
            except Exception:  # noqa: BLE001 - keep stopping the others
                LOGGER.exception("error while stopping a component")
        context.engine.dispose()
        LOGGER.info("stopped")
    return 0


def _notify_ready() -> None:
    # systemd Type=notify support without a dependency.
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)
