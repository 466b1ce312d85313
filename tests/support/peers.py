"""Real DICOM peers for integration tests: Orthanc (the PACS) and DCMTK storescp.

Each is started on free loopback ports in a temporary folder and stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.net import free_port
from tests.support.tools import require_tool


def _stop(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class Orthanc:
    """An Orthanc server with its own storage, DICOM port and REST port."""

    def __init__(self, ae_title: str = "ORTHANC", dicom_port: int | None = None,
                 http_port: int | None = None, root: Path | None = None,
                 extra: dict[str, Any] | None = None,
                 credentials: tuple[str, str] | None = None) -> None:
        """``extra``: configuration keys added to (or replacing) the defaults; ``credentials``:
        the user and password that :meth:`get` sends (when ``extra`` enables authentication)."""
        self.exe = require_tool("Orthanc")
        self.extra = extra or {}
        self.credentials = credentials
        self.ae_title = ae_title
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.root = root or Path(tempfile.mkdtemp(prefix="bcd-orthanc-"))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Orthanc:
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "bcd-test", "StorageDirectory": str(storage),
            "IndexDirectory": str(storage), "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True, "UnknownSopClassAccepted": False,
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
            "HttpServerEnabled": True, "DicomServerEnabled": True,
            "StorageCompression": False, "Plugins": [], "ConcurrentJobs": 1,
            **self.extra,
        }
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(config))
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen([self.exe, str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("Orthanc exited: " + (self.root / "orthanc.log").read_text())
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise TimeoutError("Orthanc did not start")

    def get(self, path: str) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}")
        if self.credentials is not None:
            import base64
            pair = base64.b64encode(":".join(self.credentials).encode()).decode()
            request.add_header("Authorization", f"Basic {pair}")
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.load(r)

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as r:
            return r.read()

    def download(self, folder: Path) -> list[Path]:
        """Every stored instance as the Part 10 file Orthanc holds, written into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in self.get("/instances"):
            path = folder / f"{i}.dcm"
            path.write_bytes(self.get_bytes(f"/instances/{i}/file"))
            paths.append(path)
        return paths

    def instances(self) -> list[dict[str, Any]]:
        """Every stored instance with its main tags."""
        return [self.get(f"/instances/{i}/simplified-tags") for i in self.get("/instances")]

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


#: Debian's orthanc-dicomweb plugin (scripts/install-debian-deps installs it).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def dicomweb_orthanc(user: str, password: str) -> Orthanc:
    """An Orthanc with the DICOMweb plugin at ``/dicom-web/`` and HTTP basic authentication;
    skips the test when the plugin is not installed."""
    import pytest

    if not DICOMWEB_PLUGIN.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{DICOMWEB_PLUGIN} is missing: install orthanc-dicomweb")
        pytest.skip(f"{DICOMWEB_PLUGIN} is missing: apt-get install orthanc-dicomweb")
    return Orthanc(extra={"Plugins": [str(DICOMWEB_PLUGIN)],
                          "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                          "AuthenticationEnabled": True,
                          "RegisteredUsers": {user: password}},
                   credentials=(user, password))


class StoreScp:
    """DCMTK storescp writing what it receives into a folder."""

    def __init__(self, folder: Path, ae_title: str = "PACS", port: int | None = None) -> None:
        self.exe = require_tool("storescp")
        self.folder = folder
        self.ae_title = ae_title
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    def start(self, extra: list[str] | None = None) -> StoreScp:
        self.folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.proc = subprocess.Popen(
            [self.exe, "--aetitle", self.ae_title, "--output-directory", str(self.folder),
             "--accept-all", *(extra or []), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        from tests.support.net import wait_for_port
        wait_for_port(self.port)
        return self

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None
