"""Multi-process mode: `bcd-node scp` + two `bcd-node worker` + `bcd-node web` on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from bcd_node.db.models import Delivery, DeliveryState, Job, JobState
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from tests.support.images import write_smears
from tests.support.net import free_port, wait_for_port
from tests.support.node import outputs_by_source, push, wait_for
from tests.support.peers import Orthanc

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BCD_NODE = Path(sys.executable).with_name("bcd-node")


def test_roles_share_postgres_and_each_image_is_processed_once(write_config, postgres_url,
                                                               tiny_weights, tmp_path) -> None:
    manifest = tiny_weights
    orthanc = Orthanc().start()
    dicom_port, web_port = free_port(), free_port()
    cfg = write_config(
        f'[model]\nweights = "{manifest}"\nprecision = "float32"\n\n'
        "[workers]\ncount = 1\npoll_interval = 0.1\n"
        # One job per claim, so that the burst is shared between the two worker processes
        # (batched claims are tested in tests/analysis/test_pipeline_batches.py).
        "batch_size = 1\n\n[delivery]\ninterval = 0.3\n\n"
        '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {orthanc.dicom_port}\n", dicom_port=dicom_port, web_port=web_port,
        database_url=postgres_url)
    assert subprocess.run([str(BCD_NODE), "--config", str(cfg), "db", "upgrade"],
                          capture_output=True, timeout=120).returncode == 0
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        for role in ("scp", "worker", "worker", "web"):
            log = tmp_path / f"{role}-{len(procs)}.log"
            logs.append(log)
            procs.append(subprocess.Popen([str(BCD_NODE), "--config", str(cfg), role],
                                          stdout=open(log, "wb"), stderr=subprocess.STDOUT))
        wait_for_port(dicom_port, timeout=120)
        wait_for(lambda: _ready(web_port), 120, "web role ready")
        files = write_smears(tmp_path / "in", 8,
                             study_uid=pydicom.uid.generate_uid(prefix="2.25."))
        sources = {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
        assert push(dicom_port, files).returncode == 0
        wait_for(lambda: len(orthanc.get("/instances")) >= 3 * len(files), 300,
                 "outputs of every image at Orthanc")
        by_source = outputs_by_source(orthanc, sources)
        assert set(by_source) == sources
        assert all(sorted(v) == ["DOC", "SEG", "SR"] for v in by_source.values())
        # The workers stop (the admin stopped them, or they died): the console, which runs
        # apart, is no longer ready and says why (it said "ready" while nothing was analysed).
        for p in procs[1:3]:
            os.kill(p.pid, signal.SIGTERM)
        for p in procs[1:3]:
            p.wait(timeout=60)
        reasons = _readyz(web_port)
        assert reasons is not None and "no bcd-node worker process is running" in \
            reasons.get("worker (elsewhere)", ""), reasons
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        orthanc.cleanup()
    failed = {log.name: (p.returncode, log.read_text()[-3000:])
              for p, log in zip(procs, logs) if p.returncode != 0}
    assert not failed, failed
    ctx = open_node(load_settings(cfg), migrate=False)
    with ctx.session_factory() as s:
        jobs = s.execute(select(Job)).scalars().all()
        assert [j.state for j in jobs if j.kind.value == "analyze"] == [JobState.DONE] * 8
        assert all(j.attempts == 1 for j in jobs)  # no job ran twice
        owners = {j.lease_owner for j in jobs}
        assert s.execute(select(func.count()).select_from(Delivery).where(
            Delivery.state != DeliveryState.DONE)).scalar_one() == 0
    ctx.engine.dispose()
    # Both workers took part (claims are spread by SKIP LOCKED).
    worked = [log for log in logs if "analysed" in log.read_text()]
    assert len([log for log in worked if "worker" in log.name]) == 2, owners


def _readyz(port: int) -> dict[str, str] | None:
    """The reasons /readyz gives for not being ready (None: it is ready)."""
    import json
    import urllib.error

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5):
            return None
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())["reasons"]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
            return True
    except OSError:
        return False
