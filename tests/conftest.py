"""Suite-wide fixtures: strict pydicom, free ports, temporary configs, real-peer helpers."""

from __future__ import annotations

import os
import random
import shutil
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pydicom.config
import pytest

if TYPE_CHECKING:
    from tests.support.postgres import PostgresServer

# Every DICOM object the tests read or write must be valid: no silent fix-ups.
pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    """The path of an external program; skips the test when missing (fails under CI)."""
    path = shutil.which(name) or (name if os.path.isfile(name) and os.access(name, os.X_OK)
                                  else None)
    if path is None:
        message = f"{name} is not installed (make test installs it as root: make deps-debian)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


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


@pytest.fixture
def port_factory() -> Callable[[], int]:
    """Hands out free loopback ports."""
    return free_port


@pytest.fixture(autouse=True)
def _clean_bcd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's own BCD_* variables must not leak into the tests.
    for var in list(os.environ):
        if var.startswith("BCD_"):
            monkeypatch.delenv(var)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # `bcd-node` commands run in-process bind a handler to the sys.stderr of that test, which
    # pytest closes afterwards; later records would then fail with "I/O operation on closed file".
    import logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("pynetdicom").level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("pynetdicom").setLevel(saved[2])


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config file: the default one with ``extra`` TOML appended, data in tmp_path."""

    def write(extra: str = "", *, data_dir: Path | None = None, name: str = "bcd-node.toml",
              dicom_port: int | None = None, web_port: int | None = None,
              database_url: str = "") -> Path:
        data = data_dir or tmp_path / "data"
        text = (
            f'[dicom]\nport = {dicom_port or free_port()}\n\n'
            f'[storage]\ndata_dir = "{data}"\nmin_free_disk = "1MB"\n\n'
            f'[database]\nurl = "{database_url}"\n\n'
            f'[web]\nport = {web_port or free_port()}\n\n'
        ) + extra
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session, on a free loopback port."""
    from tests.support.postgres import PostgresServer

    try:
        server = PostgresServer(free_port())
    except FileNotFoundError as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres) -> Iterator[str]:
    """A freshly emptied database on the session's PostgreSQL server."""
    import psycopg

    with psycopg.connect(postgres.admin_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS bcd WITH (FORCE)")
        conn.execute("CREATE DATABASE bcd")
    yield postgres.url
