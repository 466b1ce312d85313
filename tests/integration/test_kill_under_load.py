"""`kill -9` of the node while four associations are pushing: every image it acknowledged is
analysed and delivered after the restart, and nothing is delivered twice."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from bcd_node.db.models import Delivery, DeliveryState, Instance, Result
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from tests.support.images import write_smears
from tests.support.net import free_port
from tests.support.node import Node, node_config, outputs_by_source
from tests.support.procs import children
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
ASSOCIATIONS, PER_ASSOCIATION = 4, 12


def push_recording(port: int, files: list[Path], acknowledged: set[str],
                   lock: threading.Lock) -> None:
    """Send ``files`` on one association; record each SOP Instance UID answered Success.

    The association breaks when the node is killed; what was acknowledged until then counts.
    """
    from pynetdicom import AE
    from pynetdicom.sop_class import VLMicroscopicImageStorage

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(VLMicroscopicImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="BCD_NODE")
    if not assoc.is_established:
        return
    try:
        for path in files:
            ds = pydicom.dcmread(path)
            status = assoc.send_c_store(ds)
            if not status:  # no answer: the node is gone
                return
            if status.Status == 0x0000:
                with lock:
                    acknowledged.add(str(ds.SOPInstanceUID))
    finally:
        if assoc.is_established:
            assoc.release()


def kill_tree(node: Node) -> None:
    """SIGKILL the node's process and its children (listeners, workers) at the same moment,
    as a power cut would: none of them gets to finish anything."""
    assert node.proc is not None
    pids = [node.proc.pid, *children(node.proc.pid)]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    node.proc.wait(timeout=30)
    for pid in pids[1:]:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists()
                 or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3],
                 30, f"process {pid} gone")


def test_kill_9_under_four_associations(write_config, tiny_weights: Path, orthanc,
                                        tmp_path: Path) -> None:
    dicom_port, web_port = free_port(), free_port()
    cfg = node_config(write_config, tiny_weights, orthanc.dicom_port,
                      dicom_port, web_port)
    batches = [write_smears(tmp_path / f"a{a}", PER_ASSOCIATION, first_seed=200 + 50 * a,
                            patient_id=f"KILL-{a}",
                            study_uid=pydicom.uid.generate_uid(prefix="2.25."))
               for a in range(ASSOCIATIONS)]
    acknowledged: set[str] = set()
    lock = threading.Lock()
    node = Node(cfg)
    ctx = None
    try:
        node.start(web_port, timeout=120)
        pushers = [threading.Thread(target=push_recording,
                                    args=(dicom_port, batch, acknowledged, lock))
                   for batch in batches]
        for thread in pushers:
            thread.start()
        # Kill while the associations are still sending (and analysis and delivery run).
        total = ASSOCIATIONS * PER_ASSOCIATION
        wait_for(lambda: len(acknowledged) >= total // 3, 120, "a third of the images acked")
        kill_tree(node)
        for thread in pushers:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in pushers)
        acked = set(acknowledged)
        assert len(acked) < total, "the kill came after the last image: nothing was tested"

        node = Node(cfg)
        node.log = cfg.with_name("restart.log")
        node.start(web_port, timeout=120)
        ctx = open_node(load_settings(cfg), migrate=False)

        def settled() -> bool:
            """Every stored image analysed and every output delivered (nothing in flight)."""
            with ctx.session_factory() as s:
                stored = s.execute(select(func.count()).select_from(Instance)).scalar_one()
                analysed = s.execute(select(func.count()).select_from(Result).where(
                    Result.scope == "instance")).scalar_one()
                open_rows = s.execute(select(func.count()).select_from(Delivery).where(
                    Delivery.state != DeliveryState.DONE)).scalar_one()
                return stored == analysed and open_rows == 0

        wait_for(settled, 600, "every stored image analysed and delivered", interval=0.5)
        with ctx.session_factory() as s:
            stored = set(s.execute(select(Instance.sop_instance_uid)).scalars())
            diagnosed = set(s.execute(select(Instance.sop_instance_uid).join(
                Result, Result.instance_fk == Instance.id).where(
                Result.stage.is_not(None))).scalars())
            sent = s.execute(select(func.count()).select_from(Delivery)).scalar_one()
        assert acked <= stored, f"acknowledged but lost: {sorted(acked - stored)}"
        assert len(acked & diagnosed) >= 0.9 * len(acked)  # a few may fail the quality gate
        # Every stored image is answered: SEG, SR and PDF when diagnosed, else the
        # non-diagnostic SR and PDF.
        by_source = outputs_by_source(orthanc, stored)
        assert set(by_source) == stored
        assert all(sorted(v) == (["DOC", "SEG", "SR"] if uid in diagnosed else ["DOC", "SR"])
                   for uid, v in by_source.items()), by_source
        # Nothing twice: Orthanc holds exactly the objects of the outbox, one each.
        assert len(orthanc.get("/instances")) == sent == \
            3 * len(diagnosed) + 2 * len(stored - diagnosed)
    finally:
        node.kill()
        if ctx is not None:
            ctx.engine.dispose()
    print(f"\n{len(acked)} of {total} images acknowledged before kill -9, "
          f"{len(stored)} stored, {len(diagnosed)} diagnosed and delivered once each")
