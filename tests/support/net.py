"""Small network helpers for tests."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from pathlib import Path


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


def _port_range() -> range:
    """Ports below the kernel's ephemeral range: the kernel never hands them to a socket bound
    to port 0 or to an outgoing connection, so a port chosen here stays free until the peer
    that the test starts binds it (a port taken with ``bind(0)`` and released can be reused by
    any connection in the meantime)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10000, min(low, 32768))


_PORTS = _port_range()
_port_lock = threading.Lock()
# Each test process starts at its own place in the range, so two suites on one machine rarely
# try the same ports; within a process no port is handed out twice.
_next_port = [random.Random(os.getpid()).randrange(len(_PORTS))] if len(_PORTS) else [0]
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, never handed out before in this run."""
    with _port_lock:
        for _ in range(len(_PORTS)):
            port = _PORTS[_next_port[0] % len(_PORTS)]
            _next_port[0] += 1
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # range exhausted
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
