"""Wake-ups between the node's processes on one machine: a listener process that has committed
new jobs tells the worker process at once, instead of the workers finding them at their next
poll (``workers.poll_interval``). A datagram on a Unix socket in ``data_dir/run``; when nobody
listens (workers elsewhere, or not started) the message is dropped and polling still works."""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import Callable

from bcd_node.store.layout import DataLayout

LOGGER = logging.getLogger(__name__)


def workers_address(data_dir: Path) -> Path:
    """The socket the worker process listens on."""
    return DataLayout(data_dir).wake_socket


class Notifier:
    """Sends wake-ups to ``address``; never blocks, never raises."""

    def __init__(self, address: Path) -> None:
        self.address = str(address)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def __call__(self) -> None:
        try:
            self._sock.sendto(b"1", self.address)
        except OSError:  # nobody listens, or the queue is full (a wake-up is pending anyway)
            pass


class WakeListener:
    """Calls ``callback`` for each wake-up received on ``address`` (in a daemon thread)."""

    def __init__(self, address: Path, callback: Callable[[], None]) -> None:
        self.address = address
        self.callback = callback
        address.parent.mkdir(parents=True, exist_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            address.unlink(missing_ok=True)  # left by a process that was killed
            self._sock.bind(str(address))
            os.chmod(address, 0o600)
        except OSError:
            self._sock.close()
            raise
        self._thread = threading.Thread(target=self._run, name="wake-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self._sock.recv(64)
            except OSError:
                return  # closed
            self.callback()

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self.address.unlink(missing_ok=True)
