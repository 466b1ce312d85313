"""A budget of memory that concurrent work (the console's uploads and previews) shares.

Decoding an image takes several times its pixels' size for a moment; eight 49-megapixel uploads
at once took the console to 4.5 GB. Each piece of work reserves what it will need before it
starts; work that does not fit waits a little for others to finish, then gives up with
:class:`Busy` (the console answers "busy, try again"), and work that could never fit is refused
with :class:`TooLarge`.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from bcd_node.errors import PermanentError, TransientError

LOGGER = logging.getLogger(__name__)


class Busy(TransientError):
    """The budget is taken by other work for longer than the caller wanted to wait."""


class TooLarge(PermanentError):
    """The work needs more than the whole budget."""


class MemoryBudget:
    """``total`` bytes shared by concurrent reservations (thread-safe).

    Parameters
    ----------
    total
        Bytes that reservations may hold at once.
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"total must be positive, got {total!r}")
        self.total = total
        self._used = 0
        self._holders = 0
        self._waiting = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        """Bytes reserved right now."""
        with self._cond:
            return self._used

    @property
    def holders(self) -> int:
        """Reservations held right now."""
        with self._cond:
            return self._holders

    @property
    def waiting(self) -> int:
        """Reservations waiting for bytes to become free right now."""
        with self._cond:
            return self._waiting

    @contextmanager
    def reserve(self, nbytes: int, wait: float) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the ``with`` block.

        Raises
        ------
        TooLarge
            When ``nbytes`` exceeds the whole budget.
        Busy
            When the bytes did not become free within ``wait`` seconds.
        """
        nbytes = max(1, int(nbytes))
        if nbytes > self.total:
            raise TooLarge(f"needs {nbytes} bytes of memory, more than the {self.total} "
                           "allowed for this work at once")
        deadline = time.monotonic() + max(0.0, wait)
        with self._cond:
            self._waiting += 1
            try:
                while self._used + nbytes > self.total:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        LOGGER.info("memory budget busy: %d of %d bytes held by %d, %d more "
                                    "asked", self._used, self.total, self._holders, nbytes)
                        raise Busy("busy with other work; try again in a moment")
                    self._cond.wait(left)
            finally:
                self._waiting -= 1
            self._used += nbytes
            self._holders += 1
        try:
            yield
        finally:
            with self._cond:
                self._used -= nbytes
                self._holders -= 1
                self._cond.notify_all()
