"""Keeping a lease while working: a claimed job or outbox row is renewed until the work ends.

Leases can then be short (``workers.lease_seconds``, ``delivery.lease_seconds``: 30 s by
default): a process that dies stops renewing, and what it held is due again within one lease,
while a live process keeps its lease however long the work takes. Renewal is fenced like every
other update of a claimed row: when it finds that another process has taken the row over, the
keeper stops and sets :attr:`LeaseKeeper.lost`, and the work's own fenced update (which writes
the outcome) refuses to publish.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

LOGGER = logging.getLogger(__name__)


class LeaseKeeper:
    """Calls ``renew`` every third of ``lease_seconds`` in a daemon thread, while in a ``with``.

    Parameters
    ----------
    renew
        Extends the lease by ``lease_seconds`` from now; returns False when the lease is no
        longer ours (then renewing stops). An exception (the database briefly unavailable) is
        logged and renewal goes on: the lease may still be saved before it runs out.
    lease_seconds
        The lease's length.
    what
        For the log: what is leased ("job 12", "3 deliveries to pacs").
    """

    def __init__(self, renew: Callable[[], bool], lease_seconds: float, what: str) -> None:
        self.renew = renew
        self.interval = max(0.05, lease_seconds / 3)
        self.what = what
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseKeeper:
        self._thread = threading.Thread(target=self._run, name=f"lease {self.what}",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                kept = self.renew()
            except Exception as exc:  # noqa: BLE001 - keep trying while the lease lasts
                LOGGER.warning("cannot renew the lease of %s: %s: %s", self.what,
                               type(exc).__name__, exc)
                continue
            if not kept:
                LOGGER.warning("the lease of %s passed to another process: its outcome will "
                               "not be recorded here", self.what)
                self.lost.set()
                return
