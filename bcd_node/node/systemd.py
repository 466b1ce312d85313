"""systemd ``Type=notify`` support, without a dependency: ``READY=1`` once the node is healthy.

Only the process that systemd started sends it (children do not inherit ``NOTIFY_SOCKET``, see
:mod:`bcd_node.node.processes`), and only once every available component is healthy, child
processes included: the model is loaded, every listener process accepts.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from bcd_node.runtime import NodeContext

LOGGER = logging.getLogger(__name__)


def notify_when_healthy(context: NodeContext, stop: threading.Event, who: str = "") -> None:
    """Tell systemd READY=1 once every available component is healthy (child processes
    included: the model is loaded, every listener accepts); ``who`` begins the log line (a
    child process's role and PID: each process says so once)."""
    while not stop.is_set():
        if all(c.healthy() for c in context.components.values() if c.available):
            LOGGER.info("%sready", who)
            notify_ready()
            return
        stop.wait(0.2)


def notify_ready() -> None:
    """Send ``READY=1`` to ``NOTIFY_SOCKET`` when systemd set it (nothing otherwise)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)
