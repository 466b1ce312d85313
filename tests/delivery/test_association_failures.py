"""Why an association failed, in the outbox's ``last_error``, the log and the C-ECHO health:
a PACS that is down, one that accepts none of the objects' SOP classes, one that rejects the
association (for good, or for now) or aborts it. Peers are pynetdicom AEs in this process."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from bcd_node.db.models import Delivery, DeliveryState, DestinationHealth
from bcd_node.delivery.outbox import Deliverer
from tests.support.dul import pdu_header, read_pdu
from tests.support.images import write_vl_micro
from tests.support.net import free_port
from tests.support.outbox import node_for, queue_files


@contextmanager
def pacs(ae_title: str = "ORTHANC", max_associations: int = 10) -> Iterator[int]:
    """A PACS on loopback that answers C-ECHO and stores CT images only, checks the called AE
    title; yields its port."""
    ae = AE(ae_title=ae_title)
    ae.require_called_aet = True
    ae.maximum_associations = max_associations
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        yield port
    finally:
        server.shutdown()


def rows(ctx) -> list[Delivery]:
    with ctx.session_factory() as s:
        return list(s.execute(select(Delivery).order_by(Delivery.id)).scalars())


def echo_error(ctx) -> str:
    with ctx.session_factory() as s:
        return s.get(DestinationHealth, "pacs").last_error or ""


def test_a_pacs_that_is_down_names_the_socket_error_and_stays_retried(write_config, tmp_path,
                                                                       caplog) -> None:
    ctx = node_for(write_config, free_port())
    queue_files(ctx, write_vl_micro(tmp_path / "out", 2))
    with caplog.at_level(logging.WARNING, logger="bcd_node.delivery.outbox"):
        assert Deliverer(ctx).run_once().retried == 2
    for row in rows(ctx):
        assert row.state is DeliveryState.PENDING and row.attempts == 1
        assert "Connection refused" in row.last_error, row.last_error
        assert "cannot connect to ORTHANC@127.0.0.1" in row.last_error
    assert "Connection refused" in caplog.text
    assert Deliverer(ctx).echo_all() == {"pacs": False}
    assert "Connection refused" in echo_error(ctx)


def test_a_pacs_that_accepts_none_of_the_sop_classes_says_so_not_cannot_associate(
        write_config, tmp_path) -> None:
    """The association is accepted (C-ECHO works) but no presentation context of the batch is:
    the message names the SOP classes and the transfer syntaxes, and the rows are retried."""
    with pacs() as port:
        ctx = node_for(write_config, port)
        queue_files(ctx, write_vl_micro(tmp_path / "out", 2))
        assert Deliverer(ctx).run_once().retried == 2
        assert Deliverer(ctx).echo_all() == {"pacs": True}
    for row in rows(ctx):
        assert row.state is DeliveryState.PENDING and row.attempts == 1
        assert "cannot associate" not in row.last_error, row.last_error
        assert "accepted the association but none of its presentation contexts" \
            in row.last_error, row.last_error
        assert "VL Microscopic Image Storage in Explicit VR Little Endian" in row.last_error
        assert "abstract syntax not supported" in row.last_error


def test_a_permanent_rejection_needs_attention_after_one_attempt(write_config, tmp_path,
                                                                 caplog) -> None:
    """A wrong called AE title: the PACS answers rejected-permanent, its source and reason;
    a retry would get the same answer, so the rows need attention at once."""
    with pacs(ae_title="OTHER_AE") as port:
        ctx = node_for(write_config, port, max_attempts=10)
        queue_files(ctx, write_vl_micro(tmp_path / "out", 2))
        with caplog.at_level(logging.ERROR, logger="bcd_node.delivery.outbox"):
            summary = Deliverer(ctx).run_once()
        assert (summary.dead, summary.retried) == (2, 0)
        assert Deliverer(ctx).echo_all() == {"pacs": False}
    for row in rows(ctx):
        assert row.state is DeliveryState.DEAD and row.attempts == 1
        assert row.last_error == ("ORTHANC@127.0.0.1:%d rejected the association: "
                                  "rejected-permanent, source: service user, reason: Called "
                                  "AE title not recognised" % port)
    assert "need attention at once" in caplog.text and "Called AE title not recognised" \
        in caplog.text
    assert "rejected-permanent" in echo_error(ctx)


def test_a_transient_rejection_stays_retried(write_config, tmp_path) -> None:
    """A PACS at its limit of associations answers rejected-transient: retried later."""
    with pacs(max_associations=1) as port:
        other = AE(ae_title="OTHER")
        other.add_requested_context(Verification)
        held = other.associate("127.0.0.1", port, ae_title="ORTHANC")
        assert held.is_established
        try:
            ctx = node_for(write_config, port)
            queue_files(ctx, write_vl_micro(tmp_path / "out", 1))
            assert Deliverer(ctx).run_once().retried == 1
        finally:
            held.release()
    [row] = rows(ctx)
    assert row.state is DeliveryState.PENDING and row.attempts == 1
    assert "rejected the association: rejected-transient" in row.last_error, row.last_error
    assert "Local limit exceeded" in row.last_error


@contextmanager
def answering_with(answer: bytes | None) -> Iterator[int]:
    """A peer that reads one A-ASSOCIATE-RQ and sends ``answer`` (None: closes the
    connection); yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            read_pdu(conn)
            if answer is not None:
                conn.sendall(answer)
                conn.recv(1024)  # until the requestor closes its side

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        thread.join(10)
        listener.close()


def test_an_aborted_association_request_names_the_abort(write_config, tmp_path) -> None:
    """An A-ABORT (source 2: the service provider, reason 0) answers the request."""
    with answering_with(pdu_header(0x07, 4) + bytes([0, 0, 2, 0])) as port:
        ctx = node_for(write_config, port)
        queue_files(ctx, write_vl_micro(tmp_path / "out", 1))
        assert Deliverer(ctx).run_once().retried == 1
    [row] = rows(ctx)
    assert row.state is DeliveryState.PENDING
    assert row.last_error == (f"ORTHANC@127.0.0.1:{port} aborted the association request "
                              "(A-ABORT, source: DUL service-provider, reason: No reason given)")


def test_a_connection_closed_at_the_request_says_so(write_config, tmp_path) -> None:
    with answering_with(None) as port:
        ctx = node_for(write_config, port)
        queue_files(ctx, write_vl_micro(tmp_path / "out", 1))
        assert Deliverer(ctx).run_once().retried == 1
    [row] = rows(ctx)
    assert "the association request was aborted (the peer closed the connection" \
        in row.last_error, row.last_error


def test_a_pacs_that_stores_again_is_no_longer_shown_as_failing_its_c_echo(write_config,
                                                                          tmp_path) -> None:
    """A PACS that was down and is back: once it stores a batch, its C-ECHO health is checked
    again at once (it said "not answering" for up to delivery.echo_interval after the objects
    had all gone out; found by a walk)."""
    port = free_port()
    ctx = node_for(write_config, port)
    queue_files(ctx, write_vl_micro(tmp_path / "out", 2))
    assert Deliverer(ctx).echo_all() == {"pacs": False}
    ae = AE(ae_title="ORTHANC")
    ae.supported_contexts = StoragePresentationContexts
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, lambda _event: 0x0000)])
    try:
        assert Deliverer(ctx).run_once().sent == 2
    finally:
        server.shutdown()
    with ctx.session_factory() as s:
        health = s.get(DestinationHealth, "pacs")
        assert (health.last_echo_ok, health.last_error) == (True, None)
