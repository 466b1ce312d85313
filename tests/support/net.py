"""Small network helpers for tests."""

from __future__ import annotations

import socket
import time


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30) -> None:
    """Block until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
