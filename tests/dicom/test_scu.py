"""The node as a service class user against DCMTK storescp."""

from __future__ import annotations

import socket

import pytest

from dicom import scu
from tests.support.images import write_smears
from tests.support.peers import StoreScp

pytestmark = pytest.mark.integration  # storescp


def test_every_association_sends_without_nagles_delay(tmp_path, monkeypatch) -> None:
    """C-ECHO and C-STORE associations set TCP_NODELAY on their socket (pynetdicom writes a
    C-STORE as two PDUs before it reads the answer: with Nagle's algorithm each object waited
    for the peer's delayed acknowledgement; ``benchmarks/delivery.py`` measures it)."""
    pacs = StoreScp(tmp_path / "pacs").start()
    seen: list[int] = []
    set_no_delay = scu.no_delay

    def spy(assoc) -> None:
        set_no_delay(assoc)
        seen.append(assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(scu, "no_delay", spy)
    try:
        peer = scu.Peer(ae_title="PACS", host="127.0.0.1", port=pacs.port)
        assert scu.echo(peer) == 0
        files = write_smears(tmp_path / "images", 3)
        outcomes = scu.send_files(peer, files)
        assert [o.ok for o in outcomes] == [True] * 3
        assert len(pacs.files()) == 3
    finally:
        pacs.stop()
    assert len(seen) == 2 and all(seen), seen
