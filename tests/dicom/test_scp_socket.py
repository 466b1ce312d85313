"""The listener's association socket and handler set-up (dicom.scp), without a peer process."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
from pynetdicom import _config, evt

from dicom.association import _QuietSocket
from dicom.scp import ScpPolicy, build_ae, storage_contexts
from tests.support.waiting import wait_for


def quiet_socket(sock: socket.socket) -> _QuietSocket:
    wrapper = _QuietSocket.__new__(_QuietSocket)  # only the socket is needed for recv
    wrapper.socket = sock
    return wrapper


def test_recv_returns_exactly_the_bytes_asked_for_across_small_sends() -> None:
    ours, peer = socket.socketpair()
    payload = bytes(range(256)) * 1000  # 256 000 bytes
    try:
        def send_in_pieces() -> None:
            for start in range(0, len(payload), 3000):
                peer.sendall(payload[start:start + 3000])

        sender = threading.Thread(target=send_in_pieces)
        sender.start()
        first = quiet_socket(ours).recv(100_000)
        rest = quiet_socket(ours).recv(len(payload) - 100_000)
        sender.join(timeout=10)
        assert isinstance(first, bytearray)
        assert bytes(first) == payload[:100_000]
        assert bytes(rest) == payload[100_000:]
    finally:
        ours.close()
        peer.close()


def test_recv_returns_what_came_when_the_peer_closes() -> None:
    ours, peer = socket.socketpair()
    try:
        peer.sendall(b"x" * 5000)
        peer.close()
        assert bytes(quiet_socket(ours).recv(10_000)) == b"x" * 5000
    finally:
        ours.close()


def test_recv_of_a_huge_claimed_length_allocates_only_what_arrives() -> None:
    # A PDU header may claim up to 4 GiB; the buffer must not be made that big up front.
    ours, peer = socket.socketpair()
    try:
        peer.sendall(b"y" * 10)
        peer.close()
        started = time.monotonic()
        assert bytes(quiet_socket(ours).recv(2**32 - 1)) == b"y" * 10
        assert time.monotonic() - started < 1.0
    finally:
        ours.close()


def test_recv_times_out_like_pynetdicom() -> None:
    ours, peer = socket.socketpair()
    try:
        ours.settimeout(0.05)
        with pytest.raises(TimeoutError):
            quiet_socket(ours).recv(10)
    finally:
        ours.close()
        peer.close()


def policy() -> ScpPolicy:
    return ScpPolicy(ae_title="BCD_NODE", allowed_calling_aes=(),
                     storage_contexts=storage_contexts())


@pytest.mark.parametrize("level, bound", [(logging.WARNING, False), (logging.INFO, True)])
def test_pynetdicom_logging_handlers_are_bound_only_when_their_lines_are_kept(
        monkeypatch, level, bound) -> None:
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "standard")
    logger = logging.getLogger("pynetdicom")
    before = logger.level
    logger.setLevel(level)
    try:
        ae = build_ae(policy())
        server = ae.start_server(("127.0.0.1", 0), block=False)
    finally:
        logger.setLevel(before)
    try:
        assert bool(server._handlers.get(evt.EVT_DIMSE_RECV)) is bound
        assert bool(server._handlers.get(evt.EVT_PDU_RECV)) is bound
    finally:
        server.shutdown()


def test_an_association_still_open_when_the_listener_stops_is_named_and_aborted(caplog) -> None:
    """A listener that stops waits for running associations, then aborts the rest and says
    which they were (calling AE, address, state): a stop that takes the whole grace period
    can then be traced to the peer that kept it."""
    from pynetdicom import AE

    from dicom.scp import start_scp

    listener = start_scp(policy(), "127.0.0.1", 0, [])
    port = listener.sock.getsockname()[1]
    ae = AE(ae_title="LINGERER")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="BCD_NODE")
    try:
        assert assoc.is_established
        with caplog.at_level(logging.INFO, logger="dicom.scp"):
            listener.shutdown(timeout=0.5)
        assert "waiting up to 0 s for 1 association(s): LINGERER from 127.0.0.1:" in caplog.text
        assert "aborting what did not finish within 0 s: 1 association(s): LINGERER" \
            in caplog.text
        assert "(established, Sta6)" in caplog.text
        wait_for(lambda: assoc.is_aborted, timeout=10, what="the abort to reach the peer")
    finally:
        if assoc.is_established:
            assoc.abort()


def test_a_connection_accepted_before_the_listener_stops_is_served() -> None:
    """A listener that stops (SIGTERM to one of the node's listener processes) no longer
    accepts, but serves what it had accepted: a connection whose A-ASSOCIATE-RQ was still on
    its way was closed, and the scanner saw "peer aborted" (tests/integration/test_listeners.py
    in CI)."""
    from dicom.scp import start_scp
    from tests.support.dul import associate_rq, pdu_header, read_pdu

    listener = start_scp(policy(), "127.0.0.1", 0, [])
    port = listener.sock.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    stopping = threading.Thread(target=listener.stop, kwargs={"timeout": 10})
    try:
        wait_for(lambda: listener._pending, timeout=10, what="the connection accepted")
        stopping.start()
        wait_for(listener._stopped.is_set, timeout=10, what="the stop begun")
        client.sendall(associate_rq(called_ae="BCD_NODE"))
        assert read_pdu(client)[0] == 0x02  # A-ASSOCIATE-AC
        client.sendall(pdu_header(0x05, 4) + bytes(4))  # A-RELEASE-RQ
        assert read_pdu(client)[0] == 0x06  # A-RELEASE-RP
        stopping.join(timeout=20)
        assert not stopping.is_alive()
        # Nothing new is accepted meanwhile, nor after.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).recv(1)
    finally:
        client.close()
        if not stopping.is_alive() and listener.sock.fileno() >= 0:
            listener.shutdown(timeout=1)
