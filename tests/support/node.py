"""The node as a process, as the end-to-end tests run it: ``bcd-node serve`` started and
stopped by its PID, its processes, its config, images pushed to it with DCMTK, and what reached
the PACS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from dicom.series import SERIES_NUMBERS, ResultKind
from tests.support.listener import ENV
from tests.support.peers import Orthanc
from tests.support.procs import children, ended
from tests.support.tools import require_tool
from tests.support.waiting import wait_for as _wait_for

BCD_NODE = Path(sys.executable).with_name("bcd-node")


def ready(web_port: int) -> bool:
    """Whether the node's /readyz says it is ready; a node with ``workers.count = 0``, which
    leaves analysis to ``bcd-node worker`` processes and says that none runs ("worker
    (elsewhere)"), counts as ready when nothing else is wrong."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/readyz", timeout=2):
            return True
    except urllib.error.HTTPError as exc:
        reasons = json.loads(exc.read() or b"{}").get("reasons", {})
        return bool(reasons) and set(reasons) == {"worker (elsewhere)"}
    except OSError:
        return False


class Node:
    """A `bcd-node serve` process started by a test and stopped by its PID."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = config.with_suffix(".log")
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, web_port: int, timeout: float = 60) -> None:
        """Start ``serve`` and wait until it is ready (:func:`ready`)."""
        self.proc = subprocess.Popen([str(BCD_NODE), "--config", str(self.config), "serve"],
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                     env=self.env)
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited {proc.returncode}: {self.output()}")
            return ready(web_port)

        try:
            _wait_for(up, timeout, "serve ready", interval=0.2)
        except AssertionError as exc:
            if proc.poll() is not None:
                raise
            self.kill()
            raise AssertionError(f"serve did not answer in {timeout}s: {self.output()}") from exc

    def kill(self) -> None:
        """SIGKILL the process (a test that gives up must leave nothing running)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
                raise AssertionError("serve did not stop on SIGTERM within 30 s") from None
        return self.proc.returncode


def listener_pids(node: Node) -> list[int]:
    pids = []
    for pid in children(node.proc.pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if b"BCD_INTERNAL_LISTEN_FD=" in environ:
            pids.append(pid)
    return sorted(pids)


def worker_pids(node: Node) -> list[int]:
    """The worker role's process of ``serve`` (its child started with the ``worker`` command)."""
    pids = []
    for pid in children(node.proc.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in argv:
            pids.append(pid)
    return pids


def builder_pids(worker: int) -> list[int]:
    """The output builder processes a worker process started (not its resource tracker)."""
    found = []
    for pid in children(worker):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in argv and not ended(pid):
            found.append(pid)
    return found


def node_config(write_config, manifest: Path, orthanc_port: int, dicom_port: int,
                web_port: int, *, study_quiet_seconds: float = 3600.0) -> Path:
    return write_config(
        f'[model]\nweights = "{manifest}"\nprecision = "float32"\n\n'
        # No study summaries during these tests, unless asked: they count each field's objects.
        "[workers]\ncount = 2\npoll_interval = 0.1\nlease_seconds = 30.0\n"
        f"study_quiet_seconds = {study_quiet_seconds}\n\n"
        "[delivery]\ninterval = 0.5\ninitial_backoff = 0.5\nmax_backoff = 1.0\n\n"
        '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {orthanc_port}\n", dicom_port=dicom_port, web_port=web_port)


def push(port: int, files: list[Path], *options: str) -> subprocess.CompletedProcess:
    """storescu ``options`` ``files`` to the node on ``port``."""
    return subprocess.run([require_tool("storescu"), "-aet", "SCANNER", "-aec", "BCD_NODE",
                           *options, "127.0.0.1", str(port), *map(str, files)], capture_output=True,
                          text=True, env=ENV, timeout=300)


def wait_for(predicate, timeout: float, what: str) -> None:
    """Wait for a condition of the whole node (a database or REST query: twice a second)."""
    _wait_for(predicate, timeout, what, interval=0.5)


def outbox_settled(config: Path) -> bool:
    """Whether every outbox row of the node is delivered: nothing more will reach the PACS."""
    from sqlalchemy import func, select

    from bcd_node.db.models import Delivery, DeliveryState
    from bcd_node.runtime import open_node
    from bcd_node.settings import load_settings
    ctx = open_node(load_settings(config), migrate=False)
    try:
        with ctx.session_factory() as s:
            return s.execute(select(func.count()).select_from(Delivery).where(
                Delivery.state != DeliveryState.DONE)).scalar_one() == 0
    finally:
        ctx.engine.dispose()


def outputs_by_source(orthanc: Orthanc, sources: set[str]) -> dict[str, list[str]]:
    """Modalities of our outputs per referenced source image, as Orthanc holds them."""
    found: dict[str, list[str]] = {}
    for i in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{i}/simplified-tags")
        modality = tags.get("Modality")
        if tags.get("SeriesNumber") in {str(SERIES_NUMBERS[ResultKind.SUMMARY_SR]),
                                        str(SERIES_NUMBERS[ResultKind.SUMMARY_PDF])}:
            continue  # the study summary (SR and PDF) references every field
        if modality == "SEG":
            refs = [r["ReferencedSOPInstanceUID"] for s in tags["ReferencedSeriesSequence"]
                    for r in s["ReferencedInstanceSequence"]]
        elif modality in ("SR", "DOC"):
            refs = [r["ReferencedSOPInstanceUID"]
                    for s in tags.get("CurrentRequestedProcedureEvidenceSequence", [])
                    for se in s["ReferencedSeriesSequence"]
                    for r in se["ReferencedSOPSequence"]] if modality == "SR" else \
                   [r["ReferencedSOPInstanceUID"] for r in tags.get("SourceInstanceSequence", [])]
        else:
            continue
        for ref in set(refs) & sources:  # an SR also references its SEG
            found.setdefault(ref, []).append(modality)
    return found
