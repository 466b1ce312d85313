"""What a builder process says of itself (run in the pool's processes by the warm-up test), and
a time zone that holds a builder in the middle of building (the pool tests)."""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path


def warm_state() -> tuple[int, bool]:
    """This process's id, and whether it built its warm-up request."""
    from bcd_node.analysis import builders

    return os.getpid(), builders.warmed_up


def model_frameworks() -> set[str]:
    """The machine-learning frameworks this process has imported (a builder needs none)."""
    import sys

    return {name.split(".")[0] for name in sys.modules} & {"keras", "tensorflow", "torch", "jax"}


class BlockingZone(dt.tzinfo):
    """A time zone (a request's ``timezone``) whose first use, while the PDF report shows a
    time, creates ``marker`` and then holds its process for good: a builder that is certainly
    building when a test kills it, however fast building is."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return BlockingZone, (self.marker,)

    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
        Path(self.marker).touch()
        threading.Event().wait()  # until the process is killed
        return dt.timedelta(0)

    def dst(self, when: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, when: dt.datetime | None) -> str:
        return "BLOCKING"


class DyingMidResult(dt.tzinfo):
    """A time zone whose first use, in a builder process, starts a result on the pool's
    results pipe (a length and the first bytes of a message) and ends the process before the
    rest: a builder killed (by the kernel's out-of-memory killer, say) while it was sending
    a result, made deterministic. The pool's manager then waits for bytes that never come."""

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return DyingMidResult, ()

    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
        import struct
        import sys

        frame = sys._getframe()
        while frame is not None and frame.f_code.co_name != "_process_worker":
            frame = frame.f_back
        if frame is not None:  # in a pool's process: half a message, then the end
            writer = frame.f_locals["result_queue"]._writer
            writer._send(struct.pack("!i", 1 << 20) + b"\x80" * 64)
            os._exit(1)
        return dt.timedelta(0)

    def dst(self, when: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, when: dt.datetime | None) -> str:
        return "DYING"
