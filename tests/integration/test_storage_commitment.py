"""Storage Commitment (push model) against Orthanc 1.10: what Orthanc commits becomes
delivered; an instance it reports as failed is sent again, then needs attention with the reason;
a request nobody answers is made again, then needs attention."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pydicom
import pytest
from sqlalchemy import select

from bcd_node.db.models import Delivery, DeliveryState
from bcd_node.delivery.outbox import Deliverer
from bcd_node.intake.intake import Intake
from bcd_node.node.listeners import scp_setup
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings
from dicom.scp import start_scp
from tests.support.images import write_vl_micro
from tests.support.net import free_port
from tests.support.outbox import queue_files, states
from tests.support.peers import Orthanc
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def _orthanc(tmp_path: Path, node_port: int, discard: str = "") -> Orthanc:
    """An Orthanc that knows the node (storage commitment allowed) at ``node_port``; a Lua
    filter discards the instance ``discard`` while answering its C-STORE with success."""
    lua = tmp_path / "filter.lua"
    lua.write_text("function ReceivedInstanceFilter(dicom, origin, info)\n"
                   f"  return dicom.SOPInstanceUID ~= '{discard}'\nend\n")
    return Orthanc(root=tmp_path / "orthanc", extra={
        "DicomModalities": {"bcd": {"AET": "BCD_NODE", "Host": "127.0.0.1", "Port": node_port,
                                    "AllowStorageCommitment": True}},
        "LuaScripts": [str(lua)]}).start()


@pytest.fixture
def node(write_config: Callable[..., Path]) -> Iterator[Callable[..., NodeContext]]:
    """The node with its listener running (where Orthanc sends its reports)."""
    started: list = []

    def make(pacs_port: int, node_port: int, max_attempts: int = 3,
             timeout: float = 300.0) -> NodeContext:
        ctx = open_node(load_settings(write_config(
            f"[delivery]\ninitial_backoff = 0.2\nmax_backoff = 0.4\nmax_attempts = {max_attempts}"
            f"\nconnect_timeout = 2.0\ncommitment_wait = 1.0\ncommitment_timeout = {timeout}\n\n"
            '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
            f"port = {pacs_port}\nstorage_commitment = true\n", dicom_port=node_port)))
        ctx.intake = Intake(ctx).start()
        policy, handlers, _tls = scp_setup(ctx)
        server = start_scp(policy, "127.0.0.1", node_port, handlers)
        started.append((server, ctx))
        return ctx

    yield make
    for server, ctx in started:
        server.shutdown()
        ctx.intake.stop()
        ctx.engine.dispose()


def _rows(ctx: NodeContext) -> list[Delivery]:
    with ctx.session_factory() as session:
        rows = session.execute(select(Delivery).order_by(Delivery.id)).scalars().all()
        session.expunge_all()
        return list(rows)


def test_committed_instances_become_delivered(node, tmp_path) -> None:
    node_port = free_port()
    pacs = _orthanc(tmp_path, node_port)
    try:
        ctx = node(pacs.dicom_port, node_port)
        queue_files(ctx, write_vl_micro(tmp_path / "out", 3))
        assert Deliverer(ctx).run_once().sent == 3
        wait_for(lambda: states(ctx) == [DeliveryState.DONE] * 3, timeout=30,
                 what="Orthanc's storage commitment report")
        rows = _rows(ctx)
        assert all(r.committed_at is not None and r.delivered_at is not None for r in rows)
        assert len({r.commit_transaction_uid for r in rows}) == 1
    finally:
        pacs.cleanup()


def test_a_failed_instance_is_sent_again_then_needs_attention(node, tmp_path) -> None:
    files = write_vl_micro(tmp_path / "out", 3)
    lost = str(pydicom.dcmread(files[1]).SOPInstanceUID)
    node_port = free_port()
    pacs = _orthanc(tmp_path, node_port, discard=lost)
    try:
        ctx = node(pacs.dicom_port, node_port, max_attempts=2)
        queue_files(ctx, files)

        def settled() -> bool:
            Deliverer(ctx).run_once()
            return not {DeliveryState.PENDING, DeliveryState.SENDING,
                        DeliveryState.COMMITTING} & set(states(ctx))

        wait_for(settled, timeout=60, what="every delivery committed or dead")
        rows = _rows(ctx)
        assert [r.state for r in rows] == [DeliveryState.DONE, DeliveryState.DEAD,
                                           DeliveryState.DONE]
        assert rows[1].attempts == 2  # sent twice, reported failed twice
        assert "storage commitment failed: 0x0112 (no such object instance)" in \
            rows[1].last_error
        assert rows[1].committed_at is None
        stored = {i["SOPInstanceUID"] for i in pacs.instances()}
        assert lost not in stored and len(stored) == 2
    finally:
        pacs.cleanup()


def test_a_request_nobody_answers_is_made_again_then_needs_attention(node, tmp_path) -> None:
    # Orthanc sends its reports to a port where nobody listens.
    pacs = _orthanc(tmp_path, free_port())
    try:
        ctx = node(pacs.dicom_port, free_port(), max_attempts=3, timeout=0.5)
        queue_files(ctx, write_vl_micro(tmp_path / "out", 1))
        assert Deliverer(ctx).run_once().sent == 1
        (row,) = _rows(ctx)
        assert row.state is DeliveryState.COMMITTING and row.attempts == 1
        first = row.commit_transaction_uid

        def dead() -> bool:
            Deliverer(ctx).run_once()
            return states(ctx) == [DeliveryState.DEAD]

        wait_for(dead, timeout=30, what="the unanswered request to be given up")
        (row,) = _rows(ctx)
        assert row.attempts == 3 and row.commit_transaction_uid != first
        assert "no storage commitment report" in row.last_error
        assert len(pacs.instances()) == 1  # stored, never confirmed
    finally:
        pacs.cleanup()

