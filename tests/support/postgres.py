"""A throw-away PostgreSQL server on loopback for the tests (Debian's binaries)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

#: Runs a test on SQLite and on PostgreSQL: the test's ``database_url`` fixture
#: (``tests/conftest.py``), which the fixtures that open its node take.
ON_BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"],
                                            indirect=True)


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """``initdb`` + ``postgres`` in a temporary folder on a free port; stop() kills by PID."""

    def __init__(self, port: int) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            raise FileNotFoundError("PostgreSQL server binaries not found (Debian: postgresql)")
        self.bin = bin_dir
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="bcd-pg-"))
        self.datadir = self.root / "data"
        self.process: subprocess.Popen[bytes] | None = None
        # PostgreSQL refuses to run as root: run it as the 'postgres' user when we are root.
        self.run_as: str | None = "postgres" if os.geteuid() == 0 else None
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _as_owner(self) -> dict[str, object]:
        """Popen arguments that run a program as the data folder's owner. The program itself
        is started (no ``runuser`` in between), so the PID that stop() signals is the
        postmaster's: a signal to runuser did not reach it, and a killed runuser left the
        server running."""
        if not self.run_as:
            return {}
        entry = pwd.getpwnam(self.run_as)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
                "env": {**os.environ, "HOME": entry.pw_dir, "USER": self.run_as}}

    def start(self, timeout: float = 60) -> None:
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.datadir), "-U", "bcd",
                        "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, timeout=timeout, cwd=self.root,
                       **self._as_owner())  # type: ignore[call-overload]
        log = open(self.root / "server.log", "wb")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.datadir), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
             "-c", "fsync=off"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
            **self._as_owner())  # type: ignore[call-overload]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("postgres exited: " + (self.root / "server.log").read_text())
            try:
                with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=2) as conn:
                    conn.execute("CREATE DATABASE bcd")
                return
            except psycopg.OperationalError:
                time.sleep(0.2)
        raise TimeoutError("postgres did not start in time")

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=bcd dbname=postgres"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the test database."""
        return f"postgresql+psycopg://bcd@127.0.0.1:{self.port}/bcd"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)
