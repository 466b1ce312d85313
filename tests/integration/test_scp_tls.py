"""DICOM TLS: certificates, client certificates, and a silent client that cannot stall others."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom.scp import ScpPolicy, start_scp
from dicom.tls import server_context as tls_context
from tests.support.net import free_port
from tests.support.pki import make_cert

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_cert(folder, "ca")
    return {"ca": ca, "server": make_cert(folder, "server"),
            "client": make_cert(folder, "client", ca=ca)}


def echo_tls(port: int, server_cert: Path, client: tuple[Path, Path] | None = None) -> bool:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_cert))
    if client:
        ctx.load_cert_chain(str(client[1]), str(client[0]))
    ae = AE(ae_title="SCANNER")
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="BCD_NODE", tls_args=(ctx, "127.0.0.1"))
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def test_silent_tls_client_does_not_block_others(pki) -> None:
    port = free_port()
    key, cert = pki["server"]
    server = start_scp(ScpPolicy(ae_title="BCD_NODE"), "127.0.0.1", port,
                       ssl_context=tls_context(str(cert), str(key)))
    try:
        silent = socket.create_connection(("127.0.0.1", port))  # connects, sends nothing
        try:
            started = time.monotonic()
            assert echo_tls(port, cert)
            assert time.monotonic() - started < 5
        finally:
            silent.close()
    finally:
        server.shutdown()


def test_client_certificates_required_when_configured(pki) -> None:
    port = free_port()
    key, cert = pki["server"]
    server = start_scp(ScpPolicy(ae_title="BCD_NODE"), "127.0.0.1", port,
                       ssl_context=tls_context(str(cert), str(key), str(pki["ca"][1])))
    try:
        assert echo_tls(port, cert, client=pki["client"])
        assert not echo_tls(port, cert)  # no client certificate: refused
    finally:
        server.shutdown()
