"""Delivery over DICOM TLS to DCMTK storescp with ``+tls``: a CA, client certificates, and the
failures a retry may cure (an unknown CA, a peer without TLS) kept pending with their reason."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from bcd_node.db.models import Delivery, DeliveryState, DestinationHealth
from bcd_node.delivery.outbox import Deliverer
from tests.support.images import write_vl_micro
from tests.support.outbox import node_for, queue_files, states
from tests.support.peers import StoreScp
from tests.support.pki import make_cert
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

PKI = dict[str, tuple[Path, Path]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    """A CA with a server certificate (for 127.0.0.1) and a client certificate, and another CA
    that signed neither."""
    folder = tmp_path_factory.mktemp("pki")
    ca = make_cert(folder, "ca")
    return {"ca": ca, "server": make_cert(folder, "server", ca=ca),
            "client": make_cert(folder, "client", ca=ca, san="DNS:bcd-node.example"),
            "other-ca": make_cert(folder, "other-ca")}


def tls_peer(folder: Path, pki: PKI, client_certificates: bool = True) -> StoreScp:
    """storescp speaking TLS only; with ``client_certificates`` it requires one signed by the
    CA."""
    key, cert = pki["server"]
    peer_auth = ["+cf", str(pki["ca"][1])] if client_certificates else ["-ic"]
    return StoreScp(folder, ae_title="ORTHANC").start(
        ["+tls", str(key), str(cert), *peer_auth])


def tls_keys(pki: PKI, ca: str = "ca", client: bool = True, more: str = "") -> str:
    lines = f'tls_ca = "{pki[ca][1]}"\n'
    if client:
        lines += (f'tls_certificate = "{pki["client"][1]}"\n'
                  f'tls_private_key = "{pki["client"][0]}"\n')
    return lines + more


def last_errors(ctx) -> list[str]:
    with ctx.session_factory() as s:
        return [r.last_error or "" for r in
                s.execute(select(Delivery).order_by(Delivery.id)).scalars()]


def received(peer: StoreScp) -> set[str]:
    return {str(pydicom.dcmread(p).SOPInstanceUID) for p in peer.files()}


@pytest.mark.parametrize("client_certificates", [True, False],
                         ids=["client-certificate", "server-only"])
def test_delivers_over_tls(write_config, tmp_path, pki, client_certificates) -> None:
    peer = tls_peer(tmp_path / "pacs", pki, client_certificates)
    try:
        ctx = node_for(write_config, peer.port,
                       destination=tls_keys(pki, client=client_certificates))
        files = write_vl_micro(tmp_path / "out", 2)
        queue_files(ctx, files)
        summary = Deliverer(ctx).run_once()
        assert (summary.sent, summary.retried, summary.dead) == (2, 0, 0), last_errors(ctx)
        assert states(ctx) == [DeliveryState.DONE] * 2
        assert received(peer) == {str(pydicom.dcmread(p).SOPInstanceUID) for p in files}
        assert Deliverer(ctx).echo_all() == {"pacs": True}
    finally:
        peer.stop()


def test_unknown_ca_is_a_failed_attempt_kept_for_retry(write_config, tmp_path, pki) -> None:
    peer = tls_peer(tmp_path / "pacs", pki)
    try:
        ctx = node_for(write_config, peer.port, destination=tls_keys(pki, ca="other-ca"))
        queue_files(ctx, write_vl_micro(tmp_path / "out", 1))
        summary = Deliverer(ctx).run_once()
        assert (summary.sent, summary.retried, summary.dead) == (0, 1, 0)
        assert states(ctx) == [DeliveryState.PENDING]
        (error,) = last_errors(ctx)
        assert "TLS handshake failed: certificate verify failed" in error, error
        assert Deliverer(ctx).echo_all() == {"pacs": False}
        with ctx.session_factory() as s:
            health = s.get(DestinationHealth, "pacs")
            assert "certificate verify failed" in health.last_error
        assert peer.files() == []
    finally:
        peer.stop()


def test_client_certificate_missing_is_refused_with_a_tls_reason(write_config, tmp_path,
                                                                  pki) -> None:
    peer = tls_peer(tmp_path / "pacs", pki, client_certificates=True)
    try:
        ctx = node_for(write_config, peer.port, destination=tls_keys(pki, client=False))
        queue_files(ctx, write_vl_micro(tmp_path / "out", 1))
        assert Deliverer(ctx).run_once().retried == 1
        assert states(ctx) == [DeliveryState.PENDING]
        (error,) = last_errors(ctx)
        assert "cannot associate with ORTHANC@127.0.0.1" in error and "(TLS)" in error, error
        assert "TLS handshake failed" in error and "requires a client certificate" in error, error
    finally:
        peer.stop()


def test_server_name_is_checked_unless_told_not_to(write_config, tmp_path, pki) -> None:
    peer = tls_peer(tmp_path / "pacs", pki)
    try:
        ctx = node_for(write_config, peer.port,
                       destination=tls_keys(pki, more='tls_server_name = "pacs.example"\n'))
        queue_files(ctx, write_vl_micro(tmp_path / "out", 1))
        assert Deliverer(ctx).run_once().retried == 1
        (error,) = last_errors(ctx)
        assert "Hostname mismatch" in error and "pacs.example" in error, error
        # The same node (same data folder) told to accept any name the CA signed: sent.
        relaxed = node_for(write_config, peer.port, destination=tls_keys(
            pki, more='tls_server_name = "pacs.example"\ntls_check_hostname = false\n'))
        deliverer = Deliverer(relaxed)
        wait_for(lambda: deliverer.run_once().sent == 1, 10, "the retry with the name unchecked")
        assert states(relaxed) == [DeliveryState.DONE] and len(peer.files()) == 1
    finally:
        peer.stop()


def test_peer_without_tls(write_config, tmp_path, pki) -> None:
    """A TLS destination whose peer speaks plain DICOM fails with a TLS reason and waits; a plain
    destination to the same peer still delivers."""
    peer = StoreScp(tmp_path / "pacs", ae_title="ORTHANC").start()
    try:
        ctx = node_for(write_config, peer.port, destination=tls_keys(pki))
        queue_files(ctx, write_vl_micro(tmp_path / "out", 1))
        assert Deliverer(ctx).run_once().retried == 1
        assert states(ctx) == [DeliveryState.PENDING]
        (error,) = last_errors(ctx)
        assert "(TLS)" in error and "TLS handshake failed" in error, error
        assert peer.files() == []
        plain = node_for(write_config, peer.port)
        deliverer = Deliverer(plain)
        wait_for(lambda: deliverer.run_once().sent == 1, 10, "the plain retry")
        assert states(plain) == [DeliveryState.DONE] and len(peer.files()) == 1
    finally:
        peer.stop()


def test_client_certificate_of_another_ca_is_refused_with_a_tls_reason(write_config, tmp_path,
                                                                        pki) -> None:
    peer = tls_peer(tmp_path / "pacs", pki, client_certificates=True)
    key, cert = pki["other-ca"]
    try:
        ctx = node_for(write_config, peer.port, destination=tls_keys(pki, client=False, more=(
            f'tls_certificate = "{cert}"\ntls_private_key = "{key}"\n')))
        queue_files(ctx, write_vl_micro(tmp_path / "out", 1))
        assert Deliverer(ctx).run_once().retried == 1
        assert states(ctx) == [DeliveryState.PENDING]
        (error,) = last_errors(ctx)
        assert "TLS handshake failed" in error and "refused our client certificate" in error, \
            error
    finally:
        peer.stop()
