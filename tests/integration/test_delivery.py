"""Delivery to a real PACS (Orthanc) with backoff, dead letter and retry."""

from __future__ import annotations

import time
from datetime import timedelta

import pydicom
import pytest
from sqlalchemy import select

from bcd_node.db.models import Delivery, DeliveryState, DestinationHealth, utcnow
from bcd_node.delivery.outbox import Deliverer
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from tests.support.images import write_vl_micro
from tests.support.net import free_port
from tests.support.outbox import node_for, queue_files, states
from tests.support.peers import Orthanc

pytestmark = pytest.mark.integration


def test_delivers_to_orthanc_and_records_echo(write_config, orthanc, tmp_path) -> None:
    ctx = node_for(write_config, orthanc.dicom_port)
    files = write_vl_micro(tmp_path / "out", 3)
    queue_files(ctx, files)
    summary = Deliverer(ctx).run_once()
    assert summary.sent == 3
    assert states(ctx) == [DeliveryState.DONE] * 3
    stored = {i["SOPInstanceUID"] for i in orthanc.instances()}
    assert stored == {str(pydicom.dcmread(p).SOPInstanceUID) for p in files}
    assert Deliverer(ctx).run_once().sent == 0  # nothing sent twice
    assert Deliverer(ctx).echo_all() == {"pacs": True}
    with ctx.session_factory() as s:
        assert s.get(DestinationHealth, "pacs").last_echo_ok is True


def test_pacs_down_backs_off_then_delivers_when_back(write_config, tmp_path) -> None:
    port = free_port()
    ctx = node_for(write_config, port)
    queue_files(ctx, write_vl_micro(tmp_path / "out", 2))
    first = Deliverer(ctx).run_once()
    assert first.sent == 0 and first.retried == 2
    with ctx.session_factory() as s:
        row = s.execute(select(Delivery)).scalars().first()
        assert row.attempts == 1 and "Connection refused" in row.last_error
    assert Deliverer(ctx).echo_all() == {"pacs": False}
    server = Orthanc(dicom_port=port).start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and states(ctx) != [DeliveryState.DONE] * 2:
            Deliverer(ctx).run_once()
            time.sleep(0.2)
        assert states(ctx) == [DeliveryState.DONE] * 2
        assert len(server.instances()) == 2
    finally:
        server.cleanup()


def storescp_node(write_config, pacs, extra: str = ""):
    cfg = write_config(extra + '\n[[destinations]]\nname = "pacs"\nae_title = "PACS"\n'
                       f'host = "127.0.0.1"\nport = {pacs.port}\n')
    return open_node(load_settings(cfg))


def test_one_bad_file_fails_alone_and_the_rest_is_sent(write_config, tmp_path) -> None:
    from tests.support.peers import StoreScp

    pacs = StoreScp(tmp_path / "pacs").start()
    try:
        ctx = storescp_node(write_config, pacs)
        files = write_vl_micro(tmp_path / "out", 5)
        queue_files(ctx, files)
        outputs = ctx.settings.storage.data_dir / "outputs"
        (outputs / files[2].name).unlink()
        (outputs / files[4].name).write_bytes(b"not DICOM at all")
        summary = Deliverer(ctx).run_once()
        received = {str(pydicom.dcmread(p).SOPInstanceUID) for p in pacs.files()}
    finally:
        pacs.stop()
    assert (summary.sent, summary.dead, summary.retried) == (3, 2, 0)
    assert states(ctx) == [DeliveryState.DONE, DeliveryState.DONE, DeliveryState.DEAD,
                           DeliveryState.DONE, DeliveryState.DEAD]
    assert received == {str(pydicom.dcmread(files[i]).SOPInstanceUID) for i in (0, 1, 3)}
    with ctx.session_factory() as s:
        dead = s.execute(select(Delivery).where(Delivery.state == DeliveryState.DEAD)
                         .order_by(Delivery.id)).scalars().all()
    assert [d.attempts for d in dead] == [1, 1]
    assert f"{files[2].name} is missing" in dead[0].last_error
    assert "cannot read the file" in dead[1].last_error


def test_each_failed_attempt_is_logged_with_its_reason(write_config, tmp_path, caplog) -> None:
    import logging
    import shutil

    from tests.support.peers import StoreScp

    pacs = StoreScp(tmp_path / "pacs").start()
    try:
        ctx = storescp_node(write_config, pacs)
        queue_files(ctx, write_vl_micro(tmp_path / "out", 1))
        shutil.rmtree(tmp_path / "pacs")  # storescp answers 0xA700: it cannot write
        with caplog.at_level(logging.INFO, logger="bcd_node.delivery.outbox"):
            assert Deliverer(ctx).run_once().retried == 1
    finally:
        pacs.stop()
    (failure,) = [r for r in caplog.records
                  if r.levelno >= logging.WARNING and r.name == "bcd_node.delivery.outbox"]
    message = failure.getMessage()
    assert "to pacs failed (attempt 1 of 10)" in message
    assert "status 0xA700 (Refused: Out of Resources)" in message
    caplog.clear()
    ctx2 = node_for(write_config, free_port())  # nobody listens: a network error
    queue_files(ctx2, write_vl_micro(tmp_path / "out2", 2))
    with caplog.at_level(logging.INFO, logger="bcd_node.delivery.outbox"):
        assert Deliverer(ctx2).run_once().retried == 2
    (failure,) = [r for r in caplog.records
                  if r.levelno >= logging.WARNING and r.name == "bcd_node.delivery.outbox"]
    message = failure.getMessage()
    # The PACS is down: no object runs out of attempts while it is.
    assert "2 object(s) to pacs failed (attempt 1; they wait until it can be reached)" in message
    assert "cannot connect to ORTHANC@127.0.0.1" in message and "Connection refused" in message


def test_a_slow_send_keeps_its_lease_and_is_sent_once(write_config, tmp_path) -> None:
    """A send that outlasts the lease (1 s) keeps it: another process's pass takes nothing."""
    import threading

    from tests.support.peers import StoreScp

    pacs = StoreScp(tmp_path / "pacs").start(["--sleep-after", "3"])
    try:
        ctx = storescp_node(write_config, pacs, "[delivery]\nlease_seconds = 1.0\n")
        queue_files(ctx, write_vl_micro(tmp_path / "out", 1))
        first: list = []
        sending = threading.Thread(target=lambda: first.append(Deliverer(ctx).run_once()))
        sending.start()
        deadline = time.monotonic() + 10
        while states(ctx) != [DeliveryState.SENDING] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert states(ctx) == [DeliveryState.SENDING]
        with ctx.session_factory() as s:
            claimed_until = s.execute(select(Delivery.next_attempt_at)).scalar_one()
        # Past the first lease: without renewal the row would be due again now.
        while time.monotonic() < deadline and utcnow() < claimed_until + timedelta(seconds=1):
            time.sleep(0.05)
        second = Deliverer(ctx).run_once()
        sending.join(timeout=30)
    finally:
        pacs.stop()
    assert second.sent == 0 and first[0].sent == 1
    with ctx.session_factory() as s:
        row = s.execute(select(Delivery)).scalar_one()
    assert (row.state, row.attempts) == (DeliveryState.DONE, 1)

