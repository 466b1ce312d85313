"""A TLS destination's files are loaded when the deliverer starts: a file that is not what its
key says stops the start, naming the key (delivering over TLS is in
tests/integration/test_delivery_tls.py)."""

from __future__ import annotations

import pytest

from bcd_node.delivery.outbox import Deliverer
from bcd_node.node.scheduler import start_scheduler
from bcd_node.settings import SettingsError
from tests.support.net import free_port
from tests.support.outbox import node_for
from tests.support.pki import make_cert


@pytest.fixture
def certs(tmp_path):
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = make_cert(folder, "ca")
    return {"ca": ca, "client": make_cert(folder, "client", ca=ca),
            "other": make_cert(folder, "other")}


def test_good_files_load(write_config, certs) -> None:
    (_, ca), (key, cert) = certs["ca"], certs["client"]
    ctx = node_for(write_config, free_port(), destination=(
        f'tls_ca = "{ca}"\ntls_certificate = "{cert}"\ntls_private_key = "{key}"\n'))
    peer = Deliverer(ctx).peer(ctx.settings.destinations[0])
    assert peer.tls is not None and peer.tls.ca_file == str(ca)
    assert (peer.tls.certificate, peer.tls.private_key) == (str(cert), str(key))


def test_a_ca_file_that_is_not_a_certificate_names_tls_ca(write_config, tmp_path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    ctx = node_for(write_config, free_port(), destination=f'tls_ca = "{bad}"\n')
    with pytest.raises(SettingsError) as info:
        Deliverer(ctx)
    assert info.value.key == "destinations[0].tls_ca"
    assert "cannot load the CA certificate" in str(info.value)
    with pytest.raises(SettingsError, match=r"destinations\[0\]\.tls_ca"):
        start_scheduler(ctx)  # the worker role's start stops here


@pytest.mark.parametrize("damage", ["garbage key", "key of another certificate"])
def test_a_bad_client_key_names_the_certificate_and_key(write_config, tmp_path, certs,
                                                        damage) -> None:
    (_, ca), (key, cert) = certs["ca"], certs["client"]
    if damage == "garbage key":
        key = tmp_path / "client.key"
        key.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    else:
        key = certs["other"][0]
    ctx = node_for(write_config, free_port(), destination=(
        f'tls_ca = "{ca}"\ntls_certificate = "{cert}"\ntls_private_key = "{key}"\n'))
    with pytest.raises(SettingsError) as info:
        Deliverer(ctx)
    assert "destinations[0].tls_private_key" in info.value.key
    assert "cannot load the client certificate and key" in str(info.value)
