"""A slow PACS holds up no other destination, and a stop ends its delivery after the object in
flight. Peers are pynetdicom AEs in this process: "slow" answers each C-STORE late (its
handler waits), "fast" at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from bcd_node.db.models import Delivery, DeliveryState
from bcd_node.delivery.outbox import Deliverer
from bcd_node.node.scheduler import start_scheduler
from bcd_node.runtime import NodeContext, open_node
from bcd_node.settings import load_settings
from tests.support.images import write_vl_micro
from tests.support.net import free_port
from tests.support.outbox import queue_files
from tests.support.postgres import ON_BOTH_DATABASES
from tests.support.waiting import wait_for


class Pacs:
    """A storage SCP on loopback that keeps the SOP Instance UIDs it stored; ``before_store``
    runs in its C-STORE handler before it answers."""

    def __init__(self, before_store: Callable[[], Any] = lambda: None) -> None:
        self.before_store = before_store
        self.stored: list[str] = []
        self.port = free_port()

    def _store(self, event: Any) -> int:
        self.before_store()
        self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    @contextmanager
    def running(self) -> Iterator[Pacs]:
        ae = AE(ae_title="PACS")
        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(Verification)
        server = ae.start_server(("127.0.0.1", self.port), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, self._store)])
        try:
            yield self
        finally:
            server.shutdown()


def two_destinations(write_config, slow: Pacs, fast: Pacs, database_url: str = "") -> NodeContext:
    """A node with the slow destination first, then the fast one."""
    text = "[delivery]\ninitial_backoff = 0.2\nmax_backoff = 0.4\nconnect_timeout = 2.0\n\n"
    for name, pacs in (("slow", slow), ("fast", fast)):
        text += (f'[[destinations]]\nname = "{name}"\nae_title = "PACS"\nhost = "127.0.0.1"\n'
                 f"port = {pacs.port}\n\n")
    return open_node(load_settings(write_config(text, database_url=database_url)))


def states(ctx: NodeContext, destination: str) -> list[DeliveryState]:
    with ctx.session_factory() as s:
        return list(s.execute(select(Delivery.state).where(
            Delivery.destination == destination).order_by(Delivery.id)).scalars())


@ON_BOTH_DATABASES
def test_a_pacs_that_does_not_answer_holds_up_no_other_destination(write_config, database_url,
                                                                   tmp_path) -> None:
    """The slow PACS answers no C-STORE until the test lets it: the fast destination gets
    its objects meanwhile, in the same pass."""
    answer = threading.Event()
    with Pacs(lambda: answer.wait(30)).running() as slow, Pacs().running() as fast:
        ctx = two_destinations(write_config, slow, fast, database_url)
        queue_files(ctx, write_vl_micro(tmp_path / "slow", 3), destination="slow")
        queue_files(ctx, write_vl_micro(tmp_path / "fast", 3), destination="fast")
        summaries = []
        passing = threading.Thread(target=lambda: summaries.append(Deliverer(ctx).run_once()))
        passing.start()
        try:
            wait_for(lambda: states(ctx, "fast") == [DeliveryState.DONE] * 3, 20,
                     "the fast destination's objects, while the slow one holds its first")
            assert len(fast.stored) == 3
            assert slow.stored == [] and DeliveryState.DONE not in states(ctx, "slow")
        finally:
            answer.set()
            passing.join(30)
        assert not passing.is_alive()
        assert summaries[0].sent == 6
        assert states(ctx, "slow") == [DeliveryState.DONE] * 3


@ON_BOTH_DATABASES
def test_the_schedulers_deliveries_to_a_fast_destination_go_on_while_a_slow_one_waits(
        write_config, database_url, tmp_path) -> None:
    """Each destination has a delivery job of its own: what is queued for the fast one later
    is sent while the slow one still waits for its first answer."""
    answer = threading.Event()
    with Pacs(lambda: answer.wait(30)).running() as slow, Pacs().running() as fast:
        ctx = two_destinations(write_config, slow, fast, database_url)
        queue_files(ctx, write_vl_micro(tmp_path / "slow", 3), destination="slow")
        queue_files(ctx, write_vl_micro(tmp_path / "fast", 2), destination="fast")
        _, stop = start_scheduler(ctx)
        try:
            ctx.wake_delivery()
            wait_for(lambda: states(ctx, "fast") == [DeliveryState.DONE] * 2, 15,
                     "the fast destination's first objects")
            queue_files(ctx, write_vl_micro(tmp_path / "fast-later", 2), destination="fast")
            ctx.wake_delivery()
            wait_for(lambda: states(ctx, "fast") == [DeliveryState.DONE] * 4, 15,
                     "the fast destination's later objects")
            assert slow.stored == []
            answer.set()
            wait_for(lambda: states(ctx, "slow") == [DeliveryState.DONE] * 3, 15,
                     "the slow destination's objects, once it answers")
        finally:
            answer.set()
            stop()


@ON_BOTH_DATABASES
def test_a_stop_ends_the_delivery_to_a_slow_pacs_after_the_object_in_flight(
        write_config, database_url, tmp_path, monkeypatch) -> None:
    """A PACS that answers its first two objects, then holds the third until the test lets
    it go; 40 objects (one batch). A stop asked while the third is in flight returns once it
    is answered, without sending a fourth (it went on through all 40 before); the objects not
    sent are due again, not counted as an attempt, for the next start."""
    from bcd_node.delivery.outbox import Deliverer

    holding, release, stop_asked = threading.Event(), threading.Event(), threading.Event()
    answered = [0]

    def slow_after_two() -> None:
        answered[0] += 1
        if answered[0] > 2:
            holding.set()
            release.wait(60)

    real_stop = Deliverer.stop

    def recorded_stop(self: Deliverer) -> None:
        real_stop(self)
        stop_asked.set()

    monkeypatch.setattr(Deliverer, "stop", recorded_stop)
    with Pacs(slow_after_two).running() as slow, Pacs().running() as fast:
        ctx = two_destinations(write_config, slow, fast, database_url)
        queue_files(ctx, write_vl_micro(tmp_path / "slow", 40), destination="slow")
        _, stop = start_scheduler(ctx)
        stopping = threading.Thread(target=stop, name="stop")
        try:
            ctx.wake_delivery()
            assert holding.wait(15), "the slow destination's third object never came"
            started = time.monotonic()
            stopping.start()
            assert stop_asked.wait(15), "the deliverer was not asked to stop"
            release.set()  # the object in flight is answered
            stopping.join(60)
            took = time.monotonic() - started
        finally:
            release.set()
            if not stopping.is_alive() and not stop_asked.is_set():
                stop()
        stored = len(slow.stored)
    print(f"the stop took {took:.2f} s, {stored} of 40 objects stored")
    assert not stopping.is_alive() and took < 10, f"the stop took {took:.1f} s"
    assert stored == 3  # the two answered, and the one in flight: none after the stop
    with ctx.session_factory() as s:
        rows = s.execute(select(Delivery).where(Delivery.destination == "slow")).scalars().all()
    done = [r for r in rows if r.state is DeliveryState.DONE]
    waiting = [r for r in rows if r.state is not DeliveryState.DONE]
    assert len(done) == stored and len(waiting) == 40 - stored
    assert all(r.state is DeliveryState.PENDING and r.attempts == 0 and not r.last_error
               for r in waiting), [(r.state, r.attempts, r.last_error) for r in waiting[:3]]
