"""The node as a service class user against DCMTK storescp."""

from __future__ import annotations

import socket
import threading

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


class LateReactor(threading.Event):
    """An association's reactor checkpoint as a reactor thread meets it when it runs late: it
    was woken at the end of one exchange, but runs again only once the next exchange has begun
    (the checkpoint cleared again) and the peer's response is already in (or after 2 s)."""

    def __init__(self, assoc) -> None:
        super().__init__()
        self.assoc = assoc
        self.set()

    def wait(self, timeout=None) -> bool:
        woke = super().wait(timeout)
        queue = self.assoc.dimse.msg_queue
        with queue.not_empty:  # notified by each message the peer's answers put in
            queue.not_empty.wait_for(lambda: not self.is_set() and queue.queue, timeout=2)
        return woke


def slow_sender(assoc) -> None:
    """The sending thread, late to read its response: it reads it once the reactor thread has
    had it in hand (or after 0.5 s)."""
    send = assoc.dimse.send_msg

    def late(primitive, context_id) -> None:
        send(primitive, context_id)
        queue = assoc.dimse.msg_queue
        with queue.not_empty:  # the response comes in
            queue.not_empty.wait_for(lambda: queue.queue, timeout=0.5)
        with queue.not_full:  # the reactor takes it (a get notifies not_full)
            queue.not_full.wait_for(lambda: not queue.queue, timeout=0.5)

    assoc.dimse.send_msg = late


def test_a_late_reactor_thread_does_not_take_the_senders_response(tmp_path, monkeypatch) -> None:
    """pynetdicom's reactor thread, late to run after an exchange, took the C-STORE response
    the sender was waiting for ("Received unexpected C-STORE service message") and dropped it,
    and the sender waited the whole DIMSE timeout: a delivery stalled for a minute while the
    builders kept the cores busy. The response goes back to the sender
    (scu.keep_responses_for_the_sender)."""
    pacs = StoreScp(tmp_path / "pacs").start()
    set_no_delay = scu.no_delay

    def late_threads(assoc) -> None:
        set_no_delay(assoc)
        assoc._reactor_checkpoint = LateReactor(assoc)
        slow_sender(assoc)

    monkeypatch.setattr(scu, "no_delay", late_threads)
    try:
        peer = scu.Peer(ae_title="PACS", host="127.0.0.1", port=pacs.port, dimse_timeout=5)
        files = write_smears(tmp_path / "images", 3)
        outcomes = scu.send_files(peer, files)
        assert [o.error for o in outcomes] == [""] * 3
        assert [o.ok for o in outcomes] == [True] * 3
        assert len(pacs.files()) == 3
    finally:
        pacs.stop()
