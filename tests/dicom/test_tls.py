"""dicom.tls without a DICOM peer: the client's settings, and a peer that never answers the
handshake (bounded by the connect timeout, with a reason)."""

from __future__ import annotations

import socket
import time

import pytest

from dicom.scu import Peer, PeerUnavailableError, echo
from dicom.tls import ClientTls, client_context, handshake_failure
from tests.support.pki import make_cert


def test_a_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValueError, match="private key"):
        ClientTls("ca.pem", certificate="client.pem")
    with pytest.raises(ValueError, match="certificate"):
        ClientTls("ca.pem", private_key="client.key")


def test_client_context_verifies_the_peer(tmp_path) -> None:
    import ssl
    _, ca = make_cert(tmp_path, "ca")
    context = client_context(ClientTls(str(ca)))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert handshake_failure(context) is None
    assert not client_context(ClientTls(str(ca), check_hostname=False)).check_hostname
    with pytest.raises(OSError):
        client_context(ClientTls(str(tmp_path / "missing.pem")))


def test_a_silent_peer_fails_after_the_connect_timeout_with_a_reason(tmp_path) -> None:
    _, ca = make_cert(tmp_path, "ca")
    with socket.socket() as server:  # accepts TCP (the kernel's backlog), never speaks TLS
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        peer = Peer("PACS", "127.0.0.1", server.getsockname()[1], connect_timeout=0.5,
                    tls=ClientTls(str(ca)))
        started = time.monotonic()
        with pytest.raises(PeerUnavailableError) as info:
            echo(peer)
    assert time.monotonic() - started < 5
    assert "(TLS): connection failed: no answer in time during the TLS handshake" \
        in str(info.value)
