"""The listener's TLS files: a certificate or key that cannot be loaded is a configuration
error naming the keys (exit 2), as a missing one is; it was a start-up failure (exit 1) that
said "[SSL] PEM lib"."""

from __future__ import annotations

import dataclasses

import pytest

from bcd_node.node.listeners import scp_setup
from bcd_node.runtime import open_node
from bcd_node.settings import SettingsError, load_settings


def test_a_certificate_that_is_not_one_names_the_keys(write_config, tmp_path) -> None:
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    cert.write_text("garbage\n")
    key.write_text("garbage\n")
    settings = load_settings(write_config())
    settings = dataclasses.replace(settings, dicom=dataclasses.replace(
        settings.dicom, tls_certificate=cert, tls_private_key=key))
    ctx = open_node(settings)
    try:
        with pytest.raises(SettingsError) as info:
            scp_setup(ctx)
        assert info.value.key == "dicom.tls_certificate, dicom.tls_private_key"
        assert "cannot load the TLS certificate and key" in str(info.value)
    finally:
        ctx.engine.dispose()


def test_a_commitment_destination_the_listener_would_refuse_is_warned_of(
        write_config, caplog) -> None:
    """A destination that asks for storage commitment sends its reports on an association of
    its own: with dicom.allowed_calling_aes set and its AE title not in it, they were refused,
    and its deliveries waited and then needed attention with no word why."""
    settings = load_settings(write_config(
        '[[destinations]]\nname = "orthanc"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        'port = 4242\nstorage_commitment = true\n'))
    settings = dataclasses.replace(settings, dicom=dataclasses.replace(
        settings.dicom, allowed_calling_aes=("SCANNER", "PACS")))
    ctx = open_node(settings)
    try:
        with caplog.at_level("WARNING", logger="bcd_node.node.listeners"):
            scp_setup(ctx)
        [warning] = [r.getMessage() for r in caplog.records]
        assert "destinations[0] (orthanc) asks for storage commitment" in warning
        assert "does not list its AE title ORTHANC" in warning
    finally:
        ctx.engine.dispose()
