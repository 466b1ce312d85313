"""The main thread of a node process waits for its stop without holding the stop event's lock:
the SIGTERM handler, which runs in the main thread, sets that event, and would wait for the
lock forever had the main thread been inside ``Event.wait`` just then (a listener process hung
so on SIGTERM in CI)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any, Callable

from bcd_node.node.serve import run
from bcd_node.settings import load_settings


class StopEvent(threading.Event):
    """A stop event that records every wait the main thread makes on it."""

    def __init__(self) -> None:
        super().__init__()
        self.main_thread_waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        if threading.current_thread() is threading.main_thread():
            self.main_thread_waits += 1
        return super().wait(timeout)


def test_the_main_thread_waits_for_the_stop_without_the_events_lock(
        write_config: Callable[..., Path]) -> None:
    settings = load_settings(write_config())
    stop = StopEvent()
    handlers: dict[int, Any] = {sig: signal.getsignal(sig)
                                for sig in (signal.SIGTERM, signal.SIGINT)}
    # The node's SIGTERM handler sets the event (here, from a signal the test sends itself,
    # once the node is up).
    raiser = threading.Thread(target=lambda: (stop_when_started(settings),
                                              signal.pthread_kill(threading.main_thread().ident,
                                                                  signal.SIGTERM)))
    try:
        raiser.start()
        assert run(settings, (), stop) == 0
    finally:
        raiser.join(timeout=30)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert stop.is_set()
    assert stop.main_thread_waits == 0


def stop_when_started(settings: Any) -> None:
    """Wait until ``run`` has installed its SIGTERM handler (the node is starting)."""
    from tests.support.waiting import wait_for

    wait_for(lambda: signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
             and getattr(signal.getsignal(signal.SIGTERM), "__name__", "") == "on_signal",
             timeout=30, what="the node's SIGTERM handler")
